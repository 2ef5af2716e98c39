"""The two asymmetric CARE/BYOL views (docs/method.md, "Augmentations"), as a Keras layer.

Every random decision is drawn with `tf.random.stateless_uniform`, keyed by a seed
pair, so the same seed and key give the same views on any device and with any
tf.data parallelism. Ops follow torchvision: ColorJitter (factors uniform in
[1 - s, 1 + s], hue shift in [-h, h], the four in a random order per image, clamped
to [0, 1] after each), Grayscale (ITU-R 601 luma, 3 channels), GaussianBlur (kernel
~10% of the image side, odd, reflect padding), Solarize (pixels >= 128/255 inverted).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from care_tf.constants import IMAGENET_MEAN, IMAGENET_STD
from care_tf.data.crop import NUM_ATTEMPTS, crop_and_resize, crop_one, sample_crops

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")
SOLARIZE_THRESHOLD = 128 / 255
NUM_UNIFORMS = 64  # uniforms drawn per image and view (layout in `_params_from_uniforms`)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def blur_kernel_size(image_size: int) -> int:
    """Odd Gaussian kernel side, about 10% of the image side (23 at 224 px, 3 at 32 px),
    at least 3."""
    return max(3, 2 * int(0.1 * image_size / 2) + 1)


# --- colour ops on float images in [0, 1]; per-image factors have shape (B,) -------------


def _b(factor: tf.Tensor) -> tf.Tensor:
    return tf.reshape(factor, [-1, 1, 1, 1])


def grayscale(x: tf.Tensor) -> tf.Tensor:
    """Luma (B, H, W, 1) of RGB images (B, H, W, 3)."""
    r, g, b = tf.unstack(x, axis=-1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b)[..., None]


def adjust_brightness(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(x * _b(factor), 0.0, 1.0)


def adjust_contrast(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    mean = tf.reduce_mean(grayscale(x), axis=[1, 2, 3], keepdims=True)
    return tf.clip_by_value(_b(factor) * x + (1.0 - _b(factor)) * mean, 0.0, 1.0)


def adjust_saturation(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(_b(factor) * x + (1.0 - _b(factor)) * grayscale(x), 0.0, 1.0)


def adjust_hue(x: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """Rotates hue by `delta` (fraction of a turn) in HSV space, per image."""
    hsv = tf.image.rgb_to_hsv(x)
    h, s, v = tf.unstack(hsv, axis=-1)
    h = tf.math.floormod(h + tf.reshape(delta, [-1, 1, 1]), 1.0)
    return tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1))


def solarize(x: tf.Tensor) -> tf.Tensor:
    return tf.where(x >= SOLARIZE_THRESHOLD, 1.0 - x, x)


def gaussian_kernels(sigma: tf.Tensor, size: int) -> tf.Tensor:
    """Normalised 1-D Gaussian kernels (B, size) for per-image sigmas (B,)."""
    r = (size - 1) / 2
    d = tf.range(-r, r + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * tf.square(d[None, :] / sigma[:, None]))
    return k / tf.reduce_sum(k, axis=1, keepdims=True)


def gaussian_blur(x: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur of (B, H, W, C) with per-image sigma (B,), reflect padding.

    Written as sums of shifted slices over the flattened (W * C) rows, pairing the
    symmetric taps, so that XLA fuses each pass into one vectorised loop.
    """
    kernel = gaussian_kernels(sigma, kernel_size)
    r = kernel_size // 2
    _, h, w, c = x.shape
    tap = lambda d: kernel[:, r + d, None, None]  # noqa: E731

    def conv(rows: tf.Tensor, n: int, step: int, axis: int) -> tf.Tensor:
        # rows (B, A, L), padded by r * step along `axis`; n outputs along it.
        def at(d):
            start = (r + d) * step
            return rows[:, start : start + n] if axis == 1 else rows[:, :, start : start + n]

        acc = tap(0) * at(0)
        for d in range(1, r + 1):
            acc += tap(d) * (at(d) + at(-d))
        return acc

    # Along H: slices of whole rows of W * C values.
    y = tf.pad(x, [[0, 0], [r, r], [0, 0], [0, 0]], mode="REFLECT")
    y = conv(tf.reshape(y, [-1, h + 2 * r, w * c]), h, 1, axis=1)
    # Along W: each row shifted by d pixels = d * C values.
    y = tf.pad(tf.reshape(y, [-1, h, w, c]), [[0, 0], [0, 0], [r, r], [0, 0]], mode="REFLECT")
    y = conv(tf.reshape(y, [-1, h, (w + 2 * r) * c]), w * c, c, axis=2)
    return tf.reshape(y, [-1, h, w, c])


def _blend(x: tf.Tensor, op: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Brightness (op 0), contrast (1) or saturation (2) per image, torchvision's blend:
    clip(f * x + (1 - f) * ref) with ref = 0, the mean luma, or the luma image.
    A factor of 1 leaves x unchanged."""
    gray = grayscale(x)
    mean = tf.reduce_mean(gray, axis=[1, 2, 3], keepdims=True)
    is_contrast = _b(tf.cast(tf.equal(op, 1), x.dtype))
    is_saturation = _b(tf.cast(tf.equal(op, 2), x.dtype))
    ref = is_contrast * mean + is_saturation * gray
    f = _b(factor)
    return tf.clip_by_value(f * x + (1.0 - f) * ref, 0.0, 1.0)


def color_jitter(
    x: tf.Tensor, factors: tf.Tensor, order: tf.Tensor, per_element: bool = False
) -> tf.Tensor:
    """Brightness, contrast, saturation and hue in a per-image order (torchvision ColorJitter).

    Args:
        x: float32 (B, H, W, 3) in [0, 1].
        factors: float32 (B, 4): brightness, contrast, saturation factors, hue shift.
        order: int32 (B, 4): permutation of 0..3 (indices into JITTER_OPS).
        per_element: bool. B == 1: run the op of each position with tf.switch_case.
            Otherwise (batched) hue, the costly op, runs once on the whole batch:
            each image's ops before hue go through three blend slots, then hue, then
            three more slots (unused slots get factor 1, the identity).
    """
    if per_element:
        ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        for position in range(4):
            branches = [(lambda op=op, i=i, x=x: op(x, factors[:, i])) for i, op in enumerate(ops)]
            x = tf.switch_case(order[0, position], branches)
        return x
    hue_at = tf.argmax(tf.cast(tf.equal(order, 3), tf.int32), axis=1, output_type=tf.int32)
    padded = tf.concat([order, tf.fill(tf.shape(order), 3)], axis=1)  # 3 = "no op"
    for slot in range(6):
        if slot < 3:
            op = tf.where(slot < hue_at, order[:, slot], 3)
        else:
            if slot == 3:
                x = adjust_hue(x, factors[:, 3])
            op = tf.gather(padded, hue_at + slot - 2, axis=1, batch_dims=1)
        factor = tf.where(op < 3, tf.gather(factors, tf.minimum(op, 2), axis=1, batch_dims=1), 1.0)
        x = _blend(x, op, factor)
    return x


def colour_ops(
    x: tf.Tensor,
    params: dict,
    kernel_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    per_element: bool,
) -> tf.Tensor:
    """Flip (if still to do), jitter, grayscale, blur, solarize and normalisation of one view.

    Args:
        x: float32 (B, S, S, 3) crops in [0, 1].
        params: one view's dict from `TwoViewAugment.sample_params` (without "crop";
            with "flip" only if the crop was not already mirrored).
        kernel_size: Gaussian kernel side.
        mean, std: normalisation on [0, 1] pixels.
        per_element: bool. B == 1: ops not drawn are skipped (tf.cond); otherwise
            every op runs on the whole batch and is selected per image.

    Returns:
        float32 (B, S, S, 3), normalised.
    """

    def maybe(flag, fn, x):
        if per_element:
            return tf.cond(flag[0], lambda: fn(x), lambda: x)
        return tf.where(flag[:, None, None, None], fn(x), x)

    if "flip" in params:
        x = maybe(params["flip"], lambda x: tf.reverse(x, axis=[2]), x)
    x = maybe(
        params["jitter"],
        lambda x: color_jitter(x, params["jitter_factors"], params["jitter_order"], per_element),
        x,
    )
    x = maybe(params["gray"], lambda x: tf.tile(grayscale(x), [1, 1, 1, 3]), x)
    x = maybe(params["blur"], lambda x: gaussian_blur(x, params["blur_sigma"], kernel_size), x)
    x = maybe(params["solarize"], solarize, x)
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


# The colour ops compiled with XLA: fuses the elementwise work (3-5x faster on CPU).
_colour_ops_xla = tf.function(colour_ops, jit_compile=True)


@keras.saving.register_keras_serializable(package="care_tf")
class TwoViewAugment(keras.layers.Layer):
    """Two independently augmented views of each image (CARE / BYOL recipe).

    View 1 and view 2 follow the table of docs/method.md: random resized crop (scale
    (0.08, 1), ratio (3/4, 4/3)) + horizontal flip (p 0.5), colour jitter
    (0.4, 0.4, 0.2, 0.1; p 0.8), grayscale (p 0.2), Gaussian blur (sigma in
    [0.1, 2]; p 1.0 / 0.1), solarize (p 0 / 0.2), ImageNet normalisation.
    Every image gets its own draws. Arguments given as pairs are (view 1, view 2).

    Randomness is stateless, keyed by (seed, step): `step` is the call's
    argument, else an internal counter incremented by every call (in a
    distributed train step each replica also folds in its replica id).

    Args:
        image_size: int. Output side in pixels.
        seed: int or None. Same seed and step give the same views. None draws a
            seed from NumPy's global generator at construction (kept in
            `seed_value`, the seed actually used).
        scale: (min, max) crop area fraction. Defaults to (0.08, 1.0).
        ratio: (min, max) crop aspect ratio w/h. Defaults to (3/4, 4/3).
        flip_prob, jitter_prob, gray_prob, blur_prob, solarize_prob: per-view
            probabilities. Default to the paper's.
        brightness, contrast, saturation, hue: colour jitter strengths.
        blur_sigma: (min, max) Gaussian sigma in pixels of the output image.
        mean, std: normalisation on [0, 1] pixels. Default to ImageNet's.
        value_range: (low, high) of float inputs; uint8 inputs are always 0..255.
        jit_compile: bool. Per-image path (tf.data): compile the colour ops with
            XLA. The batched path follows its caller (e.g. a jit-compiled train step).

    Example:
    >>> aug = TwoViewAugment(224, seed=0)
    >>> v1, v2 = aug(np.zeros((8, 256, 256, 3), np.uint8))  # each (8, 224, 224, 3)
    """

    def __init__(
        self,
        image_size: int,
        seed: int | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_prob: tuple[float, float] = (0.5, 0.5),
        jitter_prob: tuple[float, float] = (0.8, 0.8),
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        gray_prob: tuple[float, float] = (0.2, 0.2),
        blur_prob: tuple[float, float] = (1.0, 0.1),
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_prob: tuple[float, float] = (0.0, 0.2),
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        value_range: tuple[float, float] = (0.0, 1.0),
        jit_compile: bool = True,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8. Received: image_size={image_size}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1. Received: scale={scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max. Received: ratio={ratio}")
        for name, p in (
            ("flip_prob", flip_prob),
            ("jitter_prob", jitter_prob),
            ("gray_prob", gray_prob),
            ("blur_prob", blur_prob),
            ("solarize_prob", solarize_prob),
        ):
            if len(p) != 2 or not all(0 <= q <= 1 for q in p):
                raise ValueError(f"{name} must be two probabilities. Received: {name}={p}")
        self.image_size = int(image_size)
        self.seed = seed
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.flip_prob = tuple(flip_prob)
        self.jitter_prob = tuple(jitter_prob)
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.gray_prob = tuple(gray_prob)
        self.blur_prob = tuple(blur_prob)
        self.blur_sigma = tuple(blur_sigma)
        self.solarize_prob = tuple(solarize_prob)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.value_range = tuple(value_range)
        self.jit_compile = bool(jit_compile)
        self.kernel_size = blur_kernel_size(self.image_size)
        self.seed_value = int(seed) if seed is not None else int(np.random.randint(2**31 - 1))
        self.step = self.add_weight(
            name="step",
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
        self.built = True

    # --- random parameters ------------------------------------------------------------

    def _params_from_uniforms(self, u: tf.Tensor, heights, widths, view: int) -> dict:
        """Per-image decisions of one view from uniforms (B, NUM_UNIFORMS)."""
        a = 4 * NUM_ATTEMPTS
        s = self.saturation
        lo = tf.constant([1 - self.brightness, 1 - self.contrast, 1 - s, -self.hue])
        hi = tf.constant([1 + self.brightness, 1 + self.contrast, 1 + s, self.hue])
        sigma_lo, sigma_hi = self.blur_sigma
        return {
            "crop": sample_crops(u[:, :a], heights, widths, self.scale, self.ratio),
            "flip": u[:, a] < self.flip_prob[view],
            "jitter": u[:, a + 1] < self.jitter_prob[view],
            "jitter_factors": lo + (hi - lo) * u[:, a + 2 : a + 6],
            "jitter_order": tf.argsort(u[:, a + 6 : a + 10], axis=1, stable=True),
            "gray": u[:, a + 10] < self.gray_prob[view],
            "blur": u[:, a + 11] < self.blur_prob[view],
            "blur_sigma": sigma_lo + (sigma_hi - sigma_lo) * u[:, a + 12],
            "solarize": u[:, a + 13] < self.solarize_prob[view],
        }

    def sample_params(
        self, seed: tf.Tensor, batch_size, heights=None, widths=None
    ) -> tuple[dict, dict]:
        """Draws every random decision of both views for a batch.

        Args:
            seed: int (2,) stateless seed pair.
            batch_size: int or scalar tensor B.
            heights, widths: (B,) source image sizes in pixels (crop geometry); default
                to the output size (a square image).

        Returns:
            (params_view1, params_view2), dicts of (B, ...) tensors: "crop" (B, 4)
            [top, left, height, width] fractions, bool "flip", "jitter", "gray",
            "blur", "solarize", float "jitter_factors" (B, 4) (brightness, contrast,
            saturation factors, hue shift), int "jitter_order" (B, 4), "blur_sigma".
        """
        if heights is None:
            heights = tf.fill([batch_size], self.image_size)
            widths = heights
        u = tf.random.stateless_uniform([2, batch_size, NUM_UNIFORMS], seed=seed)
        return tuple(self._params_from_uniforms(u[v], heights, widths, v) for v in (0, 1))

    # --- applying them ------------------------------------------------------------------

    def _to_unit(self, images: tf.Tensor) -> tuple[tf.Tensor, float]:
        images = tf.convert_to_tensor(images)
        if images.shape.rank == 4 and images.shape[-1] == 1:  # grayscale -> 3 channels
            images = tf.tile(images, [1, 1, 1, 3])
        if images.dtype == tf.uint8:
            return images, 255.0
        lo, hi = self.value_range
        images = tf.cast(images, tf.float32)
        if lo != 0:
            images = images - lo
        return images, float(hi - lo)

    def apply_view(self, images: tf.Tensor, params: dict, per_element: bool = False):
        """One view of a batch with given decisions.

        Args:
            images: (B, H, W, 3) uint8 (0..255) or float (`value_range`).
            params: one view's dict from `sample_params`.
            per_element: bool. True when B == 1 (tf.data map): ops not drawn are
                skipped with tf.cond instead of computed and masked.

        Returns:
            float32 (B, image_size, image_size, 3), normalised with mean/std.
        """
        images, unit = self._to_unit(images)
        params = dict(params)
        crop = params.pop("crop")
        if per_element:
            x = crop_one(images[0], crop[0], self.image_size)[None]
        else:
            x = crop_and_resize(images, crop, self.image_size, params.pop("flip"))
        x = tf.clip_by_value(x / unit, 0.0, 1.0)
        colour = _colour_ops_xla if self.jit_compile else colour_ops
        return colour(x, params, self.kernel_size, self.mean, self.std, per_element)

    def augment(self, images: tf.Tensor, seed: tf.Tensor, image_sizes=None, per_element=False):
        """Both views of a batch, keyed by a stateless seed pair (2,)."""
        batch = tf.shape(images)[0]
        if image_sizes is None:
            shape = tf.shape(images)
            heights, widths = tf.fill([batch], shape[1]), tf.fill([batch], shape[2])
        else:
            heights, widths = image_sizes[:, 0], image_sizes[:, 1]
        p1, p2 = self.sample_params(seed, batch, heights, widths)
        return (
            self.apply_view(images, p1, per_element),
            self.apply_view(images, p2, per_element),
        )

    def seed_for(self, step) -> tf.Tensor:
        """Stateless seed pair for a step: (seed, step), with the replica id folded in."""
        seed = tf.stack([tf.constant(self.seed_value, tf.int64), tf.cast(step, tf.int64)])
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
            seed = tf.random.experimental.stateless_fold_in(seed, replica)
        return seed

    def call(self, images, step=None, image_sizes=None):
        """(view1, view2) of a batch (B, H, W, 3).

        Args:
            images: uint8 or float (B, H, W, 3) or (B, H, W, 1) (grayscale), any H, W.
            step: int scalar or None. Key of this batch's draws; None uses and
                increments the layer's step counter.
            image_sizes: int (B, 2) or None. Original (height, width) of images that
                were resized to H x W: crops are then drawn in the original geometry.
        """
        if step is None:
            step = tf.identity(self.step.value)
            with tf.control_dependencies([step]):
                self.step.assign_add(1)
        return self.augment(images, self.seed_for(step), image_sizes)

    def compute_output_shape(self, input_shape):
        shape = (input_shape[0], self.image_size, self.image_size, 3)
        return shape, shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "seed": self.seed,
                "scale": self.scale,
                "ratio": self.ratio,
                "flip_prob": self.flip_prob,
                "jitter_prob": self.jitter_prob,
                "brightness": self.brightness,
                "contrast": self.contrast,
                "saturation": self.saturation,
                "hue": self.hue,
                "gray_prob": self.gray_prob,
                "blur_prob": self.blur_prob,
                "blur_sigma": self.blur_sigma,
                "solarize_prob": self.solarize_prob,
                "mean": self.mean,
                "std": self.std,
                "value_range": self.value_range,
                "jit_compile": self.jit_compile,
            }
        )
        return config
