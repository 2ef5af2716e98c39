"""The training loop behind `python -m care_tf.train`: build, restore, step, log, save.

The model, data and monitors come from `care_tf.train.experiment.build_experiment`,
the same builder `model.fit` users call. Every replica reads its own
global_batch / replicas examples from its worker's input pipeline
(`distribute_datasets_from_function`), and the compiled function runs
`train.steps_per_execution` steps per call, so metrics reach the host once per
call. Calls end at epoch ends, checkpoint steps and the end of the run, where the
loop logs, saves and runs the monitors.

The input is a function of (seed, position) (`care_tf.data.order`): a checkpoint
stores the model, the optimizer and the position (examples read per worker), and a
resumed run continues at the same step with the same data, learning rate, momentum
and optimizer state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from care_tf import atomic
from care_tf import model_dir as layout
from care_tf.train.callbacks import (
    CSVLog,
    NonFiniteLossError,
    ProgressBar,
    TensorBoardWriter,
    Throughput,
    check_finite,
)
from care_tf.train.checkpoint import TrainCheckpoint, checkpoint_steps, has_checkpoint_files
from care_tf.train.config import Config, ConfigError, Derived, dump_yaml, resolved_dict
from care_tf.train.experiment import build_experiment, make_dataset
from care_tf.train.strategy import (
    WorkerInfo,
    check_global_batch,
    steps_per_execution,
    worker_info,
)

TRAIN_STATE = "train_state.json"
# Keys that may change between a run and its resumption: they do not alter the maths
# (checkpoint, monitors, logging, devices) or only the lr schedule from the resumed step
# on (base_lr, warm-up: the remedy for a NaN stop).
RESUMABLE_CHANGES = (
    "optimizer.base_lr",
    "schedule.warmup_epochs",
    "schedule.warmup_steps",
    "checkpoint.",
    "monitor.",
    "train.log_every_steps",
    "train.steps_per_execution",
    "data.service",
    "train.weight_histograms",
    "train.strategy",
    "train.num_cpu_replicas",
    "name",
)


# ------------------------------------------------------------------- helpers
def make_step_function(
    model: keras.Model, strategy: tf.distribute.Strategy, *, jit_compile: bool = False
):
    """A compiled `steps(iterator, k) -> logs` running k train steps in one call.

    `iterator` is a distributed iterator of per-replica batches: (view1, view2) (host
    placement) or (images, original sizes) that the model's augmenter turns into the
    two views on the device, crops drawn in each image's original geometry. The logs
    are the model's running metrics after the last step, over all replicas and workers:
    they reach the host once per call.

    Args:
        model: the compiled CARE model.
        strategy: the strategy the iterator was distributed with.
        jit_compile: compile each replica's step with XLA (static shapes; the TPU way).
    """

    replica_step = model.train_step  # device placement: it augments (images, sizes) itself
    if jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def steps(iterator, k):
        for _ in tf.range(k):  # the step is traced once, whatever k
            strategy.run(replica_step, args=(next(iterator),))
        # Metric results read across replicas (and workers): the same numbers everywhere.
        return {metric.name: metric.result() for metric in model.metrics}

    return steps


def next_boundary(step: int, end: int, steps_per_epoch: int, every_steps: int) -> int:
    """The first step after `step` where the loop must stop a call: an epoch end
    (monitors, CSV row), a checkpoint step, or the end of the run."""
    stops = [end, (step // steps_per_epoch + 1) * steps_per_epoch]
    if every_steps:
        stops.append((step // every_steps + 1) * every_steps)
    return min(stops)


def weights_digest(variables) -> str:
    """sha256 of the variables' bytes, in order (identical weights <=> identical digest)."""
    h = hashlib.sha256()
    for v in variables:
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(v)).tobytes())
    return h.hexdigest()


# A restored checkpoint whose online weights' norm exceeds the freshly initialised ones' by
# this factor is taken as exploded (training with weight decay keeps it within a few times).
EXPLODED_NORM_RATIO = 100.0


def weights_norm(variables) -> float:
    """Global L2 norm of `variables` (float64 sum of squares)."""
    total = 0.0
    for v in variables:
        value = np.asarray(keras.ops.convert_to_numpy(v), np.float64)
        total += float(np.sum(np.square(value)))
    return math.sqrt(total)


def exploded_checkpoint_error(
    err: NonFiniteLossError, model_dir: str, start: int, ratio: float, older: list[int]
) -> NonFiniteLossError:
    """The error of a non-finite stop right after resuming from an exploded checkpoint:
    a lower learning rate cannot rescue it, so the advice is an earlier start."""
    directory = layout.path(model_dir, layout.CHECKPOINTS)
    evidence = (
        f"its weights' norm is {ratio:.3g} times the initial weights'"
        if ratio > EXPLODED_NORM_RATIO
        else "the loss of its very first step is already non-finite"
    )
    earlier = (
        f"from an earlier checkpoint (move the ckpt-{start}.* files out of {directory} to "
        f"resume from ckpt-{older[0]}; kept: {', '.join(f'ckpt-{s}' for s in older)}), or "
        if older
        else ""
    )
    first = str(err).split(";")[0]
    return type(err)(
        f"{first}, right after resuming from ckpt-{start}: that checkpoint already holds "
        f"exploded weights ({evidence}), so a lower learning rate cannot rescue it. Restart "
        f"{earlier}from scratch in a new --model_dir with a lower optimizer.base_lr."
    )


def read_train_state(model_dir: str) -> dict:
    path = layout.path(model_dir, TRAIN_STATE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def logs_at(model_dir: str, step: int) -> dict:
    """The logged figures of `step` (numbers of the last metrics.csv row of that step, else
    train_state.json's loss when it is of that step); {} when none was recorded."""
    import csv

    logs: dict = {}
    try:
        with open(layout.path(model_dir, layout.METRICS_CSV), newline="") as f:
            for row in csv.DictReader(f):
                if str(row.get("step", "")).strip() == str(step):
                    logs = {}
                    for key, value in row.items():
                        try:
                            logs[key] = float(value)
                        except (TypeError, ValueError):
                            pass
    except (OSError, csv.Error, UnicodeDecodeError):
        logs = {}
    if "loss" not in logs:
        try:
            state = read_train_state(model_dir)
        except (OSError, ValueError):
            state = {}
        if state.get("step") == step and isinstance(state.get("loss"), (int, float)):
            logs["loss"] = float(state["loss"])
    logs.pop("step", None)
    logs.pop("epoch", None)
    return logs


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("backbone_kwargs", "transformer_kwargs"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_config(saved: dict, cfg: Config) -> None:
    """A ConfigError naming the keys that differ from the run being resumed."""
    if not saved:
        return
    old = _flatten({k: v for k, v in saved.items() if k != "derived"})
    new = _flatten(cfg.to_dict())
    changed = [
        k
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)
    ]
    if changed:
        diffs = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ConfigError(
            f"--resume with a config that changes the run ({diffs}). Resume with the run's own "
            "config (omit --config) or train into a new --model_dir."
        )


# ---------------------------------------------------------------------- run
@dataclasses.dataclass
class RunResult:
    """What a run ended with."""

    step: int
    epoch: int
    total_steps: int
    complete: bool
    lr: float
    momentum: float
    logs: dict


def run(
    cfg: Config,
    strategy: tf.distribute.Strategy,
    model_dir: str,
    *,
    max_steps: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> RunResult:
    """Trains `cfg` under `strategy` into `model_dir` (see the module docstring).

    Args:
        cfg: validated config.
        strategy: the tf.distribute strategy (created before any tensor).
        model_dir: run directory; created if missing.
        max_steps: stop at this global step (smoke runs); the schedules still span
            the full run.
        resume: continue from the newest checkpoint in `model_dir`.
        progress: show the progress bar (chief only).

    Raises:
        ConfigError / StrategyError: bad config or setup, before training.
        NonFiniteLossError: the loss became NaN/Inf; the last good checkpoint is kept.
    """
    worker = worker_info(strategy)
    check_global_batch(cfg.train.global_batch_size, strategy)
    if cfg.train.global_batch_size % worker.num_workers:
        raise ConfigError(
            f"train.global_batch_size={cfg.train.global_batch_size} is not divisible by the "
            f"{worker.num_workers} workers."
        )
    ckpt_dir = layout.path(model_dir, layout.CHECKPOINTS)
    has_checkpoint = has_checkpoint_files(ckpt_dir)  # readable or not: never overwritten
    if has_checkpoint and not resume:
        raise ConfigError(
            f"{model_dir} already holds checkpoints of a run: pass --resume to continue it, "
            "or choose another --model_dir."
        )
    if resume and has_checkpoint:
        check_resume_config(layout.read_config(model_dir), cfg)
    exp = build_experiment(cfg, strategy=strategy, model_dir=model_dir)
    model, schedule, derived = exp.model, exp.schedule, exp.derived
    if worker.is_chief:
        write_config(model_dir, cfg, derived)

    worker_batch = cfg.train.global_batch_size // worker.num_workers
    position = tf.Variable(0, dtype=tf.int64, trainable=False, name="input_position")
    checkpoint = TrainCheckpoint(
        model_dir,
        model,
        position if cfg.checkpoint.save_data_iterator else None,
        worker=worker,
        keep=cfg.checkpoint.keep,
        base_lr=cfg.optimizer.base_lr,
    )
    start = 0
    growth = 1.0  # restored / initial norm of the online weights
    if resume:
        initial_norm = weights_norm(model.trainable_weights)
        start = checkpoint.restore_latest() or 0
        growth = weights_norm(model.trainable_weights) / max(initial_norm, 1e-30)
        if growth > EXPLODED_NORM_RATIO:
            bar_note = (
                f"warning: the weights of ckpt-{start} have {growth:.3g} times the norm of "
                "freshly initialised ones: they may have exploded."
            )
            print(bar_note, file=sys.stderr, flush=True)
        if int(model.steps.numpy()) != start:
            found = int(model.steps.numpy())
            raise RuntimeError(f"Checkpoint step {start} does not match the model's step {found}.")
        if cfg.checkpoint.save_data_iterator and int(position.numpy()) != start * worker_batch:
            raise RuntimeError(
                f"Checkpoint step {start} holds input position {int(position.numpy())}, not "
                f"{start * worker_batch} = step x {worker_batch} examples per worker."
            )

    # Each replica reads its own global_batch / replicas examples from its worker's stream,
    # which starts where the checkpoint left it.
    job = f"care-{hashlib.sha256(os.path.abspath(model_dir).encode()).hexdigest()[:12]}"
    iterator = iter(
        strategy.distribute_datasets_from_function(
            lambda context: make_dataset(
                cfg,
                exp.source,
                worker,
                input_context=context,
                start_position=int(position.numpy()),
                service_job=job,
            )
        )
    )

    total = derived.total_steps
    end = total if max_steps is None else min(max_steps, total)
    spe = derived.steps_per_epoch
    per_call = steps_per_execution(cfg.train.steps_per_execution, strategy)
    step_fn = make_step_function(model, strategy)

    chief = worker.is_chief
    bar = ProgressBar(total, start, enabled=progress and chief)
    tb = (
        TensorBoardWriter(os.path.join(layout.path(model_dir, layout.LOGS), "train"))
        if chief
        else None
    )
    csv_log = CSVLog(layout.path(model_dir, layout.METRICS_CSV)) if chief else None
    callbacks = keras.callbacks.CallbackList(
        exp.callbacks,
        model=model,
        epochs=-(-total // spe),
        steps=spe,
    )
    throughput = Throughput(cfg.train.global_batch_size)
    logs: dict = {}
    if start >= end:
        logs = logs_at(model_dir, start)
        done = "complete" if start >= total else f"at step {start}, past --max_steps {end}"
        bar.write(
            f"Nothing to train: the run is {done} (checkpoint of step {start}). Only its final "
            "files are (re)written: model.keras, backbone.keras and train_state.json."
        )
    else:
        bar.write(
            f"{cfg.name}: {'resuming at' if start else 'starting'} step {start} of {total} "
            f"({spe} steps/epoch, {strategy.num_replicas_in_sync} replicas, "
            f"global batch {cfg.train.global_batch_size}, {per_call} steps per call, "
            f"peak lr {derived.peak_lr:g})"
        )
        callbacks.on_train_begin()

    older = [s for s in checkpoint_steps(ckpt_dir) if s < start]

    def exploded_since_resume(first_call: bool) -> bool:
        """A non-finite stop with no checkpoint saved since the resume, on its very first
        call or from weights restored far larger than fresh ones: the checkpoint is bad."""
        since_resume = resume and start and checkpoint.last_saved == start
        return bool(since_resume and (first_call or growth > EXPLODED_NORM_RATIO))

    step = start
    every = cfg.checkpoint.every_steps
    while step < end:
        epoch = step // spe
        if step % spe == 0 or step == start:
            for metric in model.metrics:
                metric.reset_state()
            callbacks.on_epoch_begin(epoch)
        # K steps per call, cut at the next epoch end, checkpoint step or end of the run.
        k = min(per_call, next_boundary(step, end, spe, every) - step)
        if resume and step == start:
            k = 1  # the first loss after a resume is the restored weights' own
        callbacks.on_train_batch_begin(step % spe)
        out = step_fn(iterator, tf.constant(k, tf.int32))
        logs = {name: float(v) for name, v in out.items()}
        previous, step = step, step + k
        try:
            check_finite(logs, step, checkpoint.last_saved, model_dir, cfg.optimizer.base_lr)
        except NonFiniteLossError as e:
            if exploded_since_resume(first_call=previous == start):
                raise exploded_checkpoint_error(e, model_dir, start, growth, older) from e
            raise
        throughput.step(k)
        logs["lr"] = schedule.value(step - 1)  # the lr of the call's last step
        logs["images_per_sec"] = throughput.images_per_sec
        callbacks.on_train_batch_end((step - 1) % spe, logs)
        epoch_end = step % spe == 0
        log_every = cfg.train.log_every_steps
        if step // log_every > previous // log_every or epoch_end or step == end:
            bar.update(0, logs, epoch)
            if tb is not None:
                tb.write(logs, step)
        bar.update(k)

        if (
            (every and step % every == 0)
            or (epoch_end and cfg.checkpoint.every_epoch)
            or (step == end)
        ):
            position.assign(step * worker_batch)
            try:
                checkpoint.save(step)  # raises NonFiniteStateError instead of saving NaN/Inf
            except NonFiniteLossError as e:
                if exploded_since_resume(first_call=False):
                    raise exploded_checkpoint_error(e, model_dir, start, growth, older) from e
                raise
        if epoch_end or step == end:
            epoch_logs = dict(logs)
            # CallbackList.on_epoch_end hands each callback a copy of the logs; the
            # monitors add their figures to the dict itself, so call them directly.
            for callback in callbacks.callbacks:
                callback.on_epoch_end(epoch, epoch_logs)
            if csv_log is not None:
                csv_log.write({"epoch": epoch + 1, "step": step, **epoch_logs})
            if tb is not None and cfg.train.weight_histograms:
                tb.histograms(model.weights, step)
    bar.close()
    if start < end:
        callbacks.on_train_end(logs)

    result = RunResult(
        step=step,
        epoch=step // spe,
        total_steps=total,
        complete=step >= total,
        lr=schedule.value(min(step, total)),
        momentum=float(model.momentum()),
        logs=logs,
    )
    finish(model, model_dir, result, worker)
    if tb is not None:
        tb.close()
    return result


def write_config(model_dir: str, cfg: Config, derived: Derived) -> None:
    """Writes the resolved config and its derived values to `model_dir/config.yaml`."""
    atomic.write_text(layout.path(model_dir, layout.CONFIG), dump_yaml(resolved_dict(cfg, derived)))


def finish(model: keras.Model, model_dir: str, result: RunResult, worker: WorkerInfo) -> None:
    """Writes the final model, the backbone alone and `train_state.json` (chief)."""
    # The weights every replica and worker holds identically: BN moving statistics
    # are per replica in the TransStack (as the authors'), so they are left out.
    target = [t for _, t in model.ema_pairs()]
    state = {
        "step": result.step,
        "epoch": result.epoch,
        "total_steps": result.total_steps,
        "complete": result.complete,
        "lr": result.lr,
        "momentum": result.momentum,
        "loss": result.logs.get("loss"),
        "online_sha256": weights_digest(model.trainable_weights),
        "target_sha256": weights_digest(target),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if worker.is_chief:
        out_dir = model_dir
        layout.save_models(model, model_dir)
    else:  # non-chief workers only report their state, for checks
        out_dir = os.path.join(
            layout.path(model_dir, layout.CHECKPOINTS), "workers", f"worker-{worker.task_id}"
        )
        os.makedirs(out_dir, exist_ok=True)
    atomic.write_json(os.path.join(out_dir, TRAIN_STATE), state)


__all__ = ["run", "RunResult", "NonFiniteLossError", "read_train_state"]
