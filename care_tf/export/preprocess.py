"""Preprocessing that runs inside exported graphs, so clients send raw pixels.

The evaluation protocol: resize the shorter side to `resize_size(image_size)`
(`image_size * 256 / 224` rounded, bilinear with antialiasing, as
`care_tf.data.eval_pipeline`), centre-crop
`image_size x image_size`, scale to [0, 1] and normalise with the ImageNet
mean/std. Grayscale (1-channel) images are repeated to 3 channels.
"""

from __future__ import annotations

import tensorflow as tf

from care_tf.constants import IMAGENET_MEAN, IMAGENET_STD

RESIZE_METHOD = "bilinear"
ANTIALIAS = True


def resize_size(image_size: int) -> int:
    """Shorter side before the centre crop, as evaluation uses (224 -> 256, 32 -> 37)."""
    from care_tf.data.eval_pipeline import eval_resize

    return eval_resize(image_size)


def to_rgb(images: tf.Tensor) -> tf.Tensor:
    """(B, H, W, 1 or 3) any dtype -> (B, H, W, 3) float32 pixels (same scale as the input).

    Raises (at run time) InvalidArgumentError when the channel count is not 1 or 3.
    """
    images = tf.cast(images, tf.float32)
    channels = tf.shape(images)[-1]
    check = tf.debugging.assert_equal(
        tf.logical_or(tf.equal(channels, 1), tf.equal(channels, 3)),
        True,
        message="images must have 1 (grayscale) or 3 (RGB) channels, NHWC",
    )
    with tf.control_dependencies([check]):
        images = tf.cond(
            tf.equal(channels, 1),
            lambda: tf.tile(images[..., :1], [1, 1, 1, 3]),
            lambda: images[..., :3],
        )
    return tf.ensure_shape(images, [None, None, None, 3])


def resize_and_crop(pixels: tf.Tensor, image_size: int) -> tf.Tensor:
    """(B, H, W, 3) float32 pixels of any size -> (B, image_size, image_size, 3) float32.

    The shorter side is resized to `resize_size(image_size)` keeping the aspect
    ratio, then the centre `image_size` square is cropped. Values keep their
    scale (0..255 in, 0..255 out).
    """
    target = resize_size(image_size)
    shape = tf.shape(pixels)
    height = tf.cast(shape[1], tf.float32)
    width = tf.cast(shape[2], tf.float32)
    scale = float(target) / tf.minimum(height, width)
    new_h = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), target)
    new_w = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), target)
    resized = tf.image.resize(
        pixels, tf.stack([new_h, new_w]), method=RESIZE_METHOD, antialias=ANTIALIAS
    )
    top = (new_h - image_size) // 2
    left = (new_w - image_size) // 2
    cropped = resized[:, top : top + image_size, left : left + image_size, :]
    return tf.ensure_shape(cropped, [None, image_size, image_size, 3])


def normalize(pixels: tf.Tensor) -> tf.Tensor:
    """(..., 3) float32 pixels in 0..255 -> ImageNet-normalised float32 (model input)."""
    mean = tf.constant(IMAGENET_MEAN, tf.float32) * 255.0
    std = tf.constant(IMAGENET_STD, tf.float32) * 255.0
    return (tf.cast(pixels, tf.float32) - mean) / std


def crop_pixels(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """Raw (B, H, W, 1|3) pixels (uint8, or float 0..255) -> (B, S, S, 3) float32 0..255."""
    return resize_and_crop(to_rgb(images), image_size)


def preprocess(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """Raw (B, H, W, 1|3) pixels -> (B, S, S, 3) normalised float32, what the backbone takes."""
    return normalize(crop_pixels(images, image_size))


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """One encoded JPEG/PNG/GIF/BMP string -> (H, W, 3) uint8.

    Raises (at run time) InvalidArgumentError with a clear message for bytes
    that are not an image.
    """
    # decode_image sniffs the format from the first bytes; check them first for a
    # clearer message than the decoder's.
    head = tf.strings.substr(image_bytes, 0, 4)
    known = tf.reduce_any(
        tf.stack(
            [
                tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff"),
                tf.equal(head, b"\x89PNG"),
                tf.equal(tf.strings.substr(head, 0, 3), b"GIF"),
                tf.equal(tf.strings.substr(head, 0, 2), b"BM"),
            ]
        )
    )
    check = tf.debugging.assert_equal(
        known,
        True,
        message="image_bytes: input is not a JPEG, PNG, GIF or BMP image",
    )
    with tf.control_dependencies([check]):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def preprocess_bytes(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """(B,) encoded images (each its own size) -> (B, S, S, 3) normalised float32."""

    def one(encoded: tf.Tensor) -> tf.Tensor:
        image = decode_image(encoded)[tf.newaxis]
        return crop_pixels(image, image_size)[0]

    pixels = tf.map_fn(
        one,
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )
    return normalize(pixels)


def constants(image_size: int) -> dict:
    """The preprocessing constants, as written into export metadata."""
    return {
        "image_size": int(image_size),
        "resize_size": resize_size(image_size),
        "resize": f"shorter side to resize_size ({RESIZE_METHOD}, antialias={ANTIALIAS}), "
        "then centre crop image_size",
        "pixel_scale": 255.0,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "channels": "RGB; grayscale repeated to 3 channels",
        "layout": "NHWC",
    }
