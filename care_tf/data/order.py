"""The input order: which example sits at each position of an input pipeline's stream.

An input pipeline (one per worker) reads an endless stream. Its position k counts the
examples it has read since the run began; k belongs to epoch e = k // n and offset
p = k % n, n being the pipeline's share of the data. What sits at position k is a
function of (seed, pipeline, k) alone, so resuming a run needs k (an integer), never
a shuffle buffer:

- random-access sources (in-memory arrays, image folders): offset p of epoch e holds
  share[index_shuffle(p, key(seed, pipeline, e))], a new permutation every epoch,
  computed position by position (nothing is materialised).
- record sources (TFRecord shards, TFDS): the share is a list of segments
  (file, first record, records). Epoch e concatenates them in an order drawn from
  key(seed, pipeline, e) and reads the concatenation as `lanes` equal parts, round
  robin (lane l holds offsets p with p % lanes == l), then shuffles each window of
  `window` records by key(seed, pipeline, e, window). Starting at offset p opens each
  lane at its own record offset (TFRecord readers skip records without parsing
  them) and the window holding p.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

MAX_LANES = 16


def stream_key(seed: int, pipeline, *more) -> tf.Tensor:
    """Stateless seed pair (2,) for (seed, pipeline, *more); tensors or ints."""
    key = tf.constant([seed, 0], tf.int64)
    for value in (pipeline, *more):
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
    return key


def random_access_positions(
    num_examples: int, seed: int, pipeline: int, start: int = 0
) -> tf.data.Dataset:
    """(position, index) pairs from `start` on: index in [0, num_examples) is the
    example at that position of this pipeline's share (see the module docstring)."""
    if num_examples < 1:
        raise ValueError(f"An input pipeline needs at least one example. Received: {num_examples}")
    n = tf.constant(num_examples, tf.int64)

    def index(k):
        key = stream_key(seed, pipeline, k // n)
        return k, tf.random.experimental.index_shuffle(k % n, key, n - 1)

    return tf.data.Dataset.range(start, np.iinfo(np.int64).max).map(index)


def lane_bounds(total: int, lanes: int) -> np.ndarray:
    """Start offsets (lanes + 1,) of `lanes` near-equal parts of `total` records, longer
    parts first, so that offset p is record p // lanes of lane p % lanes."""
    q, r = divmod(total, lanes)
    return np.array([lane * q + min(lane, r) for lane in range(lanes + 1)], np.int64)


def expect_records(
    records: tf.data.Dataset, path, count, skip_corrupt: bool, first=0
) -> tf.data.Dataset:
    """`records` (serialized records of the file `path`, at most `count`) read through
    damage: a record failing its checksum ends the file's reading (TFRecord readers
    cannot resynchronise). Without `skip_corrupt` that raises an error naming the file
    and the record (`first` = index of the first record read); with it the rest of the
    file is skipped (TensorFlow logs a warning).
    """
    records = records.ignore_errors(log_warning=True)
    if skip_corrupt:
        return records
    count = tf.cast(count, tf.int64)
    end = tf.data.Dataset.from_tensors((tf.constant(False), tf.constant(b"")))

    def check(read, element):
        real, _ = element
        ok = tf.logical_or(real, tf.equal(read, count))
        message = tf.strings.join(
            [
                "care_tf.data: TFRecord file ",
                path,
                " is damaged at record ",
                tf.strings.as_string(tf.cast(first, tf.int64) + read),
                ": it fails its checksum or cannot be read. Rewrite the file, or set "
                "data.skip_corrupt / skip_corrupt=True to skip the rest of it.",
            ]
        )
        assertion = tf.debugging.Assert(ok, [message])
        with tf.control_dependencies([assertion]):
            return read + 1, element

    marked = records.map(lambda r: (tf.constant(True), r)).concatenate(end)
    checked = marked.scan(tf.constant(0, tf.int64), check)
    return checked.filter(lambda real, r: real).map(lambda real, r: r)


def record_positions(
    segments: list[tuple[str, int, int]],
    seed: int,
    pipeline: int,
    start: int = 0,
    window: int = 10_000,
    lanes: int = MAX_LANES,
    read: Callable[[tf.Tensor], tf.data.Dataset] | None = None,
    skip_corrupt: bool | None = None,
) -> tf.data.Dataset:
    """(position, file, record index, record) from `start` on (see the module docstring).

    Args:
        segments: (file, first record, number of records) of this pipeline's share.
        seed, pipeline: the stream's key.
        start: first position (examples already read).
        window: records shuffled together (the memory a shuffle buffer would use).
        lanes: parts of an epoch read round robin (<= the number of records).
        read: file path -> dataset of serialized records. Defaults to TFRecordDataset.
        skip_corrupt: None reads records as they come; False / True read each piece
            through `expect_records` (a damaged record is an error naming the file, or
            ends that piece).
    """
    read = read or (lambda path: tf.data.TFRecordDataset(path))
    files = tf.constant([s[0] for s in segments])
    firsts = tf.constant([s[1] for s in segments], tf.int64)
    sizes = tf.constant([s[2] for s in segments], tf.int64)
    total = int(sum(s[2] for s in segments))
    if total < 1:
        raise ValueError("An input pipeline needs at least one record; its files hold none.")
    lanes = max(1, min(lanes, total))
    window = max(1, int(window))
    bounds = tf.constant(lane_bounds(total, lanes))
    n = tf.constant(total, tf.int64)

    def epoch_records(epoch, offset):
        """Records of `epoch` from window-aligned `offset` on, as (file, index, record)."""
        order = tf.argsort(
            tf.random.stateless_uniform([len(segments)], stream_key(seed, pipeline, epoch, -1))
        )
        o_files, o_firsts, o_sizes = (tf.gather(t, order) for t in (files, firsts, sizes))
        ends = tf.cumsum(o_sizes)
        begins = ends - o_sizes

        def lane(index):
            # Lane `index` resumes at its record ceil((offset - index) / lanes).
            done = tf.maximum(offset - index + lanes - 1, 0) // lanes
            lo, hi = bounds[index] + done, bounds[index + 1]
            a, b = tf.maximum(begins, lo), tf.minimum(ends, hi)
            keep = b > a
            pieces = (
                tf.boolean_mask(o_files, keep),
                tf.boolean_mask(o_firsts + a - begins, keep),
                tf.boolean_mask(b - a, keep),
            )

            def piece(path, first, count):
                records = read(path).skip(first).take(count)
                if skip_corrupt is not None:
                    records = expect_records(records, path, count, skip_corrupt, first)
                return records.enumerate(first).map(lambda i, r: (path, i, r))

            return tf.data.Dataset.from_tensor_slices(pieces).flat_map(piece)

        first_lane = offset % lanes
        rotated = (tf.range(lanes, dtype=tf.int64) + first_lane) % lanes
        return tf.data.Dataset.from_tensor_slices(rotated).interleave(
            lane,
            cycle_length=lanes,
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def epoch_stream(epoch, skip):
        aligned = skip // window * window

        def shuffle_window(w, batch):
            key = stream_key(seed, pipeline, epoch, w)
            perm = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(batch[0])[0]), key)
            return tuple(tf.gather(t, perm) for t in batch)

        ds = (
            epoch_records(epoch, aligned)
            .batch(window)
            .enumerate(aligned // window)
            .map(shuffle_window)
            .unbatch()
            .skip(skip - aligned)
        )
        return ds.enumerate(epoch * n + skip).map(lambda k, e: (k, *e))

    first_epoch, first_offset = divmod(int(start), total)
    epochs = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
    first = tf.constant(first_offset, tf.int64)
    epochs = epochs.map(lambda e: (e, tf.where(e == first_epoch, first, tf.zeros_like(first))))
    return epochs.flat_map(epoch_stream)
