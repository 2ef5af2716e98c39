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


def tiny_run(path: str, images: np.ndarray, config: dict | None = None, step: int = 100) -> str:
    """A run directory holding a tiny ResNet-18 (base 8, cifar stem, 32 px) whose BN
    statistics come from `images` ((N, H, W) or (N, H, W, C) uint8 real images)."""
    from care_tf import ResNetBackbone
    from care_tf.export.calibration import crops

    backbone = ResNetBackbone(depth=18, base_channels=8, stem="cifar", image_shape=(32, 32, 3))
    set_bn_statistics(backbone, crops(list(images), 32), steps=20)
    config = config or {"model": {"backbone": "resnet18"}, "data": {"image_size": 32}}
    return make_model_dir(path, backbone, config, step=step)


def write_image_folder(path: str, images: np.ndarray) -> str:
    """Writes uint8 images as PNG files `path/00000.png`, ... (a calibration folder)."""
    from PIL import Image

    os.makedirs(path, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(np.asarray(image).squeeze()).save(os.path.join(path, f"{i:05d}.png"))
    return path


_SHARED: dict[str, str] = {}


def shared_tiny_run(images: np.ndarray) -> str:
    """`tiny_run` built once per process (tests share it; treat it as read-only)."""
    if "run" not in _SHARED:
        import atexit
        import shutil
        import tempfile

        root = tempfile.mkdtemp(prefix="care_export_test_")
        atexit.register(shutil.rmtree, root, True)
        _SHARED["run"] = tiny_run(os.path.join(root, "run"), images, step=321)
    return _SHARED["run"]
