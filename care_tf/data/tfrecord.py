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
import sys

import tensorflow as tf

from care_tf.data.decode import decode_dataset
from care_tf.data.order import expect_records
from care_tf.data.sources import Source, pipeline_of, shard_files

FEATURES = {
    # An empty default: a record without the image reads as an unreadable image, named
    # by its file and index (an error, or skipped with skip_corrupt), not a parse error.
    "image/encoded": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
}
INFO_FILE = "dataset_info.json"


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def truncated_message(path: str, count: int) -> str:
    return (
        f"TFRecord shard {path} is truncated: it ends inside record {count} (after {count} "
        "whole records; or that record's header is damaged). Rewrite it (python -m "
        "care_tf.data.make_tfrecords ... --overwrite), or set data.skip_corrupt / "
        "skip_corrupt=True to read only its whole records."
    )


def scan_shard(path: str) -> tuple[int, bool, bytes | None]:
    """(whole records, whether the file ends inside a record, the first record's bytes or
    None) of an uncompressed TFRecord file, from the record headers."""
    count, first = 0, None
    with tf.io.gfile.GFile(path, "rb") as f:
        size = f.size()
        while f.tell() < size:
            header = f.read(12)
            if len(header) < 12:
                return count, True, first
            (length,) = struct.unpack("<Q", header[:8])
            if f.tell() + length + 4 > size:
                return count, True, first
            if first is None:
                first = f.read(length)
                f.seek(4, whence=1)
            else:
                f.seek(length + 4, whence=1)
            count += 1
    return count, False, first


def shard_problem(path: str, first: bytes | None) -> str | None:
    """Why the shard whose first record is `first` holds no images of ours; None when it
    does (or is empty)."""
    if first is None:
        return None
    try:
        keys = sorted(tf.train.Example.FromString(first).features.feature.keys())
    except Exception:  # noqa: BLE001 - protobuf's DecodeError
        return f"TFRecord shard {path} does not hold tf.train.Example records"
    if "image/encoded" not in keys:
        return (
            f"TFRecord shard {path} has no 'image/encoded' feature (its records hold "
            f"{', '.join(keys) or 'no features'}): it was not written by "
            "care_tf.data.make_tfrecords"
        )
    return None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


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
        segments = self.segments(input_context)
        files = [s[0] for s in segments]
        counts = tf.constant([s[2] for s in segments], tf.int64)
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(files), counts), -1
        )
        ds = tf.data.Dataset.from_tensor_slices(files)
        if shuffle:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        skip_corrupt = self.skip_corrupt

        def records(path):
            # Whole records only (a truncated shard's tail is never read).
            count = table.lookup(path)
            ds = tf.data.TFRecordDataset(path).take(count)
            return expect_records(ds, path, count, skip_corrupt).enumerate()

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
        """(file, 0, whole records) of this input pipeline's usable files (scanned once).

        A shard that ends inside a record, or whose records are not images of
        `make_tfrecords`, raises a ValueError naming it; with `skip_corrupt` the first
        is read up to its last whole record and the second left out, with a warning.
        """
        files = shard_files(self.files, input_context, self.name)
        for path in files:
            if path in self.record_counts:
                continue
            count, truncated, first = scan_shard(path)
            problem = shard_problem(path, first)
            if problem is None and truncated:
                problem = truncated_message(path, count)
                if self.skip_corrupt:
                    _warn(f"TFRecord shard {path} ends inside record {count}: reading its {count} "
                          "whole records only (skip_corrupt).")  # fmt: skip
                    problem = None
            if problem is not None and not self.skip_corrupt:
                raise ValueError(problem)
            if problem is not None:
                _warn(f"{problem}; left out (skip_corrupt).")
                count = 0
            self.record_counts[path] = count
        segments = [(path, 0, self.record_counts[path]) for path in files]
        segments = [s for s in segments if s[2] > 0]
        if not segments:
            raise ValueError(
                f"{self.name}: none of the {len(files)} TFRecord shard(s) of this input "
                "pipeline holds a readable record."
            )
        return segments

    def epoch_length(self, input_context=None):
        return sum(s[2] for s in self.segments(input_context))

    def stream(self, input_context=None, *, seed=0, start=0, window=10_000):
        from care_tf.data.order import record_positions

        _, pipeline = pipeline_of(input_context)
        ds = record_positions(
            self.segments(input_context),
            seed,
            pipeline,
            start,
            window,
            skip_corrupt=self.skip_corrupt,
        )
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
        try:
            with open(info_path) as f:
                info = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise ValueError(
                f"{info_path} is not valid JSON ({e}): rewrite the shards with "
                "make_tfrecords --overwrite, or delete the file (sizes and class names are "
                "then unknown)."
            ) from e
        if not isinstance(info, dict):
            raise ValueError(f"{info_path} must hold a JSON object (make_tfrecords writes one).")
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
