"""SavedModel export: signatures, parity with Keras in a fresh process, bytes, requests."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from care_tf.export import __main__ as cli
from care_tf.export import preprocess
from care_tf.export.predict_requests import check_request, predict_request
from care_tf.export.testing import shared_tiny_run

SIGNATURES = ("serving_default", "serve_uint8", "serve_image_bytes")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fmnist_small):
    """A tiny run exported as a SavedModel with feature maps, through the CLI."""
    root = tmp_path_factory.mktemp("sm")
    run = shared_tiny_run(fmnist_small[0][:256])
    out = str(root / "out")
    argv = ["--model_dir", run, "--out", out, "--format", "saved_model", "--feature_maps"]
    assert cli.main(argv) == 0
    return {"run": run, "out": out, "path": os.path.join(out, "care", "1")}


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported["path"])


@pytest.fixture(scope="module")
def backbone(exported):
    from care_tf.model_dir import load_feature_model

    return load_feature_model(exported["run"])


def _images(n=3, h=41, w=37, c=3):
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _keras_embedding(backbone, images):
    return backbone(preprocess.preprocess(images, 32), training=False)["pooled"].numpy()


def test_layout_and_assets(exported):
    path = exported["path"]
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert os.path.isdir(os.path.join(path, "variables"))
    with open(os.path.join(path, "assets", "care_export.json")) as f:
        meta = json.load(f)
    assert meta["training_step"] == 321 and meta["train_state"] == {"step": 321}
    assert meta["care_tf_version"]
    assert meta["preprocessing"]["image_size"] == 32
    assert meta["preprocessing"]["resize_size"] == 37
    assert meta["backbone"]["outputs"]["embedding"] == [64]
    with open(os.path.join(path, "assets", "config.yaml")) as f:
        assert "resnet18" in f.read()
    warmup = os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
    assert len(list(tf.data.TFRecordDataset(warmup))) == 3
    assert not [d for d in os.listdir(os.path.dirname(path)) if d.startswith(".tmp")]


def test_saved_model_cli_lists_signatures(exported):
    cli_path = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run(
        [cli_path, "show", "--dir", exported["path"], "--all"],
        capture_output=True,
        text=True,
        check=True,
    )
    for name in SIGNATURES:
        assert f"signature_def['{name}']" in proc.stdout
    assert "image_bytes" in proc.stdout and "DT_STRING" in proc.stdout
    assert "DT_UINT8" in proc.stdout and "embedding" in proc.stdout


def test_fresh_process_matches_keras(exported, backbone, tmp_path):
    """tf.saved_model.load in a new interpreter, without care_tf imported."""
    images = _images()
    np.save(tmp_path / "x.npy", images)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({exported['path']!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "out = m.signatures['serving_default'](images=tf.constant(x, tf.float32))\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, out['embedding'].numpy())\n"
        "assert 'care_tf' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    got = np.load(tmp_path / "y.npy")
    want = _keras_embedding(backbone, images)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_signatures_agree(loaded, backbone):
    images = _images()
    want = _keras_embedding(backbone, images)
    scale = np.abs(want).max()
    f32 = loaded.signatures["serving_default"](images=tf.constant(images, tf.float32))
    u8 = loaded.signatures["serve_uint8"](images=tf.constant(images))
    assert sorted(f32) == ["embedding", "res4", "res5"]
    assert f32["res4"].shape[1:] == (8, 8, 32) and f32["res5"].shape[1:] == (4, 4, 64)
    for out in (f32, u8):
        assert np.abs(out["embedding"].numpy() - want).max() <= 1e-5 * scale
    # Any batch size and image size; one image is also served.
    one = loaded.signatures["serve_uint8"](images=tf.constant(_images(1, 100, 60)))
    assert one["embedding"].shape == (1, 64)


def test_grayscale_is_made_rgb(loaded):
    gray = _images(2, 28, 28, 1)
    rgb = np.repeat(gray, 3, axis=-1)
    a = loaded.signatures["serve_uint8"](images=tf.constant(gray))["embedding"]
    b = loaded.signatures["serve_uint8"](images=tf.constant(rgb))["embedding"]
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="1 .grayscale. or 3"):
        loaded.signatures["serve_uint8"](images=tf.constant(_images(1, 32, 32, 2)))


def test_bytes_signature_equals_pixels_for_png(loaded, fmnist_small):
    images = np.repeat(fmnist_small[0][:3, :, :, None], 3, axis=-1)
    images[1] = _images(1, 28, 28)[0]
    png = tf.stack([tf.io.encode_png(image) for image in images])
    from_bytes = loaded.signatures["serve_image_bytes"](image_bytes=png)["embedding"]
    from_pixels = loaded.signatures["serve_uint8"](images=tf.constant(images))["embedding"]
    np.testing.assert_allclose(from_bytes.numpy(), from_pixels.numpy(), rtol=1e-5, atol=1e-6)
    # Images of different sizes and a grayscale PNG in one request.
    mixed = [
        tf.io.encode_png(_images(1, 50, 40)[0]),
        tf.io.encode_jpeg(_images(1, 30, 70)[0]),
        tf.io.encode_png(fmnist_small[0][0][:, :, None]),
    ]
    out = loaded.signatures["serve_image_bytes"](image_bytes=tf.stack(mixed))
    assert out["embedding"].shape == (3, 64)


def test_bytes_signature_rejects_garbage(loaded):
    good = tf.io.encode_png(_images(1, 32, 32)[0])
    for bad in (b"not an image at all", b"", b"\x89PNG\r\n\x1a\n truncated"):
        with pytest.raises(tf.errors.InvalidArgumentError) as err:
            loaded.signatures["serve_image_bytes"](image_bytes=tf.stack([good, tf.constant(bad)]))
        assert "image" in str(err.value).lower()
    # The model keeps serving after a bad request.
    ok = loaded.signatures["serve_image_bytes"](image_bytes=tf.stack([good]))
    assert ok["embedding"].shape == (1, 64)


def test_predict_requests_match_signatures(exported):
    from tensorflow.python.tools import saved_model_utils

    meta = saved_model_utils.get_meta_graph_def(exported["path"], "serve")
    sigs = meta.signature_def
    image = _images(2, 40, 40)
    png = tf.io.encode_png(image[0]).numpy()
    requests = {
        "serving_default": predict_request("serving_default", images=image.astype(np.float32)),
        "serve_uint8": predict_request("serve_uint8", images=image),
        "serve_image_bytes": predict_request("serve_image_bytes", image_bytes=[png, png]),
    }
    for name, request in requests.items():
        assert request.model_spec.signature_name == name
        assert check_request(request, sigs[name]) == [], name
        assert set(sigs[name].outputs) >= {"embedding"}
    # The checker does catch malformed requests.
    wrong_dtype = predict_request("serve_uint8", images=image.astype(np.float32))
    assert "dtype" in check_request(wrong_dtype, sigs["serve_uint8"])[0]
    wrong_name = predict_request("serving_default", pixels=image.astype(np.float32))
    assert len(check_request(wrong_name, sigs["serving_default"])) == 2
    wrong_rank = predict_request("serve_image_bytes", image_bytes=[[png]])
    assert "shape" in check_request(wrong_rank, sigs["serve_image_bytes"])[0]


def _client(name):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "export", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"export_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_clients_build_valid_requests(exported, loaded, tmp_path):
    """export/grpc_client.py and rest_client.py requests fit the exported signatures."""
    import base64

    from PIL import Image
    from tensorflow.python.tools import saved_model_utils

    sigs = saved_model_utils.get_meta_graph_def(exported["path"], "serve").signature_def
    files = []
    for i, image in enumerate(_images(2, 45, 38)):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(files[-1])
    grpc_client = _client("grpc_client")
    for pixels in (False, True):
        request = grpc_client.build_request(files, "care", pixels, version=1)
        assert check_request(request, sigs[request.model_spec.signature_name]) == []
    # REST: what TF Serving does with the JSON body (b64 -> bytes) gives the embedding.
    rest = _client("rest_client")
    body = rest.bytes_body(files)
    encoded = [base64.b64decode(row["image_bytes"]["b64"]) for row in body["instances"]]
    out = loaded.signatures[body["signature_name"]](image_bytes=tf.constant(encoded))
    pixels = rest.pixels_body(files)
    want = loaded.signatures[pixels["signature_name"]](
        images=tf.constant(np.asarray(pixels["inputs"]["images"], np.uint8))
    )
    np.testing.assert_allclose(out["embedding"], want["embedding"], rtol=1e-5, atol=1e-6)
    rows = {"predictions": out["embedding"].numpy().tolist()}
    assert rest.parse_response(rows).shape == (2, 64)


def test_serving_crop_is_the_evaluation_crop():
    """The in-graph preprocessing equals the evaluation pipeline's centre crop."""
    from care_tf.data.crop import resize_shorter_and_centre_crop
    from care_tf.data.eval_pipeline import eval_resize

    for shape in ((41, 37, 3), (28, 28, 3), (300, 200, 3)):
        image = _images(1, *shape)[0]
        want = resize_shorter_and_centre_crop(tf.constant(image), 32, eval_resize(32))
        got = preprocess.crop_pixels(tf.constant(image[None]), 32)[0]
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-3)
