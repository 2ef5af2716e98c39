"""Export CLI: help, bad input (no model, architecture mismatch, existing version), failures."""

import os

import keras
import numpy as np
import pytest

from care_tf.export import __main__ as cli
from care_tf.export import exporter
from care_tf.export.testing import make_model_dir, shared_tiny_run


@pytest.fixture(scope="module")
def run(fmnist_small):
    return shared_tiny_run(fmnist_small[0][:256])


def _export(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model_dir", "--out", "--format", "--name", "--version", "--quantize"):
        assert option in text
    assert "--calibration" in text and "--overwrite" in text and "--feature_maps" in text


def test_directory_without_model(tmp_path, capsys):
    code, text = _export(capsys, "--model_dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "No trained backbone" in text and "backbone.keras" in text
    code, text = _export(capsys, "--model_dir", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert code == 2 and "does not exist" in text


def test_config_names_another_backbone(run, tmp_path, capsys):
    other = make_model_dir(
        str(tmp_path / "run"),
        keras.saving.load_model(os.path.join(run, "backbone.keras")),
        {"model": {"backbone": "resnet50"}},
    )
    code, text = _export(capsys, "--model_dir", other, "--out", str(tmp_path / "o"))
    assert code == 2
    assert "Architecture mismatch" in text and "'resnet50'" in text and "depth 18" in text


def test_not_a_care_backbone(tmp_path, capsys):
    inputs = keras.Input((32, 32, 3))
    plain = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    path = make_model_dir(str(tmp_path / "run"), plain)
    code, text = _export(capsys, "--model_dir", path, "--out", str(tmp_path / "o"))
    assert code == 2
    assert "not a CARE backbone" in text and "res4" in text


def test_existing_version_refused_unless_overwrite(run, tmp_path, capsys):
    out = str(tmp_path / "o")
    os.makedirs(os.path.join(out, "care", "3"))
    code, text = _export(capsys, "--model_dir", run, "--out", out, "--version", "3")
    assert code == 2 and "already exists" in text and "--overwrite" in text
    old = os.path.join(out, "tflite", "care", "3", "care_float32.tflite")
    os.makedirs(os.path.dirname(old))
    with open(old, "wb") as f:
        f.write(b"old export")
    args = ["--model_dir", run, "--out", out, "--format", "tflite", "--version", "3"]
    code, text = _export(capsys, *args)
    assert code == 2 and "care_float32.tflite already exists" in text
    code, text = _export(capsys, *args, "--overwrite")
    assert code == 0 and "ok   batch 1 embedding" in text
    assert os.path.getsize(old) > 1000


def test_bad_arguments(run, tmp_path, capsys):
    out = str(tmp_path / "o")
    code, text = _export(capsys, "--model_dir", run, "--out", out, "--quantize", "int8")
    assert code == 2 and "--calibration" in text
    code, text = _export(
        capsys, "--model_dir", run, "--out", out, "--format", "saved_model", "--quantize", "int8"
    )
    assert code == 2 and "applies to TFLite" in text
    code, text = _export(capsys, "--model_dir", run, "--out", out, "--version", "0")
    assert code == 2 and "positive integer" in text
    assert not os.path.exists(out) or not os.listdir(out)


def test_failed_verification_fails_the_command(run, tmp_path, capsys, monkeypatch):
    """A wrong export (simulated by a shifted reference) exits 1 and is not published."""
    real = exporter.keras_outputs

    def shifted(*args, **kwargs):
        out = real(*args, **kwargs)
        out["expected_embedding"] = out["expected_embedding"] + 0.1
        return out

    monkeypatch.setattr(exporter, "keras_outputs", shifted)
    out = str(tmp_path / "o")
    code, text = _export(capsys, "--model_dir", run, "--out", out, "--format", "tflite")
    assert code == 1  # a failed check is not a user error
    assert "FAIL batch" in text and "Verification of the tflite export failed" in text
    final = os.path.join(out, "tflite", "care", "1", "care_float32.tflite")
    assert not os.path.exists(final)
    assert [n for n in os.listdir(os.path.dirname(final)) if n.endswith(".tmp")]


@pytest.mark.slow
def test_verification_report_is_real(run, tmp_path):
    """The fresh-process checker flags a mismatch on its own (no exporter involved)."""
    from care_tf.export.source import load_source
    from care_tf.export.tflite import write_tflite

    path = str(tmp_path / "m.tflite")
    write_tflite(load_source(run), path)
    pixels = np.zeros((2, 32, 32, 3), np.uint8)
    data = {"pixels": pixels, "expected_embedding": np.ones((2, 64), np.float32) * 1e3}
    report = exporter.run_verification("tflite", path, data)
    assert not report["ok"] and report["returncode"] == 1
