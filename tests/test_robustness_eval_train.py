"""Evaluate and train command lines on wrong input: --limit, one-class data, model.keras
vs backbone.keras vs a corrupt file, a locked run directory, a file as a directory."""

import json
import os

import numpy as np
import pytest
from care_testing import hold_lock
from PIL import Image

from care_tf import ResNetBackbone
from care_tf.evaluate import __main__ as evaluate
from care_tf.train import cli as train_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    backbone = ResNetBackbone(depth=18, base_channels=8, stem="cifar", image_shape=(32, 32, 3))
    backbone.save(path / "backbone.keras")
    return str(path)


def _evaluate(capsys, *argv):
    code = evaluate.main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_limit_must_be_positive(run_dir, capsys, limit):
    code, err = _evaluate(
        capsys, "knn", "--model_dir", run_dir, "--dataset", "fashion_mnist", "--limit", limit
    )
    assert code == 2 and err.count("\n") == 1
    assert f"--limit must be a positive number of examples; got {limit}" in err


def test_one_class_knn_is_refused(run_dir, tmp_path, capsys):
    for split in ("train", "test"):
        folder = tmp_path / "data" / split / "only"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(folder / f"{i}.png")
    code, err = _evaluate(
        capsys, "knn", "--model_dir", run_dir, "--dataset", f"folder:{tmp_path / 'data'}",
        "--quiet", "--out", str(tmp_path / "eval"),
    )  # fmt: skip
    assert code == 2 and "holds 1 class(es)" in err and "at least two classes" in err
    assert not (tmp_path / "eval").exists()


def test_corrupt_backbone_names_the_file(tmp_path, capsys):
    (tmp_path / "backbone.keras").write_bytes(b"PK\x03\x04 truncated zip")
    code, err = _evaluate(capsys, "knn", "--model_dir", str(tmp_path), "--dataset", "fashion_mnist")
    assert code == 2 and err.count("\n") == 1
    assert "backbone.keras is not a Keras model file" in err and "not found" not in err.lower()


def test_limit_run_keeps_the_full_results(run_dir, capsys):
    os.makedirs(os.path.join(run_dir, "eval"), exist_ok=True)
    full = os.path.join(run_dir, "eval", "knn.json")
    with open(full, "w") as f:
        f.write('{"top1": 0.5}')  # a full evaluation that must survive
    code = evaluate.main(
        ["knn", "--model_dir", run_dir, "--dataset", "fashion_mnist", "--limit", "64",
         "--k", "5", "--quiet"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with open(os.path.join(run_dir, "eval", "knn_limit64.json")) as f:
        results = json.load(f)
    assert results["num_examples"] == 64 and results["config"]["limit"] == 64
    with open(full) as f:
        assert f.read() == '{"top1": 0.5}'
    assert os.path.isfile(os.path.join(run_dir, "eval", "knn_limit64_confusion.png"))


def test_model_keras_gives_its_backbone(tmp_path):
    import care_testing

    care = care_testing.tiny_care(num_blocks=1)
    care.save(tmp_path / "model.keras")
    backbone = evaluate.load_backbone(str(tmp_path / "model.keras"))
    # The plain feature extractor (images -> pooled features) of the CARE model's backbone.
    assert backbone.name == f"{care.backbone.name}_extractor"
    assert len(backbone.output.shape) == 2
    assert len(backbone.weights) == len(care.backbone.weights)
    for a, b in zip(backbone.weights, care.backbone.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert evaluate.default_out(str(tmp_path / "model.keras"), None) == str(tmp_path / "eval")


def test_second_training_into_a_locked_run_fails(tmp_path, capsys):
    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        code = train_cli.main(
            ["--config", QUICKSTART, "--model_dir", str(run), "--strategy", "one_device",
             "--max_steps", "1"]
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"error: Training run directory {run} is in use by pid {holder.pid}" in err
    assert "another --model_dir" in err
    assert os.listdir(run) == [".care.lock"]  # nothing written by the refused run


def test_model_dir_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("x")
    code = train_cli.main(["--config", QUICKSTART, "--model_dir", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "is a file; give a directory" in err
