"""Attention maps: shape, range, finiteness; PNG grid written."""

import numpy as np
import pytest

from care_tf import ResNetBackbone
from care_tf.evaluate import attention_maps, save_attention_grid


@pytest.fixture(scope="module")
def backbone():
    return ResNetBackbone(depth=18, base_channels=8, stem="cifar", image_shape=(32, 32, 3))


@pytest.mark.parametrize("method", ["gradcam", "mean"])
def test_attention_maps(backbone, method):
    images = np.random.default_rng(0).normal(size=(5, 32, 32, 3)).astype("float32")
    maps = attention_maps(backbone, images, method=method, batch_size=3)
    assert maps.shape == (5, 32, 32) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert maps.reshape(5, -1).max(axis=1).min() == pytest.approx(1.0)
    res4 = attention_maps(backbone, images[:2], method=method, feature_key="res4")
    assert res4.shape == (2, 32, 32)


def test_attention_grid_png(backbone, tmp_path):
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype("float32")
    maps = attention_maps(backbone, images)
    path = save_attention_grid(
        images,
        {"BYOL": maps, "CARE": maps[::-1]},
        str(tmp_path / "g" / "grid.png"),
        titles=["a", "b", "c"],
    )
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="method"):
        attention_maps(backbone, images, method="saliency")
    with pytest.raises(ValueError, match="shape"):
        save_attention_grid(images, {"x": maps[:2]}, str(tmp_path / "bad.png"))
