"""CARE pre-training: configs, strategies, LARS, schedules, checkpoints and the CLI loop.

The heavy parts (the loop, the strategies) are imported lazily so that
`python -m care_tf.train` can split the CPU into logical devices before
TensorFlow initialises its runtime.
"""

from care_tf.train.config import Config, ConfigError, load_config
from care_tf.train.experiment import Experiment, build_experiment
from care_tf.train.optimizers import LARS, build_optimizer
from care_tf.train.schedules import WarmupCosine
