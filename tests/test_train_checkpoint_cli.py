"""Through the CLI: a NaN stop keeps a finite checkpoint, and its advice resumes the run."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from care_tf.train.checkpoint import checkpoint_steps, unreadable_reason

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")
SMOKE = [
    "--set", "train.global_batch_size=16",
    "--set", "data.max_examples=256",
    "--set", "checkpoint.every_steps=1",
    "--strategy", "one_device",
    "--no_progress",
]  # fmt: skip


def _train(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "care_tf.train", *args], capture_output=True,
                          text=True, env=env, timeout=900)  # fmt: skip


@pytest.mark.slow
def test_nan_stop_keeps_finite_checkpoints_and_its_advice_resumes(tmp_path):
    run = str(tmp_path / "run")
    first = _train("--config", QUICKSTART, "--model_dir", run, *SMOKE, "--max_steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    final = os.path.join(run, "model.keras")
    written = os.stat(final).st_mtime_ns
    # A learning rate that blows the weights up (base_lr may change on --resume); with a
    # save due at step 8 the run must stop before writing anything.
    bad = _train("--model_dir", run, "--resume", *SMOKE, "--max_steps", "8", "--set",
                 "optimizer.base_lr=1e8", "--set", "checkpoint.every_steps=100")  # fmt: skip
    assert bad.returncode == 3, bad.stderr[-3000:]
    ckpts = os.path.join(run, "checkpoints")
    steps = checkpoint_steps(ckpts)
    assert steps == [2, 1]
    for step in steps:  # every checkpoint kept reads back whole and finite
        assert unreadable_reason(os.path.join(ckpts, f"ckpt-{step}")) is None, step
    assert f"last good checkpoint (step {steps[0]})" in bad.stderr
    assert os.stat(final).st_mtime_ns == written  # the stopped run wrote no final model
    # The advice, as printed, with a sane learning rate.
    advice = re.search(r"python -m care_tf\.train (--model_dir \S+ --resume --set "
                       r"optimizer\.base_lr=)\S+", bad.stderr)  # fmt: skip
    assert advice, bad.stderr[-2000:]
    args = shlex.split(advice.group(1) + "0.2")
    good = _train(*args, "--strategy", "one_device", "--no_progress", "--max_steps", "6")
    assert good.returncode == 0, good.stderr[-3000:]
    assert "resuming at step 2" in good.stderr
    assert checkpoint_steps(ckpts)[0] == 6


TINY = """
model: {backbone: resnet18, image_size: 32, base_channels: 8, hidden_dim: 32,
        projection_dim: 16, transformer_kwargs: {num_blocks: 1}}
data: {source: fashion_mnist, max_examples: 128}
schedule: {epochs: 2, warmup_epochs: 0.5}
train: {global_batch_size: 16}
checkpoint: {every_steps: 1, keep: 3}
"""


@pytest.mark.slow
def test_resume_from_exploded_weights_advises_an_earlier_start(tmp_path):
    """lr 1e8: ckpt-2 is finite but exploded, step 3 goes NaN. The usual advice (a lower
    lr) cannot rescue ckpt-2; the resume says so and names ckpt-1, which does resume."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    run = str(tmp_path / "run")
    common = ["--no_progress", "--strategy", "one_device"]
    first = _train("--config", str(config), "--model_dir", run, *common, "--max_steps", "8",
                   "--set", "optimizer.base_lr=1e8")  # fmt: skip
    assert first.returncode == 3 and "Resume with a lower learning rate" in first.stderr
    ckpts = os.path.join(run, "checkpoints")
    assert checkpoint_steps(ckpts) == [2, 1]
    again = _train("--model_dir", run, "--resume", *common, "--max_steps", "8",
                   "--set", "optimizer.base_lr=1e7")  # fmt: skip
    assert again.returncode == 3, again.stderr[-3000:]
    assert "ckpt-2 have" in again.stderr and "may have exploded" in again.stderr
    last = again.stderr.strip().splitlines()[-1]
    assert "already holds exploded weights" in last and "lower learning rate cannot" in last
    assert f"move the ckpt-2.* files out of {ckpts} to resume from ckpt-1" in last
    os.makedirs(tmp_path / "aside")
    for name in os.listdir(ckpts):
        if name.startswith("ckpt-2."):
            os.replace(os.path.join(ckpts, name), tmp_path / "aside" / name)
    good = _train("--model_dir", run, "--resume", *common, "--max_steps", "3",
                  "--set", "optimizer.base_lr=0.05")  # fmt: skip
    assert good.returncode == 0 and "resuming at step 1" in good.stderr, good.stderr[-3000:]
    assert "may have exploded" not in good.stderr
