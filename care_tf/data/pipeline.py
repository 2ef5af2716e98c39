"""Pretraining input pipelines: two views on the host, or raw batches for in-graph augmentation."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import tensorflow as tf

from care_tf.data.augment import TwoViewAugment
from care_tf.data.decode import assert_decoded, try_decode
from care_tf.data.sources import Source, load_source, pipeline_of

PLACEMENTS = ("host", "device")
# tf.data service: `distributed_epoch` hands the stream's source (the positions) out to
# the workers as they ask, so a fleet of any size shares the work without duplicates.
SERVICE_PROCESSING_MODE = "distributed_epoch"


def device_resolution(image_size: int) -> int:
    """Side of the fixed-size images fed to in-graph augmentation (256 for 224)."""
    return int(round(image_size * 256 / 224))


def _decoded(ds: tf.data.Dataset, kind: str) -> tf.data.Dataset:
    """(position, name, data, label) -> (position, name, uint8 (H, W, 3), label, ok)."""
    if kind == "pixels":

        def rgb(k, name, image, label):
            if image.shape.rank == 2:
                image = image[..., None]
            if image.shape[-1] == 1:
                image = tf.tile(image, [1, 1, 3])
            return k, name, image, label, tf.constant(True)

        return ds.map(rgb, num_parallel_calls=tf.data.AUTOTUNE)

    def attempt(k, name, data, label):
        one = try_decode(name, data, label, read=kind == "file")
        return one.map(lambda *e: (k, *e))

    return ds.interleave(
        attempt, cycle_length=16, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def _fail_on_corrupt(k, name, image, label, ok):
    return k, name, assert_decoded(name, image, ok), label, ok


def _replace_corrupt(count, batch):
    """Rows of unreadable images take the content of readable rows of the same batch
    (logged with their names), so a batch always holds `batch_size` positions."""
    ok, names = batch[-1], batch[-2]
    rows = tf.range(tf.shape(ok)[0])
    good = tf.boolean_mask(rows, ok)
    n_good = tf.shape(good)[0]
    check = tf.debugging.Assert(
        n_good > 0, ["care_tf.data: every image of a batch is unreadable:", names], summarize=8
    )
    bad = tf.logical_not(ok)
    count = count + tf.reduce_sum(tf.cast(bad, tf.int64))

    def log():
        tf.print(
            "care_tf.data: skipped unreadable image",
            tf.strings.reduce_join(tf.boolean_mask(names, bad), separator=", "),
            "-",
            count,
            "skipped so far",
            output_stream=sys.stderr,
        )
        return tf.constant(0, tf.int64)

    logged = tf.cond(tf.reduce_any(bad), log, lambda: tf.constant(0, tf.int64))
    with tf.control_dependencies([check]):
        source = tf.where(ok, rows, tf.gather(good, rows % tf.maximum(n_good, 1)))
    return count + logged, tuple(tf.gather(t, source) for t in batch[:-2])


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
    start_position: int = 0,
    service: str | None = None,
    service_job: str | None = None,
) -> tf.data.Dataset:
    """The unlabelled pretraining stream: a deterministic function of (seed, position).

    Pipeline: this input pipeline's stream of positions (`Source.stream`: a new
    permutation of its share every epoch, see `care_tf.data.order`) -> decode ->
    augment (host) or resize (device), position k keyed by (seed, pipeline, k) ->
    batch(drop_remainder=True) -> [tf.data service] -> prefetch. Batch j of this
    pipeline holds positions start_position + j * B ... + B - 1 whatever the
    parallelism, so a run resumes from the number of examples read alone.

    Args:
        spec_or_source: a `load_source` spec string or a Source.
        batch_size: int. The GLOBAL batch when `input_context` is given (each
            replica then gets `input_context.get_per_replica_batch_size(batch_size)`),
            else the batch this dataset yields.
        image_size: int. Side of the augmented views.
        seed: int or None. Seeds the order and the augmentation (None: a random seed).
        placement: "host" yields (view1, view2), float32 (B, S, S, 3) normalised;
            "device" yields uint8 (B, R, R, 3) decoded images resized to
            R = `resolution` for `TwoViewAugment` inside the train step.
        input_context: tf.distribute.InputContext or None.
        shuffle_buffer: int. Record sources (TFRecord, TFDS): records shuffled
            together in a window (random-access sources permute whole epochs).
        cache: bool. Ignored: positions are drawn from the source by random access or
            by record offsets, which a tf.data cache cannot serve. Kept for old configs.
        skip_corrupt: bool. An unreadable image is logged with its name and replaced
            by another image of its batch, instead of raising.
        split: str. Source split.
        data_dir: str or None. Passed to `load_source`.
        repeat: bool. Endless (default); False stops at the end of the epoch.
        resolution: int or None. Device placement's fixed side R; defaults to
            image_size * 256 / 224.
        return_image_sizes: bool. Device placement: yield (images, sizes int32 (B, 2))
            with the original sizes, for `TwoViewAugment(images, image_sizes=sizes)`
            (crops then follow the original aspect ratio exactly).
        augment: TwoViewAugment or None. Host placement's augmenter; defaults to
            TwoViewAugment(image_size, seed).
        start_position: int. Examples this input pipeline has already read (resume).
        service: str or None. "grpc://HOST:PORT" of a tf.data service dispatcher: the
            decoding and augmentation run on its workers (`distributed_epoch` mode).
            Each view is still a function of its position, but which batch a
            position lands in then depends on the workers' timing.
        service_job: str or None. Job name prefix on the service (one job per input
            pipeline and start position); None makes an anonymous job.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}. Received: {placement!r}")
    source = load_source(spec_or_source, split, data_dir=data_dir, skip_corrupt=skip_corrupt)
    if skip_corrupt and not source.skip_corrupt:
        source = dataclasses.replace(source, skip_corrupt=True)
    skip_corrupt = source.skip_corrupt
    per_replica = batch_size
    if input_context is not None:
        per_replica = input_context.get_per_replica_batch_size(batch_size)
    _, pipeline_id = pipeline_of(input_context)
    aug = None
    if placement == "host":
        aug = augment or TwoViewAugment(image_size, seed=seed)
        seed = aug.seed_value
    elif seed is None:
        seed = int(np.random.randint(2**31 - 1))

    ds = source.stream(input_context, seed=seed, start=start_position, window=shuffle_buffer)
    if not repeat:
        end = (start_position // source.epoch_length(input_context) + 1) * source.epoch_length(
            input_context
        )
        ds = ds.take_while(lambda k, *_: k < end)
    ds = _decoded(ds, source.data_kind)
    if not skip_corrupt:
        ds = ds.map(_fail_on_corrupt)

    if aug is not None:
        base = tf.constant([aug.seed_value, pipeline_id], tf.int64)

        def per_example(k, name, image, label, ok):
            image = tf.cond(ok, lambda: image, lambda: tf.zeros([8, 8, 3], tf.uint8))
            key = tf.random.experimental.stateless_fold_in(base, k)
            v1, v2 = aug.augment(image[None], key, per_element=True)
            return v1[0], v2[0], name, ok

    else:
        side = resolution or device_resolution(image_size)

        def per_example(k, name, image, label, ok):
            image = tf.cond(ok, lambda: image, lambda: tf.zeros([8, 8, 3], tf.uint8))
            size = tf.shape(image)[:2]
            image = tf.image.resize(image, [side, side], antialias=True)
            image = tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8)
            return image, size, name, ok

    ds = ds.map(per_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(per_replica, drop_remainder=True)
    if skip_corrupt:
        ds = ds.scan(tf.constant(0, tf.int64), _replace_corrupt)
    else:
        ds = ds.map(lambda *batch: batch[:-2])
    if aug is None and not return_image_sizes:
        ds = ds.map(lambda images, sizes: images)
    if service:
        job = service_job and f"{service_job}-pipeline{pipeline_id}-at{start_position}"
        ds = ds.apply(
            tf.data.experimental.service.distribute(
                processing_mode=SERVICE_PROCESSING_MODE, service=service, job_name=job
            )
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def distribute_pretrain_dataset(strategy: tf.distribute.Strategy, spec_or_source, **kwargs):
    """`make_pretrain_dataset` per input pipeline, via distribute_datasets_from_function.

    `batch_size` is the global batch; every replica gets batch_size / num_replicas
    (consecutive per-replica batches of its worker's stream go to its local replicas in
    turn, so one step reads batch_size / num_workers positions of each worker's stream).
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
