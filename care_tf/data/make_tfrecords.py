"""Converts an image folder to sharded TFRecords (feature spec: care_tf/data/tfrecord.py).

    python -m care_tf.data.make_tfrecords SRC_FOLDER OUT_DIR [--split train]
        [--num_shards N | --shard_size 1000] [--seed 0] [--skip_corrupt]

SRC_FOLDER is laid out as for the "folder:" source (class sub-folders or flat). Files
are shuffled (seeded) so every shard mixes classes, checked with TF's decoder, and
stored as their original bytes. Read the result with the source "tfrecord:OUT_DIR".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys

import tensorflow as tf
from tqdm import tqdm

from care_tf.data.decode import decode_rgb
from care_tf.data.folder import folder_source
from care_tf.data.tfrecord import INFO_FILE, shard_name

logger = logging.getLogger("care_tf.data")


def _example(data: bytes, label: int, filename: str) -> bytes:
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "image/filename": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[filename.encode()])
        ),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _check(data: bytes) -> str | None:
    """None if TF decodes `data` as an image, else the reason."""
    if not data:
        return "empty file"
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:]:
        return "truncated JPEG (no end-of-image marker)"
    try:
        decode_rgb(tf.constant(data))
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
        return e.message.splitlines()[0][:200]
    return None


def convert(
    src: str,
    out_dir: str,
    split: str = "train",
    num_shards: int | None = None,
    shard_size: int = 1000,
    seed: int = 0,
    skip_corrupt: bool = False,
) -> dict:
    """Writes OUT_DIR/SPLIT-0000i-of-0000n.tfrecord and updates OUT_DIR/dataset_info.json.

    Args:
        src: str. Image folder (see `folder_source`).
        out_dir: str. Output directory (created).
        split: str. Split of `src` to convert and name of the shards.
        num_shards: int or None. Number of shards; default ceil(num images / shard_size).
        shard_size: int. Images per shard when num_shards is None.
        seed: int. Seed of the file shuffle.
        skip_corrupt: bool. Skip unreadable images (counted) instead of stopping.

    Returns:
        The split's entry of dataset_info.json (num_examples, num_shards, num_skipped).
    """
    source = folder_source(src, split)
    root = os.path.dirname(source.files[0]) if len(source.files) == 1 else None
    root = root or os.path.commonpath(source.files)
    items = list(zip(source.files, source.labels, strict=True))
    random.Random(seed).shuffle(items)
    num_shards = num_shards or max(1, -(-len(items) // shard_size))
    os.makedirs(out_dir, exist_ok=True)
    written, skipped = 0, []
    writers = [
        tf.io.TFRecordWriter(os.path.join(out_dir, shard_name(split, i, num_shards)))
        for i in range(num_shards)
    ]
    try:
        for i, (path, label) in enumerate(tqdm(items, desc=f"{split} -> {out_dir}", unit="img")):
            with open(path, "rb") as f:
                data = f.read()
            reason = _check(data)
            if reason:
                if not skip_corrupt:
                    raise ValueError(
                        f"Cannot decode image {path}: {reason} (use --skip_corrupt to skip)"
                    )
                skipped.append(path)
                logger.warning("skipped unreadable image %s: %s", path, reason)
                continue
            writers[i % num_shards].write(_example(data, label, os.path.relpath(path, root)))
            written += 1
    finally:
        for writer in writers:
            writer.close()
    if skipped:
        logger.warning("%d unreadable images skipped (e.g. %s)", len(skipped), skipped[0])
    info_path = os.path.join(out_dir, INFO_FILE)
    info = {"class_names": source.class_names, "splits": {}}
    if os.path.isfile(info_path):
        with open(info_path) as f:
            info = json.load(f)
        info["class_names"] = info.get("class_names") or source.class_names
    entry = {"num_examples": written, "num_shards": num_shards, "num_skipped": len(skipped)}
    info["splits"][split] = entry
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m care_tf.data.make_tfrecords",
        description="Convert an image folder to sharded TFRecords.",
    )
    parser.add_argument("src", help="image folder (class sub-folders, or flat)")
    parser.add_argument("out_dir", help="output directory")
    parser.add_argument("--split", default="train", help="split to convert (default: train)")
    parser.add_argument("--num_shards", type=int, default=None, help="number of shards")
    parser.add_argument(
        "--shard_size", type=int, default=1000, help="images per shard (default: 1000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="file shuffle seed")
    parser.add_argument("--skip_corrupt", action="store_true", help="skip unreadable images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        entry = convert(
            args.src,
            args.out_dir,
            split=args.split,
            num_shards=args.num_shards,
            shard_size=args.shard_size,
            seed=args.seed,
            skip_corrupt=args.skip_corrupt,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out_dir": args.out_dir, "split": args.split, **entry}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
