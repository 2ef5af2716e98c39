"""ResNet backbones (v1.5 layout) that expose the res4 and res5 feature maps.

Reference: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016),
with the "v1.5" stride placement (stride 2 on the 3x3 conv of a bottleneck).
"""

from __future__ import annotations

import keras
from keras import layers

from care_tf.models.batch_norm import BatchNorm
from care_tf.models.conv import MatmulConv2D
from care_tf.models.registry import register_backbone

# Stage depths and block type per ResNet depth.
RESNET_SPECS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STEMS = ("imagenet", "cifar")

# PyTorch BatchNorm defaults (momentum 0.1 there is 0.9 here).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv_initializer() -> keras.initializers.Initializer:
    """He-normal with fan_out, untruncated (PyTorch `kaiming_normal_(mode="fan_out")`)."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def batch_norm(name: str, sync: bool, gamma_zero: bool = False, dtype=None) -> BatchNorm:
    """BatchNorm with PyTorch's momentum/epsilon; `sync` averages statistics across replicas."""
    return BatchNorm(
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        synchronized=sync,
        gamma_initializer="zeros" if gamma_zero else "ones",
        name=name,
        dtype=dtype,
    )


@keras.saving.register_keras_serializable(package="care_tf")
class Subsample2D(layers.Layer):
    """Every `stride`-th row and column, from the first: `x[:, ::stride, ::stride, :]`.

    A 1x1 conv of stride s equals a 1x1 conv of stride 1 on the subsampled map
    (with "same" padding a 1x1 kernel pads nothing). ResNet projections from fewer
    than 64 channels are built that way because oneDNN's Conv2DBackpropFilter for
    1x1 stride-2 kernels with 2, 4 or 8 input channels (and <= 16 outputs) corrupts
    the heap (SIGSEGV / glibc abort) at some sizes (batch 1, or 64 px), e.g.
    ResNet-18 with base_channels 8; see docs/troubleshooting.md.

    Input: (B, H, W, C). Output: (B, ceil(H / stride), ceil(W / stride), C).
    """

    def __init__(self, stride: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)

    def call(self, inputs):
        return inputs[:, :: self.stride, :: self.stride, :]

    def compute_output_shape(self, input_shape):
        def cut(n):
            return None if n is None else -(-n // self.stride)

        b, h, w, c = input_shape
        return (b, cut(h), cut(w), c)

    def get_config(self) -> dict:
        return {**super().get_config(), "stride": self.stride}


# A 1x1 stride-1 conv on a map of at most this many positions runs as a matrix product
# (`MatmulConv2D`): 1.1-1.2x faster than oneDNN's kernels there on CPU (bench/conv_impl.py).
MATMUL_MAX_POSITIONS = 64
# Strided 1x1 convs with fewer input channels read a subsampled map first (`Subsample2D`):
# oneDNN's kernel corrupts the heap at 2-8 input channels; from 64 on it is safe and 1.4-2x
# faster than the subsampling's strided slice.
STRIDED_1X1_MIN_CHANNELS = 64


def use_matmul(kernel: int, height: int | None, width: int | None, stride: int = 1) -> bool:
    """Whether a `kernel` x `kernel` conv on an (height, width) map runs as `MatmulConv2D`.

    1x1 stride-1 convs on maps of at most `MATMUL_MAX_POSITIONS` positions; strided
    1x1 convs stay oneDNN's (its strided kernel beats slicing + product, 0.9x).
    """
    if kernel != 1 or stride != 1 or height is None or width is None:
        return False
    return height * width <= MATMUL_MAX_POSITIONS


def conv2d(x, filters: int, kernel: int, stride: int, name: str):
    """Bias-free conv with PyTorch's symmetric padding (kernel // 2 on each side).

    1x1 stride-1 convs on small maps are `MatmulConv2D` (same weights, faster on CPU). A
    strided 1x1 conv on fewer than `STRIDED_1X1_MIN_CHANNELS` channels is a
    `Subsample2D` then a 1x1 conv (same numbers, avoids a oneDNN heap corruption; see
    `Subsample2D`).
    """
    height, width = x.shape[1], x.shape[2]
    if use_matmul(kernel, height, width, stride):
        return MatmulConv2D(
            filters,
            1,
            strides=stride,
            use_bias=False,
            kernel_initializer=conv_initializer(),
            name=name,
        )(x)
    if stride > 1 and kernel == 1 and x.shape[-1] < STRIDED_1X1_MIN_CHANNELS:
        x = Subsample2D(stride, name=f"{name}_subsample")(x)
        stride = 1
    if stride > 1 and kernel > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding=padding,
        use_bias=False,
        kernel_initializer=conv_initializer(),
        name=name,
    )(x)


def _conv_bn(x, filters, kernel, stride, name, sync, relu=True):
    x = conv2d(x, filters, kernel, stride, f"{name}_conv")
    x = batch_norm(f"{name}_bn", sync)(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _shortcut(x, out_channels: int, stride: int, name: str, sync: bool):
    if stride == 1 and x.shape[-1] == out_channels:
        return x
    return _conv_bn(x, out_channels, 1, stride, f"{name}_proj", sync, relu=False)


def basic_block(x, planes: int, stride: int, inner: int, name: str, sync: bool):
    """Two 3x3 convs; output `planes` channels."""
    shortcut = _shortcut(x, planes, stride, name, sync)
    y = _conv_bn(x, inner, 3, stride, f"{name}_1", sync)
    y = _conv_bn(y, planes, 3, 1, f"{name}_2", sync, relu=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def bottleneck_block(x, planes: int, stride: int, inner: int, name: str, sync: bool):
    """1x1 -> 3x3 (stride here, v1.5) -> 1x1; output `4 * planes` channels."""
    out_channels = 4 * planes
    shortcut = _shortcut(x, out_channels, stride, name, sync)
    y = _conv_bn(x, inner, 1, 1, f"{name}_1", sync)
    y = _conv_bn(y, inner, 3, stride, f"{name}_2", sync)
    y = _conv_bn(y, out_channels, 1, 1, f"{name}_3", sync, relu=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


@keras.saving.register_keras_serializable(package="care_tf")
class ResNetBackbone(keras.Model):
    """A ResNet whose call returns `{"res4", "res5", "pooled"}`.

    `res4` is the output of stage 3 (stride 16 with the imagenet stem, 8 with the
    cifar stem), `res5` of stage 4 (stride 32 / 16), `pooled` the global average
    of `res5`. ResNet-50 at 224 px: res4 (14, 14, 1024), res5 (7, 7, 2048),
    pooled (2048,).

    Args:
        depth: int. 18, 34, 50, 101 or 152.
        width_multiplier: int or float. Multiplies the inner width of every block
            (wide-ResNet convention: ResNet-50 (2x) has bottleneck width 128 in
            stage 1, outputs unchanged). Defaults to 1.
        base_channels: int. Channels of the stem and of stage 1's `planes`;
            stage i uses `base_channels * 2**i`. 64 in the paper; smaller values
            make cheap models for tests. Defaults to 64.
        stem: str. `"imagenet"` (7x7/2 conv + 3x3/2 max-pool) or `"cifar"`
            (3x3/1 conv, no pool, for images of 64 px or less). Defaults to
            `"imagenet"`.
        image_shape: tuple. `(height, width, channels)`; `None` spatial sizes
            allow any size. Defaults to `(224, 224, 3)`.
        sync_bn: bool. Synchronise BatchNorm statistics across replicas.

    Example:
    >>> backbone = ResNetBackbone(depth=18, stem="cifar", image_shape=(32, 32, 3))
    >>> backbone(np.zeros((2, 32, 32, 3)))["res5"].shape
    TensorShape([2, 4, 4, 512])
    """

    def __init__(
        self,
        depth: int = 50,
        width_multiplier: float = 1,
        base_channels: int = 64,
        stem: str = "imagenet",
        image_shape: tuple = (224, 224, 3),
        sync_bn: bool = False,
        **kwargs,
    ):
        if depth not in RESNET_SPECS:
            raise ValueError(
                f"`depth` must be one of {sorted(RESNET_SPECS)}. Received: depth={depth}"
            )
        if stem not in STEMS:
            raise ValueError(f"`stem` must be one of {STEMS}. Received: stem={stem!r}")
        if width_multiplier <= 0 or base_channels <= 0:
            raise ValueError(
                "`width_multiplier` and `base_channels` must be positive. Received: "
                f"width_multiplier={width_multiplier}, base_channels={base_channels}"
            )
        image_shape = tuple(image_shape)
        if len(image_shape) != 3:
            raise ValueError(
                f"`image_shape` must be (height, width, channels). Received: {image_shape}"
            )
        block_type, stage_depths = RESNET_SPECS[depth]
        block_fn = bottleneck_block if block_type == "bottleneck" else basic_block

        inputs = keras.Input(shape=image_shape, name="images")
        if stem == "imagenet":
            x = _conv_bn(inputs, base_channels, 7, 2, "stem", sync_bn)
            x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
            x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
        else:
            x = _conv_bn(inputs, base_channels, 3, 1, "stem", sync_bn)

        features = []
        for stage, num_blocks in enumerate(stage_depths):
            planes = base_channels * 2**stage
            inner = int(planes * width_multiplier)
            for block in range(num_blocks):
                stride = 2 if (stage > 0 and block == 0) else 1
                x = block_fn(x, planes, stride, inner, f"stage{stage + 1}_block{block}", sync_bn)
            features.append(x)
        res4, res5 = features[2], features[3]
        pooled = layers.GlobalAveragePooling2D(name="pool")(res5)
        outputs = {"res4": res4, "res5": res5, "pooled": pooled}
        kwargs.setdefault("name", f"resnet{depth}")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        self.depth = depth
        self.width_multiplier = width_multiplier
        self.base_channels = base_channels
        self.stem = stem
        self.image_shape = image_shape
        self.sync_bn = sync_bn

    @property
    def res4_channels(self) -> int:
        return int(self.output["res4"].shape[-1])

    @property
    def res5_channels(self) -> int:
        return int(self.output["res5"].shape[-1])

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "depth": self.depth,
            "width_multiplier": self.width_multiplier,
            "base_channels": self.base_channels,
            "stem": self.stem,
            "image_shape": self.image_shape,
            "sync_bn": self.sync_bn,
        }

    @classmethod
    def from_config(cls, config: dict) -> ResNetBackbone:
        return cls(**config)


def _resnet_factory(depth: int, width_multiplier: float = 1):
    def factory(**kwargs) -> ResNetBackbone:
        kwargs.setdefault("width_multiplier", width_multiplier)
        if width_multiplier != 1:
            kwargs.setdefault("name", f"resnet{depth}x{width_multiplier:g}")
        return ResNetBackbone(depth=depth, **kwargs)

    return factory


for _depth in RESNET_SPECS:
    register_backbone(f"resnet{_depth}")(_resnet_factory(_depth))
register_backbone("resnet50x2")(_resnet_factory(50, 2))
