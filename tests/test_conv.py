"""MatmulConv2D: the same convolution as Conv2D, as one matrix product (care_tf.models.conv)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from care_tf.models.conv import MatmulConv2D, col2im, image_patches
from care_tf.models.resnet import ResNetBackbone, use_matmul


def numpy_conv(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """Direct VALID convolution (cross-correlation), NHWC x HWIO, by loops over taps."""
    k = w.shape[0]
    n, h, wd, _ = x.shape
    ho, wo = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((n, ho, wo, w.shape[3]))
    for dy in range(k):
        for dx in range(k):
            last_y, last_x = dy + stride * (ho - 1) + 1, dx + stride * (wo - 1) + 1
            rows = x[:, dy:last_y:stride, dx:last_x:stride]
            out += np.einsum("nhwc,cd->nhwd", rows, w[dy, dx])
    return out


@pytest.mark.parametrize(
    "kernel,stride,size",
    [(3, 2, 9), (3, 2, 10), (3, 1, 6), (1, 1, 5), (1, 2, 7), (1, 2, 8)],
)
def test_matmul_conv_matches_numpy_and_conv2d(kernel, stride, size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size, 6)).astype("float32")
    layer = MatmulConv2D(5, kernel, strides=stride, use_bias=False)
    y = layer(x).numpy()
    w = layer.kernel.numpy()
    np.testing.assert_allclose(y, numpy_conv(x.astype("float64"), w, stride), rtol=1e-5, atol=1e-5)

    reference = keras.layers.Conv2D(5, kernel, strides=stride, use_bias=False)
    reference.build(x.shape)
    reference.kernel.assign(w)
    with tf.GradientTape(persistent=True) as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        loss_m = tf.reduce_sum(tf.sin(layer(xt)))
        loss_r = tf.reduce_sum(tf.sin(reference(xt)))
    for got, want in zip(
        tape.gradient(loss_m, [xt, layer.kernel]),
        tape.gradient(loss_r, [xt, reference.kernel]),
        strict=True,
    ):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,size", [(3, 2, 9), (3, 2, 16), (3, 1, 5), (2, 2, 6)])
def test_col2im_is_the_adjoint_of_extract_patches(kernel, stride, size):
    """<patches(x), c> == <x, col2im(c)> for random x and c (the dot-product test)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, size, size, 3))
    columns = tf.image.extract_patches(
        tf.constant(x), [1, kernel, kernel, 1], [1, stride, stride, 1], [1, 1, 1, 1], "VALID"
    ).numpy()
    c = rng.normal(size=columns.shape)
    back = col2im(tf.constant(c), kernel, stride, size, size).numpy()
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(columns * c), np.sum(x * back), rtol=1e-10)
    # and the custom gradient of image_patches is that adjoint
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(image_patches(xt, kernel, stride) * c)
    np.testing.assert_allclose(tape.gradient(loss, xt).numpy(), back, rtol=1e-10)


def test_matmul_conv_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="padding='valid'"):
        MatmulConv2D(4, 3, padding="same")
    with pytest.raises(ValueError, match="dilation"):
        MatmulConv2D(4, 3, dilation_rate=2)


def test_matmul_conv_saves_and_reloads(tmp_path):
    inputs = keras.Input((8, 8, 4))
    outputs = MatmulConv2D(6, 3, strides=2, use_bias=False, name="conv")(inputs)
    model = keras.Model(inputs, outputs)
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded.get_layer("conv"), MatmulConv2D)
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 4)).astype("float32")
    np.testing.assert_array_equal(model(x).numpy(), reloaded(x).numpy())


def test_which_resnet50_convs_are_matrix_products():
    """1x1 stride-1 convs on maps of <= 64 positions: ResNet-50's stage 4 at 224 px (7x7)."""
    assert use_matmul(1, 7, 7) and use_matmul(1, 8, 8)
    assert not use_matmul(1, 14, 14) and not use_matmul(3, 7, 7) and not use_matmul(1, None, 7)
    assert not use_matmul(1, 14, 14, stride=2)  # oneDNN's strided kernel is faster
    backbone = ResNetBackbone(depth=50, image_shape=(224, 224, 3))
    matmul = {layer.name for layer in backbone.layers if isinstance(layer, MatmulConv2D)}
    assert matmul == {
        "stage4_block0_3_conv",
        "stage4_block1_1_conv",
        "stage4_block1_3_conv",
        "stage4_block2_1_conv",
        "stage4_block2_3_conv",
    }
