"""Robust image decoding in tf.data: every failure names its file (or is skipped and counted)."""

from __future__ import annotations

import sys

import tensorflow as tf

# A JPEG whose last bytes hold no end-of-image marker (FF D9) was cut short; TF's decoder
# silently fills the missing rows with grey, so we check the tail ourselves.
_JPEG_TAIL = 1024


def _jpeg_complete(data: tf.Tensor) -> tf.Tensor:
    """True unless `data` is a JPEG without an FF D9 marker in its last 1 KiB."""
    n = tf.strings.length(data)
    start = tf.maximum(n - _JPEG_TAIL, 0)
    tail = tf.io.decode_raw(tf.strings.substr(data, start, n - start), tf.uint8)
    has_eoi = tf.reduce_any(tf.logical_and(tf.equal(tail[:-1], 0xFF), tf.equal(tail[1:], 0xD9)))
    return tf.logical_or(tf.logical_not(tf.io.is_jpeg(data)), has_eoi)


def decode_rgb(data: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG/PNG/BMP/GIF bytes to uint8 (H, W, 3): gray replicated, alpha dropped,
    CMYK converted, 16-bit scaled to 8-bit, first frame of an animated GIF."""
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _try_decode(name: tf.Tensor, data: tf.Tensor, label: tf.Tensor, read: bool):
    """One-element dataset: (name, image, label, ok) with ok=False when `data` (or the
    file it names, if `read`) is unreadable."""

    def decode(name, data, label):
        if read:
            data = tf.io.read_file(data)
        check = tf.debugging.Assert(_jpeg_complete(data), ["truncated JPEG"])
        with tf.control_dependencies([check]):
            return name, decode_rgb(data), label, tf.constant(True)

    good = tf.data.Dataset.from_tensors((name, data, label)).map(decode).ignore_errors()
    bad = tf.data.Dataset.from_tensors((name, tf.zeros([0, 0, 3], tf.uint8), label, False))
    return good.concatenate(bad).take(1)


def decode_dataset(
    ds: tf.data.Dataset, skip_corrupt: bool = False, read_files: bool = False
) -> tf.data.Dataset:
    """Decodes a dataset of (name, bytes-or-path, label) into {"image", "label"} dicts.

    Args:
        ds: tf.data.Dataset of (name: string, data: string, label: int64) triples.
        skip_corrupt: bool. If True, unreadable images are dropped and each one is
            logged to stderr with its name and the running count; if False, the first
            one raises InvalidArgumentError whose message names it.
        read_files: bool. If True, `data` is a file path read here (read errors then
            count as corrupt images too).

    Returns:
        tf.data.Dataset of {"image": uint8 (H, W, 3), "label": int64}.
    """
    attempt = lambda name, data, label: _try_decode(name, data, label, read_files)  # noqa: E731
    ds = ds.interleave(
        attempt, cycle_length=16, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    if skip_corrupt:

        def count(skipped, element):
            name, image, label, ok = element
            skipped = skipped + tf.cast(tf.logical_not(ok), tf.int64)

            def log_skip():
                tf.print(
                    "care_tf.data: skipped unreadable image",
                    name,
                    "-",
                    skipped,
                    "skipped so far",
                    output_stream=sys.stderr,
                )
                return tf.constant(0, tf.int64)

            logged = tf.cond(ok, lambda: tf.constant(0, tf.int64), log_skip)
            return skipped + logged, element

        ds = ds.scan(tf.constant(0, tf.int64), count).filter(lambda n, i, y, ok: ok)
    else:

        def check(name, image, label, ok):
            assertion = tf.debugging.Assert(
                ok,
                [
                    "care_tf.data: cannot decode image (corrupt, truncated, empty or not "
                    "an image; pass skip_corrupt=True to skip such files):",
                    name,
                ],
            )
            with tf.control_dependencies([assertion]):
                return tf.identity(image), label

        return ds.map(
            lambda n, i, y, ok: dict(zip(("image", "label"), check(n, i, y, ok), strict=True))
        )
    return ds.map(lambda n, image, label, ok: {"image": image, "label": label})
