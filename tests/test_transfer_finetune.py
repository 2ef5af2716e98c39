"""Fine-tuning with few labels: subset selection, training, the JSON result."""

import gzip
import json
import os

import keras
import numpy as np
import pytest

from care_tf.models.backbone import feature_extractor
from care_tf.models.resnet import ResNetBackbone
from care_tf.transfer.finetune import fraction_name, label_subset, subset_source

FMNIST_DIR = os.environ.get("CARE_DATA_DIR", "/usr/share/datasets/fashion-mnist")


def test_label_subset_is_class_balanced_seeded_and_deterministic():
    labels = np.random.default_rng(0).integers(0, 10, 6000)
    ids = label_subset(labels, 0.01, seed=3)
    assert np.array_equal(ids, np.sort(ids)) and len(np.unique(ids)) == len(ids)
    assert np.bincount(labels[ids], minlength=10).tolist() == [6] * 10  # 1% of 6000 / 10
    assert np.array_equal(ids, label_subset(labels, 0.01, seed=3))
    assert not np.array_equal(ids, label_subset(labels, 0.01, seed=4))
    assert np.array_equal(label_subset(labels, 1.0), np.arange(6000))
    # A class smaller than its share gives all it has; every class keeps one image.
    rare = np.array([0] * 95 + [1] * 5)
    assert np.bincount(rare[label_subset(rare, 0.2)]).tolist() == [10, 5]
    assert np.bincount(rare[label_subset(rare, 0.001)]).tolist() == [1, 1]
    with pytest.raises(ValueError, match="fraction"):
        label_subset(labels, 0.0)


def test_subset_of_a_file_source_keeps_the_chosen_images(tmp_path):
    import tensorflow as tf

    from care_tf.data import load_source

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(4):
            value = (10 * i + (100 if label == "b" else 0)) * np.ones((4, 4, 3), np.uint8)
            (tmp_path / label / f"{i}.png").write_bytes(tf.io.encode_png(value).numpy())
    source = load_source(f"folder:{tmp_path}", "train")
    every = list(source.as_dataset(shuffle=False).as_numpy_iterator())
    ids = np.array([1, 2, 6])
    subset = subset_source(source, ids)
    assert subset.num_examples == 3 and subset.num_classes == source.num_classes
    got = sorted(int(e["image"][0, 0, 0]) for e in subset.as_dataset(shuffle=True, seed=1))
    assert got == sorted(int(every[i]["image"][0, 0, 0]) for i in ids)


def test_fraction_names():
    assert fraction_name(0.01) == "finetune_1pct"
    assert fraction_name(0.1) == "finetune_10pct"
    assert fraction_name(1.0) == "finetune_100pct"
    assert fraction_name(0.005) == "finetune_0.5pct"


def _write_idx(path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fmnist(tmp_path):
    """200 training and 60 test images of Fashion-MNIST as IDX files."""
    from care_tf.data import load_fashion_mnist

    try:
        train = load_fashion_mnist("train")
        test = load_fashion_mnist("test")
    except FileNotFoundError:
        pytest.skip(f"Fashion-MNIST not found at {FMNIST_DIR}")
    folder = tmp_path / "fmnist"
    folder.mkdir()
    for prefix, (images, labels), n in (("train", train, 200), ("t10k", test, 60)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images[:n], 2051)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels[:n], 2049)
    return folder, train[1][:200], test[1][:60]


def test_finetune_command_writes_result_ids_and_classifier(tmp_path, tiny_fmnist, capsys):
    from care_tf.data import make_eval_dataset
    from care_tf.evaluate.__main__ import main
    from care_tf.model_dir import load_classifier

    data_dir, train_labels, test_labels = tiny_fmnist
    run = tmp_path / "run"
    run.mkdir()
    backbone = ResNetBackbone(depth=18, base_channels=8, stem="cifar", image_shape=(32, 32, 3))
    before = np.array(backbone.get_layer("stage3_block0_1_conv").kernel)
    feature_extractor(backbone).save(run / "backbone.keras")
    args = ["finetune", "--model_dir", str(run), "--dataset", "fashion_mnist"]
    args += ["--data_dir", str(data_dir), "--label_fraction", "0.1", "--epochs", "2"]
    args += ["--batch_size", "8", "--quiet"]
    assert main(args) == 0
    assert "finetune: top-1" in capsys.readouterr().out

    out = run / "eval"
    result = json.loads((out / "finetune_10pct.json").read_text())
    assert result["protocol"] == "finetune" and result["label_fraction"] == 0.1
    assert result["num_train"] == 20 and result["num_examples"] == 60
    assert result["config"]["batch_size"] == 8 and result["config"]["epochs"] == 2
    assert result["config"]["lr"] == pytest.approx(0.05 * 8 / 256)
    assert len(result["history"]["loss"]) == 2
    ids = json.loads((out / "finetune_10pct_ids.json").read_text())
    assert ids["ids"] == label_subset(train_labels, 0.1, seed=0).tolist()
    assert np.bincount(train_labels[ids["ids"]], minlength=10).tolist() == [2] * 10

    # The whole backbone was trained, and the reported accuracy is the classifier's.
    classifier = load_classifier(str(out / "finetune_10pct.keras"))
    after = np.array(classifier.backbone.get_layer("stage3_block0_1_conv").kernel)
    assert np.abs(after - before).max() > 0
    eval_ds = make_eval_dataset(
        "fashion_mnist",
        split="test",
        train=False,
        image_size=32,
        batch_size=64,
        data_dir=str(data_dir),
    )
    images, labels = next(iter(eval_ds))
    assert np.array_equal(np.asarray(labels), test_labels)
    logits = np.asarray(classifier(images, training=False))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert result["top1"] == pytest.approx(np.mean(top5[:, 0] == test_labels))
    assert result["top5"] == pytest.approx(np.mean((top5 == test_labels[:, None]).any(axis=1)))


def test_finetune_refuses_a_bad_fraction_in_one_line(tmp_path, capsys):
    from care_tf.evaluate.__main__ import main

    run = tmp_path / "run"
    run.mkdir()
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(run / "backbone.keras")
    args = ["finetune", "--model_dir", str(run), "--dataset", "fashion_mnist"]
    assert main([*args, "--label_fraction", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--label_fraction" in err[0]
