"""Real images for int8 calibration and for verifying quantised exports.

`--calibration SPEC` takes a data spec of `care_tf.data.load_source`
("fashion_mnist", "folder:/path", "tfds:NAME", "tfrecord:/glob") or a plain
folder of image files (read with PIL).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from care_tf.export import preprocess
from care_tf.export.source import ExportError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _folder_images(folder: str, count: int) -> list[np.ndarray]:
    """Up to `count` RGB uint8 images from a folder tree (sorted, recursive), via PIL."""
    from PIL import Image

    paths = []
    for root, _, files in sorted(os.walk(folder)):
        paths += [os.path.join(root, f) for f in sorted(files)]
    paths = [p for p in paths if p.lower().endswith(IMAGE_EXTENSIONS)]
    images = []
    for p in paths:
        if len(images) >= count:
            break
        try:
            with Image.open(p) as im:
                images.append(np.asarray(im.convert("RGB")))
        except OSError as err:
            print(f"warning: skipping unreadable calibration image {p}: {err}")
    return images


def _spec_images(spec: str, count: int, split: str) -> list[np.ndarray]:
    """Up to `count` images of a care_tf.data source spec."""
    from care_tf.data.sources import load_source  # the data pipeline's one entry point

    try:
        source = load_source(spec, split)
    except (ValueError, OSError) as err:  # OSError: e.g. a folder: spec that does not exist
        # The first line says it (TFDS appends its whole catalogue to an unknown name).
        reason = next((line for line in str(err).splitlines() if line.strip()), str(err))
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise ExportError(f"--calibration {spec!r}: {reason}") from None
    dataset = source.as_dataset().take(count)
    return [example["image"].numpy() for example in dataset]


def load_images(spec: str, count: int, split: str = "train") -> list[np.ndarray]:
    """Up to `count` uint8 (H, W, 3) images named by `spec` (a data spec or a folder)."""
    if os.path.isdir(spec):
        images = _folder_images(spec, count)
    elif spec.startswith("folder:") and os.path.isdir(spec[len("folder:") :]):
        try:
            images = _spec_images(spec, count, split)
        except ImportError:
            images = _folder_images(spec[len("folder:") :], count)
    else:
        try:
            images = _spec_images(spec, count, split)
        except ImportError as err:
            raise ExportError(
                f"--calibration {spec!r} needs care_tf.data ({err}); pass a folder of images."
            ) from None
    if not images:
        raise ExportError(f"--calibration {spec!r}: no images found.")
    return images


def crops(images: list[np.ndarray], image_size: int) -> np.ndarray:
    """Evaluation crops of images of any sizes: (N, S, S, 3) uint8 (rounded pixels)."""
    out = []
    for image in images:
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., None]
        pixels = preprocess.crop_pixels(tf.constant(image[None]), image_size)[0]
        out.append(np.clip(np.round(pixels.numpy()), 0, 255).astype(np.uint8))
    return np.stack(out)


def calibration_crops(spec: str, image_size: int, count: int) -> np.ndarray:
    """(N <= count, S, S, 3) uint8 crops of the calibration images."""
    return crops(load_images(spec, count), image_size)
