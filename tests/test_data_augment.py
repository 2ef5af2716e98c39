"""TwoViewAugment: draw statistics, pixels matching the draws, seeds, real photos, Keras."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from care_tf.constants import IMAGENET_MEAN, IMAGENET_STD
from care_tf.data import TwoViewAugment
from care_tf.data.augment import adjust_hue, blur_kernel_size, color_jitter, gaussian_blur

N = 4000  # images per statistics draw: a proportion p is within +-4 sd of 0.2 by +-0.025


def _denorm(x):
    return np.asarray(x) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)


@pytest.fixture(scope="module")
def params():
    aug = TwoViewAugment(224, seed=3)
    seed = tf.constant([3, 0], tf.int64)
    p1, p2 = aug.sample_params(seed, N, tf.fill([N], 427), tf.fill([N], 640))
    to_np = lambda p: {k: v.numpy() for k, v in p.items()}  # noqa: E731
    return to_np(p1), to_np(p2)


@pytest.mark.parametrize(
    "key, view, expected",
    [
        ("solarize", 0, 0.0),
        ("solarize", 1, 0.2),
        ("gray", 0, 0.2),
        ("gray", 1, 0.2),
        ("flip", 0, 0.5),
        ("flip", 1, 0.5),
        ("blur", 0, 1.0),
        ("blur", 1, 0.1),
        ("jitter", 0, 0.8),
        ("jitter", 1, 0.8),
    ],
)
def test_view_probabilities(params, key, view, expected):
    rate = params[view][key].mean()
    tol = 4 * np.sqrt(expected * (1 - expected) / N) + 1e-9
    assert abs(rate - expected) <= tol, (key, view, rate)


def test_views_drawn_independently(params):
    p1, p2 = params
    assert abs(np.corrcoef(p1["flip"], p2["flip"])[0, 1]) < 0.1
    assert not np.allclose(p1["crop"], p2["crop"])


def test_crop_area_and_aspect(params):
    for p in params:
        top, left, h, w = p["crop"].T
        area = h * w
        assert area.min() >= 0.08 - 0.005 and area.max() <= 1.0
        aspect = (w * 640) / (h * 427)
        assert aspect.min() >= 0.75 - 0.02 and aspect.max() <= 4 / 3 + 0.02
        assert (top >= 0).all() and (top + h <= 1 + 1e-6).all()
        assert (left >= 0).all() and (left + w <= 1 + 1e-6).all()
        # Same distribution as torchvision's RandomResizedCrop.get_params.
        ref = _torchvision_crop_areas(427, 640, 4000)
        assert abs(area.mean() - ref.mean()) < 0.02 and abs(area.std() - ref.std()) < 0.02
        # Positions spread over the image.
        assert top.std() > 0.05 and left.std() > 0.05


def _torchvision_crop_areas(height, width, n, seed=0):
    """Area fractions drawn by torchvision's RandomResizedCrop.get_params, restated."""
    import math
    import random

    rng = random.Random(seed)
    areas = []
    for _ in range(n):
        for _ in range(10):
            target = height * width * rng.uniform(0.08, 1.0)
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                areas.append(w * h / (height * width))
                break
        else:
            areas.append(min(width, round(height * 4 / 3)) * height / (height * width))
    return np.array(areas)


def test_crop_fallback_is_centre_crop():
    aug = TwoViewAugment(32, seed=0, scale=(1.0, 1.0))
    # A 1 x 10 strip: no box of area 1 and aspect in [3/4, 4/3] fits -> centre crop with
    # the aspect clamped to 4/3: height 1, width round(4/3) = 1, centred.
    p1, _ = aug.sample_params(tf.constant([0, 0], tf.int64), 4, tf.fill([4], 1), tf.fill([4], 10))
    np.testing.assert_allclose(p1["crop"].numpy(), [[0, 0.4, 1, 0.1]] * 4, atol=1e-6)


def test_jitter_and_blur_parameter_ranges(params):
    for p in params:
        f = p["jitter_factors"]
        for i, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
            assert lo <= f[:, i].min() < lo + 0.01 and hi - 0.01 < f[:, i].max() <= hi
            assert abs(f[:, i].mean() - (lo + hi) / 2) < 0.01
        assert (np.sort(p["jitter_order"], axis=1) == np.arange(4)).all()
        # Every op comes first in about a quarter of the images (random order).
        first = np.bincount(p["jitter_order"][:, 0], minlength=4) / N
        np.testing.assert_allclose(first, 0.25, atol=0.03)
        assert 0.1 <= p["blur_sigma"].min() and p["blur_sigma"].max() <= 2.0


def test_images_in_a_batch_get_different_draws():
    aug = TwoViewAugment(32, seed=1)
    images = np.full((16, 32, 32, 3), 128, np.uint8)
    p1, p2 = aug.sample_params(aug.seed_for(0), 16)
    assert len({tuple(c) for c in p1["crop"].numpy().round(4)}) == 16
    assert len({tuple(c) for c in p2["crop"].numpy().round(4)}) == 16
    v1, _ = aug(images, step=0)
    assert len({float(np.asarray(v).std()) for v in v1}) > 8


def test_same_seed_same_views_other_seed_or_step_differs(fmnist_small):
    images = np.repeat(fmnist_small[0][:8, :, :, None], 3, axis=-1)
    a1, a2 = TwoViewAugment(32, seed=7)(images, step=2)
    b1, b2 = TwoViewAugment(32, seed=7)(images, step=2)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    c1, _ = TwoViewAugment(32, seed=8)(images, step=2)
    d1, _ = TwoViewAugment(32, seed=7)(images, step=3)
    assert not np.allclose(a1, c1) and not np.allclose(a1, d1)
    # Without a step the layer's counter advances: consecutive calls differ.
    aug = TwoViewAugment(32, seed=7)
    e1, _ = aug(images)
    f1, _ = aug(images)
    assert int(aug.step.numpy()) == 2 and not np.allclose(e1, f1)
    np.testing.assert_array_equal(e1, aug(images, step=0)[0])


def _photo(size=96):
    from sklearn.datasets import load_sample_images

    return load_sample_images().images[0][100 : 100 + size, 200 : 200 + size]


def _only(params, **on):
    """One image's view params with every op off except `on`, full crop."""
    p = {k: tf.constant(v[:1]) for k, v in params.items()}
    for key in ("flip", "jitter", "gray", "blur", "solarize"):
        p[key] = tf.constant([on.get(key, False)])
    p["crop"] = tf.constant([[0.0, 0.0, 1.0, 1.0]])
    return p


@pytest.mark.parametrize("per_element", [True, False])
def test_pixels_follow_the_draws(params, per_element):
    image = _photo(64)[None]
    aug = TwoViewAugment(64, seed=0)
    view = lambda **on: _denorm(aug.apply_view(image, _only(params[1], **on), per_element))[0]  # noqa: E731
    plain = view()
    np.testing.assert_allclose(plain, image[0] / 255, atol=1e-5)  # full crop, same size
    np.testing.assert_allclose(view(flip=True), plain[:, ::-1], atol=1e-5)
    solar = np.where(plain >= 0.5, 1 - plain, plain)
    np.testing.assert_allclose(view(solarize=True), solar, atol=1e-5)
    gray = view(gray=True)
    luma = plain @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(gray, np.repeat(luma[..., None], 3, -1), atol=1e-5)
    blurred = view(blur=True)
    assert blurred.std() < plain.std() and abs(blurred.mean() - plain.mean()) < 0.01
    assert not np.allclose(view(jitter=True), plain, atol=1e-3)


def test_blur_matches_reference_convolution():
    from scipy.ndimage import convolve1d

    x = np.random.default_rng(0).random((2, 40, 48, 3)).astype(np.float32)
    sigma = np.array([0.5, 1.7], np.float32)
    size = blur_kernel_size(224)
    assert size == 23 and blur_kernel_size(32) == 3
    got = gaussian_blur(tf.constant(x), tf.constant(sigma), 11).numpy()
    for b in range(2):
        d = np.arange(-5, 6)
        k = np.exp(-0.5 * (d / sigma[b]) ** 2)
        k /= k.sum()
        ref = convolve1d(convolve1d(x[b], k, axis=0, mode="mirror"), k, axis=1, mode="mirror")
        np.testing.assert_allclose(got[b], ref, atol=1e-5)


def test_color_jitter_matches_torchvision_semantics():
    x = _photo(32)[None].astype(np.float32) / 255
    factors = np.array([[1.3, 0.7, 1.15, 0.08]], np.float32)

    def gray(x):
        return x @ np.array([0.299, 0.587, 0.114], np.float32)

    def reference(x, order):
        for op in order:
            f = factors[0, op]
            if op == 0:
                x = np.clip(f * x, 0, 1)
            elif op == 1:
                x = np.clip(f * x + (1 - f) * gray(x).mean(), 0, 1)
            elif op == 2:
                x = np.clip(f * x + (1 - f) * gray(x)[..., None], 0, 1)
            else:
                x = tf.image.adjust_hue(x, f).numpy()
        return x

    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]):
        want = reference(x, order)
        for per_element in (True, False):
            got = color_jitter(tf.constant(x), factors, tf.constant([order]), per_element)
            np.testing.assert_allclose(got.numpy(), want, atol=2e-5)
    np.testing.assert_allclose(
        adjust_hue(tf.constant(x), tf.constant([0.5])).numpy(),
        tf.image.adjust_hue(x, 0.5).numpy(),
        atol=1e-5,
    )


def test_per_element_and_batched_paths_agree():
    from sklearn.datasets import load_sample_images

    image = load_sample_images().images[1][None]
    aug = TwoViewAugment(64, seed=5)
    for step in range(4):
        key = tf.constant([5, step], tf.int64)
        a = aug.augment(image, key, per_element=True)
        b = aug.augment(image, key, per_element=False)
        for u, v in zip(a, b, strict=True):
            np.testing.assert_allclose(u, v, atol=2e-3)


def test_real_photos_any_size():
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images) + [data.astronaut(), data.coffee(), data.chelsea()]
    for size in (224, 32):
        aug = TwoViewAugment(size, seed=0)
        for photo in photos:
            v1, v2 = aug(photo[None])
            assert v1.shape == v2.shape == (1, size, size, 3)
            for v in (v1, v2):
                pixels = _denorm(v)
                assert np.isfinite(pixels).all()
                assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4


def test_grayscale_batch_becomes_three_channels(fmnist_small):
    gray = fmnist_small[0][:2, :, :, None]
    rgb = np.repeat(gray, 3, axis=-1)
    a = TwoViewAugment(32, seed=0)(gray, step=0)
    b = TwoViewAugment(32, seed=0)(rgb, step=0)
    np.testing.assert_array_equal(a[0], b[0])


def test_float_input_and_value_range():
    image = _photo(48)
    a = TwoViewAugment(48, seed=2)(image[None], step=0)
    b = TwoViewAugment(48, seed=2)(image[None].astype(np.float32) / 255, step=0)
    c = TwoViewAugment(48, seed=2, value_range=(0, 255))(image[None].astype(np.float32), step=0)
    for u, v, w in zip(a, b, c, strict=True):
        np.testing.assert_allclose(u, v, atol=1e-4)
        np.testing.assert_allclose(u, w, atol=1e-4)


def test_serialisation_round_trip(tmp_path):
    aug = TwoViewAugment(32, seed=4, blur_prob=(0.5, 0.1))
    clone = TwoViewAugment.from_config(aug.get_config())
    assert clone.get_config() == aug.get_config()
    images = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), np.uint8)
    np.testing.assert_array_equal(aug(images, step=1)[0], clone(images, step=1)[0])
    inputs = keras.Input((40, 40, 3), dtype="uint8")
    model = keras.Model(inputs, aug(inputs))
    model.save(tmp_path / "aug.keras")
    loaded = keras.saving.load_model(tmp_path / "aug.keras")
    assert isinstance(loaded.layers[-1], TwoViewAugment)
    assert loaded.layers[-1].get_config() == aug.get_config()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="scale"):
        TwoViewAugment(32, scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="blur_prob"):
        TwoViewAugment(32, blur_prob=(1.5, 0.1))


def test_in_compiled_train_step_and_tf_data(fmnist_small):
    images = np.repeat(fmnist_small[0][:8, :, :, None], 3, axis=-1)
    aug = TwoViewAugment(16, seed=0)

    @tf.function(jit_compile=True)
    def step(x):
        v1, v2 = aug(x)
        return tf.reduce_mean(v1) + tf.reduce_mean(v2)

    a, b = step(images), step(images)
    assert np.isfinite(a) and a != b and int(aug.step.numpy()) == 2
    ds = tf.data.Dataset.from_tensor_slices(images).batch(4).enumerate()
    ds = ds.map(lambda i, x: aug(x, step=i), num_parallel_calls=2)
    out = list(ds)
    assert out[0][0].shape == (4, 16, 16, 3)
    np.testing.assert_allclose(out[1][0], aug(images[4:], step=1)[0], atol=1e-5)


def test_replicas_get_different_draws(fmnist_small):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    images = np.repeat(fmnist_small[0][:1, :, :, None], 3, axis=-1)
    with strategy.scope():
        aug = TwoViewAugment(32, seed=0)

    @tf.function
    def run():
        return strategy.run(lambda: aug(tf.constant(images))[0])

    per_replica = strategy.experimental_local_results(run())
    assert not np.allclose(per_replica[0], per_replica[1])
    assert int(aug.step.numpy()) == 1
