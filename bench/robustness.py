"""Hostile and clumsy use of every entry point: counts of each outcome, as one JSON line.

    python bench/robustness.py --quick    # the cheap cases, under a minute
    python bench/robustness.py            # every case (trainings included; several minutes)
    python bench/robustness.py --list     # the cases, without running them

Generates a bad-input corpus in a temporary folder (bad arguments, missing, garbage and
corrupt files and folders for train, evaluate, export, convert and make_tfrecords;
oversized, elongated, non-finite, out-of-range and wrongly shaped serving requests, also
through a saved-and-reloaded SavedModel and a real TFLite file; JPEG/PNG oddities;
TFRecord re-runs; locked directories; NaN stops and damaged checkpoints), runs each entry
point in a subprocess and classifies what happened:

- clear_error: non-zero exit, the last line of stderr is one `error:` line, no traceback;
- ok: a valid but unusual input accepted, with the right result;
- traceback: a Python traceback reached the user;
- unclear: non-zero exit without an `error:` line, or with the runner's catch-all
  `error: unexpected ...` (an error no check anticipated), or a serving error that does
  not name the limit;
- silent: bad input accepted (exit 0), or a valid one giving a wrong result;
- crash: the process died by a signal;
- data_lost: a file that existed before (shards, exports, evaluations, a good
  checkpoint) was changed or removed by a failing run;
- refused: a valid input refused;
- slow_help: `--help` loaded TensorFlow (seconds instead of a fraction of one).

The goal is 0 of everything but clear_error and ok. Cases marked `needs` depend on
fixes of issue 14 made outside this script's own branch (checkpoint and config work).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
OUTCOMES = (
    "clear_error",
    "ok",
    "traceback",
    "unclear",
    "silent",
    "crash",
    "data_lost",
    "refused",
    "slow_help",
)
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")
RUN_MARK = "run"  # folder of the tiny run (made only when a selected case uses it)
TRAIN = ["-m", "care_tf.train"]
EVALUATE = ["-m", "care_tf.evaluate"]
EXPORT = ["-m", "care_tf.export"]
TFRECORDS = ["-m", "care_tf.data.make_tfrecords"]
# A few training steps of the quickstart model (fashion_mnist) for the training cases.
SMALL = ["--set", "data.max_examples=256", "--set", "checkpoint.every_steps=1", "--no_progress"]


@dataclasses.dataclass
class Case:
    """One entry-point run on bad (or odd but valid) input.

    Attributes:
        name: str. What is tried.
        argv: list. Arguments after `python`.
        expect: str. "error" (must fail clearly) or "ok" (must succeed).
        check: callable(proc) -> outcome or None. Extra check after the run (data kept,
            right result); None means fine.
        setup: callable() run just before (files to damage, a lock holder to start...).
        quick: bool. Part of --quick.
        needs: str. The fix this case relies on, when made outside this branch.
        group: str. Cases of one group run in order, one after another.
    """

    name: str
    argv: list
    expect: str = "error"
    check: Callable | None = None
    setup: Callable | None = None
    quick: bool = False
    needs: str = ""
    group: str = ""
    timeout: int = 900


# ------------------------------------------------------------------ classification
def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def classify(case: Case, returncode: int, stderr: str, proc=None) -> str:
    """The outcome of one run (see the module docstring)."""
    if returncode < 0:
        return "crash"
    if "Traceback (most recent call last)" in stderr:
        return "traceback"
    last = _last_line(stderr)
    if case.expect == "error":
        if returncode == 0:
            return "silent"
        # argparse's own errors read `PROG: error: ...` after the usage line.
        if not (last.startswith("error:") or ": error: " in last):
            return "unclear"
        if last.startswith("error: unexpected "):  # the runner's catch-all: not a user error
            return "unclear"
    elif returncode != 0:
        return "refused"
    if case.check is not None:
        problem = case.check(proc)
        if problem:
            return problem
    return "clear_error" if case.expect == "error" else "ok"


def run_case(case: Case) -> dict:
    holder = case.setup() if case.setup else None
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.time()
    try:
        proc = subprocess.run(
            [PY, *case.argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=case.timeout,
            cwd=ROOT,
        )
        outcome = classify(case, proc.returncode, proc.stderr, proc)
        tail = _last_line(proc.stderr)[:300]
    except subprocess.TimeoutExpired:
        proc, outcome, tail = None, "crash", f"timeout after {case.timeout}s"
    finally:
        if isinstance(holder, subprocess.Popen):
            holder.kill()
            holder.wait()
    return {
        "name": case.name,
        "outcome": outcome,
        "returncode": proc.returncode if proc else None,
        "needs": case.needs,
        "seconds": round(time.time() - start, 1),
        "last_line": tail,
    }


# ------------------------------------------------------------------ corpus helpers
def _jpeg(seed: int = 0, size=(40, 48)) -> bytes:
    import numpy as np
    from PIL import Image

    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + crc + b"\0" * 64


def _write(path: str, data: bytes | str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return path


def _snapshot(folder: str) -> dict:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name == ".care.lock":
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def _unchanged(folder: str, before: dict) -> Callable:
    return lambda proc: None if _snapshot(folder) == before else "data_lost"


def _hold_lock(directory: str) -> Callable:
    def start():
        code = (
            "import time\nfrom care_tf.locking import DirLock\n"
            f"DirLock({directory!r}, 'bench').acquire()\nprint('locked', flush=True)\n"
            "time.sleep(600)"
        )
        env = {**os.environ, "PYTHONPATH": ROOT}
        proc = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, env=env)
        proc.stdout.readline()
        return proc

    return start


# ------------------------------------------------------------------------ cases
def build_cases(tmp: str) -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    d = lambda *parts: os.path.join(tmp, *parts)  # noqa: E731

    # Files and folders of every kind of wrong.
    missing = d("missing")
    garbage = _write(d("files", "garbage.bin"), os.urandom(2048))
    empty = _write(d("files", "empty.yaml"), "")
    binary_yaml = _write(d("files", "binary.yaml"), b"\x00\xff\xfe" * 100)
    a_file = _write(d("files", "notes.txt"), "a file, not a folder")
    corrupt_run = d("corrupt_run")
    _write(d("corrupt_run", "backbone.keras"), b"PK\x03\x04" + os.urandom(500))
    garbage_keras = _write(d("files", "model.keras"), os.urandom(1000))
    empty_dir = d("empty_dir")
    os.makedirs(empty_dir)

    # ---------------------------------------------------------------- --help
    for module in ("care_tf.train", "care_tf.evaluate", "care_tf.export"):
        add(Case(f"{module} --help", ["-X", "importtime", "-m", module, "--help"], "ok",
                 check=_no_tensorflow, quick=True))  # fmt: skip
    add(Case("make_tfrecords --help", ["-X", "importtime", *TFRECORDS, "--help"], "ok",
             check=_no_tensorflow, quick=True))  # fmt: skip

    # ---------------------------------------------------------------- train
    def t():  # a fresh run directory per case: a case must not meet another's lock
        t.n = getattr(t, "n", 0) + 1
        return [*TRAIN, "--model_dir", d(f"train_run{t.n}")]

    def q():
        return [*t(), "--config", QUICKSTART]

    for name, argv in [
        ("train: no arguments", TRAIN),
        ("train: missing --config file", [*t(), "--config", missing]),
        ("train: --config is a folder", [*t(), "--config", empty_dir]),
        ("train: --config is empty", [*t(), "--config", empty]),
        ("train: --config is binary", [*t(), "--config", binary_yaml]),
        ("train: --config is random bytes", [*t(), "--config", garbage]),
        ("train: unknown --set key", [*q(), "--set", "model.backbon=resnet18"]),
        ("train: --set without =", [*q(), "--set", "optimizer.base_lr"]),
        ("train: --set wrong type", [*q(), "--set", "train.global_batch_size=big"]),
        ("train: --max_steps 0", [*q(), "--max_steps", "0"]),
        ("train: --max_steps -3", [*q(), "--max_steps", "-3"]),
        ("train: --strategy bogus", [*q(), "--strategy", "bogus"]),
        ("train: --model_dir is a file", [*TRAIN, "--config", QUICKSTART, "--model_dir", a_file]),
        ("train: --resume without config", [*TRAIN, "--model_dir", d("nothing"), "--resume"]),
    ]:
        add(Case(name, argv, quick=True))
    nonfinite = "config: reject non-finite numbers (other helper)"
    for value in (".inf", "-.inf", ".nan"):
        add(Case(f"train: optimizer.base_lr={value}", [*q(), "--set",
                 f"optimizer.base_lr={value}", "--max_steps", "1"], quick=False,
                 needs=nonfinite, timeout=120))  # fmt: skip
    add(Case("train: model.lambda_att=.inf", [*q(), "--set", "model.lambda_att=.inf",
             "--max_steps", "1"], needs=nonfinite, timeout=120))  # fmt: skip
    add(Case("train: data.source folder that does not exist", [*q(), "--set",
             f"data.source=folder:{missing}", "--set", "data.max_examples=null"]))  # fmt: skip
    locked = d("locked_run")
    add(Case("train: model_dir locked by another training", [*TRAIN, "--config", QUICKSTART,
             "--model_dir", locked, "--strategy", "one_device", "--max_steps", "1"],
             setup=_hold_lock(locked)))  # fmt: skip

    # NaN stop: the "last good" checkpoint must hold only finite tensors.
    nan_dir = d("nan_run")
    add(Case("train: NaN stop keeps a finite last checkpoint",
             [*TRAIN, "--config", QUICKSTART, "--model_dir", nan_dir, "--max_steps", "8",
              "--set", "optimizer.base_lr=1e8", *SMALL],
             check=lambda proc: _finite_checkpoints(nan_dir),
             needs="NaN stop never saves non-finite state (other helper)"))  # fmt: skip

    # Damaged checkpoints: resume from the newest one that reads back whole (and say so),
    # never silently from step 0.
    ck = d("ckpt_run")
    base = [*TRAIN, "--config", QUICKSTART, "--model_dir", ck, *SMALL]
    add(Case("train: a 3-step run to damage", [*base, "--max_steps", "3"], "ok", group="ckpt"))
    add(Case("train: --resume with a garbage checkpoint index",
             [*base, "--resume", "--max_steps", "4"], "ok",
             setup=lambda: _write(os.path.join(ck, "checkpoints", "checkpoint"), os.urandom(64)),
             check=_resumed_not_restarted, group="ckpt",
             needs="resume from the newest readable checkpoint (other helper)"))  # fmt: skip
    add(Case("train: --resume with the newest checkpoint's data corrupt",
             [*base, "--resume", "--max_steps", "5"], "ok", setup=lambda: _corrupt_newest(ck),
             check=_resumed_not_restarted, group="ckpt",
             needs="resume from the newest readable checkpoint (other helper)"))  # fmt: skip

    # ---------------------------------------------------------------- evaluate
    run = d(RUN_MARK)  # a real tiny run, made by the `run` worker (full mode)
    e = [*EVALUATE, "knn", "--model_dir", run, "--dataset", "fashion_mnist"]
    for name, argv in [
        ("evaluate: no command", EVALUATE),
        ("evaluate: --limit 0", [*e, "--limit", "0"]),
        ("evaluate: --limit -5", [*e, "--limit", "-5"]),
        ("evaluate: --k 0", [*e, "--k", "0"]),
        ("evaluate: --batch_size 0", [*e, "--batch_size", "0"]),
        ("evaluate: --temperature -1", [*e, "--temperature", "-1"]),
        ("evaluate: --limit abc", [*e, "--limit", "abc"]),
    ]:
        add(Case(name, argv, quick=True))
    ev = [*EVALUATE, "knn", "--dataset", "fashion_mnist", "--model_dir"]
    for name, argv in [
        ("evaluate: --model_dir missing", [*ev, missing]),
        ("evaluate: --model_dir empty folder", [*ev, empty_dir]),
        ("evaluate: corrupt backbone.keras", [*ev, corrupt_run]),
        ("evaluate: random bytes as .keras", [*ev, garbage_keras]),
        ("evaluate: a text file as model", [*ev, a_file]),
        ("evaluate: unknown dataset", [*EVALUATE, "knn", "--model_dir", run, "--dataset", "x:y"]),
        ("evaluate: dataset folder missing",
         [*EVALUATE, "knn", "--model_dir", run, "--dataset", f"folder:{missing}"]),
    ]:  # fmt: skip
        add(Case(name, argv, quick="--model_dir" in name))
    one_class = d("one_class")
    for split in ("train", "test"):
        for i in range(4):
            _write(os.path.join(one_class, split, "only", f"{i}.jpg"), _jpeg(i, (16, 16)))
    one = [*EVALUATE, "knn", "--model_dir", run, "--dataset", f"folder:{one_class}"]
    add(Case("evaluate: kNN on one class", one))
    add(Case("evaluate: --limit keeps the full knn.json",
             [*e, "--limit", "64", "--k", "5", "--quiet"], "ok",
             setup=lambda: _write(os.path.join(run, "eval", "knn.json"), '{"top1": 0.5}'),
             check=lambda proc: None if open(os.path.join(run, "eval", "knn.json")).read()
             == '{"top1": 0.5}' else "data_lost"))  # fmt: skip
    full = [*EVALUATE, "knn", "--model_dir", os.path.join(run, "model.keras")]
    full += ["--dataset", "fashion_mnist", "--limit", "64", "--k", "5", "--quiet"]
    add(Case("evaluate: model.keras instead of backbone.keras", full, "ok"))

    # ---------------------------------------------------------------- export
    x = [*EXPORT, "--model_dir", run, "--out", d("exports")]
    for name, argv in [
        ("export: no arguments", EXPORT),
        ("export: --format onnx", [*x, "--format", "onnx"]),
        ("export: --version x", [*x, "--version", "x"]),
    ]:
        add(Case(name, argv, quick=True))
    for name, argv in [
        ("export: --version 0", [*x, "--version", "0"]),
        ("export: --name with a slash", [*x, "--name", "a/b"]),
        ("export: int8 without calibration", [*x, "--quantize", "int8"]),
        ("export: --max_aspect_ratio 0.5", [*x, "--max_aspect_ratio", "0.5"]),
        ("export: --model_dir missing", [*EXPORT, "--model_dir", missing, "--out", d("o1")]),
        ("export: corrupt backbone.keras", [*EXPORT, "--model_dir", corrupt_run, "--out", d("o2")]),
        ("export: --out is a file", [*EXPORT, "--model_dir", run, "--out", a_file]),
    ]:
        add(Case(name, argv))
    published = d("published")
    _write(os.path.join(published, "care", "1", "saved_model.pb"), b"the published version")
    keep = _snapshot(published)
    add(Case("export: --out locked by another export (published version kept)",
             [*EXPORT, "--model_dir", run, "--out", published, "--overwrite"],
             setup=_hold_lock(published), check=_unchanged(published, keep)))  # fmt: skip

    # ---------------------------------------------------------------- make_tfrecords
    src = d("images")
    for cls in ("a", "b"):
        for i in range(6):
            _write(os.path.join(src, cls, f"{i}.jpg"), _jpeg(i + (50 if cls == "b" else 0)))
    _write(os.path.join(src, "a", "trailer.jpg"), _jpeg(99) + os.urandom(3000))
    bad_src = d("bad_images")
    _write(os.path.join(bad_src, "a", "x.jpg"), b"not a jpeg")
    _write(os.path.join(bad_src, "a", "y.jpg"), _jpeg(1)[:300])
    records = d("records")
    r = [*TFRECORDS, src, records]
    for name, argv in [
        ("make_tfrecords: no arguments", TFRECORDS),
        ("make_tfrecords: --num_shards 0", [*r, "--num_shards", "0"]),
        ("make_tfrecords: --shard_size -1", [*r, "--shard_size", "-1"]),
        ("make_tfrecords: OUT_DIR is a file", [*TFRECORDS, src, a_file]),
    ]:
        add(Case(name, argv, quick=True))
    add(Case("make_tfrecords: SRC missing", [*TFRECORDS, missing, d("r2")], quick=True))
    add(Case("make_tfrecords: SRC has no images", [*TFRECORDS, empty_dir, d("r3")]))
    add(
        Case(
            "make_tfrecords: nothing readable with --skip_corrupt",
            [*TFRECORDS, bad_src, d("r4"), "--skip_corrupt"],
            quick=True,
        )
    )
    add(Case("make_tfrecords: JPEG with trailing bytes is converted", [*r, "--num_shards", "3"],
             "ok", check=lambda proc: _records_match(records, 13), quick=True,
             group="tfr"))  # fmt: skip
    state: dict = {}

    def keep_records():
        state["before"] = _snapshot(records)

    add(Case("make_tfrecords: re-run without --overwrite", [*r, "--num_shards", "2"],
             setup=keep_records, check=lambda p: _unchanged(records, state["before"])(p),
             quick=True, group="tfr"))  # fmt: skip
    bad_mix = d("mixed_images")

    def mixed():
        shutil.copytree(src, bad_mix, dirs_exist_ok=True)
        _write(os.path.join(bad_mix, "b", "broken.jpg"), _jpeg(3)[:400])
        keep_records()

    add(Case("make_tfrecords: failing --overwrite re-run", [*TFRECORDS, bad_mix, records,
             "--overwrite", "--num_shards", "2"], setup=mixed,
             check=lambda p: _unchanged(records, state["before"])(p), quick=True,
             group="tfr"))  # fmt: skip
    add(Case("make_tfrecords: --overwrite with fewer shards", [*r, "--overwrite",
             "--num_shards", "2"], "ok", check=lambda proc: _records_match(records, 13, 2),
             group="tfr"))  # fmt: skip
    _write(os.path.join(d("bad_info"), "dataset_info.json"), "{not json")
    add(Case("make_tfrecords: garbage dataset_info.json", [*TFRECORDS, src, d("bad_info")]))

    cases += issue21_export_cases(d, run)

    # ---------------------------------------------------------------- in-process workers
    add(Case("serving + TFLite helper + decoders", [__file__, "--worker", "serving", tmp],
             "ok", check=_worker_results, quick=True))  # fmt: skip
    cases += data_train_cases(tmp)
    return cases


# ------------------------------------------------- issue 21: training input and run files
I21_TINY = """
name: tiny
model: {backbone: resnet18, image_size: 32, base_channels: 8, hidden_dim: 32,
        projection_dim: 16, transformer_kwargs: {num_blocks: 1}}
data: {source: fashion_mnist, max_examples: 128, shuffle_buffer: 64}
schedule: {epochs: 2, warmup_epochs: 0.5}
train: {global_batch_size: 16, log_every_steps: 1}
checkpoint: {every_steps: 1, keep: 3}
"""
FOREIGN_RECORDS = (  # a shard of tf.train.Example records without image/encoded
    "import sys, tensorflow as tf\n"
    "with tf.io.TFRecordWriter(sys.argv[1]) as w:\n"
    "    for i in range(8):\n"
    "        f = {'foo': tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))}\n"
    "        w.write(tf.train.Example(features=tf.train.Features(feature=f))"
    ".SerializeToString())\n"
)


def _with_env(env: dict, module: str, args: list) -> list:
    """argv running `python -m module args` with extra environment variables."""
    code = (
        f"import os, runpy, sys\nos.environ.update({env!r})\n"
        f"sys.argv = [{module!r}, *{args!r}]\nrunpy.run_module({module!r}, run_name='__main__')"
    )
    return ["-c", code]


def _read_source(spec: str, skip_corrupt: bool, names: str) -> list:
    """argv reading a source through the Python API: prints one `error:` line and exits 2
    when the error names `names`, prints the count when it reads through."""
    code = (
        "import sys\nfrom care_tf.data import load_source\n"
        f"try:\n    n = sum(1 for _ in load_source({spec!r}, skip_corrupt={skip_corrupt})"
        ".as_dataset())\n"
        "except Exception as e:\n"
        "    text = getattr(e, 'message', str(e))\n"
        f"    if {names!r} not in text:\n"
        "        raise\n"
        "    print('error: ' + text[text.find('TFRecord'):].splitlines()[0], file=sys.stderr)\n"
        "    sys.exit(2)\n"
        "print(n)"
    )
    return ["-c", code]


def _copy_run(source: str, target: str, edit: Callable | None = None) -> Callable:
    def setup():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(".care.lock"))
        if edit:
            edit(target)

    return setup


def _damage_shards(source: str, target: str, how: str) -> Callable:
    def setup():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        shard = os.path.join(target, "train-00001-of-00002.tfrecord")
        data = open(shard, "rb").read()
        if how == "truncated":
            _write(shard, data[:-200])
        elif how == "foreign":
            subprocess.run([PY, "-c", FOREIGN_RECORDS, shard], check=True,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})  # fmt: skip
        else:  # bytes inside record 3's payload: its checksum fails
            at = 0
            for _ in range(3):
                at += 16 + struct.unpack("<Q", data[at : at + 8])[0]
            _write(shard, data[: at + 40] + bytes(16) + data[at + 56 :])

    return setup


def _last_line_has(*words: str) -> Callable:
    return lambda proc: None if all(w in _last_line(proc.stderr) for w in words) else "unclear"


def _printed(value: str) -> Callable:
    return lambda proc: None if proc.stdout.strip().splitlines()[-1:] == [value] else "silent"


def _finished_resume(run: str) -> Callable:
    def check(proc):
        state = json.load(open(os.path.join(run, "train_state.json")))
        said = "Nothing to train" in proc.stderr and " nan" not in proc.stderr
        return None if said and isinstance(state.get("loss"), float) else "silent"

    return check


def _set_aside_together(run: str) -> Callable:
    def check(proc):
        folder = os.path.join(run, "checkpoints", "unreadable", "ckpt-2.2")
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        together = len(names) == 2 and names[1] == "ckpt-2.index"
        return None if together and "resuming at step 1" in proc.stderr else "silent"

    return check


def data_train_cases(tmp: str) -> list[Case]:
    """Issue 21, training input and run files: an unreachable tf.data service, damaged
    TFRecord shards (CLI and Python API), an unprepared TFDS dataset, damaged IDX files,
    negative settings, an edited or damaged run config, a finished run resumed, a damaged
    checkpoint set aside twice, a NaN stop on exploded weights."""
    cases: list[Case] = []
    add = cases.append
    d = lambda *parts: os.path.join(tmp, "i21", *parts)  # noqa: E731
    tiny = _write(d("tiny.yaml"), I21_TINY)

    def t(name, *extra):
        return [*TRAIN, "--config", tiny, "--model_dir", d("runs", name), "--no_progress",
                "--max_steps", "2", *extra]  # fmt: skip

    add(Case("train: data.service nobody listens at", t("service", "--set",
             "data.service=grpc://127.0.0.1:1", "--set", "data.service_timeout=3"),
             check=_last_line_has("grpc://127.0.0.1:1"), timeout=120))  # fmt: skip
    for name, override in [
        ("data.max_examples=-960", "data.max_examples"),
        ("data.num_examples=-5", "data.num_examples"),
        ("schedule.warmup_start_lr=-1.0", "schedule.warmup_start_lr"),
        ("schedule.end_lr=-0.5", "schedule.end_lr"),
        ("optimizer.epsilon=0", "optimizer.epsilon"),
    ]:
        add(Case(f"train: {name}", t(name.split("=")[0], "--set", name),
                 check=_last_line_has(override), quick=True))  # fmt: skip

    # Sources: an unprepared TFDS dataset, damaged Fashion-MNIST files.
    empty_tfds = d("tfds_empty")
    os.makedirs(empty_tfds, exist_ok=True)
    for name, extra in [("", []), (" with data.num_examples", ["--set", "data.num_examples=128"])]:
        argv = _with_env({"TFDS_DATA_DIR": empty_tfds}, "care_tf.train", t(
            f"tfds{len(extra)}", "--set", "data.source=tfds:mnist", "--set",
            "data.max_examples=null", *extra)[2:])  # fmt: skip
        add(Case(f"train: tfds:mnist not prepared{name}", argv,
                 check=_last_line_has("not prepared", "tfds build mnist")))  # fmt: skip
    fmnist = "/usr/share/datasets/fashion-mnist"
    for damage in ("truncated", "plain file"):
        folder = d(f"idx_{damage.split()[0]}")
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(fmnist) if os.path.isdir(fmnist) else []:
            if name.endswith(".gz"):
                shutil.copy(os.path.join(fmnist, name), os.path.join(folder, name))
        bad = os.path.join(folder, "train-images-idx3-ubyte.gz")
        data = open(bad, "rb").read() if os.path.isfile(bad) else b""
        _write(bad, data[:50000] if damage == "truncated" else "not gzip\n")
        argv = _with_env({"CARE_DATA_DIR": folder}, "care_tf.train", t(f"idx{damage[0]}")[2:])
        add(Case(f"train: CARE_DATA_DIR .gz {damage}", argv, check=_last_line_has(bad)))

    # TFRecord shards: truncated, of other records, failing a checksum.
    images = d("images")
    for cls in ("a", "b"):
        for i in range(16):
            _write(os.path.join(images, cls, f"{i}.jpg"), _jpeg(i + (50 if cls == "b" else 0)))
    shards = d("shards")
    add(Case("i21 make_tfrecords: shards to damage", [*TFRECORDS, images, shards,
             "--num_shards", "2"], "ok", group="i21tfr"))  # fmt: skip
    for how in ("truncated", "foreign", "checksum"):
        damaged = d(f"shards_{how}")
        spec = f"tfrecord:{damaged}"
        no_limit = ["--set", f"data.source={spec}", "--set", "data.max_examples=null"]
        bad = os.path.join(damaged, "train-00001-of-00002.tfrecord")
        add(Case(f"train: TFRecord shard {how}", t(f"tfr_{how}", *no_limit),
                 setup=_damage_shards(shards, damaged, how), check=_last_line_has(bad),
                 group="i21tfr"))  # fmt: skip
        skip = t(f"tfr_{how}_skip", *no_limit, "--set", "data.skip_corrupt=true")
        if how != "foreign":  # (with one shard of two left out, 16 images remain: ok too)
            add(Case(f"train: TFRecord shard {how} with skip_corrupt", skip, "ok",
                     setup=_damage_shards(shards, damaged, how), group="i21tfr"))  # fmt: skip
        damage = _damage_shards(shards, damaged, how)  # (again: a case may run alone)
        add(Case(f"load_source: TFRecord shard {how}", _read_source(spec, False, bad),
                 setup=damage, group="i21tfr"))  # fmt: skip
        kept = {"truncated": 31, "foreign": 16, "checksum": 16 + 3}[how]  # of 2 x 16 records
        add(Case(f"load_source: TFRecord shard {how} with skip_corrupt",
                 _read_source(spec, True, bad), "ok", check=_printed(str(kept)),
                 setup=damage, group="i21tfr"))  # fmt: skip

    # Run files: one 2-step run, copied for each case.
    base = d("runs", "base")
    add(Case("i21 train: a 2-step run to resume", [*TRAIN, "--config", tiny, "--model_dir",
             base, "--no_progress", "--max_steps", "2"], "ok", group="i21run"))  # fmt: skip

    def resume(name, *extra):
        return [*TRAIN, "--model_dir", d("runs", name), "--resume", "--no_progress", *extra]

    def wider(run):
        path = os.path.join(run, "config.yaml")
        _write(path, open(path).read().replace("base_channels: 8", "base_channels: 16"))

    add(Case("train: --resume with config.yaml edited to another model",
             resume("wider", "--max_steps", "3"), setup=_copy_run(base, d("runs", "wider"), wider),
             check=_last_line_has("do not fit the model of the config"),
             group="i21run"))  # fmt: skip
    not_yaml = lambda run: _write(os.path.join(run, "config.yaml"), "model: [x\n  y: {")  # noqa: E731
    add(Case("train: --resume with a config.yaml that is not YAML",
             resume("notyaml", "--max_steps", "3"),
             setup=_copy_run(base, d("runs", "notyaml"), not_yaml),
             check=_last_line_has("config.yaml is not valid YAML"), group="i21run"))  # fmt: skip
    add(Case("train: --resume --config with a config.yaml that is not YAML",
             resume("notyaml2", "--config", tiny, "--max_steps", "3"),
             setup=_copy_run(base, d("runs", "notyaml2"), not_yaml),
             check=_last_line_has("config.yaml is not valid YAML"), group="i21run"))  # fmt: skip
    no_state = lambda run: os.remove(os.path.join(run, "train_state.json"))  # noqa: E731
    add(Case("train: --resume with nothing left to train keeps the last loss",
             resume("finished", "--max_steps", "2"), "ok",
             setup=_copy_run(base, d("runs", "finished"), no_state),
             check=_finished_resume(d("runs", "finished")), group="i21run"))  # fmt: skip

    def damaged_twice(run):
        ckpts = os.path.join(run, "checkpoints")
        _write(os.path.join(ckpts, "unreadable", "ckpt-2", "ckpt-2.index"), b"set aside before")
        _write(os.path.join(ckpts, "ckpt-2.index"), b"not an sstable")

    add(Case("train: a damaged checkpoint set aside twice keeps its files together",
             resume("twice", "--max_steps", "2"), "ok",
             setup=_copy_run(base, d("runs", "twice"), damaged_twice),
             check=_set_aside_together(d("runs", "twice")), group="i21run"))  # fmt: skip

    # A NaN stop whose last checkpoint already holds exploded weights.
    exploded = d("runs", "exploded")
    add(Case("i21 train: lr 1e8 explodes, then stops on NaN", [*TRAIN, "--config", tiny,
             "--model_dir", exploded, "--no_progress", "--max_steps", "8", "--set",
             "optimizer.base_lr=1e8"], group="i21nan"))  # fmt: skip
    add(Case("train: --resume with a lower lr from exploded weights",
             resume("exploded", "--max_steps", "8", "--set", "optimizer.base_lr=1e7"),
             check=_last_line_has("already holds exploded weights", "earlier checkpoint"),
             group="i21nan"))  # fmt: skip
    return cases


# ------------------------------------------------------- issue 21: export, convert
CONVERT = ["-m", "care_tf.convert"]


def issue21_export_cases(d: Callable, run: str) -> list[Case]:
    """Export and convert cases of issue 21 (damaged run files, silent arguments)."""
    cases: list[Case] = []
    add = cases.append
    x = [*EXPORT, "--model_dir", run, "--out", d("exports21")]
    for samples in ("0", "-5"):
        add(Case(f"export: --calibration_samples {samples}", [*x, "--format", "tflite",
                 "--quantize", "int8", "--calibration", "fashion_mnist",
                 "--calibration_samples", samples], quick=True))  # fmt: skip

    def run_copy(name: str, file: str, content: bytes | str) -> Callable:
        def setup():
            shutil.copytree(run, d(name), dirs_exist_ok=True)
            _write(os.path.join(d(name), file), content)

        return setup

    for name, content in [
        ("not YAML", "model: [unclosed\n  backbone: {"),
        ("binary", b"\xff\xfe\x00\x01" * 50),
        ("a YAML list", "- a\n- b\n"),
    ]:
        folder = f"config21_{len(cases)}"
        add(Case(f"export: run config.yaml is {name}", [*EXPORT, "--model_dir", d(folder),
                 "--out", d(f"{folder}_out")], setup=run_copy(folder, "config.yaml", content),
                 check=lambda proc, f=folder: None if f"{f}/config.yaml" in proc.stderr
                 else "unclear"))  # fmt: skip
    state = json.dumps({"step": 3, "total_steps": 1000, "complete": False})
    add(Case("export: run stopped by --max_steps is said on the console",
             [*EXPORT, "--model_dir", d("partial21"), "--out", d("partial21_out"),
              "--format", "saved_model"], "ok",
             setup=run_copy("partial21", "train_state.json", state),
             check=lambda proc: None if "warning: this run stopped at step 3 of 1000"
             in proc.stdout else "silent"))  # fmt: skip
    add(Case("export: --calibration folder that does not exist", [*x, "--format", "tflite",
             "--calibration", f"folder:{d('missing')}"]))  # fmt: skip

    def bad_checkpoint(path: str, key: str, shape: tuple) -> Callable:
        def setup():
            sys.path.insert(0, os.path.join(ROOT, "tests"))
            from torch_checkpoint import authors_keys, write_pretrain_checkpoint

            small = dict(depth=18, base=8, trans_blocks=2, fmap=4, heads=2, hidden=32, proj=16)
            keys = [(k, shape if k == key else s, t) for k, s, t in authors_keys(
                "pretrain", **small)]  # fmt: skip
            write_pretrain_checkpoint(path, keys)

        return setup

    for key, shape in [
        ("module.student_encoder.conv1.weight", (8,)),
        ("module.student_encoder.trans.net.0.net.3.pos_emb.height", (4,)),
        ("module.student_encoder.fc1.0.weight", (32,)),
    ]:
        path = d(f"convert21_{len(cases)}.pth")
        add(Case(f"convert: {key[len('module.'):]} of shape {shape}",
                 [*CONVERT, path, "--out", d(f"convert21_{len(cases)}_out")],
                 setup=bad_checkpoint(path, key, shape), quick=True))  # fmt: skip
    return cases


def _no_tensorflow(proc) -> str | None:
    modules = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()}
    return "slow_help" if "tensorflow" in modules else None


def _records_match(folder: str, count: int, shards: int | None = None) -> str | None:
    code = (
        "import glob, json, os, sys\nimport tensorflow as tf\n"
        f"folder = {folder!r}\n"
        "files = sorted(glob.glob(os.path.join(folder, 'train-*.tfrecord*')))\n"
        "n = sum(1 for _ in tf.data.TFRecordDataset(files))\n"
        "info = json.load(open(os.path.join(folder, 'dataset_info.json')))['splits']['train']\n"
        "print(json.dumps([len(files), n, info['num_examples'], info['num_shards']]))"
    )
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})  # fmt: skip
    files, n, stated, stated_shards = json.loads(proc.stdout.strip().splitlines()[-1])
    ok = n == stated == count and files == stated_shards and (shards is None or files == shards)
    return None if ok else "silent"


def _finite_checkpoints(model_dir: str) -> str | None:
    code = (
        "import glob, json, numpy as np, tensorflow as tf\n"
        f"bad = 0\nfor index in glob.glob({model_dir!r} + '/checkpoints/*.index'):\n"
        "    reader = tf.train.load_checkpoint(index[:-len('.index')])\n"
        "    for name, dtype in reader.get_variable_to_dtype_map().items():\n"
        "        if dtype.is_floating:  # (the data iterator is a variant tensor)\n"
        "            bad += int(not np.all(np.isfinite(reader.get_tensor(name))))\n"
        "print(bad)"
    )
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})  # fmt: skip
    return None if proc.stdout.strip().splitlines()[-1:] == ["0"] else "data_lost"


def _corrupt_newest(model_dir: str) -> None:
    """Overwrites 256 bytes in the middle of the newest checkpoint's data (and removes the
    garbage index the previous case left, so this case tests the data alone)."""
    import glob

    index = os.path.join(model_dir, "checkpoints", "checkpoint")
    if os.path.exists(index):
        os.remove(index)

    data = sorted(glob.glob(os.path.join(model_dir, "checkpoints", "*.data-*")))
    if data:
        newest = max(data, key=os.path.getmtime)
        with open(newest, "r+b") as f:
            f.seek(max(0, os.path.getsize(newest) // 2))
            f.write(os.urandom(256))


def _resumed_not_restarted(proc) -> str | None:
    """A resume must continue from a checkpoint that reads back (and say so), not from 0."""
    text = proc.stdout + proc.stderr
    return None if "resuming at step" in text and "starting step 0" not in text else "silent"


def _worker_results(proc) -> str | None:
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    bad = [r for r in results if r["outcome"] not in ("clear_error", "ok")]
    WORKER_RESULTS.extend(results)
    return bad[0]["outcome"] if bad else None


WORKER_RESULTS: list = []


# ---------------------------------------------------------------- serving worker
def serving_worker(tmp: str) -> None:
    """Serving signatures, the TFLite helper and the image decoders, in this process:
    prints one JSON line per case."""
    import importlib.util

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    sys.path.insert(0, ROOT)
    from care_tf import ResNetBackbone
    from care_tf.data import load_source
    from care_tf.export import preprocess, saved_model
    from care_tf.export.source import ExportSource

    limits = preprocess.SizeLimits(max_pixels=100 * 100, max_aspect_ratio=4)
    backbone = ResNetBackbone(depth=18, base_channels=8, stem="cifar", image_shape=(32, 32, 3))
    module = saved_model.build_module(ExportSource(backbone, {}, 32, 0, "x", limits=limits))

    def encode(array, fmt):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, fmt)
        return buffer.getvalue()

    def report(name, outcome, detail=""):
        print(json.dumps({"name": name, "outcome": outcome, "detail": detail[:200]}), flush=True)

    def refused(name, fn, arg, words):
        try:
            out = fn(arg)
        except tf.errors.InvalidArgumentError as err:
            ok = all(w in err.message for w in words)
            report(name, "clear_error" if ok else "unclear", err.message.splitlines()[0])
            return
        except Exception as err:  # noqa: BLE001
            report(name, "traceback", f"{type(err).__name__}: {err}")
            return
        finite = bool(np.all(np.isfinite(out["embedding"].numpy())))
        report(name, "silent", f"accepted (finite={finite})")

    def accepted(name, fn, arg, shape):
        try:
            out = fn(arg)["embedding"].numpy()
        except Exception as err:  # noqa: BLE001
            report(name, "refused", f"{type(err).__name__}: {err}")
            return
        ok = out.shape == shape and np.all(np.isfinite(out))
        report(name, "ok" if ok else "silent", str(out.shape))

    flat = np.full((60, 80, 3), 128, np.uint8)
    b = module.serve_image_bytes
    big_words = ("too large", "--max_image_pixels")
    for fmt in ("JPEG", "PNG", "GIF", "BMP"):
        accepted(f"serving: {fmt} within limits", b, tf.constant([encode(flat, fmt)]), (1, 64))
        big = np.full((120, 120, 3), 90, np.uint8)
        refused(f"serving: {fmt} over max pixels", b, tf.constant([encode(big, fmt)]), big_words)
        thin = np.full((10, 50, 3), 90, np.uint8)
        refused(f"serving: {fmt} too elongated", b, tf.constant([encode(thin, fmt)]),
                ("too elongated", "--max_aspect_ratio"))  # fmt: skip
    refused("serving: PNG header 20000x20000", b, tf.constant([_png_header(20000, 20000)]),
            big_words)  # fmt: skip
    refused("serving: PNG header 1x200000", b, tf.constant([_png_header(200000, 1)]),
            ("--max_",))  # fmt: skip
    refused("serving: garbage bytes", b, tf.constant([b"hello"]), ("not a JPEG",))
    refused("serving: empty bytes", b, tf.constant([b""]), ("not a JPEG",))
    accepted("serving: JPEG with trailing bytes", b,
             tf.constant([encode(flat, "JPEG") + os.urandom(4000)]), (1, 64))  # fmt: skip
    u, f = module.serve_uint8, module.serve_float
    refused("serving: uint8 1x200000", u, tf.zeros([1, 1, 200000, 3], tf.uint8),
            ("--max_",))  # fmt: skip
    refused("serving: uint8 2x150 (elongated, few pixels)", u, tf.zeros([1, 2, 150, 3],
            tf.uint8), ("too elongated", "--max_aspect_ratio"))  # fmt: skip
    refused("serving: float 101x100 over max pixels", f, tf.zeros([1, 101, 100, 3]), big_words)
    refused("serving: empty image", f, tf.zeros([1, 0, 8, 3]), ("empty",))
    refused("serving: 2 channels", f, tf.zeros([1, 40, 40, 2]), ("1 (grayscale) or 3",))
    for bad in ("nan", "inf", "-inf"):
        images = np.full((1, 40, 40, 3), 100.0, np.float32)
        images[0, 1, 2, 0] = float(bad)
        refused(f"serving: float pixel {bad}", f, tf.constant(images), ("finite",))
    accepted("serving: grayscale uint8", u, tf.zeros([2, 40, 50, 1], tf.uint8), (2, 64))

    spec = importlib.util.spec_from_file_location(
        "tflite_infer", os.path.join(ROOT, "export", "tflite_infer.py")
    )
    infer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer)
    for name, shape in [
        ("rank-3 image", (32, 32, 3)),
        ("64x64 for a 32 px model", (1, 64, 64, 3)),
        ("8x8 for a 32 px model", (1, 8, 8, 3)),
        ("one channel", (1, 32, 32, 1)),
    ]:
        try:
            infer.check_pixels(np.zeros(shape, np.uint8), 32)
            report(f"tflite helper: {name}", "silent")
        except ValueError as err:
            ok = "(B, 32, 32, 3)" in str(err)
            report(f"tflite helper: {name}", "clear_error" if ok else "unclear", str(err))
    wide = os.path.join(tmp, "serving", "wide.png")
    os.makedirs(os.path.dirname(wide), exist_ok=True)
    Image.fromarray(np.zeros((2, 400, 3), np.uint8)).save(wide)
    try:
        infer.eval_crop(wide, 32)
        report("tflite helper: 400x2 image file", "silent")
    except ValueError as err:
        report("tflite helper: 400x2 image file", "clear_error", str(err))

    # Training decoders: a valid JPEG with bytes after its end marker.
    folder = os.path.join(tmp, "serving", "trailer")
    _write(os.path.join(folder, "x.jpg"), _jpeg(5) + os.urandom(5000))
    _write(os.path.join(folder, "y.jpg"), _jpeg(6))
    try:
        images = [e["image"] for e in load_source(f"folder:{folder}").as_dataset()]
        ok = len(images) == 2 and all(i.shape == (40, 48, 3) for i in images)
        report("training decoder: JPEG with trailing bytes", "ok" if ok else "silent")
    except tf.errors.InvalidArgumentError as err:
        report("training decoder: JPEG with trailing bytes", "refused", err.message[:200])
    truncated = os.path.join(tmp, "serving", "truncated")
    _write(os.path.join(truncated, "z.jpg"), _jpeg(7)[:500])
    try:
        list(load_source(f"folder:{truncated}").as_dataset())
        report("training decoder: truncated JPEG", "silent")
    except tf.errors.InvalidArgumentError as err:
        report("training decoder: truncated JPEG", "clear_error", err.message[:200])

    issue21_serving_cases(tmp, backbone, module, infer, report, refused, accepted)


def issue21_serving_cases(tmp, backbone, module, infer, report, refused, accepted) -> None:
    """Issue 21: batch shapes and pixel ranges through the saved-and-reloaded signatures
    (what TF Serving runs), and the TFLite helper on a real .tflite file."""
    import numpy as np
    import tensorflow as tf

    from care_tf.export import tflite
    from care_tf.export.source import ExportSource

    path = os.path.join(tmp, "serving", "saved21")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve_float,
                        "serve_uint8": module.serve_uint8,
                        "serve_image_bytes": module.serve_image_bytes})  # fmt: skip
    signatures = tf.saved_model.load(path).signatures
    f = lambda x: signatures["serving_default"](images=x)  # noqa: E731
    u = lambda x: signatures["serve_uint8"](images=x)  # noqa: E731
    b = lambda x: signatures["serve_image_bytes"](image_bytes=x)  # noqa: E731
    pixels = ("(B, H, W, C)",)
    for name, fn, value, words in [
        ("empty batch", f, tf.zeros([0, 40, 40, 3]), ("(B, H, W, C)", "empty batch")),
        ("2-D image", f, tf.zeros([40, 40]), pixels),
        ("scalar", f, tf.zeros([]), pixels),
        ("5-D", f, tf.zeros([1, 1, 40, 40, 3]), pixels),
        ("uint8 empty batch", u, tf.zeros([0, 40, 40, 3], tf.uint8), ("empty batch",)),
        ("bytes empty batch", b, tf.constant([], tf.string), ("(B,)", "empty batch")),
        ("bytes 2-D", b, tf.constant([[b"x"]]), ("(B,) of encoded images",)),
        ("bytes scalar", b, tf.constant(b"x"), ("(B,) of encoded images",)),
    ]:
        refused(f"serving (saved): {name}", fn, value, words)
    clean = np.random.default_rng(0).uniform(0, 255, (1, 40, 40, 3)).astype(np.float32)
    high = np.where(clean > 200, 255.5, clean)
    for name, value in [("1e30", np.full_like(clean, 1e30)), ("x 1e6", clean * 1e6),
                        ("negative", -clean), ("255.5", high)]:  # fmt: skip
        refused(f"serving (saved): float pixels {name}", f, tf.constant(value), ("0..255",))
    accepted("serving (saved): float pixels 0 and 255", f,
             tf.constant(np.round(clean / 255) * 255), (1, 64))  # fmt: skip
    # 0..1 pixels are valid 0..255 values: served (docs/export.md warns), not refusable.
    accepted("serving (saved): float pixels in 0..1 (documented pitfall)", f,
             tf.constant(clean / 255), (1, 64))  # fmt: skip

    model = os.path.join(tmp, "serving", "model21.tflite")
    tflite.write_tflite(ExportSource(backbone, {}, 32, 0, "x"), model)
    good = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), np.uint8)
    nan = good.astype(np.float32)
    nan[0, 0, 0, 0] = np.nan
    for name, value in [
        ("4 channels", np.zeros((1, 32, 32, 4), np.uint8)),
        ("empty batch", good[:0]),
        ("rank-3 image", good[0]),
        ("one channel", good[..., :1]),
        ("64x64 for a 32 px model", np.zeros((1, 64, 64, 3), np.uint8)),
        ("NaN", nan),
        ("pixels x 1e6", good.astype(np.float32) * 1e6),
        ("negative pixels", -good.astype(np.float32)),
    ]:
        try:
            infer.embed_pixels(model, value)
            report(f"tflite helper (real model): {name}", "silent")
        except ValueError as err:
            ok = "(B, 32, 32, 3)" in str(err)
            report(f"tflite helper (real model): {name}", "clear_error" if ok else "unclear",
                   str(err))  # fmt: skip
        except Exception as err:  # noqa: BLE001  (the runtime's own error: not clear)
            report(f"tflite helper (real model): {name}", "unclear", f"{type(err).__name__}")
    try:
        out = infer.embed_pixels(model, good)
        report("tflite helper (real model): valid batch", "ok" if out.shape == (2, 64)
               and np.all(np.isfinite(out)) else "silent", str(out.shape))  # fmt: skip
    except Exception as err:  # noqa: BLE001
        report("tflite helper (real model): valid batch", "refused", str(err))


def make_run(path: str) -> None:
    """A tiny run directory (backbone.keras, model.keras, config.yaml) for the cases."""
    import numpy as np

    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import care_testing

    from care_tf.export.testing import tiny_run

    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), np.uint8)
    tiny_run(path, images, step=3)
    care = care_testing.tiny_care(num_blocks=1)
    care.save(os.path.join(path, "model.keras"))


# ------------------------------------------------------------------------ main
def run_all(cases: list[Case], jobs: int) -> list[dict]:
    groups: dict[str, list[Case]] = collections.defaultdict(list)
    for i, case in enumerate(cases):
        groups[case.group or f"#{i}"].append(case)

    def run_group(group):
        return [run_case(c) for c in group]

    results = []
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for batch in pool.map(run_group, groups.values()):
            results.extend(batch)
    return results


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the cheap cases only (under a minute)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--jobs", type=int, default=2, help="cases run at once (default: 2)")
    p.add_argument("--keep", metavar="DIR", help="build the corpus here and keep it")
    p.add_argument("--verbose", action="store_true", help="one line per case on stderr")
    p.add_argument(
        "--only", action="append", default=[], metavar="TEXT", help="cases whose name has TEXT"
    )
    p.add_argument("--worker", choices=["serving", "run"], help=argparse.SUPPRESS)
    p.add_argument("worker_dir", nargs="?", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "serving":
        serving_worker(args.worker_dir)
        return {}
    if args.worker == "run":
        make_run(args.worker_dir)
        return {}

    start = time.time()
    tmp = args.keep or tempfile.mkdtemp(prefix="care_robustness_")
    os.makedirs(tmp, exist_ok=True)
    try:
        cases = build_cases(tmp)
        if args.quick:
            cases = [dataclasses.replace(c, timeout=min(c.timeout, 120)) for c in cases if c.quick]
        if args.only:
            cases = [c for c in cases if any(text in c.name for text in args.only)]
        if args.list:
            for c in cases:
                print(f"{c.name}{'  [needs: ' + c.needs + ']' if c.needs else ''}")
            return {}
        run_dir = os.path.join(tmp, RUN_MARK)
        if not args.quick and any(str(a).startswith(run_dir) for c in cases for a in c.argv):
            subprocess.run([PY, __file__, "--worker", "run", os.path.join(tmp, "run")],
                           check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})  # fmt: skip
        results = run_all(cases, args.jobs)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    results = [r for r in results if r["name"] != "serving + TFLite helper + decoders"] + [
        {**r, "needs": ""} for r in WORKER_RESULTS
    ]
    counts = collections.Counter(r["outcome"] for r in results)
    if args.verbose:
        for r in results:
            line = f"{r['outcome']:12s} {r.get('seconds', 0):6.1f}s {r['name']}"
            print(f"{line}: {r.get('last_line', '')[:80]}", file=sys.stderr)
    summary = {
        "bench": "robustness",
        "mode": "quick" if args.quick else "full",
        "cases": len(results),
        **{k: counts.get(k, 0) for k in OUTCOMES},
        "bad": [
            {"name": r["name"], "outcome": r["outcome"], "needs": r["needs"]}
            for r in results
            if r["outcome"] not in ("clear_error", "ok")
        ],
        "seconds": round(time.time() - start, 1),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
