"""Training steps of several implementations, alternated one step at a time on this machine.

    python bench/side_by_side.py \\
        --worker "care_tf=python bench/train_step.py --serve --threads 1" \\
        --worker "authors=/path/to/venv/bin/python authors_step.py --serve --threads 1"
    python bench/side_by_side.py --quick    # care_tf against itself, small model, < 1 min

A shared VM's speed drifts by 10-30% over minutes, so timing one implementation and
then another compares the machine's moods as much as the code. Here every worker
process builds and warms up its model first; then, round after round, each runs one
step while the others wait (the order rotates every round), so drift hits all of
them alike. Reports each worker's median step time, images/s (its batch / median)
and the ratio to the first worker's images/s; ends with one JSON line.

A worker is any command that prints one JSON line with `"ready"` and `"batch"` once
warmed up, then, for each line it reads on stdin, runs one full training step and
prints `{"step_s": seconds, ...}`. `bench/train_step.py --serve` is care_tf's
worker; docs/benchmarks.md says how the authors' code was run as one.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


class Worker:
    """One implementation's process, stepping on request."""

    def __init__(self, name: str, command: str):
        self.name, self.command = name, command
        self.process = subprocess.Popen(
            shlex.split(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.steps: list[float] = []
        self.batch = None

    def _reply(self) -> dict:
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.name!r} exited ({self.command})")
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)

    def wait_ready(self) -> None:
        reply = self._reply()
        while "ready" not in reply:
            reply = self._reply()
        self.batch = int(reply["batch"])

    def step(self) -> None:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        self.steps.append(float(self._reply()["step_s"]))

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--worker", action="append", default=[], help='"name=command" (repeat; first = reference)'
    )
    parser.add_argument("--rounds", type=int, default=8, help="steps per worker")
    parser.add_argument("--quick", action="store_true", help="care_tf vs itself, small model")
    args = parser.parse_args(argv)
    if args.quick:
        ours = f"{sys.executable} {os.path.join(HERE, 'train_step.py')} --serve --quick --threads 1"
        args.worker = [f"a={ours}", f"b={ours}"]
        args.rounds = 3
    if len(args.worker) < 1 or any("=" not in w for w in args.worker):
        parser.error('give one or more --worker "name=command"')

    workers = [Worker(*spec.split("=", 1)) for spec in args.worker]
    try:
        for worker in workers:  # all warm up at once; timing starts when all are ready
            worker.wait_ready()
        start = time.time()
        for r in range(args.rounds):
            for i in range(len(workers)):
                workers[(r + i) % len(workers)].step()
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{w.name} {w.steps[-1]:.2f}s" for w in workers),
                file=sys.stderr,
                flush=True,
            )
    finally:
        for worker in workers:
            worker.close()

    reference = workers[0]
    figures = {
        "rounds": args.rounds,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "seconds": round(time.time() - start, 1),
        "workers": {},
    }
    ref_rate = reference.batch / statistics.median(reference.steps)
    for worker in workers:
        median = statistics.median(worker.steps)
        rate = worker.batch / median
        figures["workers"][worker.name] = {
            "median_step_s": round(median, 3),
            "min_step_s": round(min(worker.steps), 3),
            "max_step_s": round(max(worker.steps), 3),
            "images_per_s": round(rate, 3),
            f"ratio_to_{reference.name}": round(rate / ref_rate, 3),
        }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
