"""Where one CARE training step spends its time: TensorFlow ops traced by the profiler.

    python bench/profile_step.py            # ResNet-50, 224 px, batch 8, fp32, 1 thread
    python bench/profile_step.py --quick    # ResNet-18 (base 16) at 64 px, under a minute

Builds the same model and fixed two-view batch as `bench/train_step.py`, runs the
warm-up steps, traces `--steps` steps of `train_on_batch` with `tf.profiler` on one
intra-op and one inter-op thread (`--threads 0` keeps TF's defaults), and sums the
executed ops' durations by op type and by part of the model (online / target
backbone, TransStack, heads, optimizer). Prints the biggest entries, then one JSON
line of the figures (milliseconds per step).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_step import add_model_arguments, build, cpu_model, use_quick_model  # noqa: E402

import care_tf  # noqa: E402


def part_of(op_name: str) -> str:
    """The model part an op belongs to, from its name scope ("... backward" for gradients)."""
    if op_name.startswith("gradient_tape/"):
        return part_of(op_name[len("gradient_tape/") :]) + " backward"
    top = op_name.split("/", 1)[0]
    network = "target" if top.startswith("target") else "online"
    if "trans" in top:
        return f"{network} transstack"
    if top.startswith(("resnet", "target_resnet")):
        return f"{network} backbone"
    if "projector" in top or "predictor" in top:
        return f"{network} heads"
    if top.startswith(("sgd", "torch_sgd", "lars")):
        return "optimizer"
    return top.rstrip("_0123456789") or "other"


def trace_ops(logdir: str) -> list[tuple[str, str, float]]:
    """(op type, op name, milliseconds) of every executed TF op in the trace under `logdir`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    ops = []
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith(("tf_Compute", "tf_numa", "tf_inter")):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name  # "op_name:OpType"
                if ":" not in name or "::" in name:
                    continue
                op_name, op_type = name.rsplit(":", 1)
                ops.append((op_type, op_name, event.duration_ps / 1e9))
    return ops


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, steps=2)
    parser.add_argument("--threads", type=int, default=1, help="0 = TF's default pools")
    parser.add_argument("--top", type=int, default=25, help="op types and ops to print")
    args = parser.parse_args(argv)
    if args.quick:
        use_quick_model(args)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    keras.utils.set_random_seed(0)
    model = build(args, t_stream=True, policy="float32")
    model.compile(optimizer=care_tf.TorchSGD(0.01, momentum=0.9))
    rng = np.random.RandomState(0)
    shape = (args.batch, args.image_size, args.image_size, 3)
    batch = tuple(tf.constant(rng.randn(*shape).astype("float32")) for _ in range(2))
    for _ in range(args.warmup):
        model.train_on_batch(batch)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            model.train_on_batch(batch)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        tf.profiler.experimental.stop()
        ops = trace_ops(logdir)

    per_step = 1.0 / args.steps
    by_type, by_part, by_op = collections.Counter(), collections.Counter(), collections.Counter()
    for op_type, op_name, ms in ops:
        by_type[op_type] += ms * per_step
        by_part[part_of(op_name)] += ms * per_step
        by_op[f"{op_name} ({op_type})"] += ms * per_step
    total = sum(by_type.values())
    for title, counter in (("op type", by_type), ("part", by_part), ("op", by_op)):
        print(f"\n{title:<60} ms/step   share", file=sys.stderr)
        for name, ms in counter.most_common(args.top):
            print(f"{name:<60} {ms:8.1f} {ms / total:7.1%}", file=sys.stderr)
    figures = {
        "preset": args.preset,
        "image_size": args.image_size,
        "batch": args.batch,
        "threads": args.threads or "default",
        "cpu_model": cpu_model(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "step_s_traced": round(wall * per_step, 3),
        "cpu_s_per_step_traced": round(cpu * per_step, 3),
        "ops_ms_per_step": round(total, 1),
        "by_part_ms": {k: round(v, 1) for k, v in by_part.most_common()},
        "by_type_ms": {k: round(v, 1) for k, v in by_type.most_common(args.top)},
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
