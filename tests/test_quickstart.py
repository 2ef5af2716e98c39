"""`python -m care_tf.quickstart` (what `make quickstart` runs), with a tiny budget."""

import json
import os
import subprocess
import sys

import pytest

from care_tf import quickstart
from care_tf.train.config_names import resolve_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 2 steps of batch 16, probes on 256 images per split, 2 probe epochs, 16 calibration images.
TINY = [
    "--max_steps", "2",
    "--set", "train.global_batch_size=16",
    "--set", "data.max_examples=256",
    "--limit", "256",
    "--probe_epochs", "2",
    "--calibration_samples", "16",
]  # fmt: skip


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


def _fake_previous_run(model_dir):
    """What a finished quickstart leaves behind (enough for the driver to recognise it)."""
    (model_dir / "eval").mkdir(parents=True)
    (model_dir / "exported" / "care" / "1").mkdir(parents=True)
    (model_dir / "config.yaml").write_text("name: quickstart\n")
    (model_dir / "eval" / "knn.json").write_text("{}")
    (model_dir / "quickstart.json").write_text("{}")


def test_end_to_end_tiny(tmp_path, fmnist_small):
    """All four steps for real, over a previous run in the same directory (rerunnable)."""
    model_dir = tmp_path / "quickstart"
    _fake_previous_run(model_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "care_tf.quickstart", "--model_dir", str(model_dir), *TINY,
         "--no_progress"],
        capture_output=True, text=True, env=_env(), timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert f"Replacing the previous run in {model_dir}" in out
    steps = ["care_tf.train", "evaluate knn", "evaluate linear", "care_tf.export"]
    for i, step in enumerate(steps):
        assert f"==> [{i + 1}/4]" in out and step in out
    assert "CARE quickstart finished" in out and "kNN top-1" in out and "linear top-1" in out

    summary = json.loads((model_dir / "quickstart.json").read_text())
    assert summary["train"]["step"] == 2
    assert summary["knn"]["num_examples"] == 256 and summary["linear"]["epochs"] == 2
    for key in ("knn", "linear"):
        assert 0.0 <= summary[key]["top1"] <= summary[key]["top5"] <= 1.0
    paths = summary["paths"]
    assert os.path.isfile(os.path.join(paths["saved_model"], "saved_model.pb"))
    assert paths["tflite"].endswith("care_int8.tflite") and os.path.isfile(paths["tflite"])
    assert os.path.isfile(paths["backbone"])
    assert set(summary["seconds"]) == {"train", "knn", "linear", "export", "total"}
    # Nothing outside the run layout: a later quickstart may replace this directory.
    assert {p.name for p in model_dir.iterdir()} <= quickstart.RUN_ENTRIES


def test_commands_pass_the_budget_through():
    args = quickstart.build_parser().parse_args(["--model_dir", "d", *TINY, "--no_progress"])
    steps = {key: argv for key, _, argv in quickstart.commands(args)}
    assert list(steps) == ["train", "knn", "linear", "export"]
    train = " ".join(steps["train"])
    assert "-m care_tf.train --config" in train and "--model_dir d" in train
    assert "--max_steps 2" in train and "--set train.global_batch_size=16" in train
    assert train.endswith("--no_progress")
    assert "--limit 256" in " ".join(steps["knn"]) and "--quiet" in steps["knn"]
    linear = " ".join(steps["linear"])
    assert "--extract_features" in linear and "--epochs 2" in linear
    export = " ".join(steps["export"])
    assert "--format all --quantize int8" in export and "--calibration fashion_mnist" in export
    assert f"--out {os.path.join('d', 'exported')}" in export


def test_default_config_is_the_quickstart_yaml():
    args = quickstart.build_parser().parse_args([])
    assert args.model_dir == "runs/quickstart"
    assert args.config == "quickstart"  # the shipped config, by name
    assert os.path.samefile(
        resolve_config(args.config), os.path.join(ROOT, "configs", "quickstart.yaml")
    )
    assert args.quantize == "int8" and args.probe_epochs == 20


def test_prepare_model_dir(tmp_path):
    fresh = tmp_path / "new" / "run"
    assert quickstart.prepare_model_dir(fresh) is False and fresh.is_dir()
    assert quickstart.prepare_model_dir(fresh) is False  # empty: kept

    previous = tmp_path / "previous"
    _fake_previous_run(previous)
    assert quickstart.prepare_model_dir(previous) is True
    assert previous.is_dir() and not any(previous.iterdir())


@pytest.mark.parametrize(
    "files", [["notes.txt"], ["config.yaml", "thesis.tex"], ["metrics.csv"]]
)  # fmt: skip
def test_prepare_model_dir_never_deletes_foreign_files(tmp_path, files):
    model_dir = tmp_path / "mine"
    model_dir.mkdir()
    for name in files:
        (model_dir / name).write_text("keep me")
    with pytest.raises(quickstart.QuickstartError, match="is not a care_tf run"):
        quickstart.prepare_model_dir(model_dir)
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(files)


def test_model_dir_is_a_file(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    assert quickstart.main(["--model_dir", str(path)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CARE_DATA_DIR", str(tmp_path / "nowhere"))
    assert quickstart.main(["--model_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "make data" in err and "CARE_DATA_DIR" in err
    assert not (tmp_path / "run").exists()


def test_failed_step_stops_with_its_exit_status(tmp_path, capsys, fmnist_small):
    code = quickstart.main(
        ["--model_dir", str(tmp_path / "run"), "--set", "model.no_such_key=1", "--no_progress"]
    )
    assert code == 2  # care_tf.train's exit status for a bad config
    err = capsys.readouterr().err
    assert "step 1/4 (Pretraining CARE) failed with exit status 2" in err
