"""Training monitors of the CLI loop: progress bar, TensorBoard, CSV log, NaN/Inf stop."""

from __future__ import annotations

import csv
import math
import os
import sys
import time

import tensorflow as tf

from care_tf import model_dir as layout

LOSS_KEYS = ("loss", "loss_c", "loss_t", "loss_att")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the run stopped without saving the bad state."""


class NonFiniteStateError(NonFiniteLossError):
    """A weight or optimizer tensor became NaN or Inf; the run stopped before saving it."""


def nonfinite_advice(model_dir: str, base_lr: float | None) -> str:
    """How to continue a run stopped by NaN/Inf (optimizer.base_lr may change on --resume)."""
    lower = f"{base_lr / 10:g}" if base_lr else "<lower>"
    return (
        "Resume with a lower learning rate (optimizer.base_lr and the warm-up may change on "
        f"--resume): python -m care_tf.train --model_dir {model_dir} --resume "
        f"--set optimizer.base_lr={lower} (a longer --set schedule.warmup_epochs=... may "
        "also help)."
    )


def check_finite(
    logs: dict,
    step: int,
    last_checkpoint: int | None,
    model_dir: str,
    base_lr: float | None = None,
) -> None:
    """Raises NonFiniteLossError naming the step, the bad terms, the checkpoint kept and the fix.

    The loss of a step is computed before that step's update: `TrainCheckpoint.save`
    checks the updated weights themselves before writing them.
    """
    bad = {k: v for k, v in logs.items() if k in LOSS_KEYS and not math.isfinite(v)}
    if not bad:
        return
    directory = layout.path(model_dir, layout.CHECKPOINTS)
    kept = (
        f"the last good checkpoint (step {last_checkpoint}) is kept in {directory}"
        if last_checkpoint is not None
        else "no checkpoint had been written yet"
    )
    terms = ", ".join(f"{k}={v}" for k, v in bad.items())
    raise NonFiniteLossError(
        f"Non-finite loss at step {step} ({terms}); training stopped and nothing was saved "
        f"from this step: {kept}. {nonfinite_advice(model_dir, base_lr)}"
    )


class Throughput:
    """Images per second over a sliding window of steps (the first, traced step excluded)."""

    def __init__(self, global_batch: int):
        self.global_batch = global_batch
        self._start: float | None = None
        self._steps = 0

    def step(self, steps: int = 1) -> None:
        """Counts `steps` steps just run (one call of the compiled function)."""
        if self._start is None:  # the first call includes tracing: start the clock after it
            self._start = time.perf_counter()
            return
        self._steps += steps

    def reset(self) -> None:
        if self._start is not None:
            self._start = time.perf_counter()
            self._steps = 0

    @property
    def images_per_sec(self) -> float:
        if self._start is None or self._steps == 0:
            return 0.0
        return self._steps * self.global_batch / max(time.perf_counter() - self._start, 1e-9)


class ProgressBar:
    """A tqdm bar over the run's steps showing the loss terms and images/s."""

    def __init__(self, total_steps: int, initial_step: int, enabled: bool = True):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps,
                initial=initial_step,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=0.5,
            )

    def update(self, steps: int, logs: dict | None = None, epoch: int | None = None) -> None:
        if self.bar is None:
            return
        self.bar.update(steps)
        if logs is not None:
            shown = {k: f"{v:.4g}" for k, v in logs.items() if k != "lr" or v}
            if epoch is not None:
                self.bar.set_description(f"epoch {epoch + 1}")
            self.bar.set_postfix(shown, refresh=False)

    def write(self, message: str) -> None:
        if self.bar is None:
            print(message, file=sys.stderr)
        else:
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoardWriter:
    """The training CLI's TensorBoard events in `log_dir`, on the global-step axis.

    `write`: scalars (loss terms, lr, momentum, images_per_sec) as `train/<name>`;
    `histograms`: one histogram per weight, tagged with its path (the target
    network's weights have paths of their own, `target_*`). The online monitors
    write their figures and attention grids themselves (`monitor/...`).
    """

    def __init__(self, log_dir: str):
        self.writer = tf.summary.create_file_writer(log_dir)

    def write(self, logs: dict, step: int, prefix: str = "train/") -> None:
        from care_tf.evaluate.monitors import write_scalar  # works without `tensorboard`

        with self.writer.as_default():
            for name, value in logs.items():
                write_scalar(f"{prefix}{name}", float(value), step=step)
        self.writer.flush()

    def histograms(self, variables, step: int) -> None:
        """A histogram of each variable's values, tagged `weights/<path>`."""
        with self.writer.as_default():
            for v in variables:
                tf.summary.histogram(f"weights/{v.path}", v.value, step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class CSVLog:
    """Appends one row per epoch (and the final partial epoch) to `path`.

    On resume rows are appended; new keys after the header was written are dropped
    with their values (the header is fixed by the first row).
    """

    def __init__(self, path: str):
        self.path = path

    def write(self, row: dict) -> None:
        exists = os.path.isfile(self.path) and os.path.getsize(self.path) > 0
        if exists:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None) or list(row)
        else:
            header = list(row)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
            if not exists:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in header})
