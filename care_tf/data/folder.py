"""An image folder: class sub-folders (labelled) or a flat folder (unlabelled)."""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from care_tf.data.decode import decode_dataset
from care_tf.data.sources import Source, logger, pipeline_of, random_access_stream

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclasses.dataclass
class FolderSource(Source):
    """Image files on disk, one label per class sub-folder (-1 when flat)."""

    labels: list[int] = dataclasses.field(default_factory=list, repr=False)

    def as_dataset(self, input_context=None, *, shuffle=False, seed=None, shuffle_buffer=10_000):
        pairs = list(zip(self.files, self.labels, strict=True))
        if input_context is not None and input_context.num_input_pipelines > 1:
            # File-level sharding: each input pipeline reads its own files.
            n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
            pairs = pairs[i::n]
            if not pairs:
                raise ValueError(f"{self.name}: no files left for input pipeline {i} of {n}")
        paths = [p for p, _ in pairs]
        labels = tf.constant([y for _, y in pairs], tf.int64)
        ds = tf.data.Dataset.from_tensor_slices((paths, paths, labels))
        if shuffle:
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        return decode_dataset(ds, skip_corrupt=self.skip_corrupt, read_files=True)

    data_kind = "file"

    def epoch_length(self, input_context=None):
        n, i = pipeline_of(input_context)
        return len(range(i, len(self.files), n))

    def stream(self, input_context=None, *, seed=0, start=0, window=10_000):
        paths = tf.constant(self.files)
        labels = tf.constant(self.labels, tf.int64)

        def lookup(index):
            path = tf.gather(paths, index)
            return path, path, tf.gather(labels, index)

        return random_access_stream(self.name, len(self.files), input_context, seed, start, lookup)


def _images_under(folder: str) -> tuple[list[str], list[str]]:
    """Sorted image paths under `folder` (recursive) and the other files found there."""
    images, others, seen = [], [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop: walk each real folder once
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            if name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(path)
            elif not name.startswith("."):
                others.append(path)
    return images, others


def folder_source(root: str, split: str = "train") -> FolderSource:
    """Lists an image folder.

    Layout: ROOT/CLASS/**/*.jpg (labelled: classes are the sorted sub-folder names) or
    ROOT/*.jpg (flat: labels -1). If ROOT/SPLIT exists it is used as the root (e.g.
    ROOT/train/CLASS/..., ROOT/val/CLASS/...); otherwise only split "train" is valid and
    means ROOT itself. Files with other extensions are ignored (and counted in a log line).
    """
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder not found: {root}")
    if os.path.isdir(os.path.join(root, split)):
        folder = os.path.join(root, split)
    elif split == "train":
        folder = root
    else:
        subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        raise ValueError(
            f"Image folder {root} has no split {split!r} (no sub-folder {split!r}); use "
            f"split='train' for the folder itself. Sub-folders found: {subdirs[:10]}"
        )
    entries = sorted(os.listdir(folder))
    class_names = [d for d in entries if os.path.isdir(os.path.join(folder, d))]
    files, labels, ignored = [], [], []
    if class_names:
        kept = []
        for name in class_names:
            images, others = _images_under(os.path.join(folder, name))
            ignored += others
            if images:
                kept.append(name)
                files += images
                labels += [len(kept) - 1] * len(images)
        ignored += [os.path.join(folder, e) for e in entries if e not in class_names]
        class_names = kept
    if not class_names:
        files, ignored = _images_under(folder)
        labels = [-1] * len(files)
    if ignored:
        logger.warning(
            "%s: ignored %d files without an image extension %s (e.g. %s)",
            folder,
            len(ignored),
            IMAGE_EXTENSIONS,
            ignored[0],
        )
    if not files:
        raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    return FolderSource(
        name=f"folder:{root}",
        split=split,
        files=files,
        num_examples=len(files),
        num_classes=len(class_names) or None,
        class_names=class_names or None,
        labels=labels,
    )
