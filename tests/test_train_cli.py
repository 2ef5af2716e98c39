"""`python -m care_tf.train`: end-to-end quickstart, outputs, errors, SIGKILL + exact resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from care_tf import model_dir as layout
from care_tf.train import cli
from care_tf.train.callbacks import NonFiniteLossError, check_finite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")
# Small and quick: 8 steps of batch 16, checkpoints every 2 steps, bitwise-deterministic ops.
SMOKE = [
    "--set", "train.global_batch_size=16",
    "--set", "data.max_examples=256",
    "--set", "checkpoint.every_steps=2",
    "--set", "train.log_every_steps=1",
    "--set", "train.deterministic=true",
    "--set", "schedule.epochs=2",  # 32 steps, whatever the quickstart's own length
]  # fmt: skip
STEPS = 8


def _cmd(model_dir, *extra):
    return [sys.executable, "-m", "care_tf.train", "--config", QUICKSTART,
            "--model_dir", str(model_dir), *SMOKE, *extra]  # fmt: skip


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


def _state(model_dir):
    with open(os.path.join(model_dir, "train_state.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted single-device CLI run of the quickstart, checked several ways."""
    model_dir = tmp_path_factory.mktemp("reference")
    proc = subprocess.run(
        _cmd(model_dir, "--strategy", "one_device", "--max_steps", str(STEPS)),
        capture_output=True, text=True, env=_env(), timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model_dir, proc


def test_cli_single_device_outputs(reference_run):
    model_dir, proc = reference_run
    state = _state(model_dir)
    assert state["step"] == STEPS and not state["complete"]
    # Resolved config with the derived values: 256 // 16 = 16 steps/epoch, 2 epochs.
    cfg = layout.read_config(str(model_dir))
    assert cfg["train"]["global_batch_size"] == 16
    assert cfg["derived"]["steps_per_epoch"] == 16 and cfg["derived"]["total_steps"] == 32
    assert cfg["derived"]["peak_lr"] == pytest.approx(cfg["optimizer"]["base_lr"] * 16 / 256)
    # Progress bar with the loss terms and images/s.
    for key in ("loss_c=", "loss_t=", "loss_att=", "images_per_sec="):
        assert key in proc.stderr
    # Checkpoints every 2 steps, the last `keep` (2) kept.
    ckpts = sorted(f for f in os.listdir(model_dir / "checkpoints") if f.endswith(".index"))
    assert ckpts == ["ckpt-6.index", "ckpt-8.index"]
    # CSV and TensorBoard logs.
    with open(model_dir / "metrics.csv") as f:
        header = f.readline()
    losses = ("loss", "loss_att", "loss_att_authors", "loss_authors")
    for key in ("epoch", "step", *losses, "lr", "momentum", "images_per_sec"):
        assert key in header.strip().split(",")
    assert any(f.startswith("events.out") for f in os.listdir(model_dir / "logs" / "train"))
    # What evaluate / export need.
    backbone = layout.load_backbone(str(model_dir))
    assert backbone.input_shape[1:] == (32, 32, 3)


def test_cli_model_reloads(reference_run):
    import keras

    model_dir, _ = reference_run
    model = keras.saving.load_model(str(model_dir / "model.keras"), compile=False)
    assert int(model.steps.numpy()) == STEPS and model.total_steps == 32
    assert model.weight_decay == pytest.approx(1e-4)  # the paper's coupled decay reached the model


def test_sigkill_then_resume_is_exact(reference_run, tmp_path):
    """Kill mid-run; rerun with --resume: same step, lr and weights as the uninterrupted run."""
    ref_dir, _ = reference_run
    model_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(model_dir, "--strategy", "one_device", "--max_steps", str(STEPS), "--no_progress"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
    )  # fmt: skip
    index = model_dir / "checkpoints" / "checkpoint"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if index.exists() and "ckpt-2" in index.read_text():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (model_dir / "train_state.json").exists()

    # Without --resume an existing run is refused.
    again = subprocess.run(_cmd(model_dir, "--strategy", "one_device"), capture_output=True,
                           text=True, env=_env(), timeout=300)  # fmt: skip
    assert again.returncode == 2 and "--resume" in again.stderr

    resumed = subprocess.run(
        _cmd(model_dir, "--strategy", "one_device", "--max_steps", str(STEPS), "--resume",
             "--no_progress"),
        capture_output=True, text=True, env=_env(), timeout=900,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step" in resumed.stderr
    ref, got = _state(ref_dir), _state(model_dir)
    for key in ("step", "epoch", "lr", "momentum", "target_sha256", "online_sha256"):
        assert got[key] == ref[key], key


def _main(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_bad_config_key_and_type(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: " + QUICKSTART + "\noptimizer:\n  learning_rate: 0.1\n")
    code, err = _main(capsys, "--config", str(bad), "--model_dir", str(tmp_path / "a"))
    assert code == 2 and "'optimizer.learning_rate'" in err
    code, err = _main(capsys, "--config", QUICKSTART, "--model_dir", str(tmp_path / "b"),
                      "--set", "train.global_batch_size=big")  # fmt: skip
    assert code == 2 and "'train.global_batch_size'" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bad_config_exits_nonzero_in_a_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "care_tf.train", "--config", QUICKSTART, "--model_dir",
         str(tmp_path), "--set", "model.backbon=resnet18"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "'model.backbon'" in proc.stderr


def test_tpu_without_tpu(tmp_path, capsys):
    env_tpu = os.environ.pop("TPU_NAME", None)
    try:
        code, err = _main(capsys, "--config", QUICKSTART, "--model_dir", str(tmp_path),
                          "--strategy", "tpu")  # fmt: skip
    finally:
        if env_tpu is not None:
            os.environ["TPU_NAME"] = env_tpu
    assert code == 2 and "tpu" in err.lower() and "TPU" in err


def test_batch_not_divisible_by_replicas(tmp_path, capsys):
    code, err = _main(capsys, "--config", QUICKSTART, "--model_dir", str(tmp_path),
                      "--strategy", "mirrored", "--set", "train.global_batch_size=63")  # fmt: skip
    assert code == 2 and "63" in err and "divisible" in err and "2 replicas" in err


def test_multi_worker_without_tf_config(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code, err = _main(capsys, "--config", QUICKSTART, "--model_dir", str(tmp_path),
                      "--strategy", "multi_worker")  # fmt: skip
    assert code == 2 and "TF_CONFIG" in err


def test_nan_guard_message():
    check_finite({"loss": 1.0, "momentum": 0.99}, 3, None, "ckpts")
    with pytest.raises(NonFiniteLossError, match=r"step 7 .*loss_att=nan.*step 6"):
        check_finite({"loss": float("nan"), "loss_att": float("nan")}, 7, 6, "ckpts")


@pytest.mark.slow
def test_online_knn_monitor_reaches_the_csv_log(tmp_path):
    """The monitors' figures land in metrics.csv (not only in their own event files)."""
    steps_per_epoch = 256 // 16
    proc = subprocess.run(
        _cmd(tmp_path, "--strategy", "one_device", "--max_steps", str(steps_per_epoch),
             "--set", "monitor.knn_every_epochs=1", "--set", "monitor.train_examples=128",
             "--set", "monitor.val_examples=64", "--no_progress"),
        capture_output=True, text=True, env=_env(), timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    import csv

    with open(layout.path(str(tmp_path), layout.METRICS_CSV)) as f:
        rows = list(csv.DictReader(f))
    assert "knn_top1" in rows[-1], rows[-1]
    assert 0.0 < float(rows[-1]["knn_top1"]) <= 1.0  # a fraction


@pytest.mark.slow  # ~12 s alone, 30 s on a busy machine (tests/test_robustness_data_train.py
# checks the loss look-up itself)
def test_resume_of_a_finished_run_reports_its_last_loss(reference_run, tmp_path):
    """A resume with nothing left to train (a kill during the final save) says so and keeps
    the loss of the last step, from metrics.csv, in its message and train_state.json."""
    model_dir, _ = reference_run
    copy = tmp_path / "run"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns(".care.lock"))
    before = _state(copy)
    os.remove(copy / "train_state.json")  # as if killed before it was written
    proc = subprocess.run(
        _cmd(copy, "--strategy", "one_device", "--resume", "--max_steps", str(STEPS)),
        capture_output=True, text=True, env=_env(), timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to train: the run is at step 8" in proc.stderr
    assert "Only its final files are (re)written" in proc.stderr
    assert f"loss {before['loss']:.4f}" in proc.stderr and "nan" not in proc.stderr
    after = _state(copy)
    assert after["loss"] == pytest.approx(before["loss"]) and after["step"] == STEPS
    assert after["online_sha256"] == before["online_sha256"]
