"""Training input and resume on wrong data, files and settings (issue 21, data half):
an unreachable tf.data service, damaged TFRecord shards, an unprepared TFDS dataset,
damaged IDX files, out-of-range settings, edited or damaged run files."""

import io
import os
import socket
import time

import pytest

from care_tf.data.service import wait_for_dispatcher
from care_tf.train.config import ConfigError, load_config


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "override",
    [
        "schedule.warmup_start_lr=-1.0",
        "schedule.end_lr=-0.1",
        "data.max_examples=-960",
        "data.num_examples=-5",
        "data.num_examples=0",
        "data.service_timeout=0",
        "optimizer.epsilon=0",
        "optimizer.beta_2=1.0",
        "optimizer.global_clipnorm=-1",
        "model.lambda_att=-1",
        "monitor.val_examples=0",
    ],
)
def test_out_of_range_settings_name_their_key(override):
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"'{key}' must be .*got {value}"):
        load_config(None, [override])


# ------------------------------------------------------------------ tf.data service
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_dispatcher_fails_after_the_wait_with_progress():
    out = io.StringIO()
    address = f"grpc://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(ValueError, match=f"no tf.data service dispatcher answers at {address}"):
        wait_for_dispatcher(address, 1.5, every=0.5, out=out)
    assert 1.4 <= time.monotonic() - start < 5
    assert f"waiting for the dispatcher at {address}" in out.getvalue()


def test_listening_dispatcher_is_reached_at_once():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"grpc://127.0.0.1:{server.getsockname()[1]}"
        assert wait_for_dispatcher(address, 5.0) < 1.0


# ------------------------------------------------------------------ sources
TINY = """
name: tiny
model: {backbone: resnet18, image_size: 32, base_channels: 8, hidden_dim: 32,
        projection_dim: 16, transformer_kwargs: {num_blocks: 1}}
data: {source: fashion_mnist, max_examples: 64, shuffle_buffer: 64}
schedule: {epochs: 2, warmup_epochs: 0.5}
train: {global_batch_size: 16, log_every_steps: 1}
checkpoint: {every_steps: 1, keep: 3}
"""


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


def _train(capsys, *argv):
    from care_tf.train import cli

    code = cli.main([*argv, "--no_progress"])
    return code, capsys.readouterr().err


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path, tiny_config, capsys):
    from care_tf.data import load_source

    source = load_source("tfds:mnist", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match="'mnist' is not prepared .*tfds build mnist"):
        source.stream()
    for extra in ([], ["--set", "data.num_examples=128"]):
        code, err = _train(
            capsys, "--config", tiny_config, "--model_dir", str(tmp_path / "run"),
            "--set", "data.source=tfds:mnist", "--set", "data.max_examples=null", *extra,
        )  # fmt: skip
        assert code == 2 and err.count("\n") == 1, err
        assert "'mnist' is not prepared in" in err and "tfds build mnist" in err


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_damaged_idx_gz_is_named(tmp_path, tiny_config, capsys, monkeypatch, damage):
    import glob
    import shutil

    from care_tf.constants import FASHION_MNIST_DIR

    folder = tmp_path / "idx"
    folder.mkdir()
    for path in glob.glob(f"{FASHION_MNIST_DIR}/*.gz"):
        shutil.copy(path, folder)
    bad = folder / "train-images-idx3-ubyte.gz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"hello\n")
    monkeypatch.setenv("CARE_DATA_DIR", str(folder))
    code, err = _train(capsys, "--config", tiny_config, "--model_dir", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1, err
    word = "truncated" if damage == "truncated" else "not a valid gzip file"
    assert f"{bad} is {word}" in err


# ------------------------------------------------------------------ TFRecord shards
def _png(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _shards(folder, sizes=(6, 6), features=None) -> list:
    """Shards `train-0000i-of-...tfrecord` of `sizes` records; their paths."""
    import tensorflow as tf

    folder.mkdir(exist_ok=True)
    paths = []
    for shard, size in enumerate(sizes):
        path = str(folder / f"train-{shard:05d}-of-{len(sizes):05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(size):
                feature = features or {
                    "image/encoded": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[_png(10 * shard + i)])
                    )
                }
                writer.write(
                    tf.train.Example(
                        features=tf.train.Features(feature=feature)
                    ).SerializeToString()
                )
        paths.append(path)
    return paths


def _read_all(spec, skip_corrupt=False):
    from care_tf.data import load_source

    return [e["image"].shape for e in load_source(spec, skip_corrupt=skip_corrupt).as_dataset()]


def test_truncated_shard_is_named_or_read_to_its_last_whole_record(tmp_path, capfd):
    paths = _shards(tmp_path / "shards")
    data = open(paths[1], "rb").read()
    open(paths[1], "wb").write(data[:-100])  # ends inside record 5
    with pytest.raises(ValueError, match=f"shard {paths[1]} is truncated: it ends inside record 5"):
        _read_all(f"tfrecord:{tmp_path / 'shards'}")
    assert len(_read_all(f"tfrecord:{tmp_path / 'shards'}", skip_corrupt=True)) == 6 + 5
    assert f"{paths[1]} ends inside record 5: reading its 5 whole records" in capfd.readouterr().err


def test_shard_of_other_records_is_named_or_left_out(tmp_path, capfd):
    import tensorflow as tf

    good = _shards(tmp_path / "shards", sizes=(4,))
    other = _shards(
        tmp_path / "other",
        sizes=(3,),
        features={"foo": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))},
    )
    moved = str(tmp_path / "shards" / "train-00001-of-00002.tfrecord")
    os.replace(other[0], moved)
    with pytest.raises(ValueError, match=f"{moved} has no 'image/encoded' feature .*hold foo"):
        _read_all(f"tfrecord:{tmp_path / 'shards'}")
    assert len(_read_all(f"tfrecord:{tmp_path / 'shards'}", skip_corrupt=True)) == 4
    assert f"{moved} has no 'image/encoded' feature" in capfd.readouterr().err
    assert good


def test_record_failing_its_checksum_is_named_or_skipped(tmp_path):
    import tensorflow as tf

    from care_tf.data import make_pretrain_dataset

    paths = _shards(tmp_path / "shards", sizes=(8, 8))
    data = bytearray(open(paths[0], "rb").read())
    at = 0
    for _ in range(3):  # the payload of record 3
        at += 12 + int.from_bytes(data[at : at + 8], "little") + 4
    data[at + 12 + 40 : at + 12 + 56] = bytes(16)
    open(paths[0], "wb").write(bytes(data))
    spec = f"tfrecord:{tmp_path / 'shards'}"
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=f"file {paths[0]} is damaged at record 3"
    ):
        _read_all(spec)
    assert len(_read_all(spec, skip_corrupt=True)) == 3 + 8  # the rest of shard 0 skipped
    stream = make_pretrain_dataset(
        spec, batch_size=4, image_size=16, seed=0, repeat=False, placement="device"
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"file {paths[0]} is damaged at"):
        list(stream)


# ------------------------------------------------------------------ run files
def test_run_config_that_is_not_yaml_is_named(tmp_path, tiny_config, capsys):
    from care_tf import model_dir as layout
    from care_tf.cli_errors import UsageError

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-1.index").write_bytes(b"x")
    (run / "config.yaml").write_text("model: [unclosed\n  x: {")
    with pytest.raises(UsageError, match=f"config {run}/config.yaml is not valid YAML .*line 2"):
        layout.read_config(str(run))
    code, err = _train(capsys, "--config", tiny_config, "--model_dir", str(run), "--resume")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{run}/config.yaml is not valid YAML" in err and "unexpected" not in err
    code, err = _train(capsys, "--model_dir", str(run), "--resume")  # its own config
    assert code == 2 and err.count("\n") == 1 and f"{run}/config.yaml is not valid YAML" in err
    (run / "config.yaml").write_bytes(b"\xff\xfe- 1\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        layout.read_config(str(run))


def test_loss_of_a_finished_step_comes_from_the_run_logs(tmp_path):
    import json

    from care_tf.train.loop import logs_at

    (tmp_path / "metrics.csv").write_text(
        "epoch,step,loss,lr\n1,4,2.5,0.1\n2,8,1.25,0.05\n2,8,1.5,0.05\n"
    )
    assert logs_at(str(tmp_path), 8) == {"loss": 1.5, "lr": 0.05}  # the last row of step 8
    assert logs_at(str(tmp_path), 4)["loss"] == 2.5
    (tmp_path / "train_state.json").write_text(json.dumps({"step": 12, "loss": 0.75}))
    assert logs_at(str(tmp_path), 12) == {"loss": 0.75}
    assert logs_at(str(tmp_path), 16) == {}  # never logged: no made-up number
    (tmp_path / "metrics.csv").write_bytes(b"\xff\xfe garbage")
    assert logs_at(str(tmp_path), 12) == {"loss": 0.75}


def test_exploded_checkpoint_advice_names_an_earlier_start():
    import numpy as np

    from care_tf.train.callbacks import NonFiniteStateError
    from care_tf.train.loop import exploded_checkpoint_error, weights_norm

    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.full((4,), -2.0, np.float32)]
    assert weights_norm(arrays) == pytest.approx(np.sqrt(sum((a**2).sum() for a in arrays)))
    err = NonFiniteStateError("Non-finite weights after step 3 (1 of 9 ...); stopped. Resume...")
    out = exploded_checkpoint_error(err, "run", 2, 5.9e6, [1])
    assert isinstance(out, NonFiniteStateError)
    text = str(out)
    assert text.startswith("Non-finite weights after step 3 (1 of 9 ...), right after resuming")
    assert "norm is 5.9e+06 times the initial" in text and "lower learning rate cannot" in text
    assert "to resume from ckpt-1; kept: ckpt-1), or from scratch" in text
    only = str(exploded_checkpoint_error(err, "run", 2, 1.5, []))
    assert "loss of its very first step is already non-finite" in only
    assert "Restart from scratch in a new --model_dir" in only


def test_garbage_dataset_info_is_named(tmp_path):
    from care_tf.data import load_source

    _shards(tmp_path / "shards", sizes=(2,))
    info = tmp_path / "shards" / "dataset_info.json"
    for text in ("{not json", "[1, 2]"):
        info.write_text(text)
        with pytest.raises(ValueError, match=f"{info} (is not valid JSON|must hold a JSON)"):
            load_source(f"tfrecord:{tmp_path / 'shards'}")
