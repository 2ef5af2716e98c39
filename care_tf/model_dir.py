"""Layout of a training run's `model_dir`: what train writes and evaluate/export read.

model_dir/
  config.yaml        resolved experiment config (written at the start of training)
  model.keras        the full CARE model (online + target + optimizer state), final
  backbone.keras     the online CNN backbone alone (images -> pooled features), final;
                     Keras' built-in layers only: loads without care_tf
  classifier.keras   backbone + linear head (written by `care_tf.convert --linear`)
  checkpoints/       tf.train checkpoints for exact resume
  logs/              TensorBoard event files
  metrics.csv        per-epoch CSV log
"""

from __future__ import annotations

import os

CONFIG = "config.yaml"
MODEL = "model.keras"
BACKBONE = "backbone.keras"
CLASSIFIER = "classifier.keras"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
METRICS_CSV = "metrics.csv"


def path(model_dir: str, name: str) -> str:
    """`model_dir/name`."""
    return os.path.join(model_dir, name)


def load_keras_file(file: str):
    """Loads a `.keras` file written by care_tf, naming the file and the cause on failure.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable Keras model (corrupt, truncated, another
            format, or saved by code that is not importable here).
    """
    import zipfile

    import keras

    import care_tf.models  # noqa: F401  (registers the layers the file names)

    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no such file.")
    if not zipfile.is_zipfile(file):
        raise ValueError(
            f"{file} is not a Keras model file (a .keras file is a zip archive; this one is "
            "corrupt, truncated or of another format). Retrain, or copy the file again."
        )
    try:
        return keras.saving.load_model(file, compile=False)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as err:
        cause = " ".join(str(err).split())[:300]
        raise ValueError(f"{file} could not be loaded as a Keras model: {cause}") from err


def _load_keras(model_dir: str):
    """backbone.keras of a run (or a `.keras` file given directly), else its model.keras."""
    if model_dir.endswith(".keras") or os.path.isfile(model_dir):
        return load_keras_file(model_dir)
    candidate = path(model_dir, BACKBONE)
    if os.path.isfile(candidate):
        return load_keras_file(candidate)
    full = path(model_dir, MODEL)
    if os.path.isfile(full):
        return load_keras_file(full)
    raise FileNotFoundError(
        f"No trained backbone in {model_dir!r}: expected {BACKBONE} (or {MODEL}) there. "
        "Train with `python -m care_tf.train --model_dir DIR` first, or pass a .keras file."
    )


def load_backbone(model_dir: str, *, include_normalization: bool = False):
    """The online backbone of a run as a plain Keras model: images -> pooled features.

    Reads `model_dir/backbone.keras` (or `model.keras`, or a `.keras` file given
    directly: a backbone, or a full CARE model whose backbone is taken; backbones saved
    with dict outputs by earlier versions are wrapped).

    Args:
        model_dir: str. A run directory or a `.keras` file.
        include_normalization: bool. Take [0, 255] pixels (see
            `care_tf.feature_extractor`). Defaults to False (normalised images).

    Returns:
        keras.Model (B, H, W, 3) -> (B, C5).

    Raises:
        FileNotFoundError: with what was looked for when there is no backbone.
        ValueError: the file there is corrupt or not a Keras model.
    """
    from care_tf.models.backbone import feature_extractor, feature_maps_model

    model = _load_keras(model_dir)
    single = not isinstance(getattr(model, "output", None), dict) and not _is_care(model)
    has_norm = any(layer.name == "normalize" for layer in getattr(model, "layers", []))
    if single and has_norm == include_normalization:
        return model
    return feature_extractor(feature_maps_model(model), include_normalization=include_normalization)


def load_feature_model(model_dir: str):
    """The run's multi-output backbone `{"res4", "res5", "pooled"}` (normalised images in).

    For attention maps and exports of the res4/res5 maps; reads the same files as
    `load_backbone`.
    """
    from care_tf.models.backbone import feature_maps_model

    return feature_maps_model(_load_keras(model_dir))


def save_backbone(model, file: str) -> None:
    """Writes `model`'s backbone as a `backbone.keras` file that loads with Keras alone.

    The file holds `care_tf.plain_feature_extractor(model)` (images -> pooled features,
    Keras' built-in layers only); it is written aside and renamed into place.

    Args:
        model: a CARE model, a multi-output CARE backbone or a feature extractor.
        file: str. Path of the `.keras` file.
    """
    from care_tf import atomic
    from care_tf.models.plain import plain_feature_extractor

    with atomic.replacing(file) as tmp:
        plain_feature_extractor(model).save(tmp)


def save_models(model, model_dir: str) -> None:
    """Writes a trained CARE model's `model.keras` and `backbone.keras` into `model_dir`.

    `backbone.keras` is written by `save_backbone` (Keras' built-in layers, images ->
    pooled features). Each file is written aside and renamed into place.
    """
    from care_tf import atomic

    os.makedirs(model_dir, exist_ok=True)
    with atomic.replacing(path(model_dir, MODEL)) as tmp:
        model.save(tmp)
    save_backbone(model, path(model_dir, BACKBONE))


def _is_care(model) -> bool:
    from care_tf.models import CARE

    return isinstance(model, CARE)


def load_classifier(model_dir: str):
    """Loads a run's `classifier.keras` (or a classifier `.keras` file given directly).

    Raises:
        FileNotFoundError: naming what was looked for.
    """
    candidate = model_dir if model_dir.endswith(".keras") else path(model_dir, CLASSIFIER)
    if not os.path.isfile(candidate):
        raise FileNotFoundError(
            f"No classifier in {model_dir!r}: expected {CLASSIFIER} there. Convert a linear "
            "checkpoint with `python -m care_tf.convert CKPT --linear LINEAR.pth --out DIR`."
        )
    return load_keras_file(candidate)


def yaml_problem(err: Exception) -> str:
    """One line saying what a YAML parser (or a text decoder) found wrong, and where."""
    problem = getattr(err, "problem", None) or getattr(err, "reason", None) or str(err)
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def read_config(model_dir: str) -> dict:
    """The resolved config of a run as a dict ({} when the run has none).

    Raises:
        UsageError: the run's config.yaml is not a YAML mapping (the message names it).
    """
    import yaml

    from care_tf.cli_errors import UsageError

    cfg = path(model_dir, CONFIG)
    if not os.path.isfile(cfg):
        return {}
    fix = (
        "Restore it from a copy (or from the config the run was started with, --config), "
        "or train into a new --model_dir."
    )
    try:
        with open(cfg, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        message = f"The run's config {cfg} is not valid YAML ({yaml_problem(e)}). {fix}"
        raise UsageError(message) from e
    if values is not None and not isinstance(values, dict):
        raise UsageError(f"The run's config {cfg} is not a mapping of sections. {fix}")
    return values or {}
