"""The keras-hub bridge: our ResNets as keras_hub.models.ResNetBackbone / presets."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from care_tf.constants import IMAGENET_MEAN, IMAGENET_STD
from care_tf.evaluate.linear import LinearClassifier, make_linear_head
from care_tf.models.resnet import RESNET_SPECS, ResNetBackbone
from care_tf.transfer.keras_hub_bridge import (
    TransferError,
    hub_backbone,
    hub_layer_name,
    parameter_count,
    to_keras_hub,
)

pytest.importorskip("keras_hub")


def _randomise_bn(model: keras.Model, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters (fresh ones are 0/1)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        path = w.path
        if path.endswith("moving_variance"):
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
        elif path.endswith(("moving_mean", "beta")):
            w.assign(rng.normal(0.0, 0.2, w.shape).astype("float32"))
        elif path.endswith("gamma"):
            w.assign(rng.normal(1.0, 0.2, w.shape).astype("float32"))


def _stage_maps(ours: ResNetBackbone) -> keras.Model:
    """Our res2..res5 maps: the outputs of stages 1..4."""
    depths = RESNET_SPECS[ours.depth][1]
    names = [f"stage{s + 1}_block{n - 1}_out" for s, n in enumerate(depths)]
    return keras.Model(ours.inputs, [ours.get_layer(n).output for n in names])


def test_layer_names_map_onto_keras_hub():
    assert hub_layer_name("stem_conv") == "conv1_conv"
    assert hub_layer_name("stem_bn") == "conv1_bn"
    assert hub_layer_name("stage1_block0_proj_conv") == "stack0_block0_0_conv"
    assert hub_layer_name("stage4_block2_3_bn") == "stack3_block2_3_bn"
    assert hub_layer_name("stage2_block1_out") is None
    assert hub_layer_name("pool") is None


@pytest.mark.parametrize(
    ("depth", "size", "tolerance"),
    [(18, 64, 1e-6), (50, 32, 1e-5)],  # basic, bottleneck blocks
)
def test_pyramid_outputs_equal_our_stage_maps(depth, size, tolerance):
    ours = ResNetBackbone(depth=depth, stem="imagenet", image_shape=(size, size, 3))
    _randomise_bn(ours)
    hub = hub_backbone(ours)
    assert type(hub).__module__.startswith("keras_hub")
    assert parameter_count(hub) == parameter_count(ours)
    if depth == 50:
        assert parameter_count(hub) == 23_561_152
    x = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype("float32")
    expected = [np.asarray(m) for m in _stage_maps(ours)(x)]
    got = keras.Model(hub.inputs, hub.pyramid_outputs)(x)
    for level, want in zip(range(2, 6), expected, strict=True):
        have = np.asarray(got[f"P{level}"])
        assert have.shape == want.shape
        scale = max(1.0, float(np.abs(want).max()))
        assert np.abs(have - want).max() <= tolerance * scale, f"P{level}"
    np.testing.assert_allclose(
        np.asarray(hub(x)), expected[-1], atol=tolerance * max(1.0, np.abs(expected[-1]).max())
    )


@pytest.mark.parametrize(
    ("kwargs", "cause", "way_out"),
    [
        ({"stem": "cifar"}, "CIFAR stem", "stem: imagenet"),
        ({"base_channels": 8}, "base_channels 8", "base_channels 64"),
        ({"width_multiplier": 2}, "wide ResNet", "finetune"),
    ],
)
def test_what_keras_hub_cannot_express_is_one_clear_error(kwargs, cause, way_out):
    kwargs = {"depth": 18, "stem": "imagenet", "base_channels": 64, **kwargs}
    size = 32
    model = ResNetBackbone(**kwargs, image_shape=(size, size, 3))
    with pytest.raises(TransferError) as info:
        hub_backbone(model)
    message = str(info.value)
    assert cause in message and way_out in message and "\n" not in message


def test_missing_source_and_foreign_folder(tmp_path):
    with pytest.raises(TransferError, match="does not exist"):
        hub_backbone(tmp_path / "nope")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    model = ResNetBackbone(depth=18, image_shape=(32, 32, 3))
    with pytest.raises(TransferError, match="not a keras-hub preset"):
        to_keras_hub(model, tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


_LOADER = """
import json, sys
import numpy as np
import keras_hub
assert not any(m.split(".")[0] == "care_tf" for m in sys.modules), "care_tf imported"
preset, data, out = sys.argv[1:4]
arrays = np.load(data)
backbone = keras_hub.models.ResNetBackbone.from_preset(preset)
import keras
pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)(arrays["normalised"])
classifier = keras_hub.models.ImageClassifier.from_preset(preset)
logits = classifier.predict(arrays["raw"], verbose=0)
np.savez(out, logits=logits, **{k: np.asarray(v) for k, v in pyramid.items()},
         classifier=np.array(type(classifier).__name__))
"""


def test_preset_loads_without_care_tf_and_predicts_our_logits(tmp_path):
    size = 64
    backbone = ResNetBackbone(depth=18, stem="imagenet", image_shape=(size, size, 3))
    _randomise_bn(backbone)
    head = make_linear_head(5, seed=3)
    head.build((None, 512))
    _randomise_bn(head, seed=4)
    classifier = LinearClassifier(backbone, head, name="classifier")
    preset = to_keras_hub(backbone, tmp_path / "hub", classifier=classifier)
    assert preset == tmp_path / "hub"
    files = set(os.listdir(preset))
    assert {"config.json", "model.weights.h5", "metadata.json", "task.json"} <= files
    assert {"preprocessor.json", "task.weights.h5"} <= files
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # nothing left aside

    rng = np.random.default_rng(2)
    # Raw pixels, taller than wide: keras-hub crops the centre square (no resize here).
    raw = rng.integers(0, 256, size=(3, size + 16, size, 3)).astype("float32")
    crop = raw[:, 8 : 8 + size]
    normalised = ((crop / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(
        "float32"
    )
    expected_logits = np.asarray(classifier(normalised, training=False))
    expected_maps = [np.asarray(m) for m in _stage_maps(backbone)(normalised)]
    np.savez(tmp_path / "data.npz", raw=raw, normalised=normalised)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    code = tmp_path / "load.py"
    code.write_text(_LOADER)
    proc = subprocess.run(
        [
            sys.executable,
            str(code),
            str(preset),
            str(tmp_path / "data.npz"),
            str(tmp_path / "o.npz"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "o.npz")
    assert str(out["classifier"]) == "ResNetImageClassifier"
    for level, want in zip(range(2, 6), expected_maps, strict=True):
        np.testing.assert_allclose(out[f"P{level}"], want, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(out["logits"], expected_logits, rtol=1e-4, atol=1e-4)
    metadata = json.loads((preset / "metadata.json").read_text())
    assert metadata["parameter_count"] == parameter_count(backbone)  # BN statistics too


def test_preset_is_replaced_in_place(tmp_path):
    first = ResNetBackbone(depth=18, image_shape=(32, 32, 3))
    preset = to_keras_hub(first, tmp_path / "hub")
    _randomise_bn(first, seed=7)
    to_keras_hub(first, preset)
    import keras_hub

    loaded = keras_hub.models.ResNetBackbone.from_preset(str(preset))
    np.testing.assert_array_equal(
        np.asarray(loaded.get_layer("conv1_bn").moving_mean),
        np.asarray(first.get_layer("stem_bn").moving_mean),
    )


def _run_dir(tmp_path, name: str, **kwargs):
    """A run directory holding only backbone.keras (as training writes it: Keras' own
    layers, `save_backbone`)."""
    from care_tf.model_dir import save_backbone

    run = tmp_path / name
    run.mkdir()
    backbone = ResNetBackbone(depth=18, image_shape=(32, 32, 3), **kwargs)
    _randomise_bn(backbone)
    save_backbone(backbone, str(run / "backbone.keras"))
    return run


@pytest.mark.slow  # a fresh process importing TensorFlow and keras-hub (~15 s)
def test_export_cli_writes_a_verified_preset(tmp_path, capsys):
    from care_tf.export.__main__ import main

    run = _run_dir(tmp_path, "run", stem="imagenet")
    args = ["--model_dir", str(run), "--out", str(tmp_path / "out"), "--format", "keras_hub"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ok   P5" in printed and "FAIL" not in printed
    assert (tmp_path / "out" / "keras_hub" / "config.json").is_file()
    assert main([*args, "--overwrite"]) == 0


def test_export_cli_refuses_an_existing_preset_without_overwrite(tmp_path, capsys):
    from care_tf.export.__main__ import main

    run = _run_dir(tmp_path, "run", stem="imagenet")
    (tmp_path / "out" / "keras_hub").mkdir(parents=True)
    args = ["--model_dir", str(run), "--out", str(tmp_path / "out"), "--format", "keras_hub"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]


def test_export_cli_refuses_a_quickstart_run_in_one_line(tmp_path, capsys):
    from care_tf.export.__main__ import main

    run = _run_dir(tmp_path, "quick", stem="cifar", base_channels=8)
    args = ["--model_dir", str(run), "--out", str(tmp_path / "out"), "--format", "keras_hub"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "CIFAR stem" in err[0]
    assert not (tmp_path / "out" / "keras_hub").exists()


@pytest.mark.slow  # a fresh process importing TensorFlow and keras-hub (~15 s)
def test_export_cli_classifier_preset_from_a_converted_run_layout(tmp_path, capsys):
    """A run as `care_tf.convert --linear` writes it: backbone.keras + classifier.keras."""
    from care_tf.export.__main__ import main
    from care_tf.models.backbone import feature_extractor

    run = tmp_path / "converted"
    run.mkdir()
    backbone = ResNetBackbone(depth=18, stem="imagenet", image_shape=(32, 32, 3))
    _randomise_bn(backbone)
    head = make_linear_head(3, seed=1, name="linear_head")
    head.build((None, 512))
    _randomise_bn(head, seed=2)
    classifier = LinearClassifier(backbone, head, name="classifier")
    classifier(np.zeros((1, 32, 32, 3), "float32"))
    classifier.save(run / "classifier.keras")
    feature_extractor(backbone).save(run / "backbone.keras")
    args = ["--model_dir", str(run), "--out", str(tmp_path / "out"), "--format", "keras_hub"]
    assert main([*args, "--classifier"]) == 0
    printed = capsys.readouterr().out
    assert "ok   logits" in printed and "FAIL" not in printed
    preset = tmp_path / "out" / "keras_hub"
    task = json.loads((preset / "task.json").read_text())
    assert task["class_name"] == "ResNetImageClassifier"
    assert task["config"]["num_classes"] == 3


def test_sources_run_directory_and_keras_file(tmp_path):
    run = _run_dir(tmp_path, "run", stem="imagenet")
    ours = keras.saving.load_model(run / "backbone.keras")
    x = np.random.default_rng(5).normal(size=(1, 32, 32, 3)).astype("float32")
    expected = np.asarray(ours.layers[-1](x)["res5"])
    for source in (run, str(run / "backbone.keras")):
        np.testing.assert_allclose(np.asarray(hub_backbone(source)(x)), expected, atol=1e-5)
    hub = hub_backbone(run, image_shape=(32, 32, 3))
    assert tuple(hub.input_shape) == (None, 32, 32, 3)
    # A backbone.keras of an earlier care_tf (its own layers inside) transfers as well.
    from care_tf.models.backbone import feature_extractor
    from care_tf.transfer.keras_hub_bridge import care_resnet

    resnet = care_resnet(run)  # rebuilt from the plain copy: care_tf's own layers
    assert isinstance(resnet, ResNetBackbone)
    old = tmp_path / "old.keras"
    feature_extractor(resnet).save(old)
    np.testing.assert_allclose(np.asarray(hub_backbone(str(old))(x)), expected, atol=1e-5)


def test_export_cli_keras_hub_refuses_tflite_options(tmp_path, capsys):
    from care_tf.export.__main__ import main

    args = ["--model_dir", str(tmp_path), "--out", str(tmp_path / "o"), "--format", "keras_hub"]
    assert main([*args, "--quantize", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--quantize" in err[0]
