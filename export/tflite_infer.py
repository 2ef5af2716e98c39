"""Embed images with an exported CARE TFLite model (float32, float16, dynamic or int8).

    python export/tflite_infer.py exported/tflite/care/1/care_int8.tflite cat.jpg dog.png

The model's input contract (also in its NAME_<q>.json, `input_contract`): a batch
(B >= 1, S, S, 3) of RGB pixels 0..255, already resized and centre-cropped to the
model's S. The TFLite file itself checks none of it (other sizes, 1 channel, rank-3
input and NaN run and give wrong embeddings; 4 channels or B = 0 fail inside the
runtime with "XNNPack delegate failed to reshape"): `check_pixels` does, and
`embed` / `embed_pixels` call it before the model.

Preprocessing is done here with Pillow, as an app would: resize the shorter side
to image_size * 256 / 224, rounded (bilinear), centre-crop image_size, RGB. The model
normalises internally. It matches the SavedModel's in-graph resize closely but
not bit for bit (Pillow's and TensorFlow's antialiasing filters differ).
Runtime: `ai_edge_litert` when installed, else `tf.lite` from TensorFlow.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

# As the SavedModel's defaults (care_tf.export.preprocess.SizeLimits).
MAX_PIXELS = 50_000_000
MAX_ASPECT_RATIO = 100.0


def load_interpreter(path: str):
    """A LiteRT interpreter for `path` (ai_edge_litert, else tf.lite)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import warnings

        import tensorflow as tf

        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=path)


def eval_crop(path: str, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """(size, size, 3) uint8: shorter side to size*256/224, centre crop, RGB.

    Raises ValueError, before decoding, for an image over `max_pixels` (width x height
    from its header) or with an aspect ratio over MAX_ASPECT_RATIO.
    """
    from PIL import Image

    with Image.open(path) as image:
        w, h = image.size  # from the header: nothing decoded yet
        if w * h > max_pixels or max(w, h) > MAX_ASPECT_RATIO * max(min(w, h), 1) or not w * h:
            raise ValueError(
                f"{path}: {w}x{h} image refused: at most {max_pixels} pixels (--max_pixels) "
                f"and an aspect ratio of at most {MAX_ASPECT_RATIO:g}."
            )
        image = image.convert("RGB")
        short = int(size * 256 / 224 + 0.5)
        w, h = image.size
        scale = short / min(w, h)
        new = (max(short, round(w * scale)), max(short, round(h * scale)))
        image = image.resize(new, Image.BILINEAR)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        return np.asarray(image.crop((left, top, left + size, top + size)))


def to_input(pixels: np.ndarray, detail: dict) -> np.ndarray:
    """uint8 pixels -> the model's input: float32 0..255, or quantised for int8 models."""
    scale, zero = detail["quantization"]
    if np.issubdtype(detail["dtype"], np.integer) and scale:
        info = np.iinfo(detail["dtype"])
        q = np.round(pixels.astype(np.float32) / scale + zero)
        return np.clip(q, info.min, info.max).astype(detail["dtype"])
    return pixels.astype(np.float32)


def check_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """`pixels` as (B, size, size, 3), or ValueError saying what the model expects."""
    pixels = np.asarray(pixels)
    expected = (
        f"the model takes a batch (B, {size}, {size}, 3) of RGB pixels 0..255, already "
        f"resized and centre-cropped to {size}x{size} (see eval_crop)"
    )
    if pixels.ndim != 4:
        hint = " (add a batch axis: pixels[None])" if pixels.ndim == 3 else ""
        raise ValueError(f"{expected}; got shape {pixels.shape}{hint}.")
    if pixels.shape[1:3] != (size, size):
        raise ValueError(f"{expected}; got {pixels.shape[1]}x{pixels.shape[2]} images.")
    if pixels.shape[3] != 3:
        hint = " (repeat a grayscale channel 3 times)" if pixels.shape[3] == 1 else ""
        raise ValueError(f"{expected}; got {pixels.shape[3]} channels{hint}.")
    if pixels.shape[0] < 1:
        raise ValueError(f"{expected}; got an empty batch.")
    if pixels.dtype.kind not in "uif":  # unsigned, signed, float
        raise ValueError(f"{expected}; got {pixels.dtype} values.")
    if np.issubdtype(pixels.dtype, np.floating) and not np.all(np.isfinite(pixels)):
        raise ValueError(f"{expected}; got NaN or Inf values.")
    low, high = pixels.min(), pixels.max()
    if low < 0 or high > 255:
        raise ValueError(
            f"{expected}; got values from {low:g} to {high:g} (clip them to 0..255; "
            "normalisation is inside the model)."
        )
    return pixels


def embed_pixels(model_path: str, pixels: np.ndarray) -> np.ndarray:
    """(B, C) float32 embeddings of (B, S, S, 3) cropped pixels (checked first)."""
    runner = load_interpreter(model_path).get_signature_runner("serving_default")
    detail = runner.get_input_details()["images"]
    pixels = check_pixels(pixels, int(detail["shape_signature"][1]))
    return runner(images=to_input(pixels, detail))["embedding"]


def embed(model_path: str, image_paths: list[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """(N, C) float32 embeddings of the images, one batch through `serving_default`."""
    runner = load_interpreter(model_path).get_signature_runner("serving_default")
    detail = runner.get_input_details()["images"]
    size = int(detail["shape_signature"][1])
    pixels = np.stack([eval_crop(p, size, max_pixels) for p in image_paths])
    pixels = check_pixels(pixels, size)
    return runner(images=to_input(pixels, detail))["embedding"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .tflite file written by python -m care_tf.export")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--out", help="save the embeddings to this .npy file")
    parser.add_argument(
        "--max_pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"refuse larger images (width x height; default {MAX_PIXELS:,})",
    )
    args = parser.parse_args(argv)
    try:
        embeddings = embed(args.model, args.images, args.max_pixels)
    except (ValueError, OSError) as err:  # PIL's UnidentifiedImageError is an OSError
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, emb in zip(args.images, embeddings, strict=True):
        print(f"{path}: |e|={np.linalg.norm(emb):.4f} e[:4]={np.round(emb[:4], 4).tolist()}")
    if args.out:
        np.save(args.out, embeddings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
