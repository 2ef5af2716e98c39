"""Images/s of one CARE training step (and the BYOL step beside it) on this machine.

    python bench/train_step.py            # ResNet-50, 224 px, batch 8, fp32
    python bench/train_step.py --quick    # ResNet-18 (base 16) at 64 px, under a minute

Each mode builds a fresh model, compiles it with `care_tf.TorchSGD` (momentum
0.9: PyTorch's SGD, the authors' and `build_experiment`'s optimizer), runs
`--warmup` steps (tracing / XLA compilation excluded) and then times `--steps`
steps of `train_on_batch` on a fixed two-view batch: the full CARE step (target
update, target forward on both views, online forward + backward of both
streams, optimizer update). Reports images/s by wall clock and per CPU second
(all threads of the process). `care_1thread` reruns the `care` mode in a
subprocess with TensorFlow's intra- and inter-op thread pools set to 1: the
per-core figure. Reports only what it measured; ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import care_tf  # noqa: E402


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def build(args, t_stream: bool, policy: str) -> care_tf.CARE:
    keras.mixed_precision.set_global_policy(policy)
    backbone_kwargs = {"base_channels": args.base_channels} if args.base_channels else None
    return care_tf.CARE.from_preset(
        args.preset,
        image_size=args.image_size,
        backbone_kwargs=backbone_kwargs,
        t_stream=t_stream,
        total_steps=1000,
        weight_decay=1e-4,
    )


def compiled_model_and_batch(args, t_stream: bool, jit: bool, policy: str = "float32"):
    """A fresh compiled model and the fixed two-view batch it is timed on."""
    keras.utils.set_random_seed(0)
    model = build(args, t_stream, policy)
    model.compile(optimizer=care_tf.TorchSGD(0.01, momentum=0.9), jit_compile=jit)
    rng = np.random.RandomState(0)
    shape = (args.batch, args.image_size, args.image_size, 3)
    batch = (
        tf.constant(rng.randn(*shape).astype("float32")),
        tf.constant(rng.randn(*shape).astype("float32")),
    )
    return model, batch


def serve(args) -> None:
    """The `care` mode one step at a time, for `bench/side_by_side.py`.

    Warms up, prints `{"ready": ...}`, then for each line read from stdin runs one
    training step and prints `{"step_s": wall seconds, "cpu_s": CPU seconds}`.
    """
    model, batch = compiled_model_and_batch(args, t_stream=True, jit=False)
    for _ in range(args.warmup):
        model.train_on_batch(batch)
    print(json.dumps({"ready": "care_tf", "batch": args.batch}), flush=True)
    for _ in sys.stdin:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        logs = model.train_on_batch(batch, return_dict=True)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        assert np.isfinite(logs["loss"]), logs
        print(json.dumps({"step_s": wall, "cpu_s": cpu}), flush=True)


def time_mode(args, t_stream: bool, jit: bool, policy: str = "float32") -> dict:
    """Times one configuration; returns its figures."""
    model, batch = compiled_model_and_batch(args, t_stream, jit, policy)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        model.train_on_batch(batch)
    warmup_s = time.perf_counter() - t0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        logs = model.train_on_batch(batch, return_dict=True)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    assert np.isfinite(logs["loss"]), logs
    images = args.batch * args.steps
    result = {
        "images_per_s": round(images / wall, 3),
        "images_per_cpu_s": round(images / cpu, 3),
        "step_s": round(wall / args.steps, 3),
        "warmup_s": round(warmup_s, 1),
    }
    keras.mixed_precision.set_global_policy("float32")
    return result


def one_thread(args) -> dict:
    """The `care` mode in a fresh process with 1 intra-op and 1 inter-op thread."""
    cmd = [sys.executable, os.path.abspath(__file__), "--threads", "1", "--modes", "care"]
    cmd += ["--preset", args.preset, "--image_size", str(args.image_size)]
    cmd += ["--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.base_channels:
        cmd += ["--base_channels", str(args.base_channels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"one-thread run failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["care"]


def add_model_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    """The model, batch and step options shared by the step benchmarks."""
    parser.add_argument("--quick", action="store_true", help="small model, under a minute")
    parser.add_argument("--preset", default="resnet50")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--base_channels", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=2)


def use_quick_model(args) -> None:
    """`--quick`'s model: ResNet-18 at base width 16, 64 px."""
    args.preset, args.image_size, args.base_channels = "resnet18", 64, 16


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, steps=5)
    parser.add_argument(
        "--threads", type=int, default=0, help="intra- and inter-op threads (0 = TF's default)"
    )
    parser.add_argument(
        "--modes",
        default="care,care_1thread,byol,care_xla",
        help="comma list of care, care_1thread, care_xla, byol, byol_xla, care_bf16",
    )
    parser.add_argument(
        "--serve", action="store_true", help="run `care` steps on request (bench/side_by_side.py)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        use_quick_model(args)
        args.steps, args.warmup = 3, 1
        args.modes = "care,care_1thread,byol"
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if args.serve:
        serve(args)
        return {}

    modes = {
        "care": dict(t_stream=True, jit=False),
        "care_xla": dict(t_stream=True, jit=True),
        "byol": dict(t_stream=False, jit=False),
        "byol_xla": dict(t_stream=False, jit=True),
        "care_bf16": dict(t_stream=True, jit=False, policy="mixed_bfloat16"),
    }
    figures = {
        "preset": args.preset,
        "image_size": args.image_size,
        "batch": args.batch,
        "steps": args.steps,
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "threads": args.threads or "default",
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    for name in args.modes.split(","):
        if name == "care_1thread":
            figures[name] = one_thread(args)
        elif name in modes:
            figures[name] = time_mode(args, **modes[name])
        else:
            parser.error(f"unknown mode {name!r}; choose from care_1thread, {', '.join(modes)}")
        print(f"{name}: {figures[name]}", file=sys.stderr, flush=True)
    if "care" in figures and "byol" in figures:
        figures["t_stream_overhead"] = round(
            figures["byol"]["images_per_s"] / figures["care"]["images_per_s"], 3
        )
    figures["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
