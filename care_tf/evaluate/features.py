"""Frozen-backbone feature extraction: images -> pooled (or any named) features."""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf

# backbone -> {feature key: compiled forward function}, so repeated extraction
# (e.g. a monitor every epoch) reuses one traced function.
_FEATURE_FNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def as_dataset(data, batch_size: int = 256) -> tf.data.Dataset:
    """`data` as a batched `(images, labels)` dataset.

    Args:
        data: a `tf.data.Dataset` of batched `(images, labels)` (returned as is), or a
            tuple `(images, labels)` of arrays: images float32 (N, H, W, C) already
            normalised, labels int (N,).
        batch_size: int. Batch size used for arrays.
    """
    if isinstance(data, tf.data.Dataset):
        return data
    images, labels = data
    return tf.data.Dataset.from_tensor_slices(
        (np.asarray(images, np.float32), np.asarray(labels, np.int64))
    ).batch(batch_size)


def select_features(outputs, key: str = "pooled"):
    """The `key` entry of a backbone's dict output (or the output itself if it is a tensor)."""
    if isinstance(outputs, dict):
        if key not in outputs:
            raise KeyError(f"Backbone has no {key!r} output; it returns {sorted(outputs)}.")
        return outputs[key]
    return outputs


def feature_fn(backbone: keras.Model, key: str = "pooled"):
    """A compiled `images -> features` function running `backbone` in inference mode.

    BatchNorm uses its moving statistics and nothing in the backbone is updated.
    `backbone` is a CARE backbone (dict output) or a feature extractor (pooled
    features; for another `key`, the CARE backbone inside it is used).
    """
    cached = _FEATURE_FNS.setdefault(backbone, {})
    if key in cached:
        return cached[key]
    model = backbone
    if key != "pooled" and not isinstance(getattr(backbone, "output", None), dict):
        from care_tf.models.backbone import feature_maps_model

        model = feature_maps_model(backbone)  # a feature extractor: its maps model

    @tf.function(reduce_retracing=True)
    def forward(images):
        return tf.stop_gradient(select_features(model(images, training=False), key))

    cached[key] = forward
    return forward


def extract_features(
    backbone: keras.Model,
    data,
    *,
    key: str = "pooled",
    batch_size: int = 256,
    progress: bool = False,
    desc: str = "features",
) -> tuple[np.ndarray, np.ndarray]:
    """Runs the frozen `backbone` over `data` and collects features and labels.

    Args:
        backbone: keras.Model. A feature extractor (`backbone.keras`: images -> pooled
            features), a CARE backbone (dict output) or any feature model.
        data: batched `(images, labels)` dataset, or `(images, labels)` arrays.
        key: str. Which backbone output to collect. Defaults to `"pooled"`.
        batch_size: int. Batch size for array input.
        progress: bool. Show a tqdm progress bar.
        desc: str. Progress bar label.

    Returns:
        `(features, labels)`: float32 (N, D) (D = 512 for ResNet-18, 2048 for
        ResNet-50) and int64 (N,).
    """
    dataset = as_dataset(data, batch_size)
    forward = feature_fn(backbone, key)
    cardinality = int(dataset.cardinality())
    total = cardinality if cardinality > 0 else None
    batches = dataset
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(dataset, total=total, desc=desc, unit="batch")
    features, labels = [], []
    for images, batch_labels in batches:
        feats = forward(images)
        features.append(np.asarray(feats, np.float32).reshape(len(feats), -1))
        labels.append(np.asarray(batch_labels, np.int64).reshape(-1))
    if not features:
        raise ValueError("The dataset is empty: no features were extracted.")
    return np.concatenate(features), np.concatenate(labels)
