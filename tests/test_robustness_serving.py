"""Serving refuses what would exhaust memory or poison the answer, before decoding or
resizing: images over the pixel / aspect-ratio limits (read from JPEG/PNG/GIF/BMP headers),
NaN/Inf pixels; the TFLite helper says what input it expects."""

import importlib.util
import io
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from care_tf import ResNetBackbone
from care_tf.export import preprocess, saved_model
from care_tf.export.source import ExportSource

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMITS = preprocess.SizeLimits(max_pixels=100 * 100, max_aspect_ratio=4)


@pytest.fixture(scope="module")
def module():
    backbone = ResNetBackbone(depth=18, base_channels=8, stem="cifar", image_shape=(32, 32, 3))
    source = ExportSource(backbone, {}, 32, 0, "tiny", limits=LIMITS)
    return saved_model.build_module(source)


def _encode(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def _png_header(width, height):
    """A PNG whose IHDR claims width x height (the data after it is irrelevant: the
    header check must refuse it before the decoder reads any)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def _refused(fn, *args):
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        fn(*args)
    return error.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP"])
def test_header_size_matches_decoder(fmt):
    array = np.random.default_rng(0).integers(0, 256, (37, 91, 3), np.uint8)
    data = tf.constant(_encode(array, fmt))
    height, width = preprocess._header_size(data)  # noqa: SLF001
    decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
    assert (int(height), int(width)) == tuple(decoded.shape[:2]) == (37, 91)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP"])
def test_encoded_images_over_the_limits_are_refused(module, fmt):
    ok = np.full((60, 80, 3), 128, np.uint8)
    out = module.serve_image_bytes(tf.constant([_encode(ok, fmt)]))
    assert out["embedding"].shape == (1, 64)
    big = np.full((120, 120, 3), 128, np.uint8)  # 14,400 px > 10,000
    message = _refused(module.serve_image_bytes, tf.constant([_encode(big, fmt)]))
    assert "image_bytes: image is too large" in message and "10000 pixels" in message
    assert "--max_image_pixels" in message and "[120] [120]" in message
    thin = np.full((10, 50, 3), 128, np.uint8)  # aspect 5 > 4
    message = _refused(module.serve_image_bytes, tf.constant([_encode(thin, fmt)]))
    assert "too elongated" in message and "--max_aspect_ratio" in message


def test_huge_png_refused_from_its_header(module):
    """20000 x 20000 would be a 4.8 GB float tensor: refused before decoding."""
    message = _refused(module.serve_image_bytes, tf.constant([_png_header(20000, 20000)]))
    assert "too large" in message and "[20000] [20000]" in message


def test_pixel_inputs_over_the_limits_are_refused(module):
    message = _refused(module.serve_uint8, tf.zeros([1, 1, 2000, 3], tf.uint8))
    assert "images: image is too elongated" in message
    message = _refused(module.serve_float, tf.zeros([1, 101, 100, 3], tf.float32))
    assert "images: image is too large" in message
    message = _refused(module.serve_float, tf.zeros([1, 0, 5, 3], tf.float32))
    assert "image is empty" in message
    assert module.serve_float(tf.zeros([2, 40, 50, 1]))["embedding"].shape == (2, 64)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused(module, bad):
    images = np.full((1, 40, 40, 3), 100.0, np.float32)
    images[0, 3, 4, 1] = bad
    message = _refused(module.serve_float, tf.constant(images))
    assert "images must be finite" in message


@pytest.mark.parametrize(
    "signature, value, words",
    [
        ("serve_float", tf.zeros([0, 40, 40, 3]), "(B, H, W, C)"),
        ("serve_float", tf.zeros([40, 40]), "(B, H, W, C)"),
        ("serve_float", tf.zeros([]), "(B, H, W, C)"),
        ("serve_float", tf.zeros([1, 1, 40, 40, 3]), "(B, H, W, C)"),
        ("serve_uint8", tf.zeros([0, 40, 40, 3], tf.uint8), "(B, H, W, C)"),
        ("serve_image_bytes", tf.constant([], tf.string), "(B,) of encoded images"),
        ("serve_image_bytes", tf.constant([[b"x"]]), "(B,) of encoded images"),
        ("serve_image_bytes", tf.constant(b"x"), "(B,) of encoded images"),
    ],
)
def test_wrong_batch_shapes_are_refused_naming_the_shape(module, signature, value, words):
    message = _refused(getattr(module, signature), value)
    assert words in message
    assert ("empty batch" in message) == (value.shape.rank > 0 and value.shape[0] == 0)


def test_saved_signatures_check_the_rank(tmp_path, module):
    """The check survives saving (a declared rank would let Grappler fold it away)."""
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.serve_float})
    serve = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    assert "(B, H, W, C)" in _refused(lambda x: serve(images=x), tf.zeros([40, 40]))
    assert serve(images=tf.zeros([1, 40, 40, 3]))["embedding"].shape == (1, 64)
    # The TF1 session loader, as TF Serving runs the graph.
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.load(sess, ["serve"], str(tmp_path))
        sig = meta.signature_def["serving_default"]
        fetch, feed = sig.outputs["embedding"].name, sig.inputs["images"].name
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(B, H, W, C\)"):
            sess.run(fetch, {feed: np.zeros([40, 40], np.float32)})
        with pytest.raises(tf.errors.InvalidArgumentError, match="float pixels in 0..255"):
            sess.run(fetch, {feed: np.full([1, 40, 40, 3], 1e6, np.float32)})
        assert sess.run(fetch, {feed: np.zeros([2, 40, 40, 3], np.float32)}).shape == (2, 64)


@pytest.mark.parametrize("scale, offset", [(1e6, 0.0), (1.0, -255.0), (0.0, 1e30), (1.0, 0.5)])
def test_float_pixels_outside_0_255_are_refused(module, scale, offset):
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 40, 40, 3)).astype(np.float32)
    message = _refused(module.serve_float, tf.constant(pixels * scale + offset))
    assert "images must be float pixels in 0..255" in message


def test_pixels_at_the_range_ends_and_0_1_pixels_are_served(module):
    """0 and 255 are valid pixels; 0..1 pixels cannot be told from a dark image (served;
    docs/export.md warns about it)."""
    ends = np.zeros((1, 40, 40, 3), np.float32)
    ends[0, :20] = 255.0
    assert module.serve_float(tf.constant(ends))["embedding"].shape == (1, 64)
    assert module.serve_float(tf.constant(ends / 255.0))["embedding"].shape == (1, 64)


def test_limits_are_validated_and_recorded():
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        preprocess.SizeLimits(max_pixels=10, max_aspect_ratio=0.5)
    constants = preprocess.constants(32, LIMITS)
    assert constants["max_image_pixels"] == 10000 and constants["max_aspect_ratio"] == 4


def _tflite_infer():
    spec = importlib.util.spec_from_file_location(
        "tflite_infer", os.path.join(ROOT, "export", "tflite_infer.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "shape, dtype, message",
    [
        ((32, 32, 3), np.uint8, "add a batch axis"),
        ((1, 64, 64, 3), np.uint8, "got 64x64 images"),
        ((1, 8, 8, 3), np.uint8, "got 8x8 images"),
        ((1, 32, 32, 1), np.uint8, "repeat a grayscale channel"),
        ((0, 32, 32, 3), np.uint8, "empty batch"),
    ],
)
def test_tflite_helper_says_what_it_expects(shape, dtype, message):
    infer = _tflite_infer()
    with pytest.raises(ValueError, match=message) as error:
        infer.check_pixels(np.zeros(shape, dtype), 32)
    assert "(B, 32, 32, 3)" in str(error.value)
    nan = np.zeros((1, 32, 32, 3), np.float32)
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        infer.check_pixels(nan, 32)
    assert infer.check_pixels(np.zeros((2, 32, 32, 3), np.uint8), 32).shape == (2, 32, 32, 3)


def test_tflite_helper_refuses_huge_image_from_header(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((2, 300, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match="2 image refused|300x2 image refused"):
        _tflite_infer().eval_crop(str(path), 32)
