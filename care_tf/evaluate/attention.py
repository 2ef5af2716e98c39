"""Class-agnostic attention heatmaps of a CNN backbone, and PNG overlay grids.

CARE's claim is that its CNN attends to whole objects better than BYOL's. Two
label-free maps of a feature map A (B, h, w, C), e.g. res5:
- `"gradcam"`: Grad-CAM with the squared norm of the pooled feature as the
  target, s = 0.5 ||GAP(A)||^2. Channel weights are the spatial mean of ds/dA
  (= GAP(A)_c / (h w)), so the map is ReLU(sum_c GAP(A)_c A_c): channels count
  by how strongly the image activates them. Computed with autodiff, so it also
  works on any backbone output.
- `"mean"`: the channel mean of A (activation energy).
Each map is bilinearly resized to the image size and min-max scaled to [0, 1].
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from care_tf import atomic
from care_tf.constants import IMAGENET_MEAN, IMAGENET_STD
from care_tf.evaluate.features import select_features
from care_tf.models.backbone import feature_maps_model

METHODS = ("gradcam", "mean")


def attention_maps(
    backbone: keras.Model,
    images,
    *,
    method: str = "gradcam",
    feature_key: str = "res5",
    batch_size: int = 64,
) -> np.ndarray:
    """Attention heatmaps of `backbone` for `images`.

    Args:
        backbone: keras.Model. A CARE backbone (dict output), a CARE model or a
            feature extractor (`backbone.keras`); run in inference mode.
        images: float (N, H, W, 3), normalised with the ImageNet mean/std.
        method: str. `"gradcam"` or `"mean"` (see the module docstring).
        feature_key: str. Feature map used. Defaults to `"res5"`.
        batch_size: int.

    Returns:
        float32 (N, H, W) in [0, 1] (a constant map is all zeros).
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
    if not isinstance(getattr(backbone, "output", None), dict):
        backbone = feature_maps_model(backbone)  # a feature extractor (backbone.keras)
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"`images` must be (N, H, W, C). Received shape {images.shape}")
    height, width = images.shape[1:3]

    @tf.function(reduce_retracing=True)
    def compute(batch):
        if method == "mean":
            fmap = select_features(backbone(batch, training=False), feature_key)
            cam = tf.reduce_mean(fmap, axis=-1)
        else:
            with tf.GradientTape() as tape:
                fmap = select_features(backbone(batch, training=False), feature_key)
                tape.watch(fmap)
                pooled = tf.reduce_mean(fmap, axis=[1, 2])
                score = 0.5 * tf.reduce_sum(tf.square(pooled), axis=-1)
            grads = tape.gradient(score, fmap)  # (B, h, w, C)
            weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))
        cam = tf.image.resize(cam[..., None], (height, width), method="bilinear")[..., 0]
        low = tf.reduce_min(cam, axis=[1, 2], keepdims=True)
        high = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
        return tf.math.divide_no_nan(cam - low, high - low)

    maps = [
        np.asarray(compute(images[i : i + batch_size])) for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(maps).astype(np.float32)


def denormalize(images) -> np.ndarray:
    """ImageNet-normalised float images -> float32 RGB in [0, 1] for display."""
    images = np.asarray(images, np.float32)
    return np.clip(images * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN), 0.0, 1.0)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends a [0, 1] heatmap (H, W), coloured with the "jet" map, over an RGB
    image in [0, 1] (H, W, 3); returns float (H, W, 3) in [0, 1]."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3]
    return np.clip((1 - alpha) * image + alpha * colours, 0.0, 1.0)


def attention_grid_figure(
    images,
    maps: dict[str, np.ndarray],
    *,
    titles: list[str] | None = None,
    alpha: float = 0.5,
    cell_inches: float = 1.6,
):
    """A matplotlib figure: one row per image; columns = the input, then one overlay
    per model (like the paper's attention figures).

    Args:
        images: float (N, H, W, 3): ImageNet-normalised (as fed to the model).
        maps: {model name: (N, H, W) heatmaps in [0, 1]}, e.g. {"BYOL": ..., "CARE": ...}.
        titles: optional per-row labels (e.g. class names).
        alpha: float. Heatmap opacity.
        cell_inches: float. Size of one cell.
    """
    import matplotlib.pyplot as plt

    rgb = denormalize(images)
    for name, value in maps.items():
        if np.shape(value) != rgb.shape[:3]:
            raise ValueError(
                f"Maps of {name!r} have shape {np.shape(value)}; expected {rgb.shape[:3]}."
            )
    rows, cols = len(rgb), 1 + len(maps)
    fig, axes = plt.subplots(
        rows, cols, figsize=(cell_inches * cols, cell_inches * rows), squeeze=False
    )
    for i in range(rows):
        axes[i, 0].imshow(rgb[i])
        if titles is not None:
            axes[i, 0].set_ylabel(titles[i], fontsize=8)
        for j, value in enumerate(maps.values(), start=1):
            axes[i, j].imshow(overlay(rgb[i], value[i], alpha))
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for j, name in enumerate(["input", *maps], start=0):
        axes[0, j].set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


def attention_grid_image(images, maps: dict[str, np.ndarray], **kwargs) -> np.ndarray:
    """`attention_grid_figure` rendered to uint8 RGB (H, W, 3) (e.g. for TensorBoard)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = attention_grid_figure(images, maps, **kwargs)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return pixels


def save_attention_grid(images, maps: dict[str, np.ndarray], path: str, **kwargs) -> str:
    """Writes `attention_grid_figure(images, maps, **kwargs)` as a PNG at `path`; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = attention_grid_figure(images, maps, **kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
