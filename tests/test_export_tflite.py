"""TFLite export: float32 parity, full-integer int8 on real images, signature runners."""

import json
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf

from care_tf.export import __main__ as cli
from care_tf.export import calibration, preprocess
from care_tf.export.testing import shared_tiny_run, write_image_folder
from care_tf.export.verify import cosine, quantize_input


@pytest.fixture(scope="module")
def run(tmp_path_factory, fmnist_small):
    """A tiny run, a calibration folder and held-out real test crops."""
    root = tmp_path_factory.mktemp("tfl")
    images = fmnist_small[0]
    return {
        "run": shared_tiny_run(images[:256]),
        "calibration": write_image_folder(str(root / "calib"), images[256:400]),
        "test": calibration.crops(list(images[400:432]), 32),
        "out": str(root / "out"),
    }


def _runner(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=path)
    assert list(interpreter.get_signature_list()) == ["serving_default"]
    return interpreter.get_signature_runner("serving_default")


def _keras(run, pixels):
    from care_tf.model_dir import load_feature_model

    backbone = load_feature_model(run["run"])
    return backbone(preprocess.normalize(pixels), training=False)["pooled"].numpy()


def test_float32_matches_keras(run):
    argv = ["--model_dir", run["run"], "--out", run["out"], "--format", "tflite"]
    assert cli.main(argv) == 0
    path = os.path.join(run["out"], "tflite", "care", "1", "care_float32.tflite")
    runner = _runner(path)
    detail = runner.get_input_details()["images"]
    assert detail["dtype"] == np.float32 and list(detail["shape_signature"]) == [-1, 32, 32, 3]
    got = runner(images=run["test"].astype(np.float32))["embedding"]
    want = _keras(run, run["test"])
    assert got.shape == (32, 64)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    with open(path[: -len(".tflite")] + ".json") as f:
        meta = json.load(f)
    assert meta["quantize"] == "float32" and meta["bytes"] == os.path.getsize(path)
    contract = meta["input_contract"]
    assert contract["shape"] == ["B >= 1", 32, 32, 3] and contract["dtype"] == "float32"
    assert "0..255" in contract["values"] and "tflite_infer" in contract["checked_by"]
    _check_example_script(path, run)


def _check_example_script(path, run):
    """export/tflite_infer.py (Pillow preprocessing) gives about the Keras embedding."""
    import importlib.util

    from PIL import Image

    script = os.path.join(os.path.dirname(__file__), "..", "export", "tflite_infer.py")
    spec = importlib.util.spec_from_file_location("tflite_infer", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = sorted(os.listdir(run["calibration"]))[:4]
    files = [os.path.join(run["calibration"], f) for f in files]
    got = module.embed(path, files)
    raw = [np.asarray(Image.open(f)) for f in files]
    want = _keras(run, calibration.crops(raw, 32))
    assert cosine(got, want)[1] >= 0.99
    # The helper checks the contract the flatbuffer does not (the raw runner fails with
    # "XNNPack delegate failed to reshape" on 4 channels or B = 0, and runs the others).
    good = run["test"][:2]
    for bad, words in [
        (np.zeros((1, 32, 32, 4), np.uint8), "got 4 channels"),
        (good[:0], "empty batch"),
        (good[0], "add a batch axis"),
        (good[:, :16, :16], "got 16x16 images"),
        (good.astype(np.float32) * 1e6, "got values from 0 to"),
        (-good.astype(np.float32), "clip them to 0..255"),
        (good.astype(bool), "got bool values"),
    ]:
        with pytest.raises(ValueError, match=words) as error:
            module.embed_pixels(path, bad)
        assert "(B, 32, 32, 3)" in str(error.value)
    np.testing.assert_allclose(
        module.embed_pixels(path, good), _keras(run, good), rtol=1e-4, atol=1e-4
    )


def test_int8_on_real_images(run):
    argv = ["--model_dir", run["run"], "--out", run["out"], "--format", "tflite"]
    argv += ["--quantize", "int8", "--calibration", run["calibration"]]
    argv += ["--calibration_samples", "96"]
    assert cli.main(argv) == 0
    path = os.path.join(run["out"], "tflite", "care", "1", "care_int8.tflite")
    runner = _runner(path)
    detail = runner.get_input_details()["images"]
    assert detail["dtype"] == np.uint8  # full integer: quantised pixels in
    assert runner.get_output_details()["embedding"]["dtype"] == np.float32
    got = runner(images=quantize_input(run["test"], detail))["embedding"]
    mean, _ = cosine(got, _keras(run, run["test"]))
    assert mean >= 0.98
    with open(path[: -len(".tflite")] + ".json") as f:
        meta = json.load(f)
    assert meta["calibration_images"] == 96
    # Integer kernels throughout: no float conv left in the graph.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=path)
    conv_types = {
        d["dtype"]
        for d in interpreter.get_tensor_details()
        if "conv" in d["name"].lower() and len(d["shape"]) == 4
    }
    assert conv_types and conv_types <= {np.int8, np.int32, np.uint8}, conv_types


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["float16", "dynamic"])
def test_float16_and_dynamic(run, quantize):
    argv = ["--model_dir", run["run"], "--out", run["out"], "--format", "tflite"]
    argv += ["--quantize", quantize, "--calibration", run["calibration"]]
    assert cli.main(argv) == 0
    path = os.path.join(run["out"], "tflite", "care", "1", f"care_{quantize}.tflite")
    got = _runner(path)(images=run["test"].astype(np.float32))["embedding"]
    assert cosine(got, _keras(run, run["test"]))[0] >= 0.98
