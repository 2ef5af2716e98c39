"""Online monitors inside CARE.fit on real Fashion-MNIST: logged, and SSL-neutral."""

import csv
import glob
import importlib.util
import os
import random

import keras
import numpy as np
import pytest
import tensorflow as tf

import care_tf
from care_tf.constants import IMAGENET_MEAN, IMAGENET_STD
from care_tf.evaluate import KNNMonitor, OnlineLinearProbe

BATCH = 32
EPOCHS = 2
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> ImageNet-normalised float32 (N, 32, 32, 3)."""
    x = np.pad(images, ((0, 0), (2, 2), (2, 2))).astype("float32") / 255.0
    x = np.repeat(x[..., None], 3, axis=-1)
    return (x - np.array(IMAGENET_MEAN, "float32")) / np.array(IMAGENET_STD, "float32")


@pytest.fixture(scope="module")
def data(fmnist_small):
    images, labels = fmnist_small
    x = to_model_input(images)
    ssl = x[:64]
    # Deterministic two views (identity and horizontal flip): the test compares runs.
    ssl_ds = tf.data.Dataset.from_tensor_slices((ssl, ssl[:, :, ::-1])).batch(BATCH)
    return {
        "ssl": ssl_ds,
        "train": (x[128:384], labels[128:384]),
        "val": (x[384:512], labels[384:512]),
    }


def tiny_care(seed: int = 0) -> care_tf.CARE:
    keras.utils.set_random_seed(seed)
    model = care_tf.CARE.from_preset(
        "resnet18",
        image_size=32,
        backbone_kwargs={"base_channels": 8},
        transformer_kwargs={"num_blocks": 1},
        hidden_dim=64,
        projection_dim=32,
        total_steps=4,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return model


def monitors(data, log_dir=None):
    return [
        KNNMonitor(data["train"], data["val"], every_n_epochs=2, k=20, batch_size=128),
        OnlineLinearProbe(
            data["train"], data["val"], num_classes=10, batch_size=64, log_dir=log_dir
        ),
    ]


def snapshot(model) -> list[np.ndarray]:
    return [v.numpy() for v in (*model.variables, *model.optimizer.variables)]


def restore(model, values) -> None:
    for v, value in zip((*model.variables, *model.optimizer.variables), values, strict=True):
        v.assign(value)


def monitored_callbacks(data, tmp):
    # Monitors come first: they add their figures to the logs the loggers write.
    callbacks = monitors(data, log_dir=str(tmp / "probe_tb"))
    callbacks.append(keras.callbacks.CSVLogger(str(tmp / "metrics.csv")))
    if HAS_TENSORBOARD:  # Keras' TensorBoard callback needs the package
        callbacks.append(keras.callbacks.TensorBoard(str(tmp / "logs")))
    return callbacks


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """One seeded SSL run without monitors, then the same run (same model, initial
    weights and optimizer state restored, same seed) with monitors and loggers.
    Reusing the model saves a second trace of the train step."""
    tmp = tmp_path_factory.mktemp("monitors")
    model = tiny_care(seed=0)
    model.optimizer.build(model.trainable_variables)
    initial = snapshot(model)
    plain = model.fit(data["ssl"], epochs=EPOCHS, verbose=0).history
    plain_weights = [w.numpy() for w in model.weights]

    restore(model, initial)
    keras.utils.set_random_seed(0)
    callbacks = monitored_callbacks(data, tmp)
    monitored = model.fit(data["ssl"], epochs=EPOCHS, verbose=0, callbacks=callbacks).history
    return {
        "plain": (plain, plain_weights),
        "monitored": (monitored, [w.numpy() for w in model.weights]),
        "tmp": tmp,
    }


def event_tags(directory) -> set:
    found = set()
    for path in glob.glob(os.path.join(directory, "**", "events.out.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            found.update(v.tag for v in event.summary.value)
    return found


def test_monitors_log_inside_fit(runs):
    history, _ = runs["monitored"]
    for key in ("knn_top1", "knn_top5", "probe_loss", "probe_train_top1", "probe_val_top1"):
        assert len(history[key]) == EPOCHS, key
        assert key == "probe_loss" or all(0 <= v <= 1 for v in history[key])
    # Above chance (10 classes) even for a barely trained backbone.
    assert history["knn_top1"][-1] > 0.2
    assert np.isfinite(history["probe_loss"]).all()

    with open(runs["tmp"] / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == EPOCHS
    # kNN runs after the first epoch (so the CSV header has it) and the last.
    assert all(row["knn_top1"] not in ("", "NA") for row in rows)
    assert all(float(row["probe_val_top1"]) >= 0 for row in rows)

    if HAS_TENSORBOARD:
        assert {"epoch_knn_top1", "epoch_probe_val_top1", "epoch_loss"} <= event_tags(
            runs["tmp"] / "logs"
        )
    # Written directly by the probe (no tensorboard package needed).
    assert {"monitor/probe_val_top1", "monitor/probe_loss"} <= event_tags(runs["tmp"] / "probe_tb")


def test_monitors_do_not_change_ssl_training(runs):
    plain_history, plain_weights = runs["plain"]
    mon_history, mon_weights = runs["monitored"]
    assert "knn_top1" in mon_history and "knn_top1" not in plain_history
    assert_same_training((plain_history, plain_weights), (mon_history, mon_weights))


def assert_same_training(a, b):
    (history_a, weights_a), (history_b, weights_b) = a, b
    for key in ("loss", "loss_c", "loss_t", "loss_att"):
        assert history_a[key] == history_b[key], key
    for x, y in zip(weights_a, weights_b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_monitors_leave_global_random_state_alone(data):
    """Building and running the monitors draws nothing from Python, NumPy, TF or
    Keras global random state (which an SSL run with augmentation would use)."""

    def draws():
        return (
            random.random(),
            np.random.random(),
            float(tf.random.uniform(())),
            float(keras.random.uniform(())),
        )

    keras.utils.set_random_seed(0)
    expected = draws()
    keras.utils.set_random_seed(0)
    backbone = care_tf.ResNetBackbone(
        depth=18, base_channels=8, stem="cifar", image_shape=(32, 32, 3)
    )
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(1)])
    model.backbone = backbone
    model.compile(optimizer="sgd", loss="mse")
    # Restart the global state after building the models: only the monitors remain.
    keras.utils.set_random_seed(0)
    callbacks = monitors(data)
    model.fit(
        np.zeros((8, 4)),
        np.zeros((8, 1)),
        epochs=2,
        batch_size=4,
        verbose=0,
        shuffle=False,
        callbacks=callbacks,
    )
    assert draws() == expected


@pytest.mark.slow
def test_monitors_do_not_change_ssl_training_separate_models(data, tmp_path):
    """As above with two freshly built models, the monitors built before the second."""
    model = tiny_care(seed=0)
    plain = model.fit(data["ssl"], epochs=EPOCHS, verbose=0).history
    plain_weights = [w.numpy() for w in model.weights]
    callbacks = monitored_callbacks(data, tmp_path)
    model = tiny_care(seed=0)
    monitored = model.fit(data["ssl"], epochs=EPOCHS, verbose=0, callbacks=callbacks).history
    assert "knn_top1" in monitored
    assert_same_training((plain, plain_weights), (monitored, [w.numpy() for w in model.weights]))


def test_monitor_needs_backbone(data):
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    monitor = KNNMonitor(data["train"], data["val"])
    with pytest.raises(ValueError, match="backbone"):
        model.fit(np.zeros((4, 4)), np.zeros((4, 1)), epochs=1, verbose=0, callbacks=[monitor])
