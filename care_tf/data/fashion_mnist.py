"""Fashion-MNIST read straight from its IDX `.gz` files (the offline default dataset)."""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from care_tf.constants import FASHION_MNIST_DIR

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 2051  # IDX: unsigned byte, 3 dimensions
_LABELS_MAGIC = 2049  # IDX: unsigned byte, 1 dimension


def fashion_mnist_dir(data_dir: str | None = None) -> str:
    """The folder holding the IDX files: `data_dir`, else $CARE_DATA_DIR, else the Debian path."""
    return data_dir or os.environ.get("CARE_DATA_DIR") or FASHION_MNIST_DIR


def fashion_mnist_files(split: str = "train", data_dir: str | None = None) -> tuple[str, str]:
    """Paths of the (images, labels) IDX `.gz` files of `split`; raises if they are missing."""
    if split not in _PREFIX:
        raise ValueError(f"Fashion-MNIST has splits 'train' and 'test'. Received: split={split!r}")
    folder = fashion_mnist_dir(data_dir)
    paths = (
        os.path.join(folder, f"{_PREFIX[split]}-images-idx3-ubyte.gz"),
        os.path.join(folder, f"{_PREFIX[split]}-labels-idx1-ubyte.gz"),
    )
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX file not found: {missing[0]}. Install it with "
            "`sudo apt-get install dataset-fashion-mnist` (or `make data`), or set "
            "CARE_DATA_DIR to a folder holding the four *-ubyte.gz files, or use the "
            "source 'tfds:fashion_mnist' when online."
        )
    return paths


def _read_idx(path: str, magic: int, ndim: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        kind = "truncated" if isinstance(e, EOFError) else "not a valid gzip file"
        raise ValueError(
            f"Fashion-MNIST file {path} is {kind} ({e}): replace it with a good copy "
            "(`make data`, or the four *-ubyte.gz files in CARE_DATA_DIR)."
        ) from e
    if len(data) < 4 + 4 * ndim or int.from_bytes(data[:4], "big") != magic:
        raise ValueError(f"Not an IDX file with magic number {magic}: {path}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(
            f"Truncated IDX file {path}: header says {shape}, "
            f"found {len(data) - offset} bytes of data"
        )
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def load_fashion_mnist(
    split: str = "train", data_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a Fashion-MNIST split from its IDX `.gz` files.

    Args:
        split: str. "train" (60,000 images) or "test" (10,000).
        data_dir: str or None. Folder of the `*-ubyte.gz` files. Defaults to the
            CARE_DATA_DIR environment variable, else /usr/share/datasets/fashion-mnist.

    Returns:
        (images, labels): uint8 arrays of shapes (N, 28, 28) and (N,), labels in [0, 10).
    """
    images_path, labels_path = fashion_mnist_files(split, data_dir)
    images = _read_idx(images_path, _IMAGES_MAGIC, 3)
    labels = _read_idx(labels_path, _LABELS_MAGIC, 1)
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images, labels
