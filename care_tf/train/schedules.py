"""Learning-rate schedule of the paper: per-step linear warm-up from 1e-6, then cosine to 0."""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="care_tf")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from `warmup_start_lr` to `peak_lr`, then cosine decay to `end_lr`.

    With k the optimizer step (0-based, the step being taken), W the warm-up and
    K the total steps:

        k < W:  lr = start + (peak - start) * k / W
        k >= W: lr = end + (peak - end) * (1 + cos(pi * (k - W) / (K - W))) / 2

    (lr stays at `end_lr` after K.) So the first step uses `warmup_start_lr`
    (1e-6 in the paper) and the last warm-up step is just below the peak.

    Args:
        peak_lr: float. Learning rate at the end of warm-up (already scaled by
            the global batch: base_lr * batch / 256).
        total_steps: int. K, the run's total steps.
        warmup_steps: int. W; 0 starts the cosine at step 0.
        warmup_start_lr: float. Learning rate at step 0. Defaults to 1e-6.
        end_lr: float. Learning rate at step K. Defaults to 0.
    """

    def __init__(
        self,
        peak_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_start_lr: float = 1e-6,
        end_lr: float = 0.0,
    ):
        if total_steps < 1 or not 0 <= warmup_steps < total_steps:
            raise ValueError(
                "Need 0 <= warmup_steps < total_steps. Received: "
                f"warmup_steps={warmup_steps}, total_steps={total_steps}"
            )
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_lr = float(warmup_start_lr)
        self.end_lr = float(end_lr)

    def __call__(self, step):
        k = ops.cast(step, "float32")
        warmup = float(max(self.warmup_steps, 1))
        warm = self.warmup_start_lr + (self.peak_lr - self.warmup_start_lr) * k / warmup
        progress = ops.clip(
            (k - self.warmup_steps) / float(self.total_steps - self.warmup_steps), 0.0, 1.0
        )
        cosine = self.end_lr + (self.peak_lr - self.end_lr) * 0.5 * (
            1.0 + ops.cos(math.pi * progress)
        )
        if self.warmup_steps == 0:
            return cosine
        return ops.where(k < float(self.warmup_steps), warm, cosine)

    def value(self, step: int) -> float:
        """The learning rate at `step` as a Python float (NumPy-free reference)."""
        if step < self.warmup_steps:
            return (
                self.warmup_start_lr
                + (self.peak_lr - self.warmup_start_lr) * step / self.warmup_steps
            )
        progress = min(
            max((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0), 1.0
        )
        return self.end_lr + (self.peak_lr - self.end_lr) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )

    def get_config(self) -> dict:
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_start_lr": self.warmup_start_lr,
            "end_lr": self.end_lr,
        }
