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

import keras

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


def load_backbone(model_dir: str) -> keras.Model:
    """Loads the exported online backbone of a run (or a `.keras` file given directly).

    Raises:
        FileNotFoundError: with what was looked for when there is no backbone.
    """
    candidate = model_dir if model_dir.endswith(".keras") else path(model_dir, BACKBONE)
    if not os.path.isfile(candidate):
        full = path(model_dir, MODEL)
        if os.path.isfile(full):
            return keras.saving.load_model(full, compile=False).backbone
        raise FileNotFoundError(
            f"No trained backbone in {model_dir!r}: expected {BACKBONE} (or {MODEL}) there. "
            "Train with `python -m care_tf.train --model_dir DIR` first, or pass a .keras file."
        )
    return keras.saving.load_model(candidate, compile=False)


def load_classifier(model_dir: str) -> keras.Model:
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
    return keras.saving.load_model(candidate, compile=False)


def read_config(model_dir: str) -> dict:
    """The resolved config of a run as a dict ({} when the run has none)."""
    import yaml

    cfg = path(model_dir, CONFIG)
    if not os.path.isfile(cfg):
        return {}
    with open(cfg) as f:
        return yaml.safe_load(f) or {}
