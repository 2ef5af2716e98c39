"""Networks of CARE: backbones, the transformer stream, heads and the CARE model."""

from care_tf.models.backbone import (
    check_backbone,
    feature_backbone,
    feature_extractor,
    feature_maps_model,
)
from care_tf.models.batch_norm import BatchNorm
from care_tf.models.care import CARE
from care_tf.models.heads import MLPHead, l2_normalize
from care_tf.models.losses import attention_loss, byol_loss, target_momentum
from care_tf.models.plain import plain_copy, plain_feature_extractor
from care_tf.models.registry import create_backbone, list_backbones, register_backbone
from care_tf.models.resnet import ResNetBackbone
from care_tf.models.transformer import BoTBlock, MultiHeadSelfAttention2D, TransStack
