"""Networks of CARE: backbones, the transformer stream, heads and the CARE model."""

from care_tf.models.backbone import check_backbone, feature_backbone
from care_tf.models.registry import create_backbone, list_backbones, register_backbone
from care_tf.models.resnet import ResNetBackbone
