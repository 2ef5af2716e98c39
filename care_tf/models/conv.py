"""A Conv2D computed as one matrix product (im2col), for convolutions oneDNN runs slowly.

On CPU, TensorFlow's oneDNN convolutions are slower than one matrix product for two
kinds of convolution in CARE (one thread, batch 8, fp32, forward + backward,
`bench/conv_impl.py`): 1x1 stride-1 convolutions on maps of 8x8 or fewer positions
(ResNet-50's stage 4, the TransStack's blocks 2-5: 1.1-1.2x faster as a product) and
the TransStack's 3x3 stride-2 shortcut from 1024 to 2048 channels (2.1x, a fifth of
the whole step before). The layer below is `keras.layers.Conv2D` with the same weights
and config; only the arithmetic's order differs (float32 round-off).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


def col2im(columns, kernel: int, stride: int, height: int, width: int):
    """The adjoint of `tf.image.extract_patches` (k x k patches, stride s, VALID).

    columns: (B, Ho, Wo, k * k * C), channels ordered (row, column, channel) as
    `extract_patches` gives them. Returns (B, height, width, C): each patch value
    added back at the pixel it was read from.
    """
    b = tf.shape(columns)[0]
    ho, wo = columns.shape[1], columns.shape[2]
    c = columns.shape[3] // (kernel * kernel)
    taps = tf.reshape(columns, (b, ho, wo, kernel, kernel, c))
    total = None
    for dy in range(kernel):
        for dx in range(kernel):
            tap = taps[:, :, :, dy, dx, :]  # lands on rows dy + s*i, columns dx + s*j
            if stride > 1:
                tap = tf.pad(
                    tap[:, :, None, :, None, :],
                    [[0, 0], [0, 0], [0, stride - 1], [0, 0], [0, stride - 1], [0, 0]],
                )
                tap = tf.reshape(tap, (b, ho * stride, wo * stride, c))
            tap = tap[:, : height - dy, : width - dx]
            rows, cols = tap.shape[1], tap.shape[2]
            tap = tf.pad(tap, [[0, 0], [dy, height - dy - rows], [dx, width - dx - cols], [0, 0]])
            total = tap if total is None else total + tap
    return total


def image_patches(images, kernel: int, stride: int):
    """`tf.image.extract_patches` (VALID) with a fast gradient (`col2im`).

    images: (B, H, W, C). Returns (B, (H - k) // s + 1, (W - k) // s + 1, k * k * C).
    """
    height, width = images.shape[1], images.shape[2]

    @tf.custom_gradient
    def patches(x):
        columns = tf.image.extract_patches(
            x, [1, kernel, kernel, 1], [1, stride, stride, 1], [1, 1, 1, 1], "VALID"
        )

        def grad(upstream):
            return col2im(upstream, kernel, stride, height, width)

        return columns, grad

    return patches(images)


@keras.saving.register_keras_serializable(package="care_tf")
class MatmulConv2D(layers.Conv2D):
    """`keras.layers.Conv2D` computed as patches x kernel: one matrix product.

    Same arguments, weights and output as `Conv2D`, for `padding="valid"` (any
    kernel) or a 1x1 kernel (where "same" pads nothing), no dilation, no groups,
    channels last. A 1x1 kernel of stride s reads every s-th row and column.

    Input: (B, H, W, C) with static H, W, C. Output: (B, Ho, Wo, filters).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        size = self.kernel_size
        if size[0] != size[1] or self.strides[0] != self.strides[1]:
            raise ValueError(
                f"MatmulConv2D needs a square kernel and stride; got {size}, {self.strides}"
            )
        if self.padding != "valid" and size != (1, 1):
            raise ValueError(f"MatmulConv2D pads nothing: use padding='valid' (got {self.padding})")
        if self.dilation_rate != (1, 1) or self.groups != 1:
            raise ValueError("MatmulConv2D supports no dilation and no groups")
        if self.data_format != "channels_last":
            raise ValueError("MatmulConv2D supports channels_last only")

    def convolution_op(self, inputs, kernel):
        k, s = self.kernel_size[0], self.strides[0]
        if k == 1:
            columns = inputs[:, ::s, ::s, :] if s > 1 else inputs
        else:
            columns = image_patches(inputs, k, s)
        batch = tf.shape(columns)[0]
        height, width, depth = columns.shape[1], columns.shape[2], columns.shape[3]
        flat = tf.reshape(columns, (-1, depth))
        out = tf.matmul(flat, tf.reshape(kernel, (depth, self.filters)))
        return tf.reshape(out, (batch, height, width, self.filters))
