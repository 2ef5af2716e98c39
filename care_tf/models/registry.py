"""Backbone registry: name -> factory, so a new CNN plugs in without touching the trainer."""

from __future__ import annotations

from collections.abc import Callable

import keras

_BACKBONES: dict[str, Callable[..., keras.Model]] = {}


def register_backbone(name: str):
    """Decorator registering `factory(**kwargs) -> keras.Model` under `name`.

    The model must return a dict with 4-D `"res4"` and `"res5"` maps (see
    `care_tf.models.backbone.feature_backbone` to adapt any Keras CNN).
    """

    def decorator(factory: Callable[..., keras.Model]):
        if name in _BACKBONES:
            raise ValueError(f"A backbone named {name!r} is already registered.")
        _BACKBONES[name] = factory
        return factory

    return decorator


def list_backbones() -> list[str]:
    """Names accepted by `create_backbone`."""
    return sorted(_BACKBONES)


def create_backbone(name: str, **kwargs) -> keras.Model:
    """Builds the registered backbone `name` with `kwargs` (e.g. `image_shape`, `stem`)."""
    if name not in _BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}. Available: {', '.join(list_backbones())}")
    return _BACKBONES[name](**kwargs)
