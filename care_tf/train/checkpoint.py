"""Step-exact checkpoints: model weights, optimizer state and the tf.data iterator.

Layout under `model_dir/checkpoints/`:

    ckpt-N.*            the real checkpoint at step N (model, optimizer, iterator of
                        worker 0), written by the chief only; the last K are kept
    checkpoint          tf.train's index of them
    workers/worker-I/   multi-worker only: worker I's own data-iterator checkpoint
                        (each worker reads its own shard, so each keeps its position)

Under `MultiWorkerMirroredStrategy` every worker takes part in a save (reading
distributed variables may need collectives), but non-chief workers write the
model to a scratch directory they delete at once (the usual TF pattern).

The model's weights are saved as a flat `{index:path: variable}` map rather
than through the model object: Keras 3 layers that keep sub-layers in Python
lists (like the TransStack blocks) are invisible to `tf.train.Checkpoint`'s
object graph, and the flat map is immune to that.
"""

from __future__ import annotations

import os
import shutil

import keras
import tensorflow as tf

from care_tf import model_dir as layout
from care_tf.train.strategy import WorkerInfo


def weight_map(model: keras.Model) -> dict:
    """`{"index:path": variable}` over every model weight (online, target, BN statistics).

    Paths alone are not unique (the target backbone is a clone with the same layer
    names); `model.weights` has a fixed order for a given config.
    """
    return {f"{i:05d}:{v.path}": v for i, v in enumerate(model.weights)}


class TrainCheckpoint:
    """Saves and restores a run's state at step granularity.

    Args:
        model_dir: str. The run directory.
        model: the compiled CARE model (its optimizer is saved too).
        iterator: tf.data.Iterator or None. This worker's data iterator.
        worker: WorkerInfo. Chief writes the real checkpoint.
        keep: int. Checkpoints kept.
    """

    def __init__(
        self,
        model_dir: str,
        model: keras.Model,
        iterator=None,
        *,
        worker: WorkerInfo,
        keep: int = 3,
    ):
        self.directory = layout.path(model_dir, layout.CHECKPOINTS)
        self.worker = worker
        state = {"weights": weight_map(model), "optimizer": model.optimizer}
        own_iterator = iterator is not None and not worker.is_chief
        if iterator is not None and worker.is_chief:
            state["iterator"] = iterator
        self.checkpoint = tf.train.Checkpoint(**state)
        if worker.is_chief:
            target = self.directory
        else:  # scratch copy, deleted after each save
            target = os.path.join(self.directory, "workers", f"scratch-{worker.task_id}")
        self.manager = tf.train.CheckpointManager(self.checkpoint, target, max_to_keep=keep)
        self.data_manager = None
        if own_iterator:
            self.data_checkpoint = tf.train.Checkpoint(iterator=iterator)
            self.data_manager = tf.train.CheckpointManager(
                self.data_checkpoint,
                os.path.join(self.directory, "workers", f"worker-{worker.task_id}"),
                max_to_keep=keep,
            )

    @property
    def latest_step(self) -> int | None:
        """Step of the newest real checkpoint, None when there is none."""
        path = tf.train.latest_checkpoint(self.directory)
        return None if path is None else int(path.rsplit("-", 1)[-1])

    def save(self, step: int) -> str | None:
        """Writes the checkpoint of `step` (every worker must call this)."""
        path = self.manager.save(checkpoint_number=step)
        if not self.worker.is_chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
            if self.data_manager is not None:
                self.data_manager.save(checkpoint_number=step)
            return None
        return path

    def restore_latest(self) -> int | None:
        """Restores the newest real checkpoint; its step, or None when there is none."""
        path = tf.train.latest_checkpoint(self.directory)
        if path is None:
            return None
        self.checkpoint.restore(path).assert_existing_objects_matched()
        step = int(path.rsplit("-", 1)[-1])
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
