"""Converts an image folder to sharded TFRecords (feature spec: care_tf/data/tfrecord.py).

    python -m care_tf.data.make_tfrecords SRC_FOLDER OUT_DIR [--split train]
        [--num_shards N | --shard_size 1000] [--seed 0] [--skip_corrupt] [--overwrite]

SRC_FOLDER is laid out as for the "folder:" source (class sub-folders or flat). Files
are shuffled (seeded) so every shard mixes classes, checked with TF's decoder, and
stored as their original bytes. Read the result with the source "tfrecord:OUT_DIR".

The shards are written into a temporary folder inside OUT_DIR and moved into place
only when every image was read, so a failing run leaves OUT_DIR as it was. A split
that OUT_DIR already holds is refused unless --overwrite, which replaces all of its
shards (stale ones of another --num_shards included); dataset_info.json is written
last and always describes the shards present. OUT_DIR is locked while converting.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import random
import re
import shutil
import sys

from care_tf import atomic
from care_tf.cli_errors import UsageError, add_debug_flag, prog_name, run_cli
from care_tf.locking import DirLock

logger = logging.getLogger("care_tf.data")
INFO_FILE = "dataset_info.json"  # = care_tf.data.tfrecord.INFO_FILE (imports TensorFlow)


def _example(data: bytes, label: int, filename: str) -> bytes:
    import tensorflow as tf

    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "image/filename": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[filename.encode()])
        ),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


_checker = None


def _check(data: bytes) -> str | None:
    """None if TF decodes `data` as an image (as training will), else the reason."""
    import tensorflow as tf

    from care_tf.data.decode import decode_rgb, jpeg_complete

    global _checker
    if _checker is None:
        _checker = tf.function(jpeg_complete, input_signature=[tf.TensorSpec([], tf.string)])
    if not data:
        return "empty file"
    if not bool(_checker(tf.constant(data))):
        return "truncated JPEG (no end-of-image marker after the image data)"
    try:
        decode_rgb(tf.constant(data))
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
        # "{{function_node ...}} jpeg::Uncompress failed. ... [Op:DecodeImage] name:" -> the words
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", e.message.splitlines()[0])
        return re.sub(r"\s*\[Op:\w+\].*$", "", message)[:200]
    return None


def _split_shards(out_dir: str, split: str) -> list[str]:
    return sorted(glob.glob(os.path.join(out_dir, f"{split}-*.tfrecord*")))


def _read_info(out_dir: str) -> dict:
    path = os.path.join(out_dir, INFO_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            info = json.load(f)
    except ValueError as e:
        raise UsageError(
            f"{path} is not valid JSON ({e}); remove it or choose another OUT_DIR."
        ) from e
    return info if isinstance(info, dict) else {}


def convert(
    src: str,
    out_dir: str,
    split: str = "train",
    num_shards: int | None = None,
    shard_size: int = 1000,
    seed: int = 0,
    skip_corrupt: bool = False,
    overwrite: bool = False,
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
        overwrite: bool. Replace the split's shards if OUT_DIR already holds it.

    Returns:
        The split's entry of dataset_info.json (num_examples, num_shards, num_skipped).

    Raises:
        UsageError: bad arguments, an existing split without `overwrite`, an unreadable
            image without `skip_corrupt`, or no readable image at all.
        care_tf.locking.LockError: another conversion is writing OUT_DIR.
    """
    if num_shards is not None and num_shards < 1:
        raise UsageError(f"--num_shards must be >= 1; got {num_shards}.")
    if shard_size < 1:
        raise UsageError(f"--shard_size must be >= 1; got {shard_size}.")
    if not split or os.sep in split or split.startswith("."):
        raise UsageError(f"--split must be a plain name such as train; got {split!r}.")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"OUT_DIR {out_dir!r} is a file; give a directory (created if missing).")
    if not os.path.isdir(src):
        raise UsageError(f"SRC_FOLDER {src!r} is not a folder (it does not exist, or is a file).")
    from tqdm import tqdm

    from care_tf.data.folder import folder_source
    from care_tf.data.tfrecord import shard_name

    try:
        source = folder_source(src, split)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"SRC_FOLDER {src!r}: {e}") from e
    root = os.path.dirname(source.files[0]) if len(source.files) == 1 else None
    root = root or os.path.commonpath(source.files)
    items = list(zip(source.files, source.labels, strict=True))
    random.Random(seed).shuffle(items)
    num_shards = num_shards or max(1, -(-len(items) // shard_size))
    with DirLock(
        out_dir, "TFRecord folder", hint="Wait for it to finish, or write to another OUT_DIR."
    ):
        old = _split_shards(out_dir, split)
        info = _read_info(out_dir)
        if (old or split in info.get("splits", {})) and not overwrite:
            raise UsageError(
                f"OUT_DIR {out_dir} already holds split {split!r} ({len(old)} shards): pass "
                "--overwrite to replace them, or choose another OUT_DIR or --split."
            )
        known = info.get("class_names")
        if known and source.class_names:
            # Labels are indices into the folder's own class list: store them as
            # indices into the class list OUT_DIR already has, so splits agree.
            unknown = sorted(set(source.class_names) - set(known))
            if unknown:
                raise UsageError(
                    f"SRC_FOLDER {src!r} split {split!r} has classes {unknown} that OUT_DIR "
                    f"{out_dir} does not know (its classes: {known}): labels would not "
                    "agree. Use another OUT_DIR."
                )
            index = [list(known).index(name) for name in source.class_names]
            items = [(path, index[label]) for path, label in items]
        atomic.remove_stale(out_dir, f".tmp-{split}-")  # left by a killed run (we hold the lock)
        tmp = os.path.join(out_dir, f".tmp-{split}-{os.getpid()}")
        os.makedirs(tmp)
        try:
            written, skipped = _write_shards(
                items, tmp, split, num_shards, root, skip_corrupt, tqdm, shard_name
            )
            if not written:
                raise UsageError(
                    f"No image of SRC_FOLDER {src!r} (split {split!r}) could be read: all "
                    f"{len(skipped)} were skipped as unreadable (e.g. {skipped[0]}); "
                    "nothing was written."
                )
            new = sorted(os.listdir(tmp))
            for name in new:
                os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
            for path in old:
                if os.path.basename(path) not in new:
                    os.remove(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if skipped:
            logger.warning("%d unreadable images skipped (e.g. %s)", len(skipped), skipped[0])
        info.setdefault("splits", {})
        info["class_names"] = known or source.class_names
        entry = {"num_examples": written, "num_shards": num_shards, "num_skipped": len(skipped)}
        info["splits"][split] = entry
        atomic.write_json(os.path.join(out_dir, INFO_FILE), info)
    return entry


def _write_shards(items, folder, split, num_shards, root, skip_corrupt, tqdm, shard_name):
    """Writes the shards of `items` into `folder`; returns (written, skipped paths)."""
    import tensorflow as tf

    written, skipped = 0, []
    writers = [
        tf.io.TFRecordWriter(os.path.join(folder, shard_name(split, i, num_shards)))
        for i in range(num_shards)
    ]
    try:
        for i, (path, label) in enumerate(tqdm(items, desc=f"{split} -> {folder}", unit="img")):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                reason = f"cannot read: {e.strerror}"
            else:
                reason = _check(data)
            if reason:
                if not skip_corrupt:
                    raise UsageError(
                        f"Cannot decode image {path}: {reason} (use --skip_corrupt to skip "
                        "unreadable images)."
                    )
                skipped.append(path)
                logger.warning("skipped unreadable image %s: %s", path, reason)
                continue
            writers[i % num_shards].write(_example(data, label, os.path.relpath(path, root)))
            written += 1
    finally:
        for writer in writers:
            writer.close()
    return written, skipped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog_name("care_tf.data.make_tfrecords"),
        description="Convert an image folder to sharded TFRecords.",
    )
    parser.add_argument(
        "src",
        metavar="SRC_FOLDER",
        help="image folder: class sub-folders (labelled) or images directly in it (flat, label -1)",
    )
    parser.add_argument(
        "out_dir",
        metavar="OUT_DIR",
        help="output directory (created): SPLIT-0000i-of-0000n.tfrecord shards and "
        "dataset_info.json; read them back with the source tfrecord:OUT_DIR",
    )
    parser.add_argument(
        "--split",
        default="train",
        help="which images to convert, and the name of the shards: SRC_FOLDER/SPLIT when "
        "that sub-folder exists (e.g. SRC_FOLDER/val/CLASS/...), else SRC_FOLDER itself, "
        "which only --split train may name (default: %(default)s)",
    )
    parser.add_argument(
        "--num_shards",
        type=int,
        default=None,
        help="number of shards (default: as many as --shard_size needs, ceil(images / shard_size))",
    )
    parser.add_argument(
        "--shard_size",
        type=int,
        default=1000,
        help="images per shard, when --num_shards is not given (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the file shuffle that mixes classes across shards (default: %(default)s)",
    )
    parser.add_argument(
        "--skip_corrupt",
        action="store_true",
        help="skip (and count) images TensorFlow cannot decode instead of stopping",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the split's shards when OUT_DIR already holds it (stale shards removed)",
    )
    add_debug_flag(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    entry = convert(
        args.src,
        args.out_dir,
        split=args.split,
        num_shards=args.num_shards,
        shard_size=args.shard_size,
        seed=args.seed,
        skip_corrupt=args.skip_corrupt,
        overwrite=args.overwrite,
    )
    print(json.dumps({"out_dir": args.out_dir, "split": args.split, **entry}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parses `argv` and converts; returns the exit status (2: one `error:` line)."""
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
