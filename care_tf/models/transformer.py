"""The T-stream: a BoTNet-style stack of multi-head self-attention bottlenecks on res4.

Reference: Srinivas et al., "Bottleneck Transformers for Visual Recognition"
(CVPR 2021), as used by CARE (arXiv:2110.05340) on the CNN's res4 map.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from care_tf.models.conv import MatmulConv2D
from care_tf.models.resnet import batch_norm, conv_initializer, use_matmul


def _conv(
    filters: int, kernel: int, name: str, dtype, stride: int = 1, matmul: bool = False
) -> layers.Conv2D:
    """Bias-free conv with the backbone's init (He-normal fan_out, as the authors' effective).

    `matmul=True` builds a `MatmulConv2D` (same weights and output, faster on CPU
    where oneDNN is slow: 1x1 on small maps, the 3x3 stride-2 shortcut).
    """
    conv_class = MatmulConv2D if matmul else layers.Conv2D
    return conv_class(
        filters,
        kernel,
        strides=stride,
        padding="valid",
        use_bias=False,
        kernel_initializer=conv_initializer(),
        name=name,
        dtype=dtype,
    )


@keras.saving.register_keras_serializable(package="care_tf")
class MultiHeadSelfAttention2D(keras.layers.Layer):
    """All-to-all self-attention over an (H, W) map with an absolute 2-D position embedding.

    logits[i, j] = q_i . k_j + q_i . (H[y_j] + W[x_j]), q scaled by head_dim^-0.5,
    softmax over keys j, output = attention . v with heads merged back.

    Args:
        num_heads: int. Number of heads. Defaults to 4.
        head_dim: int. Channels per head. Defaults to 128.

    Input: (B, H, W, C). Output: (B, H, W, num_heads * head_dim). The position
    embedding is sized from the input it is built for; calling on another size
    raises an error.
    """

    def __init__(self, num_heads: int = 4, head_dim: int = 128, **kwargs):
        super().__init__(**kwargs)
        if num_heads <= 0 or head_dim <= 0:
            raise ValueError(
                f"`num_heads` and `head_dim` must be positive. Received: num_heads={num_heads}, "
                f"head_dim={head_dim}"
            )
        self.num_heads = num_heads
        self.head_dim = head_dim

    def build(self, input_shape):
        _, height, width, _ = input_shape
        if height is None or width is None:
            raise ValueError(
                "MultiHeadSelfAttention2D needs a static feature-map size to size its position "
                f"embedding. Received input shape {tuple(input_shape)}: give the backbone a "
                "fixed `image_shape`."
            )
        self.fmap_size = (int(height), int(width))
        inner = self.num_heads * self.head_dim
        self.qkv = _conv(
            3 * inner, 1, "qkv", self.dtype_policy, matmul=use_matmul(1, height, width)
        )
        self.qkv.build(input_shape)
        # One initializer per table: an unseeded Keras initializer fixes its seed when
        # made, so drawing one twice gives equal tables (then (y, x) and (x, y) share an
        # embedding). Two instances draw independently, each from Keras' global seed.
        self.pos_height = self.add_weight(
            shape=(self.fmap_size[0], self.head_dim),
            initializer=keras.initializers.RandomNormal(stddev=self.head_dim**-0.5),
            name="pos_height",
        )
        self.pos_width = self.add_weight(
            shape=(self.fmap_size[1], self.head_dim),
            initializer=keras.initializers.RandomNormal(stddev=self.head_dim**-0.5),
            name="pos_width",
        )

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        if (height, width) != self.fmap_size:
            raise ValueError(
                f"This attention layer was built for a {self.fmap_size[0]}x{self.fmap_size[1]} "
                f"feature map but got {height}x{width}. Rebuild the model for the new image "
                "size (the position embedding is sized from the feature map)."
            )
        n, h, d = height * width, self.num_heads, self.head_dim
        qkv = self.qkv(inputs)
        qkv = ops.reshape(qkv, (-1, n, 3, h, d))
        q, k, v = ops.unstack(qkv, 3, axis=2)  # (B, N, heads, d); gradient: one stack
        q = q * ops.cast(d**-0.5, q.dtype)
        # p_j = H[y] + W[x] for key j = y * width + x.
        pos = ops.reshape(self.pos_height[:, None, :] + self.pos_width[None, :, :], (n, d))
        pos = ops.cast(pos, q.dtype)
        logits = ops.einsum("bihd,bjhd->bhij", q, k) + ops.einsum("bihd,jd->bhij", q, pos)
        attention = ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), v.dtype)
        out = ops.einsum("bhij,bjhd->bihd", attention, v)
        return ops.reshape(out, (-1, height, width, h * d))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], self.num_heads * self.head_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads, "head_dim": self.head_dim})
        return config


@keras.saving.register_keras_serializable(package="care_tf")
class BoTBlock(keras.layers.Layer):
    """A bottleneck whose 3x3 conv is replaced by MHSA (BoTNet).

    main: 1x1 conv (-> inner) + BN + ReLU + MHSA [+ 2x2 avg-pool] + BN + ReLU +
    1x1 conv (-> out) + BN; shortcut: identity, or 3x3 conv (stride 2 when
    downsampling) + BN + ReLU when the shape changes; output ReLU(sum).

    Initialisation (the authors' effective one): every conv He-normal fan_out
    (the backbone's `conv_initializer`), every BN gamma 1 and beta 0, so the
    attention branch is on at step 0. `zero_init_residual=True` starts the last
    BN's gamma at 0 instead (the branch off: the block is ReLU(shortcut)).

    Args:
        out_channels: int. Output channels.
        num_heads: int. Attention heads.
        head_dim: int. Channels per head; inner width = num_heads * head_dim.
        downsample: bool. Halve H and W (avg-pool after attention, stride-2 shortcut).
        sync_bn: bool. Synchronised BatchNorm across replicas. Defaults to False
            (per-replica statistics, as the authors' TransStack).
        zero_init_residual: bool. Start the last BN's gamma at 0. Defaults to False.

    Input: (B, H, W, C). Output: (B, H/s, W/s, out_channels), s = 2 if downsample.
    """

    def __init__(
        self,
        out_channels: int,
        num_heads: int = 4,
        head_dim: int = 128,
        downsample: bool = False,
        sync_bn: bool = False,
        zero_init_residual: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.out_channels = out_channels
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.downsample = downsample
        self.sync_bn = sync_bn
        self.zero_init_residual = zero_init_residual

    def build(self, input_shape):
        in_channels = input_shape[-1]
        inner = self.num_heads * self.head_dim
        dt, sync = self.dtype_policy, self.sync_bn
        stride = 2 if self.downsample else 1
        self.project_shortcut = self.downsample or in_channels != self.out_channels
        if self.project_shortcut:
            self.shortcut_pad = layers.ZeroPadding2D(1, dtype=dt, name="shortcut_pad")
            # 3x3 stride 2 as one matrix product: 2.1x faster than oneDNN on CPU at
            # ResNet-50 sizes (bench/conv_impl.py); stride 1 stays a Conv2D.
            self.shortcut_conv = _conv(
                self.out_channels, 3, "shortcut_conv", dt, stride, matmul=stride > 1
            )
            self.shortcut_bn = batch_norm("shortcut_bn", sync, dtype=dt)
        b, h, w, _ = input_shape
        self.conv_in = _conv(inner, 1, "conv_in", dt, matmul=use_matmul(1, h, w))
        self.bn_in = batch_norm("bn_in", sync, dtype=dt)
        self.attention = MultiHeadSelfAttention2D(
            self.num_heads, self.head_dim, name="mhsa", dtype=dt
        )
        self.pool = layers.AveragePooling2D(2, dtype=dt, name="pool") if self.downsample else None
        self.bn_mid = batch_norm("bn_mid", sync, dtype=dt)
        h_out, w_out = (h // 2, w // 2) if self.downsample else (h, w)
        self.conv_out = _conv(
            self.out_channels, 1, "conv_out", dt, matmul=use_matmul(1, h_out, w_out)
        )
        self.bn_out = batch_norm("bn_out", sync, gamma_zero=self.zero_init_residual, dtype=dt)

        # Build every sublayer now, so weights exist right after construction.
        b, h, w, _ = input_shape
        if self.project_shortcut:
            padded = (b, h + 2, w + 2, in_channels)
            self.shortcut_conv.build(padded)
            self.shortcut_bn.build(self.shortcut_conv.compute_output_shape(padded))
        self.conv_in.build(input_shape)
        self.bn_in.build((b, h, w, inner))
        self.attention.build((b, h, w, inner))
        if self.downsample:
            h, w = h // 2, w // 2
        self.bn_mid.build((b, h, w, inner))
        self.conv_out.build((b, h, w, inner))
        self.bn_out.build((b, h, w, self.out_channels))

    def call(self, inputs, training=None):
        if self.project_shortcut:
            shortcut = self.shortcut_conv(self.shortcut_pad(inputs))
            shortcut = ops.relu(self.shortcut_bn(shortcut, training=training))
        else:
            shortcut = inputs
        x = ops.relu(self.bn_in(self.conv_in(inputs), training=training))
        x = self.attention(x)
        if self.pool is not None:
            x = self.pool(x)
        x = ops.relu(self.bn_mid(x, training=training))
        x = self.bn_out(self.conv_out(x), training=training)
        return ops.relu(x + shortcut)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        if self.downsample:
            h, w = h // 2, w // 2
        return (b, h, w, self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "out_channels": self.out_channels,
                "num_heads": self.num_heads,
                "head_dim": self.head_dim,
                "downsample": self.downsample,
                "sync_bn": self.sync_bn,
                "zero_init_residual": self.zero_init_residual,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="care_tf")
class TransStack(keras.layers.Layer):
    """CARE's transformer stream: `num_blocks` BoT blocks on the res4 map.

    Args:
        out_channels: int. Output channels, the backbone's res5 channels (2048 for
            ResNet-50). Defaults to 2048.
        num_blocks: int. Number of BoT blocks. Defaults to 5.
        num_heads: int. Attention heads. Defaults to 4.
        head_dim: int or None. Channels per head; `None` means
            `out_channels // proj_factor // num_heads`. Defaults to None.
        proj_factor: int. Bottleneck ratio: inner width = out_channels / proj_factor.
            Defaults to 4.
        downsample: bool. The first block halves the map (14x14 -> 7x7), matching res5.
            Defaults to True.
        sync_bn: bool. Synchronise the BatchNorm statistics across replicas.
            Defaults to False: per-replica statistics, as in the authors' code
            (plain `BatchNorm2d` in the TransStack, synchronised BN elsewhere).
        zero_init_residual: bool. Start every block's last BN gamma at 0 (each
            attention branch off at step 0, what the BoT block's own code asks
            for). Defaults to False: gamma 1, the authors' effective init.

    Initialisation, as the authors' model ends up after their ResNet constructor
    re-initialises every conv and BN: convs He-normal fan_out (untruncated,
    std sqrt(2 / fan_out), the backbone's `conv_initializer`), BN gamma 1 and
    beta 0, position embeddings N(0, 1) x head_dim^-0.5.

    Input: res4 (B, H, W, C4). Output: (B, H/2, W/2, out_channels) with downsample.
    ResNet-50 at 224 px: 32,813,568 parameters.

    Example:
    >>> stack = TransStack(out_channels=512)
    >>> stack(np.zeros((2, 8, 8, 256), "float32")).shape
    TensorShape([2, 4, 4, 512])
    """

    def __init__(
        self,
        out_channels: int = 2048,
        num_blocks: int = 5,
        num_heads: int = 4,
        head_dim: int | None = None,
        proj_factor: int = 4,
        downsample: bool = True,
        sync_bn: bool = False,
        zero_init_residual: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_blocks < 1:
            raise ValueError(f"`num_blocks` must be >= 1. Received: num_blocks={num_blocks}")
        if proj_factor < 1 or out_channels % proj_factor:
            raise ValueError(
                f"`proj_factor` must divide `out_channels`. Received: proj_factor={proj_factor}, "
                f"out_channels={out_channels}"
            )
        inner = out_channels // proj_factor
        if head_dim is None:
            if num_heads < 1 or inner % num_heads:
                raise ValueError(
                    "`num_heads` must divide the inner width out_channels / proj_factor = "
                    f"{inner}. "
                    f"Received: num_heads={num_heads}. Use a divisor of {inner} or set `head_dim`."
                )
            head_dim = inner // num_heads
        elif num_heads * head_dim != inner:
            raise ValueError(
                f"`num_heads * head_dim` must equal out_channels / proj_factor = {inner}. "
                f"Received: num_heads={num_heads}, head_dim={head_dim}"
            )
        self.out_channels = out_channels
        self.num_blocks = num_blocks
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.proj_factor = proj_factor
        self.downsample = downsample
        self.sync_bn = sync_bn
        self.zero_init_residual = zero_init_residual
        self.blocks = [
            BoTBlock(
                out_channels,
                num_heads,
                head_dim,
                downsample=downsample and i == 0,
                sync_bn=sync_bn,
                zero_init_residual=zero_init_residual,
                dtype=self.dtype_policy,
                name=f"block{i + 1}",
            )
            for i in range(num_blocks)
        ]

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"TransStack expects a 4-D res4 map (B, H, W, C); got {input_shape}")
        if self.downsample and (input_shape[1] % 2 or input_shape[2] % 2):
            raise ValueError(
                f"With downsample=True the res4 map needs an even size; got {input_shape[1:3]}. "
                "Use an image size divisible by 32 (imagenet stem) or 16 (cifar stem)."
            )
        shape = tuple(input_shape)
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)
        self.input_fmap = tuple(input_shape[1:3])

    def call(self, inputs, training=None):
        x = inputs
        for block in self.blocks:
            x = block(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for block in self.blocks:
            shape = block.compute_output_shape(shape)
        return shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "out_channels": self.out_channels,
                "num_blocks": self.num_blocks,
                "num_heads": self.num_heads,
                "head_dim": self.head_dim,
                "proj_factor": self.proj_factor,
                "downsample": self.downsample,
                "sync_bn": self.sync_bn,
                "zero_init_residual": self.zero_init_residual,
            }
        )
        return config
