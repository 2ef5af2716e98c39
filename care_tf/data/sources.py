"""Image sources behind one interface, selected by a config string (`load_source`)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow as tf

logger = logging.getLogger("care_tf.data")


@dataclasses.dataclass
class Source:
    """A split of an image dataset.

    Attributes:
        name: str. The spec it was loaded from, e.g. "folder:/data/pets".
        split: str. The split name.
        files: list of str. The files read; input pipelines shard them file by file
            (in-memory sources list their IDX files and shard by element).
        num_examples: int or None. Number of images, None when unknown.
        num_classes: int or None. None for unlabelled data (labels are then -1).
        class_names: list of str or None. Index i names label i.
        skip_corrupt: bool. Drop unreadable images (logged and counted) instead of raising.
    """

    name: str
    split: str
    files: list[str]
    num_examples: int | None
    num_classes: int | None
    class_names: list[str] | None
    skip_corrupt: bool = False

    def as_dataset(
        self,
        input_context: tf.distribute.InputContext | None = None,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        shuffle_buffer: int = 10_000,
    ) -> tf.data.Dataset:
        """The split as a tf.data.Dataset of {"image": uint8 (H, W, 3), "label": int64}.

        Args:
            input_context: tf.distribute.InputContext or None. If given, this input
                pipeline reads only its shard (1/num_input_pipelines of the files).
            shuffle: bool. Shuffle files and examples (reshuffled every iteration;
                before decoding, so shuffling costs encoded bytes only).
            seed: int or None. Shuffle seed (reproducible order).
            shuffle_buffer: int. Example shuffle buffer where the source is not a
                plain list of files (TFRecord, TFDS).
        """
        raise NotImplementedError

    # What `stream` yields as `data`: "pixels" (uint8 (H, W[, C]) arrays), "encoded"
    # (image file bytes) or "file" (a path, read then decoded).
    data_kind = "encoded"

    def stream(
        self,
        input_context: tf.distribute.InputContext | None = None,
        *,
        seed: int = 0,
        start: int = 0,
        window: int = 10_000,
    ) -> tf.data.Dataset:
        """This input pipeline's endless, deterministic stream (`care_tf.data.order`).

        Args:
            input_context: tf.distribute.InputContext or None. This pipeline reads its
                share of the data only.
            seed: int. Key of the order (a new permutation every epoch).
            start: int. First position (examples this pipeline has already read).
            window: int. Records shuffled together (record sources only).

        Returns:
            tf.data.Dataset of (position int64, name string, data, label int64), `data`
            as `data_kind` says (not decoded).
        """
        raise NotImplementedError

    def epoch_length(self, input_context: tf.distribute.InputContext | None = None) -> int:
        """Examples in one epoch of this input pipeline's share."""
        raise NotImplementedError

    @property
    def labelled(self) -> bool:
        return self.num_classes is not None


def pipeline_of(input_context: tf.distribute.InputContext | None) -> tuple[int, int]:
    """(number of input pipelines, this pipeline's index)."""
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


def random_access_stream(
    name: str, total: int, input_context, seed: int, start: int, lookup
) -> tf.data.Dataset:
    """`Source.stream` of a source with random access: `lookup(index)` gives
    (name, data, label) of example `index` of the whole split (`total` examples);
    this pipeline owns the indices i with i % num_pipelines == pipeline."""
    from care_tf.data.order import random_access_positions

    n, i = pipeline_of(input_context)
    share = len(range(i, total, n))
    if not share:
        raise ValueError(f"{name}: no examples left for input pipeline {i} of {n}")
    positions = random_access_positions(share, seed, i, start)
    return positions.map(
        lambda k, local: (k, *lookup(local * n + i)), num_parallel_calls=tf.data.AUTOTUNE
    )


@dataclasses.dataclass
class ArraySource(Source):
    """Images held in memory (Fashion-MNIST): sharded by element, not by file."""

    images: np.ndarray | None = dataclasses.field(default=None, repr=False)
    labels: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def as_dataset(self, input_context=None, *, shuffle=False, seed=None, shuffle_buffer=10_000):
        ds = tf.data.Dataset.from_tensor_slices((self.images, self.labels.astype(np.int64)))
        if input_context is not None and input_context.num_input_pipelines > 1:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        if shuffle:
            ds = ds.shuffle(len(self.images), seed=seed, reshuffle_each_iteration=True)

        def to_dict(image, label):
            if image.shape.rank == 2:
                image = image[..., None]
            if image.shape[-1] == 1:
                image = tf.tile(image, [1, 1, 3])
            return {"image": image, "label": label}

        return ds.map(to_dict, num_parallel_calls=tf.data.AUTOTUNE)

    data_kind = "pixels"

    def epoch_length(self, input_context=None):
        n, i = pipeline_of(input_context)
        return len(range(i, len(self.images), n))

    def stream(self, input_context=None, *, seed=0, start=0, window=10_000):
        images = tf.constant(self.images)
        labels = tf.constant(self.labels.astype(np.int64))

        def lookup(index):
            name = tf.strings.join([self.name, "#", tf.strings.as_string(index)])
            return name, tf.gather(images, index), tf.gather(labels, index)

        return random_access_stream(self.name, len(self.images), input_context, seed, start, lookup)


def fashion_mnist_source(split: str = "train", data_dir: str | None = None) -> ArraySource:
    """Fashion-MNIST from its IDX files as a Source (grayscale made 3-channel)."""
    from care_tf.data.fashion_mnist import (
        CLASS_NAMES,
        fashion_mnist_files,
        load_fashion_mnist,
    )

    images, labels = load_fashion_mnist(split, data_dir)
    return ArraySource(
        name="fashion_mnist",
        split=split,
        files=list(fashion_mnist_files(split, data_dir)),
        num_examples=len(images),
        num_classes=len(CLASS_NAMES),
        class_names=list(CLASS_NAMES),
        images=images,
        labels=labels,
    )


def load_source(
    spec: str | Source,
    split: str = "train",
    *,
    data_dir: str | None = None,
    skip_corrupt: bool = False,
) -> Source:
    """Opens an image source from a config string.

    Args:
        spec: str. One of "fashion_mnist" (IDX files, offline), "tfds:NAME" (any
            TFDS image dataset, e.g. "tfds:cifar10", "tfds:imagenet2012"),
            "folder:/path" (class sub-folders, or flat without labels) or
            "tfrecord:/path/or/glob" (shards written by `care_tf.data.make_tfrecords`).
            A Source is returned unchanged.
        split: str. Split name ("train", "test", "validation", a TFDS split
            expression like "train[:10%]", or a sub-folder name for folders).
        data_dir: str or None. TFDS data dir, or the Fashion-MNIST IDX folder.
        skip_corrupt: bool. Skip unreadable images (logged with their names and
            counted) instead of raising an error naming the first one.

    Returns:
        A Source; `source.as_dataset()` gives {"image": uint8 (H, W, 3), "label": int64}.
    """
    if isinstance(spec, Source):
        if skip_corrupt and not spec.skip_corrupt:
            return dataclasses.replace(spec, skip_corrupt=True)
        return spec
    kind, _, arg = spec.partition(":")
    if kind == "fashion_mnist" and not arg:
        source = fashion_mnist_source(split, data_dir)
    elif kind == "tfds" and arg:
        from care_tf.data.tfds_source import tfds_source

        source = tfds_source(arg, split, data_dir=data_dir)
    elif kind == "folder" and arg:
        from care_tf.data.folder import folder_source

        source = folder_source(arg, split)
    elif kind == "tfrecord" and arg:
        from care_tf.data.tfrecord import tfrecord_source

        source = tfrecord_source(arg, split)
    else:
        raise ValueError(
            "Unknown data source; expected 'fashion_mnist', 'tfds:NAME', 'folder:/path' "
            f"or 'tfrecord:/path/or/glob'. Received: spec={spec!r}"
        )
    source.skip_corrupt = skip_corrupt
    return source


def shard_files(
    files: list[str], input_context: tf.distribute.InputContext | None, what: str
) -> list[str]:
    """This input pipeline's share of `files` (round robin); raises if it gets none."""
    if input_context is None or input_context.num_input_pipelines == 1:
        return list(files)
    n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
    mine = list(files[i::n])
    if not mine:
        raise ValueError(
            f"{what}: {len(files)} files cannot be shared among {n} input pipelines; "
            "write more shards"
        )
    return mine
