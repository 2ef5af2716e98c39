"""Small run directories for tests, docs and benchmarks (no training needed)."""

from __future__ import annotations

import json
import os

import numpy as np
import yaml

from care_tf import model_dir as run_dir


def set_bn_statistics(backbone, images: np.ndarray, steps: int = 30, batch: int = 32) -> None:
    """Sets BatchNorm moving statistics from real images (training-mode forward passes).

    A random-init backbone with statistics of real data behaves like a trained
    one for quantisation: activations have realistic ranges.

    Args:
        backbone: the Keras backbone.
        images: (N, S, S, 3) uint8 crops at the backbone's input size.
        steps: forward passes (BN momentum 0.9: 30 passes leave < 5% of the init).
        batch: images per pass.
    """
    from care_tf.export.preprocess import normalize

    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.choice(len(images), size=min(batch, len(images)), replace=False)
        backbone(normalize(images[idx].astype(np.float32)), training=True)


def make_model_dir(
    path: str,
    backbone=None,
    config: dict | None = None,
    step: int | None = None,
) -> str:
    """Writes `path/backbone.keras`, `path/config.yaml` (and train_state.json with `step`)."""
    os.makedirs(path, exist_ok=True)
    backbone.save(run_dir.path(path, run_dir.BACKBONE))
    with open(run_dir.path(path, run_dir.CONFIG), "w") as f:
        yaml.safe_dump(config or {}, f)
    if step is not None:
        with open(os.path.join(path, "train_state.json"), "w") as f:
            json.dump({"step": step}, f)
    return path
