"""Paper-scale training mechanics: each replica reads its share, K steps per compiled call,
an XLA-compiled device step, checkpoints without input buffers, the tf.data service."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from care_tf.train.config import derive, from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = {
    "backbone": "resnet18", "image_size": 16, "base_channels": 8,
    "transformer_kwargs": {"num_blocks": 1}, "hidden_dim": 32, "projection_dim": 16,
}  # fmt: skip


def _tiny(placement="host", **train):
    return from_dict({
        "model": TINY_MODEL, "data": {"placement": placement},
        "schedule": {"steps": 10, "warmup_steps": 2},
        "train": {"global_batch_size": 8, **train},
    })  # fmt: skip


def _dataset_fn(placement):
    rng = np.random.default_rng(0)
    if placement == "host":
        data = tuple(rng.normal(size=(64, 16, 16, 3)).astype("float32") for _ in range(2))
    else:
        data = (rng.integers(0, 256, (64, 24, 18, 3), np.uint8), np.tile([[48, 36]], (64, 1)))

    def fn(context):
        ds = tf.data.Dataset.from_tensor_slices(data).repeat()
        return ds.batch(context.get_per_replica_batch_size(8), drop_remainder=True)

    return fn


def test_k_steps_per_call_equal_k_single_steps():
    from care_tf.train.experiment import build_model
    from care_tf.train.loop import make_step_function

    cfg = _tiny()
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model, _ = build_model(cfg, derive(cfg, 64))
    state = [*model.weights, *model.optimizer.variables]
    init = [v.numpy() for v in state]
    step = make_step_function(model, strategy)  # one function, traced once, for every k
    results = []
    for calls in ([4], [1, 1, 1, 1]):
        for v, value in zip(state, init, strict=True):
            v.assign(value)
        for metric in model.metrics:
            metric.reset_state()
        iterator = iter(strategy.distribute_datasets_from_function(_dataset_fn("host")))
        for k in calls:
            logs = step(iterator, tf.constant(k))
        assert int(model.steps.numpy()) == 4
        results.append(([v.numpy() for v in state], float(logs["loss"])))
    (w4, loss4), (w1, loss1) = results
    assert loss4 == pytest.approx(loss1, rel=1e-6)
    for a, b in zip(w4, w1, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(w4, init, strict=True))


@pytest.mark.slow
def test_device_placement_step_compiles_with_xla():
    """Augmentation and train step in one XLA program, every shape static."""
    from care_tf.train.experiment import build_model
    from care_tf.train.loop import make_step_function

    cfg = _tiny("device")
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model, _ = build_model(cfg, derive(cfg, 64))
    dist = strategy.distribute_datasets_from_function(_dataset_fn("device"))
    for spec in tf.nest.flatten(dist.element_spec):
        assert spec.shape.is_fully_defined(), spec
    step = make_step_function(model, strategy, jit_compile=True)
    logs = step(iter(dist), tf.constant(2))
    assert np.isfinite(float(logs["loss"])) and int(model.steps.numpy()) == 2
    assert int(model.augmenter.step.numpy()) == 2


REPLICA_SHARES = textwrap.dedent("""
    import json, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)
    from care_tf.data import distribute_pretrain_dataset
    from care_tf.data.sources import ArraySource
    images = np.random.default_rng(0).integers(0, 256, (64, 12, 12, 3), np.uint8)
    source = ArraySource("arrays", "train", [], 64, None, None, images=images,
                         labels=np.full(64, -1))
    out = {}
    for n in (1, 2, 4):
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(n)])
        kwargs = dict(batch_size=16, image_size=16, seed=0)
        host = next(iter(distribute_pretrain_dataset(strategy, source, **kwargs)))
        device = next(iter(distribute_pretrain_dataset(
            strategy, source, placement="device", return_image_sizes=True, **kwargs)))
        out[n] = {
            "host": [list(t.shape) for t in strategy.experimental_local_results(host[0])],
            "device": [list(t.shape) for t in strategy.experimental_local_results(device[0])],
            "rows": [t.numpy().tolist() for t in strategy.experimental_local_results(device[0])],
        }
    print(json.dumps(out))
""")


def test_each_of_four_replicas_receives_its_share():
    """4 logical CPUs (a subprocess: the test process has 2): replica r gets rows
    [4r, 4r + 4) of the global batch a single device reads, nothing more."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", REPLICA_SHARES], capture_output=True,
                          text=True, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    out = {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    for n in (1, 2, 4):
        assert out[n]["host"] == [[16 // n, 16, 16, 3]] * n
        assert out[n]["device"] == [[16 // n, 18, 18, 3]] * n
        rows = np.concatenate([np.asarray(r) for r in out[n]["rows"]])
        np.testing.assert_array_equal(rows, np.asarray(out[1]["rows"][0]))


def _write_records(folder, n, side, seed):
    """`n` TFRecords of random-noise JPEGs side x side (bigger side, bigger records)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    with tf.io.TFRecordWriter(os.path.join(folder, "train-00000-of-00001.tfrecord")) as writer:
        for _ in range(n):
            jpeg = tf.io.encode_jpeg(rng.integers(0, 256, (side, side, 3), np.uint8), quality=95)
            feature = {"image/encoded": tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[jpeg.numpy()]))}  # fmt: skip
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


@pytest.mark.slow
def test_checkpoints_hold_no_input_buffers_and_service_trains(tmp_path):
    """Two 2-step runs: 32 small records with a 2-record window on this host, and 32
    records 50x bigger with a 32-record window through an in-process tf.data service
    (a dispatcher and two workers on 127.0.0.1). Same checkpoint size, a few KB more
    than the weights and optimizer slots."""
    from care_testing import start_data_service

    from care_tf.train.loop import run

    small = _write_records(str(tmp_path / "small"), 32, 16, 0)
    big = _write_records(str(tmp_path / "big"), 32, 160, 1)
    assert big > 20 * small
    address, dispatcher, workers = start_data_service(2)
    sizes = {}
    for name, window, service in (("small", 2, None), ("big", 32, address)):
        cfg = from_dict({
            "model": TINY_MODEL,
            "data": {"source": f"tfrecord:{tmp_path / name}", "num_examples": 32,
                     "shuffle_buffer": window, "service": service},
            "schedule": {"steps": 2, "warmup_steps": 1},
            "train": {"global_batch_size": 4, "log_every_steps": 1},
            "checkpoint": {"every_steps": 1, "keep": 1},
        })  # fmt: skip
        model_dir = str(tmp_path / f"run_{name}")
        result = run(cfg, tf.distribute.OneDeviceStrategy("/cpu:0"), model_dir, progress=False)
        assert result.step == 2 and np.isfinite(result.logs["loss"])
        ckpt = os.path.join(model_dir, "checkpoints")
        sizes[name] = sum(
            os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt) if "ckpt-2" in f
        )
    assert sizes["small"] == sizes["big"]
    del workers, dispatcher
