"""Export CLI on a damaged run: unreadable config.yaml, bad --calibration_samples, and a
run stopped before its schedule ended (issue 21)."""

import json
import os
import shutil

import pytest

from care_tf.export import __main__ as cli
from care_tf.export.testing import shared_tiny_run


@pytest.fixture(scope="module")
def run(fmnist_small):
    return shared_tiny_run(fmnist_small[0][:256])


def _copy(run, tmp_path):
    target = str(tmp_path / "run")
    shutil.copytree(run, target)
    return target


def _export(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "content, words",
    [
        (b"model: [unclosed\n  backbone: {", "is not valid YAML"),
        (b"\xff\xfe\x00\x01binary", "is not valid YAML"),
        (b"- a list\n- of things\n", "is not a mapping of sections"),
    ],
)
def test_unreadable_config_yaml_is_one_error_naming_it(run, tmp_path, capsys, content, words):
    model_dir = _copy(run, tmp_path)
    config = os.path.join(model_dir, "config.yaml")
    with open(config, "wb") as f:
        f.write(content)
    code, _, err = _export(capsys, "--model_dir", model_dir, "--out", str(tmp_path / "o"))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and config in lines[0] and words in lines[0]
    assert "unexpected" not in lines[0]


@pytest.mark.parametrize("samples", ["0", "-5"])
def test_calibration_samples_must_be_positive(run, tmp_path, capsys, samples):
    out = str(tmp_path / "o")
    argv = ["--model_dir", run, "--out", out, "--format", "tflite", "--quantize", "int8"]
    argv += ["--calibration", "fashion_mnist", "--calibration_samples", samples]
    code, stdout, err = _export(capsys, *argv)
    assert code == 2 and "--calibration_samples must be a positive number" in err
    assert f"got {samples}" in err and "calibrating" not in stdout
    assert not os.path.exists(out) or not os.listdir(out)


def test_incomplete_run_is_said_on_the_console(run, tmp_path, capsys):
    """A --max_steps run: the warning comes before anything is written (here the export
    then stops at a missing calibration folder, to stay fast)."""
    model_dir = _copy(run, tmp_path)
    state = {"step": 40, "total_steps": 1000, "complete": False}
    with open(os.path.join(model_dir, "train_state.json"), "w") as f:
        json.dump(state, f)
    argv = ["--model_dir", model_dir, "--out", str(tmp_path / "o"), "--format", "tflite"]
    argv += ["--calibration", f"folder:{tmp_path / 'missing'}"]
    code, stdout, err = _export(capsys, *argv)
    assert code == 2 and err.startswith("error: --calibration") and "not found" in err
    assert "warning: this run stopped at step 40 of 1000 before its schedule ended" in stdout
    state["complete"] = True
    with open(os.path.join(model_dir, "train_state.json"), "w") as f:
        json.dump(state, f)
    code, stdout, err = _export(capsys, *argv)
    assert code == 2 and "warning" not in stdout


def test_calibration_spec_errors_are_one_short_line(run, tmp_path, capsys):
    out = str(tmp_path / "o")
    for spec, words in [
        (f"folder:{tmp_path / 'missing'}", "Image folder not found"),
        ("tfds:no_such_dataset", "Unknown TFDS dataset 'no_such_dataset'"),
    ]:
        argv = ["--model_dir", run, "--out", out, "--format", "tflite", "--calibration", spec]
        code, _, err = _export(capsys, *argv)
        assert code == 2 and len(err.splitlines()) == 1 and len(err) < 400, err
        assert err.startswith(f"error: --calibration {spec!r}: ") and words in err
