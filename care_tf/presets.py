"""keras-hub style presets: a model as a directory that `from_preset` reloads exactly.

A preset directory holds

    config.json        the model's Keras config (`keras.saving.serialize_keras_object`)
    model.weights.h5   every weight (for CARE: online, target, BN statistics, step)
    metadata.json      care_tf / Keras versions, class, parameter count, date

`CARE.from_preset` and `load_backbone` take, wherever they take an architecture
name (`resnet50`, see `care_tf.list_backbones()`), a preset directory or a training
run directory (`model.keras` / `backbone.keras`) too.

Example:
>>> model = care_tf.CARE.from_preset("resnet18", image_size=32)
>>> care_tf.save_to_preset(model, "presets/care_r18")
>>> same = care_tf.CARE.from_preset("presets/care_r18")
>>> backbone = care_tf.load_backbone("presets/care_r18")   # images -> pooled features
"""

from __future__ import annotations

import datetime
import json
import os
import shutil

import keras

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"


def is_preset_dir(path: str) -> bool:
    """Whether `path` is a directory written by `save_to_preset`."""
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(
        os.path.join(path, WEIGHTS_FILE)
    )


def save_to_preset(model: keras.Model, preset_dir: str) -> str:
    """Writes `model` (a CARE model or any serialisable Keras model) as a preset directory.

    The directory is written aside and renamed into place; an existing preset there
    is replaced, anything else is refused.

    Args:
        model: keras.Model. Built, with registered layers (every care_tf model is).
        preset_dir: str. Directory to write.

    Returns:
        `preset_dir`.

    Raises:
        FileExistsError: `preset_dir` exists and is not a preset.
    """
    from care_tf.version import __version__

    if os.path.exists(preset_dir) and not is_preset_dir(preset_dir):
        raise FileExistsError(
            f"{preset_dir!r} exists and is not a preset directory: choose another path."
        )
    partial = f"{preset_dir.rstrip(os.sep)}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    with open(os.path.join(partial, CONFIG_FILE), "w") as f:
        json.dump(keras.saving.serialize_keras_object(model), f, indent=2)
    model.save_weights(os.path.join(partial, WEIGHTS_FILE))
    metadata = {
        "care_tf_version": __version__,
        "keras_version": keras.__version__,
        "class": type(model).__name__,
        "name": model.name,
        "parameter_count": int(model.count_params()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with open(os.path.join(partial, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
    if os.path.exists(preset_dir):
        shutil.rmtree(preset_dir)
    os.replace(partial, preset_dir)
    return preset_dir


def load_preset(preset_dir: str) -> keras.Model:
    """The model of a preset directory, with its weights (compiled: no)."""
    if not is_preset_dir(preset_dir):
        raise FileNotFoundError(
            f"{preset_dir!r} is not a preset directory (no {CONFIG_FILE} and {WEIGHTS_FILE}); "
            "write one with care_tf.save_to_preset(model, dir)."
        )
    import care_tf.models  # noqa: F401  (registers the care_tf layers)

    with open(os.path.join(preset_dir, CONFIG_FILE)) as f:
        model = keras.saving.deserialize_keras_object(json.load(f))
    model.load_weights(os.path.join(preset_dir, WEIGHTS_FILE))
    return model


def _is_run(path: str) -> bool:
    from care_tf import model_dir as layout

    if path.endswith(".keras"):
        return os.path.isfile(path)
    return any(os.path.isfile(layout.path(path, f)) for f in (layout.MODEL, layout.BACKBONE))


def _unknown(preset: str) -> ValueError:
    from care_tf.models.registry import list_backbones

    return ValueError(
        f"Unknown preset {preset!r}: not an architecture ({', '.join(list_backbones())}), "
        "a preset directory (care_tf.save_to_preset) or a training run directory."
    )


def load_care(preset: str) -> keras.Model:
    """A CARE model from a preset directory or a run directory (its `model.keras`)."""
    from care_tf import model_dir as layout

    if is_preset_dir(preset):
        model = load_preset(preset)
    elif os.path.isfile(layout.path(preset, layout.MODEL)) or preset.endswith(".keras"):
        path = preset if preset.endswith(".keras") else layout.path(preset, layout.MODEL)
        model = keras.saving.load_model(path, compile=False)
    elif os.path.isdir(preset):
        raise FileNotFoundError(
            f"{preset!r} holds no {layout.MODEL} (the whole CARE model) and is not a preset "
            "directory: train into it, or read its backbone with care_tf.load_backbone."
        )
    else:
        raise _unknown(preset)
    if not hasattr(model, "target_backbone"):
        raise ValueError(
            f"{preset!r} holds a {type(model).__name__}, not a CARE model: load it with "
            "care_tf.load_backbone."
        )
    return model


def load_backbone(
    preset: str,
    *,
    image_size: int = 224,
    include_normalization: bool = False,
    **backbone_kwargs,
) -> keras.Model:
    """A backbone as a plain Keras model, images -> pooled features (B, C5).

    Args:
        preset: str. An architecture name (`care_tf.list_backbones()`: a freshly
            initialised backbone), a preset directory, a training run directory or a
            `.keras` file.
        image_size: int. Input size of an architecture built by name. Defaults to 224.
        include_normalization: bool. Take [0, 255] pixels (see `care_tf.feature_extractor`).
        **backbone_kwargs: arguments of a backbone built by name (e.g. `base_channels`,
            `stem`; the stem defaults to "cifar" at 64 px or less).
    """
    from care_tf import model_dir as layout
    from care_tf.models.backbone import feature_extractor
    from care_tf.models.registry import create_backbone, list_backbones

    preset = os.fspath(preset)
    if preset in list_backbones():
        backbone_kwargs.setdefault("stem", "cifar" if image_size <= 64 else "imagenet")
        model = create_backbone(preset, image_shape=(image_size, image_size, 3), **backbone_kwargs)
    elif is_preset_dir(preset):
        model = load_preset(preset)
    elif _is_run(preset):
        return layout.load_backbone(preset, include_normalization=include_normalization)
    else:
        raise _unknown(preset)
    return feature_extractor(model, include_normalization=include_normalization)


__all__ = ["is_preset_dir", "load_backbone", "load_care", "load_preset", "save_to_preset"]
