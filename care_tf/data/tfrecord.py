"""TFRecord shards of encoded images (written by `python -m care_tf.data.make_tfrecords`).

Feature spec of one tf.train.Example:
    image/encoded      bytes  the image file's bytes (JPEG, PNG, BMP or GIF)
    image/class/label  int64  0-based class index, -1 when unlabelled
    image/filename     bytes  path relative to the source folder (for error messages);
                              optional
Shards are named SPLIT-00000-of-00008.tfrecord; OUT_DIR/dataset_info.json holds
{"class_names": [...] or null, "splits": {SPLIT: {"num_examples": N, "num_shards": K}}}.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct

import tensorflow as tf

from care_tf.data.decode import decode_dataset
from care_tf.data.sources import Source, pipeline_of, shard_files

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
}
INFO_FILE = "dataset_info.json"


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def count_records(path: str) -> int:
    """Records in an uncompressed TFRecord file, read from the record headers only
    (8-byte length + 4-byte CRC, then the payload and its 4-byte CRC are skipped)."""
    count = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        size = f.size()
        while f.tell() < size:
            header = f.read(12)
            if len(header) < 12:
                raise ValueError(f"Truncated TFRecord file {path} after {count} records")
            (length,) = struct.unpack("<Q", header[:8])
            f.seek(length + 4, whence=1)
            count += 1
    return count


def parse_record(path: tf.Tensor, index: tf.Tensor, record: tf.Tensor):
    """(name, encoded image, label) of one record; the name says where it was read."""
    ex = tf.io.parse_single_example(record, FEATURES)
    where = tf.strings.join([path, "#", tf.strings.as_string(index)])
    name = tf.where(
        tf.strings.length(ex["image/filename"]) > 0,
        tf.strings.join([ex["image/filename"], " (", where, ")"]),
        where,
    )
    return name, ex["image/encoded"], ex["image/class/label"]


@dataclasses.dataclass
class TFRecordSource(Source):
    """TFRecord shards; input pipelines shard by file, then interleave their files."""

    def as_dataset(self, input_context=None, *, shuffle=False, seed=None, shuffle_buffer=10_000):
        files = shard_files(self.files, input_context, self.name)
        ds = tf.data.Dataset.from_tensor_slices(files)
        if shuffle:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

        def records(path):
            return tf.data.TFRecordDataset(path).enumerate()

        ds = ds.interleave(
            lambda path: records(path).map(lambda i, r: (path, i, r)),
            cycle_length=min(len(files), 16),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(parse_record, num_parallel_calls=tf.data.AUTOTUNE)
        return decode_dataset(ds, skip_corrupt=self.skip_corrupt)

    record_counts: dict = dataclasses.field(default_factory=dict, repr=False)

    def segments(self, input_context=None) -> list[tuple[str, int, int]]:
        """(file, 0, records) of this input pipeline's files (counted once, then kept)."""
        files = shard_files(self.files, input_context, self.name)
        for path in files:
            if path not in self.record_counts:
                self.record_counts[path] = count_records(path)
        return [(path, 0, self.record_counts[path]) for path in files]

    def epoch_length(self, input_context=None):
        return sum(s[2] for s in self.segments(input_context))

    def stream(self, input_context=None, *, seed=0, start=0, window=10_000):
        from care_tf.data.order import record_positions

        _, pipeline = pipeline_of(input_context)
        ds = record_positions(self.segments(input_context), seed, pipeline, start, window)
        return ds.map(
            lambda k, path, index, record: (k, *parse_record(path, index, record)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )


def tfrecord_source(path: str, split: str = "train") -> TFRecordSource:
    """Opens TFRecord shards: a directory written by make_tfrecords (shards of `split`),
    or a file / glob pattern (all matching files, `split` only names it)."""
    path = os.path.expanduser(path)
    info = {}
    if os.path.isdir(path):
        folder = path
        files = sorted(glob.glob(os.path.join(folder, f"{split}-*.tfrecord*")))
        if not files:
            found = sorted(
                {
                    os.path.basename(f).split("-")[0]
                    for f in glob.glob(os.path.join(folder, "*"))
                    if ".tfrecord" in f
                }
            )
            raise ValueError(
                f"No TFRecord shards for split {split!r} in {folder} (expected "
                f"{shard_name(split, 0, 1)} etc.). Splits found: {found}"
            )
    else:
        folder = os.path.dirname(path)
        files = sorted(glob.glob(path))
        if not files:
            raise FileNotFoundError(f"No TFRecord files match {path}")
    info_path = os.path.join(folder, INFO_FILE)
    if os.path.isfile(info_path):
        with open(info_path) as f:
            info = json.load(f)
    class_names = info.get("class_names")
    split_info = info.get("splits", {}).get(split, {})
    num_examples = split_info.get("num_examples") if os.path.isdir(path) else None
    return TFRecordSource(
        name=f"tfrecord:{path}",
        split=split,
        files=files,
        num_examples=num_examples,
        num_classes=len(class_names) if class_names else None,
        class_names=class_names,
    )
