"""Step-exact checkpoints: model weights, optimizer state and the input position.

Layout under `model_dir/checkpoints/`:

    ckpt-N.*            the real checkpoint at step N (model, optimizer, input position
                        of worker 0), written by the chief only; the last K are kept
    checkpoint          tf.train's index of them
    workers/worker-I/   multi-worker only: worker I's own input position
                        (each worker reads its own shard, so each keeps its position)
    unreadable/ckpt-N/  the files of a checkpoint a resume found damaged, moved aside
                        (never deleted; ckpt-N.2/, ... when step N was set aside before)

Nothing non-finite is saved: `save` first checks every weight and optimizer
tensor in one compiled reduction and raises `NonFiniteStateError` instead.
A resume scans the `ckpt-N.index` files themselves (not only tf.train's
`checkpoint` index file, which may be missing or stale), restores the newest
one that reads back whole and finite, says which and why it skipped newer
ones, moves those aside (so later saves of the same steps overwrite nothing),
and rewrites the index. Files of checkpoints but none readable is an error,
never a silent start at step 0. `*_temp` folders left by a save that was
killed (SIGKILL, power loss) are removed when the run starts; one writer per
run directory is assumed.

The input position is the number of examples a worker's input pipeline has read: the
input is a function of (seed, position) (`care_tf.data.order`), so a few bytes replace
the tf.data iterator's shuffle and prefetch buffers, whatever the records' size.

Under `MultiWorkerMirroredStrategy` every worker takes part in a save (reading
distributed variables may need collectives), but non-chief workers write the
model to a scratch directory they delete at once (the usual TF pattern).

The model's weights are saved as a flat `{index: variable}` map rather
than through the model object: Keras 3 layers that keep sub-layers in Python
lists (like the TransStack blocks) are invisible to `tf.train.Checkpoint`'s
object graph, and the flat map is immune to that.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

import keras
import numpy as np
import tensorflow as tf

from care_tf import model_dir as layout
from care_tf.train.callbacks import NonFiniteStateError, nonfinite_advice
from care_tf.train.config import ConfigError
from care_tf.train.strategy import WorkerInfo

UNREADABLE = "unreadable"
_FILE = re.compile(r"^ckpt-(\d+)(?:\.index|\.data-\d+-of-\d+)$")


class CheckpointError(ConfigError):
    """The run directory holds checkpoints but none can be resumed (CLI exit 2)."""


def checkpoint_steps(directory: str) -> list[int]:
    """Steps of the `ckpt-N.index` / `ckpt-N.data-*` files, readable or not, newest first."""
    if not tf.io.gfile.isdir(directory):
        return []
    steps = {int(m.group(1)) for f in tf.io.gfile.listdir(directory) if (m := _FILE.match(f))}
    return sorted(steps, reverse=True)


def has_checkpoint_files(directory: str) -> bool:
    """Whether `directory` holds any checkpoint file (readable or not)."""
    return bool(checkpoint_steps(directory))


def remove_stale_temp(directory: str) -> list[str]:
    """Deletes the `ckpt-N_temp/` folders of interrupted saves; their names."""
    if not tf.io.gfile.isdir(directory):
        return []
    stale = [
        f.rstrip("/") for f in tf.io.gfile.listdir(directory) if f.rstrip("/").endswith("_temp")
    ]
    for name in stale:
        tf.io.gfile.rmtree(os.path.join(directory, name))
    return stale


def set_aside_bad_index(directory: str) -> str | None:
    """Renames a garbled tf.train `checkpoint` index file to `checkpoint.unreadable`.

    The index only lists the `ckpt-N` files (a resume scans the files themselves and
    rewrites it), but `tf.train.CheckpointManager` fails to start on an index that does
    not parse. Returns the new path when the file was set aside, else None.
    """
    index = os.path.join(directory, "checkpoint")
    if not tf.io.gfile.exists(index):
        return None
    try:
        tf.train.get_checkpoint_state(directory)
        return None
    except (tf.errors.OpError, ValueError, UnicodeDecodeError) as e:  # text_format errors
        reason = f"{type(e).__name__}: {_first_line(e)}"
    aside = index + ".unreadable"
    tf.io.gfile.rename(index, aside, overwrite=True)
    _say(f"the index file {index} does not parse ({reason}); moved to {aside}.")
    return aside


def unreadable_reason(prefix: str) -> str | None:
    """Why the checkpoint `prefix` (".../ckpt-N") cannot be resumed; None when whole.

    Reads every numeric tensor back (TF checks each one's CRC32C), and refuses
    NaN/Inf values, so a damaged or poisoned checkpoint is never restored.
    """
    if not tf.io.gfile.exists(prefix + ".index"):
        return "its .index file is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        dtypes = reader.get_variable_to_dtype_map()
        nonfinite = 0
        for key, dtype in dtypes.items():
            if dtype in (tf.variant, tf.string, tf.resource):
                continue  # the data iterator's state: checked by the restore itself
            value = np.asarray(reader.get_tensor(key))
            if dtype.is_floating and not np.isfinite(value).all():
                nonfinite += 1
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:  # reader's errors
        return f"it does not read back ({type(e).__name__}: {_first_line(e)})"
    if nonfinite:
        return f"{nonfinite} of its tensors hold NaN/Inf"
    return None


def _drop_failed_restore() -> None:
    """Frees a failed restore now, without the "Value in checkpoint could not be found"
    warnings tf.train would print for it at exit (after the run's own error line)."""
    import gc

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        gc.collect()
    finally:
        logger.setLevel(level)


def _first_line(error: Exception) -> str:
    text = str(getattr(error, "message", None) or error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _say(message: str) -> None:
    print(f"checkpoint: {message}", file=sys.stderr, flush=True)


def weight_map(model: keras.Model) -> dict:
    """`{"index": variable}` over every model weight (online, target, BN statistics).

    Keyed by position: `model.weights` has a fixed order for a given config, while
    paths hold layer names Keras may number (`trans_stack_1`) or that changed
    between versions.
    """
    return {f"{i:05d}": v for i, v in enumerate(model.weights)}


def _unescape(name: str) -> str:
    """A checkpoint object name back to its dict key (tf.train writes "/" as ".S", "." as "..")."""
    out, i = [], 0
    while i < len(name):
        if name[i] == "." and i + 1 < len(name):
            out.append("/" if name[i + 1] == "S" else name[i + 1])
            i += 2
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def legacy_weight_map(model: keras.Model, path: str) -> dict | None:
    """For a checkpoint keyed "index:path" (written before 2026-11-30): its keys, by index.

    Returns None for a checkpoint of the current layout.
    """
    keys = {
        _unescape(name.split("/")[1])
        for name, _ in tf.train.list_variables(path)
        if name.startswith("weights/")
    }
    if not any(":" in k for k in keys):
        return None
    weights = model.weights
    return {k: weights[int(k.split(":", 1)[0])] for k in keys}


class TrainCheckpoint:
    """Saves and restores a run's state at step granularity.

    Args:
        model_dir: str. The run directory.
        model: the compiled CARE model (its optimizer is saved too).
        input_position: tf.Variable (int64) or None. Examples this worker's input
            pipeline has read (set it before each `save`).
        worker: WorkerInfo. Chief writes the real checkpoint.
        keep: int. Checkpoints kept.
        base_lr: float or None. The run's `optimizer.base_lr`, for the advice of a
            non-finite stop.
    """

    def __init__(
        self,
        model_dir: str,
        model: keras.Model,
        input_position=None,
        *,
        worker: WorkerInfo,
        keep: int = 3,
        base_lr: float | None = None,
    ):
        self.model_dir = model_dir
        self.directory = layout.path(model_dir, layout.CHECKPOINTS)
        self.worker = worker
        self.keep = keep
        self.base_lr = base_lr
        self.last_saved: int | None = None
        own_dir = os.path.join(self.directory, "workers", f"worker-{worker.task_id}")
        for folder in (self.directory,) if worker.is_chief else (own_dir,):
            for name in remove_stale_temp(folder):
                _say(f"removed {name}/ in {folder}, left by an interrupted save.")
        if worker.is_chief:
            set_aside_bad_index(self.directory)
        state = {"weights": weight_map(model), "optimizer": model.optimizer}
        self._count_nonfinite, self.num_tensors = _nonfinite_counter(
            [*model.weights, *model.optimizer.variables]
        )
        own_position = input_position is not None and not worker.is_chief
        if input_position is not None and worker.is_chief:
            state["input_position"] = input_position
        self.checkpoint = tf.train.Checkpoint(**state)
        self._model, self._state = model, state
        if worker.is_chief:
            target = self.directory
        else:  # scratch copy, deleted after each save
            target = os.path.join(self.directory, "workers", f"scratch-{worker.task_id}")
        self.manager = tf.train.CheckpointManager(self.checkpoint, target, max_to_keep=keep)
        self.data_manager = None
        if own_position:
            self.data_checkpoint = tf.train.Checkpoint(input_position=input_position)
            self.data_manager = tf.train.CheckpointManager(
                self.data_checkpoint,
                os.path.join(self.directory, "workers", f"worker-{worker.task_id}"),
                max_to_keep=keep,
            )

    @property
    def latest_step(self) -> int | None:
        """Step of the newest checkpoint file in the directory, None when there is none."""
        steps = checkpoint_steps(self.directory)
        return steps[0] if steps else None

    def nonfinite_tensors(self) -> int:
        """How many weight / optimizer tensors hold a NaN or Inf (one compiled reduction)."""
        return int(self._count_nonfinite())

    def save(self, step: int) -> str | None:
        """Writes the checkpoint of `step` (every worker must call this).

        Raises:
            NonFiniteStateError: a weight or optimizer tensor is NaN/Inf; nothing is written.
        """
        bad = self.nonfinite_tensors()
        if bad:
            kept = (
                f"the last good checkpoint (step {self.last_saved}) is kept in {self.directory}"
                if self.last_saved is not None
                else "no checkpoint had been written yet"
            )
            raise NonFiniteStateError(
                f"Non-finite weights after step {step} ({bad} of {self.num_tensors} weight and "
                f"optimizer tensors hold NaN/Inf); training stopped and nothing was saved from "
                f"this step: {kept}. {nonfinite_advice(self.model_dir, self.base_lr)}"
            )
        path = self.manager.save(checkpoint_number=step)
        self.last_saved = step
        if not self.worker.is_chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
            if self.data_manager is not None:
                self.data_manager.save(checkpoint_number=step)
            return None
        return path

    def _checkpoint_for(self, prefix: str) -> tf.train.Checkpoint:
        """This run's checkpoint object, keyed as the files at `prefix` are (old or new)."""
        legacy = legacy_weight_map(self._model, prefix)
        # A new root object per attempt: a failed restore is dropped with it.
        return tf.train.Checkpoint(**{**self._state, **({"weights": legacy} if legacy else {})})

    def restore_latest(self) -> int | None:
        """Restores the newest checkpoint that reads back whole; its step, None when none.

        Tries the `ckpt-N` files newest first; a damaged one (missing or garbled
        `.index`, data that fails its checksum or does not match the model, NaN/Inf
        values) is reported, skipped and, by the chief, moved to `unreadable/ckpt-N/`.

        Raises:
            CheckpointError: checkpoint files exist but none can be restored.
        """
        skipped = []
        misfits = []  # whole checkpoints that do not fit this model: a config change
        step = None
        for candidate in checkpoint_steps(self.directory):
            prefix = os.path.join(self.directory, f"ckpt-{candidate}")
            reason = unreadable_reason(prefix)
            if reason is None:
                trial = self._checkpoint_for(prefix)
                try:
                    trial.restore(prefix).assert_existing_objects_matched()
                except (tf.errors.OpError, AssertionError, ValueError, IndexError) as e:
                    reason = f"it does not restore ({type(e).__name__}: {_first_line(e)})"
                    misfits.append((candidate, _first_line(e)))
                if reason is not None:
                    del trial
                    _drop_failed_restore()
            if reason is None:
                step = candidate
                break
            skipped.append((candidate, reason))
        if step is None:
            if not skipped:
                return None
            if misfits:
                newest, detail = misfits[0]
                raise CheckpointError(
                    f"--resume: the checkpoints in {self.directory} read back whole but do not "
                    f"fit the model of the config (ckpt-{newest}: {detail}): the config "
                    f"({layout.path(self.model_dir, layout.CONFIG)} or --config) describes "
                    "another model than the one the run trained. Resume with the config the "
                    "run was started with; the checkpoints are intact and nothing was moved."
                )
            why = "; ".join(f"ckpt-{s}: {r}" for s, r in skipped)
            raise CheckpointError(
                f"--resume: no checkpoint in {self.directory} can be restored ({why}). "
                "Nothing was overwritten. Restore the files from a copy, or move the folder "
                "aside to start the run again from step 0."
            )
        for candidate, reason in skipped:
            moved = self._move_aside(candidate) if self.worker.is_chief else None
            where = f"; moved to {moved}" if moved else ""
            _say(f"skipped ckpt-{candidate}: {reason}{where}.")
        if skipped:
            _say(f"resuming from ckpt-{step}, the newest checkpoint that reads back whole.")
        if self.worker.is_chief:
            self._rewrite_index(step)
        self.last_saved = step
        if self.data_manager is not None:
            data_path = os.path.join(self.data_manager.directory, f"ckpt-{step}")
            if tf.io.gfile.exists(data_path + ".index"):
                self.data_checkpoint.restore(data_path).assert_existing_objects_matched()
            else:
                print(
                    f"warning: worker {self.worker.task_id} has no data position for step {step}; "
                    "its input restarts from the beginning of its shard."
                )
        return step

    def _move_aside(self, step: int) -> str:
        """Moves every `ckpt-<step>.*` file into its own folder `unreadable/ckpt-<step>`
        (`ckpt-<step>.2`, `.3`... when an earlier resume set one aside already), so a
        checkpoint's files stay together; that folder."""
        parent = os.path.join(self.directory, UNREADABLE)
        target, n = os.path.join(parent, f"ckpt-{step}"), 1
        while tf.io.gfile.exists(target):
            n += 1
            target = os.path.join(parent, f"ckpt-{step}.{n}")
        tf.io.gfile.makedirs(target)
        for name in tf.io.gfile.listdir(self.directory):
            name = name.rstrip("/")
            match = _FILE.match(name)
            if match and int(match.group(1)) == step:
                tf.io.gfile.rename(os.path.join(self.directory, name), os.path.join(target, name))
        return target

    def _rewrite_index(self, step: int) -> None:
        """tf.train's `checkpoint` index listing the kept checkpoints up to `step`."""
        steps = [
            s
            for s in checkpoint_steps(self.directory)
            if s <= step and tf.io.gfile.exists(os.path.join(self.directory, f"ckpt-{s}.index"))
        ]
        kept = [os.path.join(self.directory, f"ckpt-{s}") for s in steps[: self.keep][::-1]]
        stamps = [tf.io.gfile.stat(p + ".index").mtime_nsec / 1e9 for p in kept]
        tf.__internal__.train.update_checkpoint_state(
            self.directory,
            model_checkpoint_path=kept[-1],
            all_model_checkpoint_paths=kept,
            all_model_checkpoint_timestamps=stamps,
            last_preserved_timestamp=min(stamps) - 1.0,  # all of them may rotate out
            save_relative_paths=True,
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.directory, max_to_keep=self.keep
        )


def _nonfinite_counter(variables):
    """(compiled `() -> int32`: how many floating `variables` hold NaN/Inf, their number)."""
    floats = []
    for v in variables:
        value = getattr(v, "value", v)  # keras.Variable -> its tf.Variable
        if tf.as_dtype(value.dtype).is_floating:
            floats.append(value)

    @tf.function
    def count():
        if not floats:
            return tf.constant(0, tf.int32)
        flags = [tf.reduce_all(tf.math.is_finite(v)) for v in floats]
        return tf.reduce_sum(tf.cast(tf.logical_not(tf.stack(flags)), tf.int32))

    return count, len(floats)
