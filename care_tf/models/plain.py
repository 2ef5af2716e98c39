"""A copy of a CARE backbone in Keras' built-in layers: loads with Keras alone.

`ResNetBackbone` uses three care_tf layers, each a faster or safer way to compute what
a built-in layer computes, with the same weights:

| care_tf layer  | built-in copy                               | weights copied        |
|----------------|---------------------------------------------|-----------------------|
| `BatchNorm`    | `BatchNormalization` (unsynchronised)       | gamma, beta, moving statistics |
| `MatmulConv2D` | `Conv2D` (same config)                      | kernel (and bias)     |
| `Subsample2D`  | `MaxPooling2D(pool_size=1, strides=stride)` | none                  |

A strided 1x1 `MatmulConv2D` becomes a 1x1 pooling of that stride then a stride-1
`Conv2D`, as `Subsample2D` does (oneDNN's strided 1x1 kernel corrupts the heap at 2-8
input channels; see docs/troubleshooting.md). Every other layer is copied from its own
config. Batch norms lose `synchronized` (Keras accepts it with TensorFlow only; it
matters only when training on several replicas).

In inference mode the copy gives the backbone's outputs to float32 round-off (the same
kernels on the same weights). In training mode Keras' `BatchNormalization` updates the
moving variance with the biased batch variance (care_tf's `BatchNorm` with the unbiased
one, as PyTorch) and is slower on CPU; continue pretraining with care_tf's model.keras.
"""

from __future__ import annotations

import re

import keras
from keras import layers

from care_tf.models.batch_norm import BatchNorm
from care_tf.models.conv import MatmulConv2D
from care_tf.models.resnet import RESNET_SPECS, Subsample2D


def _builtin_layer(layer: layers.Layer, subsample: dict[int, int]) -> layers.Layer:
    """A new built-in layer computing what `layer` computes (no weights copied yet)."""
    config = layer.get_config()
    if isinstance(layer, BatchNorm):
        # Keras refuses synchronized=True outside TensorFlow; a copy must load anywhere.
        return layers.BatchNormalization.from_config({**config, "synchronized": False})
    if isinstance(layer, MatmulConv2D):
        stride = tuple(layer.strides)
        if tuple(layer.kernel_size) == (1, 1) and stride != (1, 1):
            config["strides"] = (1, 1)
            new = layers.Conv2D.from_config(config)
            subsample[id(new)] = stride[0]
            return new
        return layers.Conv2D.from_config(config)
    if isinstance(layer, Subsample2D):
        return _subsampling(layer.stride, layer.name, layer.dtype_policy)
    return layer.__class__.from_config(config)


def _subsampling(stride: int, name: str, dtype=None) -> layers.Layer:
    """`x[:, ::stride, ::stride, :]` as a built-in layer (ceil(H / stride) rows)."""
    return layers.MaxPooling2D(pool_size=1, strides=stride, padding="valid", name=name, dtype=dtype)


def plain_copy(model: keras.Model) -> keras.Model:
    """A functional copy of `model` made of Keras' built-in layers, weights copied.

    Args:
        model: keras.Model. A functional model, e.g. a `ResNetBackbone` or the
            multi-output backbone of a CARE model; nested functional models are
            copied too.

    Returns:
        A `keras.Model` (class `Functional`) with the same inputs, outputs (a dict stays
        a dict), layer names and weights. It shares no variable with `model`. Layers of
        other packages than Keras and care_tf are copied as they are (loading the copy
        then needs their code, as loading `model` does).

    Raises:
        ValueError: `model` is not a functional model.
    """
    if not hasattr(model, "_run_through_graph"):
        raise ValueError(
            f"{model.name!r} is a {type(model).__name__}, not a functional Keras model: only "
            "a graph of layers can be copied into Keras' built-in layers."
        )
    pairs: list[tuple[layers.Layer, layers.Layer]] = []
    subsample: dict[int, int] = {}

    def clone(layer):
        new = _builtin_layer(layer, subsample)
        pairs.append((layer, new))
        return new

    def call(layer, *args, **kwargs):
        stride = subsample.get(id(layer))
        if stride is not None:
            pool = _subsampling(stride, f"{layer.name}_subsample", layer.dtype_policy)
            args = (pool(args[0]), *args[1:])
        return layer(*args, **kwargs)

    copy = keras.models.clone_model(model, clone_function=clone, call_function=call, recursive=True)
    for old, new in pairs:
        new.set_weights(old.get_weights())
    return copy


def plain_feature_extractor(
    model: keras.Model, *, include_normalization: bool = False, name: str | None = None
) -> keras.Model:
    """`care_tf.feature_extractor(model)` as a copy in Keras' built-in layers.

    This is what a run's `backbone.keras` holds: `keras.saving.load_model` reads it in a
    process that never imports care_tf (any Keras 3 backend), and it gives the same
    features as `feature_extractor(model)`. Unlike `feature_extractor` it shares no
    weights with `model`.

    Args:
        model: a CARE model, a multi-output CARE backbone or a feature extractor.
        include_normalization: bool. Put the ImageNet mean/std normalisation inside the
            model (a `Normalization` layer), so it takes float pixels in [0, 255].
            Defaults to False (normalised images).
        name: str. Name of the returned model. Defaults to `"<backbone>_extractor"`.

    Returns:
        A functional `keras.Model`: (B, H, W, 3) -> (B, C5), holding the multi-output
        backbone (`{"res4", "res5", "pooled"}`) as its inner model.
    """
    from care_tf.models.backbone import feature_extractor, feature_maps_model

    maps = plain_copy(feature_maps_model(model))
    return feature_extractor(maps, include_normalization=include_normalization, name=name)


def resnet_arguments(model: keras.Model) -> dict:
    """The `ResNetBackbone` arguments of a ResNet backbone or of its plain copy.

    A plain copy is a `Functional` whose config lists layers, not `depth` or `stem`;
    they are read back from its layer names and kernel shapes (`stem_conv`,
    `stageS_blockB_add`, `stage1_block0_1_conv`, `stage1_block0_3_conv`).

    Returns:
        `{"depth", "width_multiplier", "base_channels", "stem", "image_shape"}` (`depth`
        None for stage depths no registered ResNet has), or {} when `model` has no
        `stem_conv` layer (not laid out as `ResNetBackbone`).
    """
    by_name = {layer.name: layer for layer in model.layers}
    stem = by_name.get("stem_conv")
    first = by_name.get("stage1_block0_1_conv")
    if stem is None or first is None:
        return {}
    blocks = [0, 0, 0, 0]
    for name in by_name:
        match = re.fullmatch(r"stage([1-4])_block\d+_add", name)
        if match:
            blocks[int(match[1]) - 1] += 1
    kind = "bottleneck" if "stage1_block0_3_conv" in by_name else "basic"
    depth = next((d for d, spec in RESNET_SPECS.items() if spec == (kind, tuple(blocks))), None)
    base = int(stem.filters)
    width = first.filters / base
    return {
        "depth": depth,
        "width_multiplier": int(width) if width == int(width) else width,
        "base_channels": base,
        "stem": "imagenet" if stem.kernel_size[0] == 7 else "cifar",
        "image_shape": tuple(model.inputs[0].shape[1:]),
    }
