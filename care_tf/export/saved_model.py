"""SavedModel for TF Serving: raw-pixel and encoded-image signatures, metadata assets.

Signatures (all return float32 `embedding` (B, C5), the pooled res5 features; each
refuses, with InvalidArgument naming the limit or the expected shape, an image over
`max_image_pixels` or `max_aspect_ratio` (checked from the header before decoding),
an empty batch or a wrong rank, and NaN/Inf pixels or float pixels outside 0..255):
- `serving_default`: `images` float32 (B, H, W, 1|3) pixels in 0..255, any size;
- `serve_uint8`: `images` uint8 (B, H, W, 1|3), any size;
- `serve_image_bytes`: `image_bytes` string (B,) encoded JPEG/PNG/GIF/BMP.
With `feature_maps=True` the two pixel signatures also return `res4` and `res5`.
"""

from __future__ import annotations

import json
import os
import tempfile

import tensorflow as tf

from care_tf.export import preprocess
from care_tf.export.source import ExportSource, metadata, tf_variables

SIGNATURES = ("serving_default", "serve_uint8", "serve_image_bytes")
METADATA_FILE = "care_export.json"
CONFIG_FILE = "config.yaml"
WARMUP_FILE = "tf_serving_warmup_requests"


def pixel_spec(dtype: tf.DType) -> tf.TensorSpec:
    """Pixels (B, H, W, 1|3), declared of unknown rank so that the in-graph check
    (`preprocess.check_batch`) is not optimised away and can name the expected shape."""
    return tf.TensorSpec(None, dtype, name="images")


# (B,) encoded images; unknown rank for the same reason.
BYTES_SPEC = tf.TensorSpec(None, tf.string, name="image_bytes")


def build_module(source: ExportSource, feature_maps: bool = False) -> tf.Module:
    """A tf.Module holding the backbone and the three serving functions.

    Every function checks its input first (`preprocess.check_pixels` /
    `preprocess.decode_image`): size limits `source.limits`, finite pixels.
    """
    backbone = source.backbone
    size = source.image_size
    limits = source.limits or preprocess.DEFAULT_LIMITS

    def run(images: tf.Tensor, with_maps: bool) -> dict[str, tf.Tensor]:
        out = backbone(images, training=False)
        result = {"embedding": tf.identity(out["pooled"], name="embedding")}
        if with_maps:
            result["res4"] = out["res4"]
            result["res5"] = out["res5"]
        return result

    module = tf.Module(name="care_backbone")
    module.backbone_variables = tf_variables(backbone)
    add_serving_functions(
        module,
        size,
        limits,
        run_pixels=lambda images: run(images, feature_maps),
        run_bytes=lambda images: run(images, False),
    )
    return module


def add_serving_functions(module: tf.Module, image_size: int, limits, run_pixels, run_bytes):
    """Attaches `serve_float`, `serve_uint8` and `serve_image_bytes` to `module`.

    Each checks and preprocesses its input (`preprocess`: size `limits`, finite
    pixels, resize and crop to `image_size`, normalise) and then calls `run_pixels`
    (pixel inputs) or `run_bytes` (decoded image bytes) on the (B, S, S, 3) batch.
    """

    @tf.function(input_signature=[pixel_spec(tf.float32)])
    def serve_float(images):
        return run_pixels(preprocess.preprocess(images, image_size, limits))

    @tf.function(input_signature=[pixel_spec(tf.uint8)])
    def serve_uint8(images):
        return run_pixels(preprocess.preprocess(images, image_size, limits))

    @tf.function(input_signature=[BYTES_SPEC])
    def serve_image_bytes(image_bytes):
        return run_bytes(preprocess.preprocess_bytes(image_bytes, image_size, limits))

    module.serve_float = serve_float
    module.serve_uint8 = serve_uint8
    module.serve_image_bytes = serve_image_bytes


def write_saved_model(
    source: ExportSource, path: str, feature_maps: bool = False, extra: dict | None = None
) -> dict:
    """Writes the SavedModel to `path` (a version directory) and returns its metadata.

    Files: saved_model.pb, variables/, assets/{care_export.json, config.yaml}
    (preprocessing constants, training step, care_tf version, resolved config),
    assets.extra/tf_serving_warmup_requests (one request per signature).
    """
    module = build_module(source, feature_maps)
    meta = metadata(
        source,
        format="saved_model",
        signatures={
            "serving_default": {
                "inputs": {"images": "float32 (B >= 1, H, W, 1|3) pixels 0..255"},
                "outputs": _outputs(source, feature_maps),
            },
            "serve_uint8": {
                "inputs": {"images": "uint8 (B >= 1, H, W, 1|3)"},
                "outputs": _outputs(source, feature_maps),
            },
            "serve_image_bytes": {
                "inputs": {"image_bytes": "string (B >= 1,) encoded JPEG/PNG/GIF/BMP"},
                "outputs": _outputs(source, False),
            },
        },
        **(extra or {}),
    )
    import yaml

    assets = {
        "metadata_file": (METADATA_FILE, json.dumps(meta, indent=2)),
        "config_file": (CONFIG_FILE, yaml.safe_dump(source.config, sort_keys=False)),
    }
    save_serving_module(module, path, source.image_size, assets)
    return meta


def save_serving_module(module: tf.Module, path: str, image_size: int, assets: dict) -> None:
    """Saves `module` (with `add_serving_functions`' three signatures) to `path`.

    Args:
        assets: `{attribute: (file name, text)}`: each text is written as a file and
            attached to the module as a `tf.saved_model.Asset` (it lands in `assets/`).
    Also writes the TF Serving warm-up requests (`assets.extra/`).
    """
    with tempfile.TemporaryDirectory() as tmp:
        for attribute, (name, text) in assets.items():
            file = os.path.join(tmp, name)
            with open(file, "w") as f:
                f.write(text)
            setattr(module, attribute, tf.saved_model.Asset(file))
        tf.saved_model.save(
            module,
            path,
            signatures={
                "serving_default": module.serve_float,
                "serve_uint8": module.serve_uint8,
                "serve_image_bytes": module.serve_image_bytes,
            },
        )
    write_warmup(path, image_size)


def _outputs(source: ExportSource, feature_maps: bool) -> dict[str, str]:
    shapes = source.output_shapes
    names = ["embedding", "res4", "res5"] if feature_maps else ["embedding"]
    return {n: f"float32 (B, {', '.join(str(d) for d in shapes[n])})" for n in names}


def write_warmup(path: str, image_size: int) -> bool:
    """Writes TF Serving warmup requests (assets.extra/); False without tensorflow-serving-api."""
    try:
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError:
        return False
    from care_tf.export.predict_requests import predict_request, warmup_image

    pixels = warmup_image(image_size)
    encoded = tf.io.encode_png(pixels[0]).numpy()
    requests = [
        predict_request("serving_default", images=pixels.astype("float32")),
        predict_request("serve_uint8", images=pixels),
        predict_request("serve_image_bytes", image_bytes=[encoded]),
    ]
    extra = os.path.join(path, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return True
