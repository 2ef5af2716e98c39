"""Preprocessing that runs inside exported graphs, so clients send raw pixels.

The evaluation protocol: resize the shorter side to `resize_size(image_size)`
(`image_size * 256 / 224` rounded, bilinear with antialiasing, as
`care_tf.data.eval_pipeline`), centre-crop
`image_size x image_size`, scale to [0, 1] and normalise with the ImageNet
mean/std. Grayscale (1-channel) images are repeated to 3 channels.

Requests are checked before any large tensor is made: an image's height x width
(read from the JPEG/PNG/GIF/BMP header for encoded images, before decoding) must
be at most `SizeLimits.max_pixels` and its aspect ratio at most
`SizeLimits.max_aspect_ratio` (both set at export), a batch must hold at least one
image, and float pixels must be finite and within 0..255. A request that breaks one
fails with InvalidArgument naming the limit or the expected shape.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from care_tf.constants import IMAGENET_MEAN, IMAGENET_STD

RESIZE_METHOD = "bilinear"
ANTIALIAS = True


@dataclasses.dataclass(frozen=True)
class SizeLimits:
    """What one served image may be, checked before decoding or resizing.

    Attributes:
        max_pixels: int. Largest height x width of one image. Defaults to 50 MP
            (a decoded 50 MP RGB image is 150 MB as uint8, 600 MB as float32).
        max_aspect_ratio: float. Largest longer side / shorter side. Defaults to 100.
    """

    max_pixels: int = 50_000_000
    max_aspect_ratio: float = 100.0

    def __post_init__(self):
        if self.max_pixels < 1 or not self.max_aspect_ratio >= 1:
            raise ValueError(
                "max_pixels must be >= 1 and max_aspect_ratio >= 1; got "
                f"max_pixels={self.max_pixels}, max_aspect_ratio={self.max_aspect_ratio}."
            )


DEFAULT_LIMITS = SizeLimits()


def check_size(height: tf.Tensor, width: tf.Tensor, limits: SizeLimits, what: str) -> list:
    """Assertions (run-time InvalidArgumentError) that an image of `height` x `width`
    pixels is non-empty and within `limits`; `what` names the input in messages."""
    h = tf.cast(height, tf.int64)
    w = tf.cast(width, tf.int64)
    longer, shorter = tf.maximum(h, w), tf.minimum(h, w)
    big = h * w > tf.constant(limits.max_pixels, tf.int64)
    long = tf.cast(longer, tf.float64) > tf.cast(shorter, tf.float64) * limits.max_aspect_ratio
    return [
        tf.debugging.Assert(
            shorter > 0, [f"{what}: image is empty; got height, width", h, w], summarize=2
        ),
        tf.debugging.Assert(
            tf.logical_not(big),
            [
                f"{what}: image is too large: height x width must be at most "
                f"{limits.max_pixels} pixels (max_image_pixels, set at export with "
                "--max_image_pixels); got height, width",
                h,
                w,
            ],
            summarize=2,
        ),
        tf.debugging.Assert(
            tf.logical_not(long),
            [
                f"{what}: image is too elongated: the longer side may be at most "
                f"{limits.max_aspect_ratio:g} x the shorter (max_aspect_ratio, set at export "
                "with --max_aspect_ratio); got height, width",
                h,
                w,
            ],
            summarize=2,
        ),
    ]


PIXEL_RANGE = (0.0, 255.0)


def check_batch(tensor: tf.Tensor, rank: int, expected: str) -> tf.Tensor:
    """`tensor` with static rank `rank`, after run-time checks that it has that rank
    and at least one example; `expected` (e.g. "images must be (B, H, W, C) ...")
    starts the InvalidArgumentError message.

    Served signatures take inputs of unknown rank: a declared rank would let
    TensorFlow's graph optimiser fold this check away, and a 2-D or scalar request
    would then fail deep inside the model with an unhelpful message.
    """
    shape = tf.shape(tensor)
    rank_ok = tf.debugging.Assert(
        tf.equal(tf.size(shape), rank), [f"{expected}; got shape", shape], summarize=8
    )
    with tf.control_dependencies([rank_ok]):
        batch = tf.shape(tensor)[0]
        not_empty = tf.debugging.Assert(
            batch > 0, [f"{expected}, B >= 1; got an empty batch, shape", shape], summarize=8
        )
    with tf.control_dependencies([not_empty]):
        tensor = tf.identity(tensor)
    return tf.ensure_shape(tensor, [None] * rank)


def check_pixels(images: tf.Tensor, limits: SizeLimits = DEFAULT_LIMITS) -> tf.Tensor:
    """`images` (B, H, W, C) after checking rank, batch, size and, for floats, that
    every pixel is finite and within 0..255 (`PIXEL_RANGE`).

    Pixels scaled to 0..1 pass (they are within 0..255) and give wrong embeddings:
    that mistake cannot be told from a dark image (see docs/export.md).
    """
    images = check_batch(
        images, 4, "images must be a batch (B, H, W, C) of NHWC pixels, C = 1 or 3"
    )
    shape = tf.shape(images)
    checks = check_size(shape[1], shape[2], limits, "images")
    if images.dtype.is_floating:
        finite = tf.debugging.assert_all_finite(
            images, message="images must be finite pixels 0..255; got NaN or Inf"
        )
        with tf.control_dependencies([finite]):  # NaN first: it has its own message
            low, high = tf.reduce_min(images), tf.reduce_max(images)
            in_range = tf.debugging.Assert(
                tf.logical_and(low >= PIXEL_RANGE[0], high <= PIXEL_RANGE[1]),
                [
                    "images must be float pixels in 0..255 (clip them to that range); got min, max",
                    low,
                    high,
                ],
            )
        checks += [finite, in_range]
    with tf.control_dependencies(checks):
        return tf.identity(images)


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


def preprocess(images: tf.Tensor, image_size: int, limits: SizeLimits | None = None) -> tf.Tensor:
    """Raw (B, H, W, 1|3) pixels -> (B, S, S, 3) normalised float32, what the backbone takes.

    With `limits` (what served graphs use) the input is checked first (`check_pixels`).
    """
    if limits is not None:
        images = check_pixels(images, limits)
    return normalize(crop_pixels(images, image_size))


def _header_size(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(height, width) int64 read from a JPEG/PNG/GIF/BMP header, without decoding;
    (1, 1) for other bytes (the decoder then refuses them)."""
    padded = tf.strings.join([image_bytes, tf.constant(b"\x00" * 32)])
    b = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, 32), tf.uint8), tf.int64)

    def big_endian(i):  # uint32
        return b[i] * 2**24 + b[i + 1] * 2**16 + b[i + 2] * 2**8 + b[i + 3]

    def little_endian32(i):  # int32, sign removed (BMP heights are negative top-down)
        value = b[i] + b[i + 1] * 2**8 + b[i + 2] * 2**16 + b[i + 3] * 2**24
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    head = tf.strings.substr(padded, 0, 4)
    is_jpeg = tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff")
    is_png = tf.equal(head, b"\x89PNG")
    is_gif = tf.equal(tf.strings.substr(head, 0, 3), b"GIF")
    is_bmp = tf.equal(tf.strings.substr(head, 0, 2), b"BM")
    jpeg = tf.cond(
        is_jpeg,
        lambda: tf.cast(tf.image.extract_jpeg_shape(image_bytes)[:2], tf.int64),
        lambda: tf.ones([2], tf.int64),
    )
    one = tf.constant(1, tf.int64)
    height = tf.where(
        is_jpeg,
        jpeg[0],
        tf.where(
            is_png,
            big_endian(20),
            tf.where(is_gif, b[8] + b[9] * 256, tf.where(is_bmp, little_endian32(22), one)),
        ),
    )
    width = tf.where(
        is_jpeg,
        jpeg[1],
        tf.where(
            is_png,
            big_endian(16),
            tf.where(is_gif, b[6] + b[7] * 256, tf.where(is_bmp, little_endian32(18), one)),
        ),
    )
    return height, width


def decode_image(image_bytes: tf.Tensor, limits: SizeLimits = DEFAULT_LIMITS) -> tf.Tensor:
    """One encoded JPEG/PNG/GIF/BMP string -> (H, W, 3) uint8.

    Raises (at run time) InvalidArgumentError with a clear message for bytes
    that are not an image, or whose header gives a size outside `limits`
    (checked before decoding).
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
        height, width = _header_size(image_bytes)
    with tf.control_dependencies(check_size(height, width, limits, "image_bytes")):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def preprocess_bytes(
    image_bytes: tf.Tensor, image_size: int, limits: SizeLimits = DEFAULT_LIMITS
) -> tf.Tensor:
    """(B,) encoded images (each its own size) -> (B, S, S, 3) normalised float32.

    Raises (at run time) InvalidArgumentError for anything but a non-empty 1-D batch.
    """
    image_bytes = check_batch(
        image_bytes, 1, "image_bytes must be a batch (B,) of encoded images, one string each"
    )

    def one(encoded: tf.Tensor) -> tf.Tensor:
        image = decode_image(encoded, limits)[tf.newaxis]
        return crop_pixels(image, image_size)[0]

    pixels = tf.map_fn(
        one,
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )
    return normalize(pixels)


def constants(image_size: int, limits: SizeLimits = DEFAULT_LIMITS) -> dict:
    """The preprocessing constants, as written into export metadata."""
    return {
        "max_image_pixels": int(limits.max_pixels),
        "max_aspect_ratio": float(limits.max_aspect_ratio),
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
