"""What users load: the plain-Keras backbone, presets, target weight paths, old layouts."""

import collections
import os
import zipfile

import care_testing
import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import care_tf
from care_tf import model_dir as layout
from care_tf.constants import IMAGENET_MEAN, IMAGENET_STD
from care_tf.train.checkpoint import TrainCheckpoint
from care_tf.train.strategy import WorkerInfo

CHIEF = WorkerInfo(num_workers=1, task_id=0, is_chief=True)


def views(seed=0, batch=4):
    rng = np.random.RandomState(seed)
    return tuple(rng.randn(batch, 32, 32, 3).astype("float32") for _ in range(2))


@pytest.fixture(scope="module")
def trained():
    """A tiny CARE model whose online, target and BN statistics all differ from their init."""
    keras.utils.set_random_seed(0)
    model = care_testing.tiny_care(total_steps=10)
    model.compile(optimizer=care_tf.TorchSGD(0.05))
    model.optimizer.build(model.trainable_weights)
    rng = np.random.RandomState(0)
    for v in model.weights:
        if v.dtype == "float32":
            v.assign(v.numpy() + 0.01 * rng.randn(*v.shape).astype("float32"))
    model.steps.assign(3)
    return model


def small_backbone():
    return care_tf.create_backbone("resnet18", image_shape=(32, 32, 3), base_channels=8)


def test_saved_backbone_drops_into_keras_sequential(tmp_path, fmnist_small):
    images, labels = fmnist_small
    pixels = np.repeat(tf.image.resize(images[:32, ..., None], (32, 32)).numpy(), 3, axis=-1)
    path = str(tmp_path / "backbone.keras")
    care_tf.feature_extractor(small_backbone(), include_normalization=True).save(path)

    model = keras.Sequential([keras.saving.load_model(path), keras.layers.Dense(10)])
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [w.numpy().copy() for w in model.layers[0].trainable_weights]
    history = model.fit(pixels, labels[:32], batch_size=16, epochs=3, verbose=0).history
    assert model.predict(pixels[:2], verbose=0).shape == (2, 10)
    changed = [
        not np.array_equal(b, w.numpy())
        for b, w in zip(before, model.layers[0].trainable_weights, strict=True)
    ]
    assert all(changed)  # the backbone is fine-tuned, not frozen
    assert np.isfinite(history["loss"]).all() and history["loss"][-1] < history["loss"][0]


def test_included_normalization_equals_numpy_normalisation():
    backbone = small_backbone()
    pixels = np.random.RandomState(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    normalised = (pixels / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    raw = care_tf.feature_extractor(backbone, include_normalization=True)
    plain = care_tf.feature_extractor(backbone)
    assert raw.output.shape == (None, 64) and raw.input_shape == (None, 32, 32, 3)
    np.testing.assert_allclose(
        raw(pixels).numpy(), plain(normalised.astype("float32")).numpy(), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_array_equal(
        plain(normalised.astype("float32")).numpy(),
        backbone(normalised.astype("float32"))["pooled"].numpy(),
    )


def test_run_directory_loaders(tmp_path, trained):
    x = views(3)[0]
    run = str(tmp_path / "run")
    layout.save_models(trained, run)
    assert sorted(os.listdir(run)) == ["backbone.keras", "model.keras"]
    single = layout.load_backbone(run)
    assert not isinstance(single.output, dict)
    np.testing.assert_allclose(single(x).numpy(), trained(x).numpy(), rtol=1e-5, atol=1e-6)
    maps = layout.load_feature_model(run)
    assert sorted(maps.output) == ["pooled", "res4", "res5"]
    # A backbone saved with dict outputs (earlier versions) still loads as a plain model.
    legacy = str(tmp_path / "legacy")
    os.makedirs(legacy)
    trained.backbone.save(os.path.join(legacy, "backbone.keras"))
    np.testing.assert_allclose(
        layout.load_backbone(legacy)(x).numpy(), trained(x).numpy(), rtol=1e-5, atol=1e-6
    )


def test_preset_round_trip_is_exact(tmp_path, trained):
    x = views(4)[0]
    preset = care_tf.save_to_preset(trained, str(tmp_path / "preset"))
    assert sorted(os.listdir(preset)) == ["config.json", "metadata.json", "model.weights.h5"]
    again = care_tf.CARE.from_preset(preset)
    np.testing.assert_array_equal(again(x).numpy(), trained(x).numpy())
    assert len(again.weights) == len(trained.weights)
    for a, b in zip(again.weights, trained.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    np.testing.assert_array_equal(care_tf.load_backbone(preset)(x).numpy(), trained(x).numpy())
    # A run directory works the same way.
    run = str(tmp_path / "run")
    layout.save_models(trained, run)
    np.testing.assert_array_equal(care_tf.CARE.from_preset(run)(x).numpy(), trained(x).numpy())
    # An architecture name builds a fresh single-output backbone.
    fresh = care_tf.load_backbone("resnet18", image_size=32, base_channels=8)
    assert fresh.output.shape == (None, 64)
    with pytest.raises(ValueError, match="not an architecture .* preset directory"):
        care_tf.CARE.from_preset(str(tmp_path / "nowhere"))


def test_every_target_weight_has_its_own_path(trained):
    paths = [v.path for v in trained.weights]
    duplicated = [p for p, n in collections.Counter(paths).items() if n > 1]
    assert duplicated == []
    target = [v.path for layer in trained.target_layers for v in layer.weights]
    assert all(p.startswith("target_") for p in target), target[:3]


def test_checkpoint_of_the_old_layout_restores(tmp_path, trained):
    """Before target paths were scoped, the target backbone's keys repeated the online paths."""
    online_path = {
        id(t): o.path
        for o, t in zip(trained.backbone.weights, trained.target_backbone.weights, strict=True)
    }
    old_keys = {
        f"{i:05d}:{online_path.get(id(v), v.path)}": v for i, v in enumerate(trained.weights)
    }
    old = tf.train.Checkpoint(weights=old_keys, optimizer=trained.optimizer)
    directory = tmp_path / "run" / "checkpoints"
    tf.train.CheckpointManager(old, str(directory), max_to_keep=1).save(checkpoint_number=7)

    keras.utils.set_random_seed(5)
    fresh = care_testing.tiny_care(total_steps=10)
    fresh.compile(optimizer=care_tf.TorchSGD(0.05))
    fresh.optimizer.build(fresh.trainable_weights)
    assert not np.array_equal(fresh.weights[0].numpy(), trained.weights[0].numpy())
    step = TrainCheckpoint(str(tmp_path / "run"), fresh, worker=CHIEF).restore_latest()
    assert step == 7
    for a, b in zip(fresh.weights, trained.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_keras_files_do_not_depend_on_weight_paths(tmp_path, trained):
    """`.keras` weights are stored by layer structure, so files saved before still load."""
    path = str(tmp_path / "model.keras")
    trained.save(path)
    with zipfile.ZipFile(path) as z:
        z.extract("model.weights.h5", tmp_path)
    keys = []
    with h5py.File(tmp_path / "model.weights.h5") as f:
        f.visit(keys.append)
    assert keys and not any("target_resnet18/" in k or "stem_conv/kernel" in k for k in keys)
    again = keras.saving.load_model(path, compile=False)
    np.testing.assert_array_equal(again(views(5)[0]).numpy(), trained(views(5)[0]).numpy())


def test_labelled_batches_are_refused_with_a_clear_error(trained):
    images = np.random.RandomState(0).randn(8, 32, 32, 3).astype("float32")
    labelled = tf.data.Dataset.from_tensor_slices((images, np.arange(8))).batch(4)
    with pytest.raises(ValueError, match=r"look like \(images, labels\).*two augmented views"):
        trained.fit(labelled, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"look like \(images, labels\)"):
        trained.fit(images, np.arange(8), batch_size=4, epochs=1, verbose=0)
