"""keras-hub at the edge: the one module that maps care_tf weights into keras-hub models.

`hub_backbone(source)` rebuilds a care_tf ResNet as a `keras_hub.models.ResNetBackbone`
holding the same weights: its `pyramid_outputs` P2..P5 are our res2..res5 maps (the
outputs of stages 1..4). `to_keras_hub(source, preset_dir)` writes that backbone as a
keras-hub preset directory (and, with a classifier, a `ResNetImageClassifier` preset
with its preprocessor), which `keras_hub.models.ResNetBackbone.from_preset(preset_dir)`
loads without care_tf.

Which runs transfer: keras-hub's ResNet (v1.5, PyTorch padding, BatchNorm epsilon 1e-5
as ours) has the ImageNet stem (7x7/2 conv + 3x3/2 max-pool), stage widths 64, 128,
256, 512 and bottleneck width = stage width. So ResNet-18/34/50/101/152 runs with the
ImageNet stem, `base_channels` 64 and `width_multiplier` 1 transfer; the CIFAR stem
(runs at 64 px or less by default), narrower runs (`base_channels` 8, the quickstart)
and wide ResNets (ResNet-50 (2x)) cannot, and say so in one `TransferError`.

keras-hub is imported when first needed (`pip install "care_tf[transfer]"`).

Example:
>>> hub = hub_backbone("runs/care_r50")          # keras_hub.models.ResNetBackbone
>>> maps = keras.Model(hub.inputs, hub.pyramid_outputs)(images)   # {"P2": ..., "P5": ...}
>>> to_keras_hub("runs/care_r50", "presets/care_r50_hub")
>>> keras_hub.models.ResNetBackbone.from_preset("presets/care_r50_hub")
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil

import keras
import numpy as np

from care_tf.constants import IMAGENET_MEAN, IMAGENET_STD

HUB_STEM_KERNEL = 7
HUB_STAGE_WIDTHS = (64, 128, 256, 512)
HUB_STAGE_STRIDES = (1, 2, 2, 2)
PRESET_FILES = ("config.json", "model.weights.h5")


class TransferError(ValueError):
    """A model or file that cannot go to keras-hub; the message names the cause and the
    way out."""


def _keras_hub():
    try:
        import keras_hub
    except ImportError as err:
        raise TransferError(
            f"keras-hub is not installed ({err}): install the transfer extra, "
            '`pip install "care_tf[transfer]"` (keras-hub 0.32).'
        ) from None
    return keras_hub


# ------------------------------------------------------------------ our side
def _is_classifier(model) -> bool:
    return hasattr(model, "backbone") and hasattr(model, "head")


def _load_path(path: str) -> keras.Model:
    """The model a path names: a run directory (backbone.keras / model.keras, else its
    classifier.keras), a preset directory or a `.keras` file."""
    from care_tf import model_dir as layout
    from care_tf import presets

    if not os.path.exists(path):
        raise TransferError(
            f"{path!r} does not exist: pass a training run directory, a preset directory, "
            "a converted run (python -m care_tf.convert) or a .keras file."
        )
    try:
        if presets.is_preset_dir(path):
            return presets.load_preset(path)
        try:
            return layout.load_feature_model(path)
        except FileNotFoundError:
            if os.path.isfile(layout.path(path, layout.CLASSIFIER)):
                return layout.load_classifier(path)  # a run with only a classifier
            raise
    except (FileNotFoundError, ValueError) as err:
        raise TransferError(str(err)) from None


def care_resnet(source) -> keras.Model:
    """Our multi-output `ResNetBackbone` behind `source`.

    Args:
        source: a run directory, a preset directory, a converted authors' run, a
            `.keras` file, or a model (CARE model, ResNetBackbone, feature extractor,
            `LinearClassifier`).

    Raises:
        TransferError: nothing loadable there, or not a care_tf ResNet.
    """
    from care_tf.models.backbone import feature_maps_model
    from care_tf.models.resnet import ResNetBackbone

    model = source if isinstance(source, keras.Model) else _load_path(os.fspath(source))
    if _is_classifier(model):
        model = model.backbone
    try:
        maps = feature_maps_model(model)
    except ValueError as err:
        raise TransferError(str(err)) from None
    if not isinstance(maps, ResNetBackbone):
        maps = _from_plain_copy(maps)
    return maps


def _from_plain_copy(maps: keras.Model) -> keras.Model:
    """Our `ResNetBackbone` holding the weights of its copy in Keras' built-in layers (what
    a run's backbone.keras holds, `care_tf.models.plain`), layer by layer by name."""
    from care_tf.models.plain import resnet_arguments
    from care_tf.models.resnet import ResNetBackbone

    args = resnet_arguments(maps)
    if not args.get("depth"):
        raise TransferError(
            f"{maps.name!r} is a {type(maps).__name__}, not a care_tf ResNet: only care_tf "
            "ResNets map onto keras_hub.models.ResNetBackbone."
        )
    resnet = ResNetBackbone(**args, name=maps.name)
    by_name = {layer.name: layer for layer in maps.layers}
    for layer in resnet.layers:
        if layer.weights:
            layer.set_weights(by_name[layer.name].get_weights())
    return resnet


def check_transferable(backbone) -> None:
    """Raises TransferError when keras-hub's ResNetBackbone cannot express `backbone`."""
    name = backbone.name
    if backbone.stem != "imagenet":
        raise TransferError(
            f"{name!r} has the CIFAR stem (3x3/1 conv, no max-pool; care_tf picks it for "
            "images of 64 px or less), which keras_hub's ResNetBackbone cannot express (its "
            "stem is a 7x7/2 conv and a 3x3/2 max-pool): pretrain with `stem: imagenet` "
            "to transfer through keras-hub, or fine-tune this run with care_tf "
            "(python -m care_tf.evaluate finetune)."
        )
    if backbone.base_channels != HUB_STAGE_WIDTHS[0]:
        raise TransferError(
            f"{name!r} has base_channels {backbone.base_channels}, but keras_hub's "
            f"ResNetBackbone takes stage widths {list(HUB_STAGE_WIDTHS)} only (first stage "
            "64): pretrain with base_channels 64 (the paper's width) to transfer through "
            "keras-hub, or fine-tune this run with care_tf (python -m care_tf.evaluate "
            "finetune)."
        )
    if backbone.width_multiplier != 1:
        raise TransferError(
            f"{name!r} is a wide ResNet (width_multiplier {backbone.width_multiplier:g}), "
            "but keras_hub's bottleneck blocks have inner width = stage width: only "
            "width_multiplier 1 transfers; fine-tune this run with care_tf instead "
            "(python -m care_tf.evaluate finetune)."
        )


def hub_layer_name(name: str) -> str | None:
    """keras-hub's name for our layer `name` (None for layers without a counterpart).

    stem_conv/bn -> conv1_conv/bn; stage{s}_block{b}_{k}_conv/bn ->
    stack{s-1}_block{b}_{k}_conv/bn; stage{s}_block{b}_proj_conv/bn ->
    stack{s-1}_block{b}_0_conv/bn.
    """
    if name in ("stem_conv", "stem_bn"):
        return "conv1_" + name.split("_")[1]
    if not name.startswith("stage"):
        return None
    parts = name.split("_")  # stage1, block0, (1|2|3|proj), (conv|bn)
    if len(parts) != 4 or parts[3] not in ("conv", "bn"):
        return None
    stage = int(parts[0][len("stage") :])
    index = "0" if parts[2] == "proj" else parts[2]
    return f"stack{stage - 1}_{parts[1]}_{index}_{parts[3]}"


# ------------------------------------------------------------------ keras-hub side
def hub_config(backbone) -> dict:
    """The keras_hub.models.ResNetBackbone arguments describing our `backbone`."""
    from care_tf.models.resnet import RESNET_SPECS

    block_type, depths = RESNET_SPECS[backbone.depth]
    return {
        "input_conv_filters": [HUB_STAGE_WIDTHS[0]],
        "input_conv_kernel_sizes": [HUB_STEM_KERNEL],
        "stackwise_num_filters": list(HUB_STAGE_WIDTHS),
        "stackwise_num_blocks": list(depths),
        "stackwise_num_strides": list(HUB_STAGE_STRIDES),
        "block_type": f"{block_type}_block",
        "use_pre_activation": False,
    }


def hub_backbone(source, *, image_shape=None):
    """A `keras_hub.models.ResNetBackbone` holding the weights of our ResNet `source`.

    Its `pyramid_outputs` `{"P2", "P3", "P4", "P5"}` equal our res2..res5 maps (the
    outputs of stages 1..4) to float32 round-off; its output is P5 (= our res5). It
    takes the same input as ours: images normalised with the ImageNet mean/std.

    Args:
        source: a run directory, a preset directory, a converted authors' run, a
            `.keras` file, or a model (CARE model, our ResNetBackbone, a feature
            extractor, a `LinearClassifier`).
        image_shape: tuple. `(height, width, 3)` of the keras-hub model. Defaults to
            `(None, None, 3)`: any size, as keras-hub's own presets.

    Returns:
        keras_hub.models.ResNetBackbone, built, with BN statistics copied.

    Raises:
        TransferError: `source` is missing, not a care_tf ResNet, or one keras-hub cannot
            express (CIFAR stem, base_channels other than 64, a wide ResNet).
    """
    keras_hub = _keras_hub()
    ours = care_resnet(source)
    check_transferable(ours)
    hub = keras_hub.models.ResNetBackbone(
        **hub_config(ours),
        image_shape=tuple(image_shape) if image_shape is not None else (None, None, 3),
        data_format="channels_last",
        dtype="float32",
        name=f"{ours.name}_keras_hub",
    )
    copy_weights(ours, hub)
    return hub


def copy_weights(ours, hub) -> None:
    """Sets every weighted layer of `hub` from its counterpart in `ours` (by name).

    Raises:
        TransferError: a layer without counterpart or a shape mismatch (an architecture
            this mapping does not know).
    """
    hub_layers = {layer.name: layer for layer in hub.layers if layer.weights}
    done = set()
    for layer in ours.layers:
        if not layer.weights:
            continue
        target_name = hub_layer_name(layer.name)
        target = hub_layers.get(target_name)
        if target is None:
            raise TransferError(
                f"{ours.name!r}: layer {layer.name!r} has no counterpart in keras-hub's "
                "ResNetBackbone; only care_tf ResNets transfer."
            )
        values = layer.get_weights()
        expected = [tuple(w.shape) for w in target.weights]
        if [tuple(v.shape) for v in values] != expected:
            raise TransferError(
                f"{ours.name!r}: layer {layer.name!r} has weights "
                f"{[tuple(v.shape) for v in values]}, keras-hub's {target_name!r} "
                f"{expected}; only care_tf ResNets transfer."
            )
        target.set_weights(values)
        done.add(target_name)
    missing = sorted(set(hub_layers) - done)
    if missing:
        raise TransferError(
            f"{ours.name!r}: keras-hub layers {missing[:4]} got no weights; only care_tf "
            "ResNets transfer."
        )


# ------------------------------------------------------------------ classifier
def _load_classifier(classifier, source) -> keras.Model:
    from care_tf import model_dir as layout

    if classifier is True:
        if isinstance(source, keras.Model):
            classifier = source
        else:
            classifier = os.fspath(source)
    if isinstance(classifier, keras.Model):
        model = classifier
    else:
        path = os.fspath(classifier)
        try:
            model = layout.load_classifier(path)
        except (FileNotFoundError, ValueError) as err:
            raise TransferError(str(err)) from None
    if not _is_classifier(model):
        raise TransferError(
            f"{model.name!r} is not a care_tf classifier (backbone + linear head): pass a "
            "classifier.keras (python -m care_tf.convert --linear, or "
            "python -m care_tf.evaluate finetune) or its run directory."
        )
    return model


def linear_head(head) -> tuple[np.ndarray, np.ndarray]:
    """`(kernel (D, C), bias (C,))` of one Dense layer equal to `head` in inference.

    `head` is our linear head: a Dense, optionally followed by a BatchNormalization on
    the logits (the authors' linear probe), folded into it:
    W' = W * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta.
    """
    layers = [layer for layer in getattr(head, "layers", [head]) if layer.weights]
    if not layers or not isinstance(layers[0], keras.layers.Dense):
        raise TransferError(f"head {head.name!r} does not start with a Dense layer.")
    dense = layers[0]
    if dense.activation not in (None, keras.activations.linear):
        raise TransferError(f"head {head.name!r}: its Dense layer has an activation.")
    kernel = np.asarray(dense.kernel, np.float64)
    bias = np.asarray(dense.bias, np.float64) if dense.use_bias else np.zeros(kernel.shape[1])
    for layer in layers[1:]:
        if not isinstance(layer, keras.layers.BatchNormalization):
            raise TransferError(
                f"head {head.name!r}: {type(layer).__name__} after the Dense layer; only a "
                "BatchNormalization on the logits folds into keras-hub's linear head."
            )
        gamma = np.asarray(layer.gamma, np.float64) if layer.scale else 1.0
        beta = np.asarray(layer.beta, np.float64) if layer.center else 0.0
        mean = np.asarray(layer.moving_mean, np.float64)
        variance = np.asarray(layer.moving_variance, np.float64)
        factor = gamma / np.sqrt(variance + layer.epsilon)
        kernel = kernel * factor
        bias = (bias - mean) * factor + beta
    return kernel.astype(np.float32), bias.astype(np.float32)


def hub_preprocessor(image_size: int):
    """keras-hub's ResNet preprocessor for our backbone's input: raw pixels 0..255 ->
    centre crop to a square, bilinear resize (antialiased) to `image_size`, ImageNet
    mean/std normalisation (what our backbone expects)."""
    keras_hub = _keras_hub()
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(image_size, image_size),
        scale=[1.0 / (255.0 * s) for s in IMAGENET_STD],
        offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)],
        crop_to_aspect_ratio=True,
        interpolation="bilinear",
        antialias=True,
    )
    return keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)


def hub_classifier(classifier, *, source=None, image_shape=None):
    """A `keras_hub.models.ResNetImageClassifier` (with preprocessor) equal to our
    classifier: backbone weights, pooled features, one Dense layer (our head folded).

    `predict` takes raw images (pixels 0..255) and returns logits (no softmax).
    """
    keras_hub = _keras_hub()
    model = _load_classifier(classifier, source)
    backbone = hub_backbone(model, image_shape=image_shape)
    kernel, bias = linear_head(model.head)
    size = care_resnet(model).image_shape[0]
    if not size:
        raise TransferError(f"{model.name!r} has no fixed input size; the preprocessor needs one.")
    task = keras_hub.models.ResNetImageClassifier(
        backbone=backbone,
        num_classes=int(kernel.shape[1]),
        preprocessor=hub_preprocessor(int(size)),
        pooling="avg",
        activation=None,
    )
    task.output_dense.set_weights([kernel, bias])
    return task


# ------------------------------------------------------------------ presets
def _is_hub_preset(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, f)) for f in PRESET_FILES)


def to_keras_hub(source, preset_dir, *, classifier=None) -> pathlib.Path:
    """Writes a keras-hub preset directory that `keras_hub.models.ResNetBackbone
    .from_preset(preset_dir)` loads without care_tf.

    The preset holds `config.json`, `model.weights.h5` and `metadata.json`; with a
    classifier also `task.json`, `task.weights.h5`, `preprocessor.json` and
    `image_converter.json`, so `keras_hub.models.ImageClassifier.from_preset(preset_dir)`
    gives a `ResNetImageClassifier` whose `predict` on raw images returns our logits.
    It is written aside and swapped into place; an existing keras-hub preset there is
    replaced, anything else refused.

    Args:
        source: a run directory, a preset directory, a converted authors' run, a `.keras`
            file or a model (see `hub_backbone`).
        preset_dir: str or Path. Directory to write.
        classifier: None (backbone preset only); True (the classifier of `source`: its
            `classifier.keras`, or `source` itself when it is a classifier model); or a
            classifier model / its `.keras` file / its run directory. With a classifier
            the preset holds the classifier's own backbone (the weights its head was
            trained on).

    Returns:
        The preset directory as a `pathlib.Path`.

    Raises:
        TransferError: see `hub_backbone`; a classifier that is not backbone + linear
            head; `preset_dir` exists and is not a keras-hub preset.
    """
    from care_tf import atomic

    preset_dir = pathlib.Path(preset_dir)
    if preset_dir.exists() and not _is_hub_preset(str(preset_dir)):
        raise TransferError(
            f"{str(preset_dir)!r} exists and is not a keras-hub preset directory: choose "
            "another path."
        )
    if classifier is None or classifier is False:
        model = hub_backbone(source)
    else:
        model = hub_classifier(classifier, source=source)
    preset_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.aside_path(str(preset_dir))
    try:
        model.save_to_preset(tmp)
        atomic.publish_dir(tmp, str(preset_dir))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return preset_dir


def parameter_count(backbone) -> int:
    """Number of values in `backbone`'s weights, BN statistics included."""
    return int(sum(math.prod(w.shape) for w in backbone.weights))


__all__ = [
    "TransferError",
    "care_resnet",
    "check_transferable",
    "hub_backbone",
    "hub_classifier",
    "hub_layer_name",
    "linear_head",
    "to_keras_hub",
]
