"""Adapting any Keras CNN into a CARE backbone (a model returning res4/res5 maps)."""

from __future__ import annotations

import keras
from keras import layers


def feature_backbone(model: keras.Model, res4: str, res5: str, name: str | None = None):
    """Wraps a functional Keras CNN so it returns `{"res4", "res5", "pooled"}`.

    Args:
        model: keras.Model. A functional model (e.g. `keras.applications.ResNet50`
            with `include_top=False`).
        res4: str. Name of the layer whose output is the stride-16 map the
            transformer stream reads.
        res5: str. Name of the layer whose output is the final (stride-32) map.
        name: str. Name of the returned model.

    Returns:
        A functional `keras.Model` with the same input and dict outputs.
    """
    names = {layer.name for layer in model.layers}
    for role, layer_name in (("res4", res4), ("res5", res5)):
        if layer_name not in names:
            raise ValueError(
                f"`{role}={layer_name!r}` is not a layer of {model.name!r}. Pass the name of "
                "the layer whose output is that feature map (see `model.summary()`)."
            )
    res4_out = model.get_layer(res4).output
    res5_out = model.get_layer(res5).output
    pooled = layers.GlobalAveragePooling2D(name="pool")(res5_out)
    return keras.Model(
        model.inputs,
        {"res4": res4_out, "res5": res5_out, "pooled": pooled},
        name=name or f"{model.name}_features",
    )


def check_backbone(backbone: keras.Model) -> tuple[tuple, tuple]:
    """Validates a CARE backbone; returns the (H, W, C) shapes of res4 and res5."""
    outputs = getattr(backbone, "output", None)
    if not isinstance(outputs, dict):
        raise ValueError(
            "A CARE backbone must be a built functional model returning a dict with "
            f"'res4' and 'res5' maps; {backbone.name!r} returns {type(outputs).__name__}. "
            "Wrap it with `care_tf.feature_backbone(model, res4=..., res5=...)`."
        )
    missing = [k for k in ("res4", "res5") if k not in outputs]
    if missing:
        raise ValueError(
            f"Backbone {backbone.name!r} has no {' or '.join(missing)} output (it has "
            f"{sorted(outputs)}). Wrap it with "
            "`care_tf.feature_backbone(model, res4=..., res5=...)`."
        )
    shapes = []
    for key in ("res4", "res5"):
        shape = tuple(outputs[key].shape[1:])
        if len(shape) != 3:
            raise ValueError(
                f"Backbone output {key!r} must be a 4-D map (B, H, W, C); got {shape}."
            )
        shapes.append(shape)
    return shapes[0], shapes[1]


def feature_maps_model(model: keras.Model) -> keras.Model:
    """The multi-output CARE backbone (`{"res4", "res5", "pooled"}`) in or behind `model`.

    Args:
        model: a CARE model (its online backbone), a multi-output backbone (returned
            as is) or a `feature_extractor` (the backbone inside it).

    Raises:
        ValueError: `model` holds no such backbone.
    """
    if hasattr(model, "target_backbone"):  # a CARE model
        return model.backbone
    if isinstance(getattr(model, "output", None), dict):
        return model
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.Model) and isinstance(getattr(layer, "output", None), dict):
            return layer
    raise ValueError(
        f"{model.name!r} is not a CARE backbone and holds none (a CARE backbone returns a "
        "dict of res4, res5 and pooled maps): load a run's backbone.keras or model.keras, or "
        "wrap a Keras CNN with `care_tf.feature_backbone(model, res4=..., res5=...)`."
    )


def feature_extractor(
    model: keras.Model, *, include_normalization: bool = False, name: str | None = None
) -> keras.Model:
    """A plain Keras model `image -> pooled features`, sharing `model`'s backbone weights.

    This is what training saves as `backbone.keras`: one input, one (B, C5) output
    (512 for ResNet-18, 2048 for ResNet-50), so it drops into ordinary Keras code:

        keras.Sequential([keras.saving.load_model("backbone.keras"), keras.layers.Dense(10)])

    Args:
        model: a CARE model, a multi-output CARE backbone or a feature extractor.
        include_normalization: bool. Put the ImageNet mean/std normalisation inside the
            model, so it takes float pixels in [0, 255] (already resized to the input
            size). Otherwise it takes normalised images, as `care_tf.make_eval_dataset`
            yields. Defaults to False.
        name: str. Name of the returned model. Defaults to `"<backbone>_extractor"`.

    Returns:
        A functional `keras.Model`: (B, H, W, 3) -> (B, C5).
    """
    from care_tf.constants import IMAGENET_MEAN, IMAGENET_STD

    maps = feature_maps_model(model)
    inputs = keras.Input(shape=maps.input_shape[1:], name="image")
    x = inputs
    if include_normalization:
        x = layers.Normalization(
            mean=[255.0 * m for m in IMAGENET_MEAN],
            variance=[(255.0 * s) ** 2 for s in IMAGENET_STD],
            name="normalize",
        )(x)
    pooled = maps(x)["pooled"]
    return keras.Model(inputs, pooled, name=name or f"{maps.name}_extractor")
