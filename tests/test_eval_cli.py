"""`python -m care_tf.evaluate` on saved tiny backbones and real Fashion-MNIST images
(through `care_tf.data.make_eval_dataset`)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from care_tf import ResNetBackbone
from care_tf.evaluate import __main__ as cli


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    dirs = []
    for seed in (0, 1):
        tf.keras.utils.set_random_seed(seed)
        backbone = ResNetBackbone(depth=18, base_channels=8, stem="cifar", image_shape=(32, 32, 3))
        path = tmp_path_factory.mktemp(f"run{seed}")
        backbone.save(path / "backbone.keras")
        dirs.append(str(path))
    return dirs


def test_knn_cli(model_dirs):
    results = cli.evaluate(
        [
            "knn",
            "--model_dir",
            model_dirs[0],
            "--dataset",
            "fashion_mnist",
            "--limit",
            "300",
            "--k",
            "20",
            "--quiet",
        ]
    )
    assert results["num_examples"] == 300 and results["num_train"] == 300
    assert 0.2 < results["top1"] <= results["top5"] <= 1  # random conv features beat chance
    # A --limit run is kept apart from the full evaluation (knn.json).
    assert not os.path.exists(os.path.join(model_dirs[0], "eval", "knn.json"))
    path = os.path.join(model_dirs[0], "eval", "knn_limit300.json")
    with open(path) as f:
        saved = json.load(f)
    assert saved["config"]["k"] == 20 and len(saved["per_class_accuracy"]) == 10
    assert len(saved["class_names"]) == 10
    assert os.path.getsize(os.path.join(model_dirs[0], "eval", "knn_limit300_confusion.png")) > 0


def test_linear_cli_extracted_features(model_dirs, tmp_path):
    out = str(tmp_path / "probe.json")
    results = cli.evaluate(
        [
            "linear",
            "--model_dir",
            model_dirs[0],
            "--dataset",
            "fashion_mnist",
            "--limit",
            "256",
            "--epochs",
            "3",
            "--batch_size",
            "64",
            "--extract_features",
            "--out",
            out,
            "--quiet",
        ]
    )
    assert results["config"]["lr"] == pytest.approx(0.05)
    assert len(results["history"]["loss"]) == 3
    assert os.path.exists(out) and os.path.exists(str(tmp_path / "probe_confusion.png"))
    assert 0 <= results["top1"] <= 1


def test_linear_cli_end_to_end(model_dirs, tmp_path):
    results = cli.evaluate(
        [
            "linear",
            "--model_dir",
            model_dirs[0],
            "--dataset",
            "fashion_mnist",
            "--limit",
            "64",
            "--epochs",
            "2",
            "--batch_size",
            "32",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert results["num_examples"] == 64 and np.isfinite(results["history"]["loss"]).all()
    assert len(results["history"]["loss"]) == 2


def test_attention_cli(model_dirs, tmp_path):
    out = str(tmp_path / "grid.png")
    results = cli.evaluate(
        [
            "attention",
            "--model_dir",
            model_dirs[0],
            "--model_dir",
            model_dirs[1],
            "--name",
            "A",
            "--name",
            "B",
            "--dataset",
            "fashion_mnist",
            "--num_images",
            "3",
            "--out",
            out,
        ]
    )
    assert results["models"] == {"A": model_dirs[0], "B": model_dirs[1]}
    with open(out, "rb") as f:
        assert f.read(4) == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["knn", "--model_dir", "/nonexistent/run", "--dataset", "fashion_mnist"],
            "does not exist",
        ),
        (["knn", "--model_dir", "{tmp}", "--dataset", "fashion_mnist"], "backbone.keras"),
        (["knn", "--model_dir", "{run}", "--dataset", "mnist:x"], "Unknown data source"),
        (
            [
                "attention",
                "--model_dir",
                "{run}",
                "--name",
                "a",
                "--name",
                "b",
                "--dataset",
                "fashion_mnist",
            ],
            "one --name per",
        ),
    ],
)
def test_cli_errors(argv, message, model_dirs, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, run=model_dirs[0]) for a in argv]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_unlabelled_dataset_is_refused(model_dirs, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    assert 2 == cli.main(
        [
            "knn",
            "--model_dir",
            model_dirs[0],
            "--dataset",
            f"folder:{folder}",
            "--train_split",
            "",
            "--eval_split",
            "",
        ]
    )
    assert "no labels" in capsys.readouterr().err


def _run_with_config(tmp_path, model_dirs, config: str):
    """A copy of a tiny run whose config.yaml holds `config`."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(os.path.join(model_dirs[0], "backbone.keras"), run / "backbone.keras")
    (run / "config.yaml").write_text(config)
    return str(run)


def test_dataset_defaults_to_the_runs_own(model_dirs, tmp_path, capsys):
    run = _run_with_config(tmp_path, model_dirs, "data:\n  source: fashion_mnist\n")
    results = cli.evaluate(["knn", "--model_dir", run, "--limit", "100", "--quiet"])
    assert results["dataset"] == "fashion_mnist" and results["num_examples"] == 100
    # The monitors' labelled source comes first; a run without config.yaml needs --dataset.
    (tmp_path / "run" / "config.yaml").write_text(
        "data:\n  source: folder:/unlabelled\nmonitor:\n  source: tfds:cifar10\n"
    )
    assert cli.dataset_of_run(run) == "tfds:cifar10"
    assert cli.dataset_of_run(os.path.join(run, "backbone.keras")) == "tfds:cifar10"
    assert cli.main(["knn", "--model_dir", model_dirs[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --dataset is required") and "config.yaml" in err


def test_results_of_a_keras_file_are_kept_apart_from_the_runs(model_dirs, tmp_path):
    run = _run_with_config(tmp_path, model_dirs, "data:\n  source: fashion_mnist\n")
    file = os.path.join(run, "backbone.keras")
    by_dir = cli.evaluate(["knn", "--model_dir", run, "--limit", "50", "--quiet"])
    by_file = cli.evaluate(["knn", "--model_dir", file, "--limit", "50", "--quiet"])
    assert by_dir["paths"]["json"] == os.path.join(run, "eval", "knn_limit50.json")
    assert by_file["paths"]["json"] == os.path.join(run, "eval", "knn_limit50_backbone.json")
    for results in (by_dir, by_file):
        with open(results["paths"]["json"]) as f:
            assert json.load(f)["model_dir"] == results["model_dir"]


def test_classifier_offers_no_train_split():
    parser = cli.build_parser()
    assert parser.parse_args(["knn", "--model_dir", "r", "--train_split", "a"]).train_split == "a"
    with pytest.raises(SystemExit):
        parser.parse_args(["classifier", "--model_dir", "r", "--train_split", "a"])
    assert not hasattr(parser.parse_args(["classifier", "--model_dir", "r"]), "train_split")
