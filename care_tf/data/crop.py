"""Random resized crop (torchvision semantics), vectorised over a batch, and eval crops."""

from __future__ import annotations

import math

import tensorflow as tf

NUM_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before falling back


def sample_crops(
    u: tf.Tensor,
    heights: tf.Tensor,
    widths: tf.Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """Draws one random resized crop per image, as torchvision's RandomResizedCrop.

    Up to 10 attempts draw an area fraction uniform in `scale` and a log-uniform
    aspect ratio (w/h) in `ratio`; the first box that fits is placed uniformly at
    random. If none fits, the centre crop with the aspect clamped into `ratio`.

    Args:
        u: float32 (B, 4 * NUM_ATTEMPTS) uniforms in [0, 1).
        heights, widths: (B,) image sizes in pixels.
        scale, ratio: area fraction and aspect ratio ranges.

    Returns:
        float32 (B, 4): [top, left, height, width] as fractions of the image size.
    """
    h_img = tf.cast(heights, tf.float32)[:, None]
    w_img = tf.cast(widths, tf.float32)[:, None]
    u_area, u_ratio, u_top, u_left = tf.split(u, 4, axis=1)
    target = h_img * w_img * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w = tf.round(tf.sqrt(target * aspect))
    h = tf.round(tf.sqrt(target / aspect))
    fits = (w > 0) & (h > 0) & (w <= w_img) & (h <= h_img)
    top = tf.floor(u_top * (h_img - h + 1))
    left = tf.floor(u_left * (w_img - w + 1))
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    pick = lambda t: tf.gather(t, first, axis=1, batch_dims=1)  # noqa: E731
    # Fallback: centre crop, the whole image if its aspect is within `ratio`.
    h_img, w_img = h_img[:, 0], w_img[:, 0]
    in_ratio = w_img / h_img
    fb_w = tf.where(in_ratio > ratio[1], tf.round(h_img * ratio[1]), w_img)
    fb_h = tf.where(in_ratio < ratio[0], tf.round(w_img / ratio[0]), h_img)
    fb_top = tf.floor((h_img - fb_h) / 2)
    fb_left = tf.floor((w_img - fb_w) / 2)
    ok = tf.reduce_any(fits, axis=1)
    box = tf.stack(
        [
            tf.where(ok, pick(top), fb_top) / h_img,
            tf.where(ok, pick(left), fb_left) / w_img,
            tf.where(ok, pick(h), fb_h) / h_img,
            tf.where(ok, pick(w), fb_w) / w_img,
        ],
        axis=1,
    )
    return box


def _sample_positions(start, extent, n_img, size: int):
    """Bilinear source positions of `size` outputs spanning [start, start + extent) pixels.

    Half-pixel centres, clamped to the crop (as tf.image.resize / torchvision on the
    cropped image). Returns (lower index, upper index, weight of upper), each (B, size).
    """
    k = tf.range(size, dtype=tf.float32)[None, :] + 0.5
    extent = extent[:, None]
    local = tf.clip_by_value(k * extent / size - 0.5, 0.0, tf.maximum(extent - 1.0, 0.0))
    pos = start[:, None] + local
    lower = tf.floor(pos)
    weight = pos - lower
    lower = tf.clip_by_value(tf.cast(lower, tf.int32), 0, n_img - 1)
    upper = tf.minimum(lower + 1, n_img - 1)
    return lower, upper, weight


def crop_and_resize(
    images: tf.Tensor, crops: tf.Tensor, size: int, flip: tf.Tensor | None = None
) -> tf.Tensor:
    """Cuts fractional boxes out of a batch and resizes them to size x size, bilinear
    with half-pixel centres, samples clamped to the box (torchvision's crop then resize,
    without antialiasing), optionally mirrored left-right.

    Args:
        images: (B, H, W, C) uint8 or float.
        crops: float32 (B, 4) [top, left, height, width] fractions (from `sample_crops`).
        size: output side in pixels.
        flip: bool (B,) or None; True mirrors the crop.

    Returns:
        float32 (B, size, size, C), same value scale as `images`.
    """
    shape = tf.shape(images)
    h_img, w_img = shape[1], shape[2]
    top, left, height, width = tf.unstack(crops, axis=1)
    hf, wf = tf.cast(h_img, tf.float32), tf.cast(w_img, tf.float32)
    y0, y1, wy = _sample_positions(top * hf, height * hf, h_img, size)
    x0, x1, wx = _sample_positions(left * wf, width * wf, w_img, size)
    if flip is not None:
        mirror = lambda t: tf.where(flip[:, None], tf.reverse(t, axis=[1]), t)  # noqa: E731
        x0, x1, wx = mirror(x0), mirror(x1), mirror(wx)
    rows0 = tf.cast(tf.gather(images, y0, axis=1, batch_dims=1), tf.float32)
    rows1 = tf.cast(tf.gather(images, y1, axis=1, batch_dims=1), tf.float32)
    rows = rows0 + (rows1 - rows0) * wy[:, :, None, None]
    cols0 = tf.gather(rows, x0, axis=2, batch_dims=1)
    cols1 = tf.gather(rows, x1, axis=2, batch_dims=1)
    return cols0 + (cols1 - cols0) * wx[:, None, :, None]


def crop_one(image: tf.Tensor, crop: tf.Tensor, size: int) -> tf.Tensor:
    """`crop_and_resize` of one image (H, W, C) by slicing then tf.image.resize (faster
    per image; same samples when the box is whole pixels, as `sample_crops` draws them).

    Returns float32 (size, size, C).
    """
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    box = tf.cast(tf.round(crop * tf.concat([hw, hw], axis=0)), tf.int32)
    region = image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]]
    return tf.image.resize(region, [size, size], method="bilinear")


def resize_shorter_and_centre_crop(image: tf.Tensor, size: int, resize_to: int) -> tf.Tensor:
    """Eval crop of one image: shorter side to `resize_to` (bilinear, antialiased), then
    the central size x size square. float32 (size, size, C), same value scale."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    factor = resize_to / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * factor), tf.int32)
    new = tf.maximum(new, size)
    image = tf.image.resize(image, new, method="bilinear", antialias=True)
    top = (new[0] - size) // 2
    left = (new[1] - size) // 2
    return image[top : top + size, left : left + size]
