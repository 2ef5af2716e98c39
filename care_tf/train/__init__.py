"""CARE pre-training: configs, strategies, LARS, schedules, checkpoints and the CLI loop.

Names are imported on first use (see care_tf/_lazy.py) so that `python -m
care_tf.train` can parse its arguments and split the CPU into logical devices
before TensorFlow initialises its runtime.
"""

import sys as _sys

from care_tf._lazy import lazy_exports as _lazy_exports
from care_tf._lazy import load_all as _load_all

_EXPORTS = {
    "Config": "care_tf.train.config",
    "ConfigError": "care_tf.train.config",
    "load_config": "care_tf.train.config",
    "Experiment": "care_tf.train.experiment",
    "build_experiment": "care_tf.train.experiment",
    "LARS": "care_tf.train.optimizers",
    "build_optimizer": "care_tf.train.optimizers",
    "WarmupCosine": "care_tf.train.schedules",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

if "keras" in _sys.modules:
    _load_all(__name__, _EXPORTS)
