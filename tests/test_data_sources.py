"""Sources: Fashion-MNIST IDX files, image folders, TFRecords (+ converter), TFDS (mocked)."""

import gzip
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from care_tf.data import load_fashion_mnist, load_source
from care_tf.data.make_tfrecords import main as make_tfrecords_main


@pytest.fixture(scope="module")
def fmnist_dir():
    from care_tf.data.fashion_mnist import fashion_mnist_dir

    folder = fashion_mnist_dir()
    if not os.path.isfile(os.path.join(folder, "t10k-images-idx3-ubyte.gz")):
        pytest.skip("Fashion-MNIST IDX files not installed (run `make data`)")
    return folder


def test_fashion_mnist_idx_parsing(fmnist_dir):
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    assert train_x.shape == (60_000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10_000, 28, 28) and test_y.shape == (10_000,)
    np.testing.assert_array_equal(np.bincount(train_y), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test_y), [1000] * 10)
    assert train_x.max() == 255 and 50 < train_x.mean() < 100


def test_fashion_mnist_source_is_three_channel(fmnist_dir):
    source = load_source("fashion_mnist", "test")
    assert source.num_examples == 10_000 and source.num_classes == 10
    assert source.class_names[9] == "Ankle boot"
    example = next(iter(source.as_dataset()))
    assert example["image"].shape == (28, 28, 3) and example["image"].dtype == tf.uint8
    assert example["label"].dtype == tf.int64
    with pytest.raises(ValueError, match="split='validation'"):
        load_source("fashion_mnist", "validation")


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CARE_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        load_fashion_mnist("train")
    assert "CARE_DATA_DIR" in str(e.value) and "tfds:fashion_mnist" in str(e.value)


def test_fashion_mnist_truncated_idx(tmp_path):
    for name, n in (("t10k-images-idx3-ubyte.gz", 28 * 28 * 2), ("t10k-labels-idx1-ubyte.gz", 3)):
        magic = 2051 if "images" in name else 2049
        dims = (3, 28, 28) if "images" in name else (3,)
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(header + bytes(n))
    with pytest.raises(ValueError, match="Truncated IDX file"):
        load_fashion_mnist("test", data_dir=str(tmp_path))


def test_unknown_spec():
    with pytest.raises(ValueError, match="tfds:NAME"):
        load_source("cifar10")


def _write_images(folder, n, size=(20, 24), fmt="JPEG", mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    ext = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif"}[fmt]
    for i in range(n):
        array = rng.integers(0, 256, (*size, 3), np.uint8)
        Image.fromarray(array).convert(mode).save(os.path.join(folder, f"{i}.{ext}"), fmt)


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "pets"
    _write_images(root / "train" / "cat", 3, fmt="JPEG")
    _write_images(root / "train" / "dog", 2, fmt="PNG", mode="L")
    _write_images(root / "train" / "emu", 2, fmt="BMP")
    _write_images(root / "train" / "emu" / "more", 1, fmt="GIF", mode="P")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    _write_images(root / "val" / "cat", 1)
    _write_images(root / "val" / "dog", 1)
    return root


def test_folder_with_classes(class_folder):
    source = load_source(f"folder:{class_folder}", "train")
    assert source.class_names == ["cat", "dog", "emu"] and source.num_examples == 8
    examples = list(source.as_dataset())
    labels = sorted(int(e["label"]) for e in examples)
    assert labels == [0, 0, 0, 1, 1, 2, 2, 2]
    for e in examples:
        assert e["image"].shape == (20, 24, 3) and e["image"].dtype == tf.uint8
    assert load_source(f"folder:{class_folder}", "val").num_examples == 2
    with pytest.raises(ValueError, match="no split 'test'"):
        load_source(f"folder:{class_folder}", "test")


def test_flat_folder_unlabelled(tmp_path):
    _write_images(tmp_path / "flat", 4)
    source = load_source(f"folder:{tmp_path / 'flat'}")
    assert source.num_classes is None and source.class_names is None
    assert [int(e["label"]) for e in source.as_dataset()] == [-1] * 4


def test_symlink_loop_does_not_hang(tmp_path):
    _write_images(tmp_path / "loop" / "a", 2)
    os.symlink(tmp_path / "loop", tmp_path / "loop" / "a" / "back")
    source = load_source(f"folder:{tmp_path / 'loop'}")
    assert source.num_examples == 2 and source.class_names == ["a"]


def test_empty_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No image files"):
        load_source(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_source(f"folder:{tmp_path / 'nope'}")


def test_folder_file_level_sharding(class_folder):
    source = load_source(f"folder:{class_folder}")
    seen = []
    for i in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i)
        seen.append([e["image"].numpy().tobytes() for e in source.as_dataset(context)])
    assert len(seen[0]) == 4 and len(seen[1]) == 4 and not set(seen[0]) & set(seen[1])


def test_tfrecord_converter_round_trip(class_folder, tmp_path, capsys):
    out = tmp_path / "records"
    assert make_tfrecords_main([str(class_folder), str(out), "--num_shards", "3"]) == 0
    assert make_tfrecords_main([str(class_folder), str(out), "--split", "val"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_examples"] == 2
    assert sorted(os.listdir(out))[:2] == ["dataset_info.json", "train-00000-of-00003.tfrecord"]
    source = load_source(f"tfrecord:{out}", "train")
    assert source.num_examples == 8 and source.class_names == ["cat", "dog", "emu"]
    assert len(source.files) == 3
    folder = {
        e["image"].numpy().tobytes(): int(e["label"])
        for e in load_source(f"folder:{class_folder}").as_dataset()
    }
    records = {e["image"].numpy().tobytes(): int(e["label"]) for e in source.as_dataset()}
    assert records == folder
    glob_source = load_source(f"tfrecord:{out}/val-*.tfrecord")
    assert len(list(glob_source.as_dataset())) == 2
    with pytest.raises(ValueError, match="Splits found: \\['train', 'val'\\]"):
        load_source(f"tfrecord:{out}", "test")


def test_tfds_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        source = load_source("tfds:cifar10", "train")
        assert source.num_classes == 10 and len(source.class_names) == 10
        examples = list(source.as_dataset())
        assert len(examples) == 6
        assert examples[0]["image"].shape == (32, 32, 3)
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0)
        assert len(list(source.as_dataset(context, shuffle=True, seed=0))) > 0
        gray = next(iter(load_source("tfds:fashion_mnist", "test").as_dataset()))
        assert gray["image"].shape == (28, 28, 3)
    with pytest.raises(ValueError, match="Unknown TFDS dataset"):
        load_source("tfds:no_such_dataset_xyz")
