"""TFLite (LiteRT) exports: float32, float16, dynamic-range and full-integer int8.

The TFLite model takes pixels already resized and centre-cropped to
`image_size` (a mobile app does that with its image library, see
export/tflite_infer.py); normalisation is inside the model. One signature,
`serving_default`: input `images` (B, S, S, 3) float32 pixels in 0..255 (uint8
quantised pixels for int8, see the input's quantisation parameters), output
`embedding` (B, C5) float32 (and `res4`/`res5` with feature maps).

The flatbuffer does not check its input (see `input_contract`, written into the
model's metadata JSON); export/tflite_infer.py does.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable

import numpy as np
import tensorflow as tf

from care_tf.export import preprocess
from care_tf.export.source import ExportError, ExportSource, tf_variables

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
SIGNATURE = "serving_default"


def file_name(name: str, quantize: str) -> str:
    """`NAME_float32.tflite`, `NAME_float16.tflite`, `NAME_dynamic.tflite`, `NAME_int8.tflite`."""
    return f"{name}_{'float32' if quantize == 'none' else quantize}.tflite"


def input_contract(image_size: int, quantize: str) -> dict:
    """What the TFLite model's `images` input must be (written into its metadata JSON).

    The flatbuffer checks none of it: export/tflite_infer.py's `check_pixels` does.
    """
    return {
        "shape": ["B >= 1", image_size, image_size, 3],
        "dtype": "uint8 (quantised with the input's scale and zero point)"
        if quantize == "int8"
        else "float32",
        "values": "finite RGB pixels 0..255 (not 0..1, not normalised)",
        "preprocessing": f"resize the shorter side to {preprocess.resize_size(image_size)} "
        f"(bilinear), centre-crop {image_size}x{image_size}; normalisation is in the model",
        "checked_by": "export/tflite_infer.py check_pixels (embed, embed_pixels)",
        "unchecked_by_the_model": "the TFLite runtime accepts other sizes, 1 channel, a "
        "rank-3 image and NaN, and returns wrong embeddings; 4 channels or an empty batch "
        "fail with 'XNNPack delegate failed to reshape'",
    }


def _module(source: ExportSource, feature_maps: bool) -> tf.Module:
    backbone = source.backbone
    size = source.image_size
    spec = tf.TensorSpec([None, size, size, 3], tf.float32, name="images")

    @tf.function(input_signature=[spec])
    def serve(images):
        out = backbone(preprocess.normalize(images), training=False)
        result = {"embedding": out["pooled"]}
        if feature_maps:
            result["res4"] = out["res4"]
            result["res5"] = out["res5"]
        return result

    module = tf.Module()
    module.backbone_variables = tf_variables(backbone)
    module.serve = serve
    return module


def convert(
    source: ExportSource,
    quantize: str = "none",
    calibration: np.ndarray | None = None,
    feature_maps: bool = False,
) -> bytes:
    """Converts the backbone to a TFLite flatbuffer.

    Args:
        source: the checked backbone.
        quantize: str. "none" (float32), "float16" (float16 weights),
            "dynamic" (int8 weights, dynamic-range activations) or "int8"
            (full integer: int8 weights and activations, uint8 input).
        calibration: (N, S, S, 3) uint8/float pixels (already cropped), the
            representative dataset; required for "int8".
        feature_maps: bool. Also output res4 and res5.
    """
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"--quantize must be one of {QUANTIZATIONS}; got {quantize!r}.")
    with tempfile.TemporaryDirectory() as tmp:
        module = _module(source, feature_maps)
        tf.saved_model.save(module, tmp, signatures={SIGNATURE: module.serve})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SIGNATURE])
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif quantize == "int8":
            if calibration is None or len(calibration) == 0:
                raise ExportError("--quantize int8 needs calibration images (--calibration).")
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: _representative(calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.float32
        try:
            with warnings.catch_warnings():  # calibration uses the deprecated tf.lite.Interpreter
                warnings.simplefilter("ignore", UserWarning)
                return converter.convert()
        except Exception as err:  # the converter raises ConverterError and plain Exceptions
            raise ExportError(f"TFLite conversion ({quantize}) failed: {err}") from err


def _representative(images: np.ndarray) -> Iterable[dict]:
    for image in images:
        yield {"images": image[None].astype(np.float32)}


def write_tflite(
    source: ExportSource,
    path: str,
    quantize: str = "none",
    calibration: np.ndarray | None = None,
    feature_maps: bool = False,
) -> int:
    """Converts and writes `path`; returns its size in bytes."""
    flatbuffer = convert(source, quantize, calibration, feature_maps)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return len(flatbuffer)
