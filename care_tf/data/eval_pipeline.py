"""Linear-evaluation pipelines (docs/method.md, "Linear evaluation"), at any image size."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from care_tf.constants import IMAGENET_MEAN, IMAGENET_STD
from care_tf.data.crop import crop_one, resize_shorter_and_centre_crop, sample_crops
from care_tf.data.sources import Source, load_source

_CROP_UNIFORMS = 40


def eval_resize(image_size: int) -> int:
    """Shorter side before the centre crop: image_size * 256 / 224 (256 for 224, 37 for 32)."""
    return int(math.floor(image_size * 256 / 224 + 0.5))


def make_eval_dataset(
    spec_or_source: str | Source,
    *,
    split: str,
    train: bool,
    image_size: int,
    batch_size: int,
    seed: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
    shuffle_buffer: int = 10_000,
    cache: bool = False,
    skip_corrupt: bool = False,
    data_dir: str | None = None,
    drop_remainder: bool | None = None,
) -> tf.data.Dataset:
    """Labelled (images, labels) batches for the linear probe.

    train=True: shuffled, random resized crop (scale (0.08, 1), ratio (3/4, 4/3))
    + horizontal flip, keyed by (seed, element index). train=False: in order, shorter
    side resized to image_size * 256 / 224 (bilinear, antialiased), centre crop.

    Args:
        spec_or_source: a `load_source` spec or a Source (must be labelled).
        split: str. Source split.
        train: bool. Training (augmented) or evaluation (deterministic) pipeline.
        image_size: int. Output side in pixels.
        batch_size: int. Global batch if `input_context` is given, else this batch.
        seed: int or None. Shuffle and crop seed.
        input_context: tf.distribute.InputContext or None (file-level sharding).
        shuffle_buffer, cache, skip_corrupt, data_dir: as `make_pretrain_dataset`.
        drop_remainder: bool or None. Defaults to `train` (evaluation keeps every image).

    Returns:
        tf.data.Dataset of (float32 (B, S, S, 3) ImageNet-normalised, int64 (B,)).
    """
    source = load_source(spec_or_source, split, data_dir=data_dir, skip_corrupt=skip_corrupt)
    if skip_corrupt and not source.skip_corrupt:
        source = dataclasses.replace(source, skip_corrupt=True)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    if drop_remainder is None:
        drop_remainder = train
    if cache:
        ds = source.as_dataset(input_context).cache()
        if train:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    else:
        ds = source.as_dataset(
            input_context, shuffle=train, seed=seed, shuffle_buffer=shuffle_buffer
        )
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    base = tf.constant(
        [seed if seed is not None else int(np.random.randint(2**31 - 1)), 0],
        tf.int64,
    )

    if train:

        def preprocess(index, example):
            image = example["image"]
            key = tf.random.experimental.stateless_fold_in(base, index)
            u = tf.random.stateless_uniform([_CROP_UNIFORMS + 1], seed=key)
            shape = tf.shape(image)
            crop = sample_crops(u[None, :_CROP_UNIFORMS], shape[:1], shape[1:2])[0]
            x = crop_one(image, crop, image_size)
            x = tf.cond(u[-1] < 0.5, lambda: tf.reverse(x, axis=[1]), lambda: x)
            return x, example["label"]

        ds = ds.enumerate()
    else:
        resize_to = eval_resize(image_size)

        def preprocess(example):
            x = resize_shorter_and_centre_crop(example["image"], image_size, resize_to)
            return x, example["label"]

    def normalise(x, label):
        x = tf.clip_by_value(x / 255.0, 0.0, 1.0)
        x.set_shape([image_size, image_size, 3])
        return (x - mean) / std, label

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(normalise, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
