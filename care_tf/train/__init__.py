"""CARE pre-training: configs, strategies, LARS, schedules, checkpoints and the CLI loop.

Names are imported on first use (see care_tf/_lazy.py) so that `python -m
care_tf.train` can parse its arguments and split the CPU into logical devices
before TensorFlow initialises its runtime.
"""

from care_tf._lazy import lazy_package as _lazy_package

_EXPORTS = {
    "Config": "care_tf.train.config",
    "ConfigError": "care_tf.train.config",
    "load_config": "care_tf.train.config",
    "list_configs": "care_tf.train.config_names",
    "Experiment": "care_tf.train.experiment",
    "build_experiment": "care_tf.train.experiment",
    "LARS": "care_tf.train.optimizers",
    "build_optimizer": "care_tf.train.optimizers",
    "WarmupCosine": "care_tf.train.schedules",
}
_lazy_package(__name__, _EXPORTS)
