"""Pretraining input pipelines: two views on the host, or raw batches for in-graph augmentation."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from care_tf.data.augment import TwoViewAugment
from care_tf.data.sources import Source, load_source

PLACEMENTS = ("host", "device")


def device_resolution(image_size: int) -> int:
    """Side of the fixed-size images fed to in-graph augmentation (256 for 224)."""
    return int(round(image_size * 256 / 224))


def make_pretrain_dataset(
    spec_or_source: str | Source,
    *,
    batch_size: int,
    image_size: int,
    seed: int | None = None,
    placement: str = "host",
    input_context: tf.distribute.InputContext | None = None,
    shuffle_buffer: int = 10_000,
    cache: bool = False,
    skip_corrupt: bool = False,
    split: str = "train",
    data_dir: str | None = None,
    repeat: bool = True,
    resolution: int | None = None,
    return_image_sizes: bool = False,
    augment: TwoViewAugment | None = None,
) -> tf.data.Dataset:
    """The unlabelled pretraining stream.

    Pipeline: source (this input pipeline's file shard, shuffled before decoding) ->
    [cache] -> repeat -> enumerate -> AUTOTUNE map -> batch(drop_remainder=True) ->
    prefetch. Element i of the stream is augmented with the stateless key
    (seed, i) folded with the input pipeline id, so with a seed the stream is
    reproducible whatever the parallelism.

    Args:
        spec_or_source: a `load_source` spec string or a Source.
        batch_size: int. The GLOBAL batch when `input_context` is given (each
            replica then gets `input_context.get_per_replica_batch_size(batch_size)`),
            else the batch this dataset yields.
        image_size: int. Side of the augmented views.
        seed: int or None. Seeds shuffling and augmentation.
        placement: "host" yields (view1, view2), float32 (B, S, S, 3) normalised;
            "device" yields uint8 (B, R, R, 3) decoded images resized to
            R = `resolution` for `TwoViewAugment` inside the train step.
        input_context: tf.distribute.InputContext or None.
        shuffle_buffer: int. Example shuffle buffer (record-based sources).
        cache: bool. Cache decoded images in memory (small datasets).
        skip_corrupt: bool. Skip unreadable images (logged) instead of raising.
        split: str. Source split.
        data_dir: str or None. Passed to `load_source`.
        repeat: bool. Repeat forever (default; element keys then never repeat).
        resolution: int or None. Device placement's fixed side R; defaults to
            image_size * 256 / 224.
        return_image_sizes: bool. Device placement: yield (images, sizes int32 (B, 2))
            with the original sizes, for `TwoViewAugment(images, image_sizes=sizes)`
            (crops then follow the original aspect ratio exactly).
        augment: TwoViewAugment or None. Host placement's augmenter; defaults to
            TwoViewAugment(image_size, seed).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}. Received: {placement!r}")
    source = load_source(spec_or_source, split, data_dir=data_dir, skip_corrupt=skip_corrupt)
    if skip_corrupt and not source.skip_corrupt:
        source = dataclasses.replace(source, skip_corrupt=True)
    per_replica = batch_size
    pipeline_id = 0
    if input_context is not None:
        per_replica = input_context.get_per_replica_batch_size(batch_size)
        pipeline_id = input_context.input_pipeline_id
    if cache:
        ds = source.as_dataset(input_context).cache()
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    else:
        ds = source.as_dataset(
            input_context, shuffle=True, seed=seed, shuffle_buffer=shuffle_buffer
        )
    if repeat:
        ds = ds.repeat()
    ds = ds.enumerate()

    if placement == "host":
        aug = augment or TwoViewAugment(image_size, seed=seed)
        base = tf.constant([aug.seed_value, pipeline_id], tf.int64)

        def two_views(index, example):
            key = tf.random.experimental.stateless_fold_in(base, index)
            image = example["image"][None]
            v1, v2 = aug.augment(image, key, per_element=True)
            return v1[0], v2[0]

        fn = two_views
    else:
        side = resolution or device_resolution(image_size)

        def fixed_size(index, example):
            image = example["image"]
            size = tf.shape(image)[:2]
            image = tf.image.resize(image, [side, side], antialias=True)
            image = tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8)
            return (image, size) if return_image_sizes else image

        fn = fixed_size
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(per_replica, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def distribute_pretrain_dataset(strategy: tf.distribute.Strategy, spec_or_source, **kwargs):
    """`make_pretrain_dataset` per input pipeline, via distribute_datasets_from_function.

    `batch_size` is the global batch; every replica gets batch_size / num_replicas.
    """
    source = load_source(
        spec_or_source,
        kwargs.pop("split", "train"),
        data_dir=kwargs.pop("data_dir", None),
        skip_corrupt=kwargs.pop("skip_corrupt", False),
    )

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_pretrain_dataset(source, input_context=input_context, **kwargs)

    return strategy.distribute_datasets_from_function(dataset_fn)
