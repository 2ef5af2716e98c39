"""care_tf: CARE self-supervised pretraining (NeurIPS 2021) in Keras 3 / TensorFlow."""

from care_tf import data
from care_tf.convert import convert_checkpoint
from care_tf.data import TwoViewAugment, make_eval_dataset, make_pretrain_dataset
from care_tf.evaluate import KNNMonitor, OnlineLinearProbe, attention_maps, knn_evaluate
from care_tf.export import export_backbone
from care_tf.models import (
    CARE,
    BoTBlock,
    MLPHead,
    MultiHeadSelfAttention2D,
    ResNetBackbone,
    TransStack,
    check_backbone,
    create_backbone,
    feature_backbone,
    list_backbones,
    register_backbone,
)
from care_tf.train import LARS, Experiment, WarmupCosine, build_experiment
from care_tf.version import __version__
