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
