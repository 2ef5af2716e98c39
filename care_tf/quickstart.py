"""`make quickstart`: pretrain CARE on Fashion-MNIST, probe it, export it, in one command.

    python -m care_tf.quickstart --model_dir runs/quickstart

Runs the real command lines in sequence, each in its own process (their progress
bars show as they go), and prints the commands so they can be rerun by hand:

    1. python -m care_tf.train --config quickstart --model_dir DIR
    2. python -m care_tf.evaluate knn --model_dir DIR --dataset fashion_mnist
    3. python -m care_tf.evaluate linear --model_dir DIR --dataset fashion_mnist \
           --extract_features --epochs 20
    4. python -m care_tf.export --model_dir DIR --out DIR/exported --format all \
           --quantize int8 --calibration fashion_mnist

then a summary (kNN and linear top-1, where everything was written, time taken),
also saved as `DIR/quickstart.json`. Every run starts afresh: a previous care_tf
run in DIR is replaced; a DIR holding anything else is refused. Smoke runs shrink
the budget with `--max_steps`, `--set`, `--limit` and `--probe_epochs`.

Exit status: 0 done; 2 bad arguments, missing data or a DIR that is not a run;
otherwise the exit status of the step that failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from care_tf.cli_errors import prog_name
from care_tf.train.config_names import describe_missing, resolve_config

DEFAULT_CONFIG = "quickstart"  # the shipped configs/quickstart.yaml, by name
DATASET = "fashion_mnist"
QUICKSTART_JSON = "quickstart.json"
EXPORT_DIR = "exported"
# What a training run, its evaluations, its export and this driver write in DIR
# (care_tf/model_dir.py, train/loop.py): only a DIR made of these is replaced.
RUN_ENTRIES = {
    "config.yaml",
    "model.keras",
    "backbone.keras",
    "checkpoints",
    "logs",
    "metrics.csv",
    "train_state.json",
    "eval",
    EXPORT_DIR,
    QUICKSTART_JSON,
}
EXIT_USAGE = 2


class QuickstartError(Exception):
    """A user error: printed as `error: ...`, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog_name("care_tf.quickstart"),
        description="Pretrain CARE on Fashion-MNIST (small CPU configuration), run the kNN "
        "and linear probes, export the backbone to SavedModel and TFLite, print a summary.",
        epilog="Each step is the real CLI in its own process; see docs/README.md.",
    )
    p.add_argument(
        "--model_dir",
        default="runs/quickstart",
        help="run directory; a previous care_tf run there is replaced (default: %(default)s)",
    )
    p.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help="training config: a YAML file or a shipped config's name "
        "(`python -m care_tf.train --list_configs`) (default: %(default)s)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="training config override, passed to care_tf.train (repeatable)",
    )
    p.add_argument(
        "--max_steps", type=int, default=None, help="stop pretraining at this step (smoke runs)"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most N images per split for the probes (default: all 60000 + 10000)",
    )
    p.add_argument(
        "--probe_epochs",
        type=int,
        default=20,
        help="linear probe epochs on extracted features (default: %(default)s; paper: 80)",
    )
    p.add_argument(
        "--quantize",
        default="int8",
        choices=["none", "float16", "dynamic", "int8"],
        help="TFLite quantisation, calibrated on Fashion-MNIST (default: %(default)s)",
    )
    p.add_argument(
        "--calibration_samples",
        type=int,
        default=128,
        help="Fashion-MNIST images used to calibrate int8 (default: %(default)s)",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


# ----------------------------------------------------------------- model_dir
def prepare_model_dir(model_dir: Path) -> bool:
    """Makes `model_dir` an empty directory; returns whether a previous run was removed.

    Raises:
        QuickstartError: `model_dir` is a file, or holds anything a care_tf run
            does not write (so nothing of the user's is ever deleted).
    """
    if model_dir.exists() and not model_dir.is_dir():
        raise QuickstartError(f"--model_dir {str(model_dir)!r} is a file, not a directory.")
    entries = {p.name for p in model_dir.iterdir()} if model_dir.is_dir() else set()
    if not entries:
        model_dir.mkdir(parents=True, exist_ok=True)
        return False
    foreign = sorted(entries - RUN_ENTRIES)
    if foreign or not entries & {"config.yaml", QUICKSTART_JSON}:
        shown = ", ".join(foreign[:5]) or ", ".join(sorted(entries)[:5])
        raise QuickstartError(
            f"--model_dir {str(model_dir)!r} is not empty and is not a care_tf run "
            f"(it holds {shown}); choose another --model_dir."
        )
    shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    return True


def check_data() -> None:
    """Fails early, with the fix, when the Fashion-MNIST IDX files are missing."""
    from care_tf.data.fashion_mnist import fashion_mnist_files

    try:
        for split in ("train", "test"):
            fashion_mnist_files(split)
    except FileNotFoundError as e:
        raise QuickstartError(str(e)) from e


# --------------------------------------------------------------------- steps
def commands(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """The (key, title, argv) of each step, argv without the leading `python`."""
    model_dir = args.model_dir
    train = ["-m", "care_tf.train", "--config", args.config, "--model_dir", model_dir]
    for override in args.set:
        train += ["--set", override]
    if args.max_steps is not None:
        train += ["--max_steps", str(args.max_steps)]
    probe = ["--model_dir", model_dir, "--dataset", DATASET]
    if args.limit is not None:
        probe += ["--limit", str(args.limit)]
    if args.no_progress:
        train.append("--no_progress")
        probe.append("--quiet")
    export = [
        "-m", "care_tf.export", "--model_dir", model_dir,
        "--out", os.path.join(model_dir, EXPORT_DIR), "--format", "all",
        "--quantize", args.quantize, "--overwrite",
    ]  # fmt: skip
    if args.quantize != "none":
        export += ["--calibration", DATASET, "--calibration_samples", str(args.calibration_samples)]
    return [
        ("train", "Pretraining CARE", train),
        ("knn", "kNN probe", ["-m", "care_tf.evaluate", "knn", *probe]),
        (
            "linear",
            "Linear probe",
            [
                "-m",
                "care_tf.evaluate",
                "linear",
                *probe,
                "--extract_features",
                "--epochs",
                str(args.probe_epochs),
            ],
        ),  # fmt: skip
        ("export", "Export to SavedModel and TFLite", export),
    ]


def _shell(argv: list[str]) -> str:
    return " ".join(["python", *(a if " " not in a else repr(a) for a in argv)])


def run_step(index: int, total: int, title: str, argv: list[str]) -> float:
    """Runs one CLI in a child process (output straight to the terminal); returns seconds.

    Raises:
        subprocess.CalledProcessError: the step exited with a non-zero status.
    """
    print(f"\n==> [{index}/{total}] {title}\n$ {_shell(argv)}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.time()
    subprocess.run([sys.executable, *argv], check=True, env=env)
    return time.time() - start


# ------------------------------------------------------------------- summary
def _read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def _result(model_dir: Path, kind: str, limit: int | None) -> Path:
    """Where `python -m care_tf.evaluate KIND` wrote its JSON (by --limit)."""
    from care_tf.evaluate.report import result_name

    return model_dir / "eval" / f"{result_name(kind, limit)}.json"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def collect_summary(model_dir: Path, args: argparse.Namespace, seconds: dict) -> dict:
    """The figures and paths of a finished quickstart (what `quickstart.json` holds)."""
    state = _read_json(model_dir / "train_state.json")
    knn = _read_json(_result(model_dir, "knn", args.limit))
    linear = _read_json(_result(model_dir, "linear", args.limit))
    export = model_dir / EXPORT_DIR
    label = "float32" if args.quantize == "none" else args.quantize
    tflite = export / "tflite" / "care" / "1" / f"care_{label}.tflite"
    return {
        "train": {
            "step": state["step"],
            "total_steps": state["total_steps"],
            "complete": state["complete"],
            "loss": state.get("loss"),
        },
        "knn": {
            "top1": knn["top1"],
            "top5": knn["top5"],
            "k": knn["config"]["k"],
            "num_train": knn["num_train"],
            "num_examples": knn["num_examples"],
        },
        "linear": {
            "top1": linear["top1"],
            "top5": linear["top5"],
            "epochs": linear["config"]["epochs"],
            "num_train": linear["num_train"],
            "num_examples": linear["num_examples"],
        },
        "paths": {
            "model_dir": str(model_dir),
            "backbone": str(model_dir / "backbone.keras"),
            "tensorboard_logs": str(model_dir / "logs"),
            "knn_json": str(_result(model_dir, "knn", args.limit)),
            "linear_json": str(_result(model_dir, "linear", args.limit)),
            "saved_model": str(export / "care" / "1"),
            "tflite": str(tflite),
        },
        "tflite_megabytes": round(tflite.stat().st_size / 1e6, 2),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def format_summary(summary: dict) -> str:
    """The human-readable summary printed at the end."""
    t, knn, lin, paths = summary["train"], summary["knn"], summary["linear"], summary["paths"]
    sec = summary["seconds"]
    loss = f", final loss {t['loss']:.3f}" if t.get("loss") is not None else ""
    lines = [
        f"CARE quickstart finished in {_duration(sec['total'])} "
        f"(pretrain {_duration(sec['train'])}, kNN {_duration(sec['knn'])}, "
        f"linear {_duration(sec['linear'])}, export {_duration(sec['export'])})",
        f"  pretraining    step {t['step']}/{t['total_steps']}{loss}",
        f"  kNN top-1      {100 * knn['top1']:.2f}%  (k={knn['k']}, {knn['num_train']} train / "
        f"{knn['num_examples']} test images)",
        f"  linear top-1   {100 * lin['top1']:.2f}%  ({lin['epochs']} epochs on frozen features, "
        f"{lin['num_train']} train / {lin['num_examples']} test images)",
        f"  run directory  {paths['model_dir']}  (config.yaml, backbone.keras, model.keras, "
        "checkpoints/, metrics.csv)",
        f"  TensorBoard    tensorboard --logdir {paths['tensorboard_logs']}",
        f"  probe results  {paths['knn_json']}, {paths['linear_json']}",
        f"  SavedModel     {paths['saved_model']}  (TF Serving model base path: "
        f"{os.path.dirname(paths['saved_model'])})",
        f"  TFLite         {paths['tflite']}  ({summary['tflite_megabytes']:.2f} MB)",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Runs the quickstart; returns the exit status."""
    args = build_parser().parse_args(argv)
    model_dir = Path(args.model_dir)
    started = time.time()
    try:
        if not os.path.isfile(resolve_config(args.config)):
            raise QuickstartError(f"--config {args.config!r}: no such file. {describe_missing()}")
        check_data()
        if prepare_model_dir(model_dir):
            print(f"Replacing the previous run in {model_dir}", flush=True)
    except QuickstartError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    steps = commands(args)
    seconds: dict[str, float] = {}
    for i, (key, title, argv_) in enumerate(steps):
        try:
            seconds[key] = run_step(i + 1, len(steps), title, argv_)
        except subprocess.CalledProcessError as e:
            print(
                f"error: step {i + 1}/{len(steps)} ({title}) failed with exit status "
                f"{e.returncode}: {_shell(argv_)}",
                file=sys.stderr,
            )
            return e.returncode if e.returncode > 0 else 1
        except KeyboardInterrupt:
            print(f"\ninterrupted during step {i + 1} ({title}).", file=sys.stderr)
            return 130
    seconds["total"] = time.time() - started

    summary = collect_summary(model_dir, args, seconds)
    with open(model_dir / QUICKSTART_JSON, "w") as f:
        json.dump(summary, f, indent=2)
    print("\n" + format_summary(summary) + f"\n  this summary   {model_dir / QUICKSTART_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
