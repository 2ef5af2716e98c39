"""Layout of a training run's `model_dir`: what train writes and evaluate/export read.

model_dir/
  config.yaml        resolved experiment config (written at the start of training)
  model.keras        the full CARE model (online + target + optimizer state), final
  backbone.keras     the online CNN backbone alone, final: what evaluate/export use
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


def load_backbone(model_dir: str):
    """Loads the online backbone of a run (a run directory, or a `.keras` file given
    directly: `backbone.keras`, or a full CARE `model.keras`, whose backbone is taken).

    Raises:
        FileNotFoundError: with what was looked for when there is no backbone.
        ValueError: the file there is corrupt or not a Keras model.
    """
    if model_dir.endswith(".keras") or os.path.isfile(model_dir):
        model = load_keras_file(model_dir)
        return getattr(model, "backbone", model) if _is_care(model) else model
    candidate = path(model_dir, BACKBONE)
    if not os.path.isfile(candidate):
        full = path(model_dir, MODEL)
        if os.path.isfile(full):
            return load_keras_file(full).backbone
        raise FileNotFoundError(
            f"No trained backbone in {model_dir!r}: expected {BACKBONE} (or {MODEL}) there. "
            "Train with `python -m care_tf.train --model_dir DIR` first, or pass a .keras file."
        )
    return load_keras_file(candidate)


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


def read_config(model_dir: str) -> dict:
    """The resolved config of a run as a dict ({} when the run has none)."""
    import yaml

    cfg = path(model_dir, CONFIG)
    if not os.path.isfile(cfg):
        return {}
    with open(cfg) as f:
        return yaml.safe_load(f) or {}
