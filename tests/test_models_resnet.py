"""ResNet backbones: the authors' parameter counts, shapes, errors, serialisation."""

import keras
import numpy as np
import pytest
from care_testing import n_params

import care_tf


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet50", 23_508_032),  # docs/method.md, authors' code without fc
        ("resnet50x2", 66_834_240),  # wide_resnet50_2 without fc
        ("resnet18", 11_176_512),  # torchvision resnet18 without fc
    ],
)
def test_trainable_parameter_counts(name, expected):
    backbone = care_tf.create_backbone(name, image_shape=(224, 224, 3))
    assert n_params(backbone.trainable_weights) == expected


def test_feature_shapes_imagenet_and_cifar_stems():
    backbone = care_tf.ResNetBackbone(depth=50, image_shape=(224, 224, 3))
    shapes = {k: tuple(v.shape) for k, v in backbone.output.items()}
    assert shapes == {
        "res4": (None, 14, 14, 1024),
        "res5": (None, 7, 7, 2048),
        "pooled": (None, 2048),
    }
    small = care_tf.ResNetBackbone(depth=18, stem="cifar", base_channels=8, image_shape=(32, 32, 3))
    out = small(np.zeros((2, 32, 32, 3), "float32"))
    assert tuple(out["res4"].shape) == (2, 8, 8, 32)
    assert tuple(out["res5"].shape) == (2, 4, 4, 64)
    np.testing.assert_allclose(
        out["pooled"].numpy(), out["res5"].numpy().mean(axis=(1, 2)), rtol=1e-5, atol=1e-6
    )


def test_initialisation_follows_method():
    backbone = care_tf.ResNetBackbone(depth=18, stem="cifar", image_shape=(32, 32, 3))
    conv = backbone.get_layer("stage3_block0_2_conv")  # 3x3, 256 -> 256
    kernel = conv.kernel.numpy()
    fan_out = 3 * 3 * 256
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / fan_out), rel=0.05)
    bn = backbone.get_layer("stage3_block0_2_bn")
    np.testing.assert_array_equal(bn.gamma.numpy(), 1.0)
    np.testing.assert_array_equal(bn.beta.numpy(), 0.0)


def test_v15_stride_on_3x3_conv():
    backbone = care_tf.ResNetBackbone(depth=50, image_shape=(64, 64, 3))
    assert backbone.get_layer("stage2_block0_1_conv").strides == (1, 1)
    assert backbone.get_layer("stage2_block0_2_conv").strides == (2, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 7}, "depth.*Received: depth=7"),
        ({"stem": "tiny"}, "stem"),
        ({"width_multiplier": 0}, "positive"),
        ({"image_shape": (32, 32)}, "image_shape"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        care_tf.ResNetBackbone(**kwargs)


def test_unknown_registry_name():
    with pytest.raises(ValueError, match="Unknown backbone 'resnet7'.*resnet50"):
        care_tf.create_backbone("resnet7")


def test_save_reload_identical(tmp_path):
    backbone = care_tf.ResNetBackbone(
        depth=18, stem="cifar", base_channels=8, image_shape=(32, 32, 3)
    )
    x = np.random.RandomState(0).randn(2, 32, 32, 3).astype("float32")
    backbone.save(tmp_path / "b.keras")
    reloaded = keras.saving.load_model(tmp_path / "b.keras")
    assert isinstance(reloaded, care_tf.ResNetBackbone)
    assert reloaded.get_config() == backbone.get_config()
    for key in ("res4", "res5", "pooled"):
        np.testing.assert_array_equal(reloaded(x)[key].numpy(), backbone(x)[key].numpy())


def test_feature_backbone_wraps_any_keras_cnn():
    cnn = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    wrapped = care_tf.feature_backbone(cnn, res4="conv4_block6_out", res5="conv5_block3_out")
    res4, res5 = care_tf.check_backbone(wrapped)
    assert res4 == (4, 4, 1024) and res5 == (2, 2, 2048)
    with pytest.raises(ValueError, match="res4='nope'. is not a layer"):
        care_tf.feature_backbone(cnn, res4="nope", res5="conv5_block3_out")
    with pytest.raises(ValueError, match="returns KerasTensor.*feature_backbone"):
        care_tf.check_backbone(cnn)
