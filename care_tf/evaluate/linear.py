"""The linear probe of docs/method.md: a Dense + BN head on frozen pooled features.

Recipe: head = Dense(classes) (weights N(0, 0.01), bias 0) + BatchNorm on the
logits; SGD momentum 0.9 in PyTorch's convention (the authors' `torch.optim.SGD`),
no weight decay, lr = 0.2 x batch / 256 with cosine decay to 0, 80 epochs. The
backbone is frozen and always runs in inference mode (BN moving statistics are
used and never updated).

Two ways to train it:
- `train_linear_probe`: end to end on images (the paper: random resized crop +
  flip each epoch), the backbone forward pass inside every step;
- `train_linear_probe_on_features`: on features extracted once (centre-crop
  preprocessing), much faster on CPU; identical to the above without augmentation.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from care_tf.evaluate.features import as_dataset, select_features
from care_tf.train.sgd import TorchSGD

BASE_LR = 0.2
MOMENTUM = 0.9
EPOCHS = 80
BATCH_SIZE = 256
# PyTorch BatchNorm1d defaults (momentum 0.1 there is 0.9 here).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def probe_learning_rate(batch_size: int, base_lr: float = BASE_LR) -> float:
    """Linear scaling rule: `base_lr * batch_size / 256`."""
    return base_lr * batch_size / 256


def make_linear_head(num_classes: int, seed: int = 0, name: str = "linear_probe") -> keras.Model:
    """Dense(num_classes) + BatchNorm: maps features (B, D) to logits (B, num_classes).

    Args:
        num_classes: int. Number of classes.
        seed: int. Seed of the N(0, 0.01) kernel initialiser (an explicit seed, so
            building a head draws nothing from global random state).
        name: str. Model name.
    """
    if num_classes < 2:
        raise ValueError(f"A linear probe needs >= 2 classes. Received: num_classes={num_classes}")
    return keras.Sequential(
        [
            keras.layers.Dense(
                num_classes,
                kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01, seed=seed),
                bias_initializer="zeros",
                name="fc",
            ),
            keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name="bn"),
        ],
        name=name,
    )


def probe_optimizer(learning_rate: float, total_steps: int) -> keras.optimizers.Optimizer:
    """PyTorch-convention SGD (momentum 0.9, no weight decay), cosine decay to 0 over
    `total_steps`: the authors' probe optimizer."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, total_steps))
    return TorchSGD(schedule, momentum=MOMENTUM)


@keras.saving.register_keras_serializable(package="care_tf")
class LinearClassifier(keras.Model):
    """Frozen backbone + trainable linear head: images (B, H, W, 3) -> logits (B, C).

    The backbone is set non-trainable and called with `training=False` under a
    stop-gradient, so fitting this model trains the head only and leaves every
    backbone weight and BN statistic unchanged.

    Args:
        backbone: keras.Model. A CARE backbone (dict output with `feature_key`).
        head: keras.Model. E.g. `make_linear_head(num_classes)`.
        feature_key: str. Backbone output fed to the head. Defaults to `"pooled"`.
    """

    def __init__(self, backbone: keras.Model, head: keras.Model, feature_key="pooled", **kwargs):
        super().__init__(**kwargs)
        backbone.trainable = False
        self.backbone = backbone
        self.head = head
        self.feature_key = feature_key

    def call(self, images, training=False):
        features = select_features(self.backbone(images, training=False), self.feature_key)
        return self.head(keras.ops.stop_gradient(features), training=training)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "head": keras.saving.serialize_keras_object(self.head),
            "feature_key": self.feature_key,
        }

    @classmethod
    def from_config(cls, config: dict) -> LinearClassifier:
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)


def _compile(model: keras.Model, learning_rate: float, total_steps: int) -> None:
    model.compile(
        optimizer=probe_optimizer(learning_rate, total_steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
        ],
    )


def train_linear_probe_on_features(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    learning_rate: float | None = None,
    seed: int = 0,
    verbose: int | str = 0,
    callbacks: list | None = None,
) -> tuple[keras.Model, dict]:
    """Trains the probe head on precomputed features.

    Args:
        features: float (N, D). Pooled features of the training split.
        labels: int (N,). Class ids.
        num_classes: int.
        epochs: int. Defaults to 80.
        batch_size: int. Defaults to 256 (the last partial batch is dropped when
            N > batch_size, so BN never sees a tiny batch).
        learning_rate: float. Peak lr; defaults to `0.2 * batch_size / 256`.
        seed: int. Head initialisation and shuffling seed.
        verbose: Keras fit verbosity (0, 1 = progress bar, 2, "auto").
        callbacks: extra Keras callbacks.

    Returns:
        `(head, history)`: the trained head (features -> logits) and the per-epoch
        loss / top1 / top5 lists.
    """
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int64).reshape(-1)
    batch_size = min(batch_size, len(features))
    steps = len(features) // batch_size
    dataset = (
        tf.data.Dataset.from_tensor_slices((features, labels))
        .shuffle(len(features), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    head = make_linear_head(num_classes, seed=seed)
    lr = probe_learning_rate(batch_size) if learning_rate is None else learning_rate
    _compile(head, lr, steps * epochs)
    history = head.fit(dataset, epochs=epochs, verbose=verbose, callbacks=callbacks, shuffle=False)
    return head, history.history


def train_linear_probe(
    backbone: keras.Model,
    train_data: tf.data.Dataset,
    *,
    num_classes: int,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    learning_rate: float | None = None,
    steps_per_epoch: int | None = None,
    seed: int = 0,
    verbose: int | str = 0,
    callbacks: list | None = None,
    feature_key: str = "pooled",
) -> tuple[LinearClassifier, dict]:
    """Trains the probe end to end on (augmented) images with the backbone frozen.

    Args:
        backbone: keras.Model. Frozen and run in inference mode throughout.
        train_data: batched `(images, labels)` dataset (e.g.
            `care_tf.data.make_eval_dataset(spec, split="train", train=True, ...)`),
            one epoch per iteration unless `steps_per_epoch` is given; or
            `(images, labels)` arrays (shuffled here with `seed`).
        num_classes: int.
        epochs: int. Defaults to 80.
        batch_size: int. The dataset's batch size, used for the lr scaling rule.
        learning_rate: float. Peak lr; defaults to `0.2 * batch_size / 256`.
        steps_per_epoch: int. Steps per epoch; needed when the dataset's length is
            unknown or infinite (a finite dataset is then repeated).
        seed: int. Head initialisation seed.
        verbose, callbacks: passed to `fit`.
        feature_key: str. Backbone output the head reads.

    Returns:
        `(classifier, history)`: the `LinearClassifier` and the per-epoch logs.
    """
    if not isinstance(train_data, tf.data.Dataset):
        images, labels = train_data
        train_data = (
            tf.data.Dataset.from_tensor_slices(
                (np.asarray(images, np.float32), np.asarray(labels, np.int64))
            )
            .shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size)
        )
    fit_steps = steps_per_epoch
    if steps_per_epoch is None:
        steps_per_epoch = int(train_data.cardinality())
        if steps_per_epoch <= 0:
            raise ValueError(
                "Cannot tell the number of steps of `train_data` (infinite or unknown "
                "cardinality): pass `steps_per_epoch`."
            )
    elif int(train_data.cardinality()) != int(tf.data.INFINITE_CARDINALITY):
        # Keras keeps one iterator across epochs when steps_per_epoch is set: repeat
        # so a finite dataset never runs dry (an epoch is then steps_per_epoch steps).
        train_data = train_data.repeat()
    classifier = LinearClassifier(backbone, make_linear_head(num_classes, seed=seed), feature_key)
    lr = probe_learning_rate(batch_size) if learning_rate is None else learning_rate
    _compile(classifier, lr, steps_per_epoch * epochs)
    history = classifier.fit(
        train_data,
        epochs=epochs,
        steps_per_epoch=fit_steps,
        verbose=verbose,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself
    )
    return classifier, history.history


def predict_scores(
    model: keras.Model, data, batch_size: int = BATCH_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Runs `model` in inference mode over `(inputs, labels)` data.

    Returns:
        `(logits float32 (N, C), labels int64 (N,))`.
    """
    dataset = as_dataset(data, batch_size)
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    scores, labels = [], []
    for inputs, batch_labels in dataset:
        scores.append(np.asarray(forward(inputs), np.float32))
        labels.append(np.asarray(batch_labels, np.int64).reshape(-1))
    return np.concatenate(scores), np.concatenate(labels)
