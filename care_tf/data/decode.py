"""Robust image decoding in tf.data: every failure names its file (or is skipped and counted)."""

from __future__ import annotations

import sys

import tensorflow as tf

# A JPEG cut short has no end-of-image marker (FF D9) after its image data; TF's decoder
# silently fills the missing rows with grey, so we check for the marker ourselves. Bytes
# after the marker (camera trailers, appended videos) are allowed, as image decoders do.
_SOS, _EOI = 0xDA, 0xD9


def _first_scan(b: tf.Tensor) -> tf.Tensor:
    """Index of the first start-of-scan marker (FF DA) of JPEG bytes `b` (int32 vector),
    walking the header's marker segments (so an EXIF thumbnail's markers are skipped);
    -1 when the header is malformed or has no scan."""
    n = tf.size(b)

    def cond(pos, found):
        return tf.logical_and(found < 0, pos + 3 < n)

    def body(pos, found):
        marker = b[pos + 1]
        valid = tf.equal(b[pos], 0xFF)
        fill = tf.equal(marker, 0xFF)
        standalone = tf.logical_or(
            tf.logical_and(marker >= 0xD0, marker <= 0xD9), tf.equal(marker, 0x01)
        )
        length = b[pos + 2] * 256 + b[pos + 3]
        step = tf.where(fill, 1, tf.where(standalone, 2, 2 + length))
        is_scan = tf.logical_and(valid, tf.equal(marker, _SOS))
        found = tf.where(is_scan, pos, found)
        pos = tf.where(valid, pos + step, n)  # malformed: stop
        return pos, found

    _, found = tf.while_loop(cond, body, (tf.constant(2), tf.constant(-1)))
    return found


def jpeg_complete(data: tf.Tensor) -> tf.Tensor:
    """False only for a JPEG with no end-of-image marker (FF D9) after its first scan, i.e.
    cut short; True for complete JPEGs (trailing bytes allowed) and for other formats."""

    def check():
        b = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)
        scan = _first_scan(b)
        eoi = tf.logical_and(tf.equal(b[:-1], 0xFF), tf.equal(b[1:], _EOI))
        after = tf.range(tf.size(eoi)) > scan
        return tf.logical_or(scan < 0, tf.reduce_any(tf.logical_and(eoi, after)))

    return tf.cond(tf.io.is_jpeg(data), check, lambda: tf.constant(True))


def decode_rgb(data: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG/PNG/BMP/GIF bytes to uint8 (H, W, 3): gray replicated, alpha dropped,
    CMYK converted, 16-bit scaled to 8-bit, first frame of an animated GIF."""
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def try_decode(name: tf.Tensor, data: tf.Tensor, label: tf.Tensor, read: bool):
    """One-element dataset: (name, image, label, ok) with ok=False when `data` (or the
    file it names, if `read`) is unreadable."""

    def decode(name, data, label):
        if read:
            data = tf.io.read_file(data)
        check = tf.debugging.Assert(jpeg_complete(data), ["truncated JPEG"])
        with tf.control_dependencies([check]):
            return name, decode_rgb(data), label, tf.constant(True)

    good = tf.data.Dataset.from_tensors((name, data, label)).map(decode).ignore_errors()
    bad = tf.data.Dataset.from_tensors((name, tf.zeros([0, 0, 3], tf.uint8), label, False))
    return good.concatenate(bad).take(1)


def assert_decoded(name: tf.Tensor, image: tf.Tensor, ok: tf.Tensor) -> tf.Tensor:
    """`image`, after an assertion that fails naming the file when `ok` is False."""
    assertion = tf.debugging.Assert(
        ok,
        [
            "care_tf.data: cannot decode image (corrupt, truncated, empty or not an image; "
            "pass skip_corrupt=True to skip such files):",
            name,
        ],
    )
    with tf.control_dependencies([assertion]):
        return tf.identity(image)


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
    attempt = lambda name, data, label: try_decode(name, data, label, read_files)  # noqa: E731
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
        return ds.map(lambda n, i, y, ok: {"image": assert_decoded(n, i, ok), "label": y})
    return ds.map(lambda n, image, label, ok: {"image": image, "label": label})
