"""Strategies: mirrored == one device (sync BN), the CLI on 2 logical CPUs, two local workers."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from care_tf.train.config import derive, from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")
SMOKE = ["--set", "train.global_batch_size=16", "--set", "data.max_examples=256",
         "--set", "checkpoint.every_steps=2", "--no_progress"]  # fmt: skip

pytestmark = pytest.mark.slow


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)
    if "TF_CONFIG" not in extra:
        env.pop("TF_CONFIG", None)
    return env


def test_mirrored_matches_one_device():
    """2 steps over 2 replicas with sync BN == 2 steps on one device, same global batch."""
    from care_tf.train.experiment import build_model
    from care_tf.train.loop import make_step_function

    cfg = from_dict({
        "model": {"backbone": "resnet18", "image_size": 32, "base_channels": 8,
                  "transformer_kwargs": {"num_blocks": 1, "sync_bn": True}, "hidden_dim": 32,
                  "projection_dim": 16, "sync_bn": True},
        "optimizer": {"name": "sgd", "base_lr": 0.5, "weight_decay": 1e-4},
        "schedule": {"steps": 10, "warmup_steps": 2},
        "train": {"global_batch_size": 8},
    })  # fmt: skip
    derived = derive(cfg, 64)
    rng = np.random.default_rng(0)
    views = (rng.normal(size=(16, 32, 32, 3)).astype("float32"),
             rng.normal(size=(16, 32, 32, 3)).astype("float32"))  # fmt: skip
    weights = {}
    init = None
    for name, strategy in [
        ("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
        ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
    ]:
        with strategy.scope():
            model, _ = build_model(cfg, derived)
        if init is None:
            init = [v.numpy() for v in model.weights]
        else:
            for v, value in zip(model.weights, init, strict=True):
                v.assign(value)
        # Each replica reads its own rows of the global batch of 8.
        iterator = iter(strategy.distribute_datasets_from_function(
            lambda ctx: tf.data.Dataset.from_tensor_slices(views).batch(
                ctx.get_per_replica_batch_size(8))))  # fmt: skip
        step = make_step_function(model, strategy)
        for _ in range(2):
            step(iterator, tf.constant(1))
        weights[name] = [v.numpy() for v in model.weights]
    # Each variable's update agrees to float tolerance: |w_mirrored - w_one| is small next
    # to the update w_one - w_init (sync BN sums E[x], E[x^2] across replicas, so the
    # statistics round differently from one device's two-pass moments).
    worst = 0.0
    for a, b, w0 in zip(weights["one"], weights["mirrored"], init, strict=True):
        update = np.linalg.norm(a - w0)
        if update > 1e-6:
            worst = max(worst, np.linalg.norm(a - b) / update)
    print("worst relative disagreement", worst)
    assert worst < 0.05
    for a, b in zip(weights["one"], weights["mirrored"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3)


def test_cli_mirrored_two_logical_cpus(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "care_tf.train", "--config", QUICKSTART, "--model_dir",
         str(tmp_path), "--strategy", "mirrored", "--max_steps", "3", *SMOKE],
        capture_output=True, text=True, env=_env(), timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 replicas" in proc.stderr
    with open(tmp_path / "train_state.json") as f:
        assert json.load(f)["step"] == 3
    assert (tmp_path / "backbone.keras").exists()


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multi_worker_two_processes(tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "care_tf.train", "--config", QUICKSTART, "--model_dir",
             str(tmp_path), "--strategy", "multi_worker", "--max_steps", "3", *SMOKE],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_env(TF_CONFIG=json.dumps(tf_config)),
        ))  # fmt: skip
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=1500))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    with open(tmp_path / "train_state.json") as f:
        chief = json.load(f)
    with open(tmp_path / "checkpoints" / "workers" / "worker-1" / "train_state.json") as f:
        other = json.load(f)
    assert chief["step"] == other["step"] == 3
    assert chief["online_sha256"] == other["online_sha256"]
    assert chief["target_sha256"] == other["target_sha256"]
    # Only the chief wrote the real checkpoint; worker 1 kept its own data position only.
    assert os.path.exists(tmp_path / "checkpoints" / "ckpt-3.index")
    assert not os.path.exists(tmp_path / "checkpoints" / "workers" / "scratch-1")


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "care_tf.train", "--config", QUICKSTART, "--model_dir",
         str(tmp_path), "--strategy", "one_device", "--max_steps", "12", *SMOKE,
         "--set", "optimizer.base_lr=1e30", "--set", "schedule.warmup_epochs=0"],
        capture_output=True, text=True, env=_env(), timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Non-finite loss" in proc.stderr
    assert not (tmp_path / "model.keras").exists()
