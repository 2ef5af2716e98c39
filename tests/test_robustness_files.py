"""Nothing lost: atomic artefacts (a failure mid-write keeps the old file), directory locks
(a second writer fails, a dead holder's lock is taken over), TFRecord re-runs, JPEGs with
trailing bytes."""

import io
import json
import os
import resource
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from care_testing import hold_lock
from PIL import Image

from care_tf import atomic
from care_tf.data import load_source
from care_tf.data.decode import jpeg_complete
from care_tf.data.make_tfrecords import main as make_tfrecords
from care_tf.locking import DirLock, LockError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------- atomic writes
class FailingSave(keras.layers.Layer):
    """A layer whose weights fail to serialise halfway through the .keras archive."""

    def save_own_variables(self, store):
        raise OSError(28, "No space left on device")


def _dense(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])


def test_failed_save_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "model.keras")
    good = _dense(0)
    with atomic.replacing(path) as tmp:
        good.save(tmp)
    bad = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), FailingSave()])
    with pytest.raises(OSError, match="No space"), atomic.replacing(path) as tmp:
        bad.save(tmp)
    assert os.listdir(tmp_path) == ["model.keras"]  # no temporary file left
    reloaded = keras.saving.load_model(path)
    for a, b in zip(good.weights, reloaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_disk_full_mid_write_keeps_the_old_file(tmp_path):
    """A real write error halfway (RLIMIT_FSIZE: writes past 20 kB fail with EFBIG, as
    on a full disk) leaves the previous model intact."""
    path = str(tmp_path / "model.keras")
    keras.utils.set_random_seed(0)
    big = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256)])  # ~66 kB
    with atomic.replacing(path) as tmp:
        big.save(tmp)
    before = open(path, "rb").read()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    try:
        with pytest.raises(OSError), atomic.replacing(path) as tmp:
            _dense(1).save(tmp)  # small, fits
            big.save(tmp)  # does not
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["model.keras"]
    keras.saving.load_model(path)


def test_publish_dir_replaces_only_when_complete(tmp_path):
    final, new = tmp_path / "1", tmp_path / ".tmp-1"
    final.mkdir()
    (final / "saved_model.pb").write_text("old")
    new.mkdir()
    (new / "saved_model.pb").write_text("new")
    atomic.publish_dir(str(new), str(final))
    assert (final / "saved_model.pb").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["1"]


# ------------------------------------------------------------------------ locking
def test_lock_refuses_a_second_holder_and_frees_on_death(tmp_path, capsys):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(LockError) as error:
            DirLock(str(tmp_path), "training run directory").acquire()
        assert f"pid {holder.pid}" in str(error.value) and "in use" in str(error.value)
    finally:
        holder.kill()
        holder.wait()
    with DirLock(str(tmp_path), "training run directory") as lock:  # stale: taken over
        assert lock.stale["pid"] == holder.pid
        assert "stale lock" in capsys.readouterr().err
        with pytest.raises(LockError):
            DirLock(str(tmp_path)).acquire()  # another open file description
    assert os.listdir(tmp_path) == []  # released: the lock file is gone


def test_export_into_a_locked_out_fails_with_one_line(tmp_path, capsys):
    from care_tf.export import __main__ as export_cli

    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        code = export_cli.main(["--model_dir", str(tmp_path), "--out", str(out)])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: Export directory {out} is in use by pid {holder.pid}")


# ------------------------------------------------------------------ JPEG endings
def _jpeg(seed=0, size=(40, 48)):
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _with_thumbnail(main: bytes, thumb: bytes) -> bytes:
    """`main` with an APP1 segment holding a complete JPEG (as EXIF thumbnails are)."""
    payload = b"Exif\x00\x00" + thumb
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return main[:2] + segment + main[2:]


def test_jpeg_endings():
    good = _jpeg()
    trailer = bytes(np.random.default_rng(1).integers(0, 256, 5000, np.uint8))
    trailer += b"\xff\xda\x00\x10garbage"  # even marker-like bytes after the end
    thumb = _with_thumbnail(good, _jpeg(2, (8, 8)))
    cases = {
        "complete": (good, True),
        "trailing bytes": (good + trailer, True),
        "truncated": (good[: len(good) // 2], False),
        "thumbnail": (thumb, True),
        "thumbnail, main image truncated": (thumb[: len(thumb) - 300], False),
        "not a jpeg": (b"\x89PNG\r\n\x1a\nxx", True),
    }
    for name, (data, want) in cases.items():
        assert bool(jpeg_complete(tf.constant(data))) is want, name
    # What the decoder gives for the trailing-bytes file is the image itself.
    a = tf.io.decode_jpeg(good).numpy()
    np.testing.assert_array_equal(tf.io.decode_jpeg(good + trailer).numpy(), a)


# ---------------------------------------------------------------- make_tfrecords
@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "src"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            (root / cls / f"{i}.jpg").write_bytes(_jpeg(i + (10 if cls == "b" else 0)))
    # A valid JPEG with 3 kB after its end-of-image marker (phone cameras write those).
    (root / "a" / "trailer.jpg").write_bytes(_jpeg(99) + b"\x00\x11" * 1500)
    return root


def _records(out, split="train"):
    files = sorted(f for f in os.listdir(out) if f.startswith(f"{split}-"))
    count = sum(1 for _ in tf.data.TFRecordDataset([os.path.join(out, f) for f in files]))
    with open(os.path.join(out, "dataset_info.json")) as f:
        info = json.load(f)["splits"][split]
    return files, count, info


def test_tfrecords_rerun_never_loses_data(folder, tmp_path, capsys):
    out = tmp_path / "records"
    assert make_tfrecords([str(folder), str(out), "--num_shards", "3"]) == 0
    files, count, info = _records(out)
    assert len(files) == 3 and count == 11 and info["num_examples"] == 11
    snapshot = {f: (out / f).read_bytes() for f in os.listdir(out)}

    # Re-run without --overwrite: refused, nothing touched.
    capsys.readouterr()
    assert make_tfrecords([str(folder), str(out), "--num_shards", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds split 'train'" in err and "--overwrite" in err
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == snapshot

    # A failing re-run (a corrupt file, no --skip_corrupt) with --overwrite: nothing touched.
    (folder / "b" / "bad.jpg").write_bytes(_jpeg()[:300])
    assert make_tfrecords([str(folder), str(out), "--overwrite", "--num_shards", "2"]) == 2
    assert "bad.jpg" in capsys.readouterr().err
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == snapshot

    # --overwrite with another shard count: stale shards removed, info matches.
    args = [str(folder), str(out), "--overwrite", "--num_shards", "2", "--skip_corrupt"]
    assert make_tfrecords(args) == 0
    files, count, info = _records(out)
    assert len(files) == 2 and count == 11 == info["num_examples"] and info["num_skipped"] == 1
    assert sorted(os.listdir(out)) == sorted([*files, "dataset_info.json"])
    source = load_source(f"tfrecord:{out}")
    assert source.num_examples == 11 and len(list(source.as_dataset())) == 11


def test_tfrecords_with_nothing_readable_is_an_error(tmp_path, capsys):
    src = tmp_path / "bad"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert make_tfrecords([str(src), str(out), "--skip_corrupt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: No image of SRC_FOLDER") and "nothing was written" in err
    assert os.listdir(out) == []


def test_training_pipeline_accepts_trailing_bytes(folder):
    source = load_source(f"folder:{folder}")
    images = [e["image"] for e in source.as_dataset()]
    assert len(images) == 11 and all(i.shape == (40, 48, 3) for i in images)
