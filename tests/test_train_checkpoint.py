"""Checkpoints: nothing non-finite is saved; resume falls back past damaged checkpoints."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from care_testing import tiny_care

import care_tf
from care_tf.train import cli
from care_tf.train.callbacks import NonFiniteLossError, NonFiniteStateError, check_finite
from care_tf.train.checkpoint import (
    UNREADABLE,
    CheckpointError,
    TrainCheckpoint,
    checkpoint_steps,
    has_checkpoint_files,
    unreadable_reason,
)
from care_tf.train.strategy import WorkerInfo

CHIEF = WorkerInfo(num_workers=1, task_id=0, is_chief=True)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")


@pytest.fixture(scope="module")
def model():
    model = tiny_care(num_blocks=1)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    model.optimizer.build(model.trainable_weights)
    return model


def _iterator():
    return iter(tf.data.Dataset.range(1000).batch(2))


def _saved_run(model, model_dir, steps=(2, 4, 6)):
    """Checkpoints at `steps`, each with distinct weights; the weights of each step."""
    ckpt = TrainCheckpoint(str(model_dir), model, _iterator(), worker=CHIEF, keep=5)
    first = model.weights[1]  # a BN gamma or conv kernel: any float weight
    values = {}
    for step in steps:
        first.assign(np.full(first.shape, float(step), "float32"))
        ckpt.save(step)
        values[step] = first.numpy().copy()
    return ckpt, first, values


def _restore(model, model_dir):
    ckpt = TrainCheckpoint(str(model_dir), model, _iterator(), worker=CHIEF, keep=5)
    return ckpt, ckpt.restore_latest()


def _ckpt(model_dir, name):
    return model_dir / "checkpoints" / name


def _data_file(model_dir, step):
    names = os.listdir(model_dir / "checkpoints")
    return _ckpt(model_dir, next(n for n in names if n.startswith(f"ckpt-{step}.data")))


# ------------------------------------------------------------- non-finite state
def test_save_refuses_nonfinite_weights(model, tmp_path):
    ckpt, first, _ = _saved_run(model, tmp_path, steps=(1,))
    assert ckpt.nonfinite_tensors() == 0 and ckpt.num_tensors >= len(model.weights) - 1
    good = first.numpy().copy()
    first.assign(np.where(np.arange(first.numpy().size).reshape(first.shape) == 0, np.inf, good))
    with pytest.raises(NonFiniteStateError, match=r"after step 2 \(1 of .*step 1\).*--resume"):
        ckpt.save(2)
    assert checkpoint_steps(str(tmp_path / "checkpoints")) == [1]  # nothing written
    first.assign(good)
    assert unreadable_reason(str(_ckpt(tmp_path, "ckpt-1"))) is None


def test_nan_loss_message_gives_resumable_advice():
    check_finite({"loss": 1.0, "momentum": 0.99}, 3, None, "run")
    with pytest.raises(NonFiniteLossError, match=r"step 7 .*loss_att=nan.*step 6") as e:
        check_finite({"loss": float("nan"), "loss_att": float("nan")}, 7, 6, "run", 0.4)
    assert "--model_dir run --resume --set optimizer.base_lr=0.04" in str(e.value)


def test_config_rejects_nonfinite_numbers(tmp_path, capsys):
    for value in (".inf", ".nan", "-.inf", "inf"):
        code = cli.main(["--config", QUICKSTART, "--model_dir", str(tmp_path / "x"),
                         "--set", f"optimizer.base_lr={value}"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and "'optimizer.base_lr' must be a finite number" in err, err
    code = cli.main(["--config", QUICKSTART, "--model_dir", str(tmp_path / "x"),
                     "--set", "train.global_batch_size=1"])  # fmt: skip
    assert code == 2 and "'train.global_batch_size' must be >= 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# -------------------------------------------------------------------- fallback
def test_resume_without_index_file(model, tmp_path):
    _, first, values = _saved_run(model, tmp_path)
    _ckpt(tmp_path, "checkpoint").unlink()
    ckpt, step = _restore(model, tmp_path)
    assert step == 6 and np.array_equal(first.numpy(), values[6])
    # The index is rebuilt: keep=5 knows the old checkpoints and rotates them.
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-6")
    assert [os.path.basename(p) for p in ckpt.manager.checkpoints] == ["ckpt-2", "ckpt-4", "ckpt-6"]


def test_resume_past_a_garbled_index_file(model, tmp_path, capsys):
    """An index file of bytes that are not even UTF-8 text (TF's parser raises on them)."""
    _, first, values = _saved_run(model, tmp_path)
    _ckpt(tmp_path, "checkpoint").write_bytes(b"\xff\xfe\x80garbage\x00\xc3(")
    ckpt, step = _restore(model, tmp_path)
    assert step == 6 and np.array_equal(first.numpy(), values[6])
    assert _ckpt(tmp_path, "checkpoint.unreadable").exists()
    assert "does not parse" in capsys.readouterr().err
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-6")


@pytest.mark.parametrize(
    "damage",
    ["index_missing", "index_garbage", "data_flipped", "data_truncated", "data_missing"],
)
def test_resume_skips_a_damaged_newest_checkpoint(model, tmp_path, capsys, damage):
    _, first, values = _saved_run(model, tmp_path)
    index, data = _ckpt(tmp_path, "ckpt-6.index"), _data_file(tmp_path, 6)
    if damage == "index_missing":
        index.unlink()
    elif damage == "index_garbage":
        index.write_bytes(b"not an sstable" * 10)
    elif damage == "data_flipped":
        raw = bytearray(data.read_bytes())
        for i in range(len(raw) // 3, len(raw) // 3 + 64):
            raw[i] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "data_truncated":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    else:
        data.unlink()
    _ckpt(tmp_path, "checkpoint").write_text("garbage {")  # the index file is no help either
    capsys.readouterr()
    first.assign(np.zeros(first.shape, "float32"))
    ckpt, step = _restore(model, tmp_path)
    err = capsys.readouterr().err
    assert step == 4 and np.array_equal(first.numpy(), values[4])
    assert "skipped ckpt-6" in err and "resuming from ckpt-4" in err, err
    # The damaged files are moved aside, not overwritten by the next save of step 6.
    assert checkpoint_steps(str(tmp_path / "checkpoints")) == [4, 2]
    assert any(n.startswith("ckpt-6") for n in os.listdir(_ckpt(tmp_path, UNREADABLE)))
    ckpt.save(6)
    assert _restore(model, tmp_path)[1] == 6


def test_a_checkpoint_set_aside_twice_keeps_its_files_together(model, tmp_path, capsys):
    ckpt, _, _ = _saved_run(model, tmp_path)
    for _ in range(2):  # damage ckpt-6, resume (sets it aside), save step 6 again
        _ckpt(tmp_path, "ckpt-6.index").write_bytes(b"not an sstable")
        ckpt, step = _restore(model, tmp_path)
        assert step == 4
        ckpt.save(6)
    aside = _ckpt(tmp_path, UNREADABLE)
    assert sorted(os.listdir(aside)) == ["ckpt-6", "ckpt-6.2"]
    for folder in ("ckpt-6", "ckpt-6.2"):
        names = sorted(os.listdir(aside / folder))
        assert names[0].startswith("ckpt-6.data-") and names[1] == "ckpt-6.index", names
    assert "moved to" in capsys.readouterr().err


def test_checkpoints_of_another_model_name_the_config(model, tmp_path):
    _saved_run(model, tmp_path)
    other = care_tf.CARE.from_preset(  # the same model with 16 stem channels instead of 8
        "resnet18", image_size=32, backbone_kwargs={"base_channels": 16},
        transformer_kwargs={"num_blocks": 1}, hidden_dim=64, projection_dim=32,
    )  # fmt: skip
    other.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    other.optimizer.build(other.trainable_weights)
    ckpt = TrainCheckpoint(str(tmp_path), other, _iterator(), worker=CHIEF, keep=5)
    with pytest.raises(CheckpointError, match="read back whole but do not fit the model of the "
                       "config .*config.yaml or --config.*nothing was moved"):  # fmt: skip
        ckpt.restore_latest()
    assert checkpoint_steps(str(tmp_path / "checkpoints")) == [6, 4, 2]
    assert not _ckpt(tmp_path, UNREADABLE).exists()


def test_resume_skips_a_poisoned_checkpoint(model, tmp_path, capsys):
    _, first, values = _saved_run(model, tmp_path, steps=(2, 4))
    # A NaN checkpoint as older versions wrote them: saved behind TrainCheckpoint's back.
    first.assign(np.full(first.shape, np.nan, "float32"))
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(weights={"00001": first.value}), str(tmp_path / "checkpoints"), 5
    )
    manager.save(checkpoint_number=6)
    ckpt, step = _restore(model, tmp_path)
    assert step == 4 and np.array_equal(first.numpy(), values[4])
    assert "ckpt-6: 1 of its tensors hold NaN/Inf" in capsys.readouterr().err


def test_no_readable_checkpoint_is_an_error_not_a_restart(model, tmp_path, capsys):
    _saved_run(model, tmp_path, steps=(2, 4))
    for step in (2, 4):
        _ckpt(tmp_path, f"ckpt-{step}.index").write_bytes(b"junk")
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be restored.*ckpt-4"):
        _restore(model, tmp_path)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before  # nothing moved or written


def test_stale_temp_folders_are_removed(model, tmp_path, capsys):
    _saved_run(model, tmp_path, steps=(2,))
    temp = _ckpt(tmp_path, "ckpt-4_temp")
    temp.mkdir()
    (temp / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half a save")
    _, step = _restore(model, tmp_path)
    assert step == 2 and not temp.exists()
    assert "removed ckpt-4_temp/" in capsys.readouterr().err


def test_cli_refuses_a_fresh_run_over_unindexed_checkpoints(model, tmp_path, capsys):
    """Checkpoint files without tf.train's index still belong to a run: no silent restart."""
    _saved_run(model, tmp_path, steps=(2,))
    _ckpt(tmp_path, "checkpoint").unlink()
    assert has_checkpoint_files(str(tmp_path / "checkpoints"))
    code = cli.main(["--config", QUICKSTART, "--model_dir", str(tmp_path),
                     "--strategy", "one_device"])  # fmt: skip
    assert code == 2 and "--resume" in capsys.readouterr().err
    assert checkpoint_steps(str(tmp_path / "checkpoints")) == [2]
