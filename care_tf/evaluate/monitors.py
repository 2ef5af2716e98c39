"""Online monitors of self-supervised pretraining, as Keras callbacks for `fit()`.

- `KNNMonitor`: weighted kNN accuracy of the frozen backbone every N epochs.
- `OnlineLinearProbe`: a linear head trained alongside pretraining on
  stop-gradient features of labelled batches (solo-learn style), with its own
  optimizer; validation accuracy every N epochs.

Neither touches the SSL step: the backbone runs with `training=False` under a
stop-gradient (BN statistics unchanged, no gradients to the model), the probe
head is initialised and shuffled with explicit seeds (no draw from global random
state), and the monitors' data are their own datasets.

Both add their figures to the epoch `logs` dict, so CSVLogger / TensorBoard /
History record them **provided the monitors come before those callbacks** in the
`callbacks` list (callbacks run in list order and share one logs dict). Pass
`log_dir` to also write them to TensorBoard event files directly, as
`monitor/<name>` on the model's global-step axis (the axis of the training CLI's
`train/` scalars); `KNNMonitor(attention_images=N)` adds a grid of attention maps.

Example:
>>> monitors = [
...     KNNMonitor((x_train, y_train), (x_val, y_val), every_n_epochs=5),
...     OnlineLinearProbe((x_train, y_train), (x_val, y_val), num_classes=10),
... ]
>>> care.fit(ssl_data, epochs=100, callbacks=monitors + [keras.callbacks.CSVLogger(path)])
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from care_tf.evaluate.features import as_dataset, extract_features, feature_fn
from care_tf.evaluate.knn import DEFAULT_K, DEFAULT_TEMPERATURE, knn_evaluate, top_k_accuracy
from care_tf.evaluate.linear import MOMENTUM, make_linear_head


def _backbone_of(model: keras.Model, backbone: keras.Model | None) -> keras.Model:
    if backbone is not None:
        return backbone
    found = getattr(model, "backbone", None)
    if found is None:
        raise ValueError(
            f"Model {model.name!r} has no `.backbone` attribute; pass `backbone=` to the monitor."
        )
    return found


def write_scalar(tag: str, value: float, step: int) -> None:
    """Writes a scalar that TensorBoard's Scalars tab shows, to the default writer.

    Equivalent to `tf.summary.scalar`, which needs the `tensorboard` package.
    """
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=metadata)


def global_step(model: keras.Model) -> int:
    """Training steps taken: CARE's own counter `model.steps`, else the optimizer's."""
    steps = getattr(model, "steps", None)
    if steps is None:
        steps = model.optimizer.iterations
    return int(keras.ops.convert_to_numpy(steps))


def _due(epoch: int, every: int, total_epochs: int | None) -> bool:
    """Evaluate after the first epoch (so CSV headers include the keys), every
    `every` epochs, and after the last one."""
    last = total_epochs is not None and epoch + 1 == total_epochs
    return epoch == 0 or (epoch + 1) % every == 0 or last


class _Monitor(keras.callbacks.Callback):
    def __init__(self, log_dir: str | None, backbone: keras.Model | None):
        super().__init__()
        self.log_dir = log_dir
        self._explicit_backbone = backbone
        self._writer = None

    @property
    def backbone(self) -> keras.Model:
        return _backbone_of(self.model, self._explicit_backbone)

    @property
    def writer(self):
        """The summary writer of `log_dir` (created on first use)."""
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer

    def _write(self, values: dict) -> None:
        """Scalars `monitor/<name>` at the model's global step (the training scalars' axis)."""
        if self.log_dir is None or not values:
            return
        step = global_step(self.model)
        with self.writer.as_default():
            for name, value in values.items():
                write_scalar(f"monitor/{name}", value, step)
        self.writer.flush()


class KNNMonitor(_Monitor):
    """Weighted kNN accuracy (InstDisc protocol) of the backbone during `fit()`.

    Logs `{prefix}_top1` and `{prefix}_top5` (fractions) after the first epoch,
    every `every_n_epochs` epochs and after the last one.

    Args:
        train_data: labelled memory bank: `(images, labels)` arrays (images
            normalised float32) or a finite batched dataset.
        val_data: labelled queries, same forms.
        every_n_epochs: int. Defaults to 1.
        k: int. Neighbours. Defaults to 200.
        temperature: float. Vote temperature. Defaults to 0.1.
        num_classes: int. Defaults to the largest label + 1.
        batch_size: int. Batch size for array data.
        feature_key: str. Backbone output used. Defaults to `"pooled"`.
        prefix: str. Log-key prefix. Defaults to `"knn"`.
        log_dir: str. Optional TensorBoard directory written directly
            (`monitor/<prefix>_top1` ... at the model's global step).
        backbone: keras.Model. Defaults to `model.backbone` of the fitted model.
        verbose: int. Print the accuracy when computed.
        attention_images: int. With `log_dir`: also write `monitor/attention`, a grid
            of Grad-CAM maps (res5) of the first N query images, at each evaluation.
            Defaults to 0 (off).
    """

    def __init__(
        self,
        train_data,
        val_data,
        *,
        every_n_epochs: int = 1,
        k: int = DEFAULT_K,
        temperature: float = DEFAULT_TEMPERATURE,
        num_classes: int | None = None,
        batch_size: int = 256,
        feature_key: str = "pooled",
        prefix: str = "knn",
        log_dir: str | None = None,
        backbone: keras.Model | None = None,
        verbose: int = 0,
        attention_images: int = 0,
    ):
        super().__init__(log_dir, backbone)
        if attention_images < 0:
            raise ValueError(f"`attention_images` must be >= 0. Received: {attention_images}")
        self.attention_images = int(attention_images)
        if every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be >= 1. Received: {every_n_epochs}")
        self.train_data = as_dataset(train_data, batch_size)
        self.val_data = as_dataset(val_data, batch_size)
        self.every_n_epochs = every_n_epochs
        self.k = k
        self.temperature = temperature
        self.num_classes = num_classes
        self.feature_key = feature_key
        self.prefix = prefix
        self.verbose = verbose
        self.history: list[tuple[int, float, float]] = []
        self._attention_batch = None

    def evaluate(self) -> dict:
        """kNN `{prefix}_top1`, `{prefix}_top5` of the current backbone."""
        backbone = self.backbone
        train_x, train_y = extract_features(backbone, self.train_data, key=self.feature_key)
        val_x, val_y = extract_features(backbone, self.val_data, key=self.feature_key)
        result = knn_evaluate(
            train_x,
            train_y,
            val_x,
            val_y,
            num_classes=self.num_classes,
            k=self.k,
            temperature=self.temperature,
        )
        return {f"{self.prefix}_top1": result["top1"], f"{self.prefix}_top5": result["top5"]}

    def _write_attention(self) -> None:
        from care_tf.evaluate.attention import attention_grid_image, attention_maps

        if self._attention_batch is None:
            images = (
                self.val_data.unbatch().take(self.attention_images).batch(self.attention_images)
            )
            self._attention_batch = np.asarray(next(iter(images))[0])
        images = self._attention_batch
        grid = attention_grid_image(images, {"attention": attention_maps(self.backbone, images)})
        with self.writer.as_default():
            tf.summary.image("monitor/attention", grid[None], step=global_step(self.model))
        self.writer.flush()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not _due(epoch, self.every_n_epochs, self.params.get("epochs")):
            return
        values = self.evaluate()
        if logs is not None:
            logs.update(values)
        self.history.append((epoch, *values.values()))
        self._write(values)
        if self.attention_images and self.log_dir is not None:
            self._write_attention()
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))


class OnlineLinearProbe(_Monitor):
    """A linear probe trained alongside pretraining on stop-gradient features.

    After every `every_n_steps` SSL steps it takes one SGD step of its own head
    (`make_linear_head`: Dense + BN) on one batch of `train_data`, with features
    `stop_gradient(backbone(x, training=False))`. The SSL model's weights,
    optimizer and random state are never touched. At each epoch end it logs
    `{prefix}_loss` and `{prefix}_train_top1` (running over the epoch) and, every
    `val_every_n_epochs` epochs (and after the first and last), `{prefix}_val_top1`
    and `{prefix}_val_top5` on `val_data`.

    Args:
        train_data: `(images, labels)` arrays (shuffled here with `seed`, repeated)
            or a batched dataset (repeated here; shuffle it yourself with a seed).
        val_data: optional labelled data, same forms, finite.
        num_classes: int.
        learning_rate: float. Peak lr of the head's SGD (momentum 0.9, cosine over
            the fit's total steps when known). Defaults to 0.1.
        every_n_steps: int. SSL steps per probe step. Defaults to 1.
        val_every_n_epochs: int. Defaults to 1.
        batch_size: int. Batch size for array data. Defaults to 256.
        feature_key: str. Defaults to `"pooled"`.
        seed: int. Head initialisation and shuffling seed. Defaults to 0.
        prefix: str. Log-key prefix. Defaults to `"probe"`.
        log_dir: str. Optional TensorBoard directory written directly.
        backbone: keras.Model. Defaults to `model.backbone`.
    """

    def __init__(
        self,
        train_data,
        val_data=None,
        *,
        num_classes: int,
        learning_rate: float = 0.1,
        every_n_steps: int = 1,
        val_every_n_epochs: int = 1,
        batch_size: int = 256,
        feature_key: str = "pooled",
        seed: int = 0,
        prefix: str = "probe",
        log_dir: str | None = None,
        backbone: keras.Model | None = None,
    ):
        super().__init__(log_dir, backbone)
        if every_n_steps < 1 or val_every_n_epochs < 1:
            raise ValueError("`every_n_steps` and `val_every_n_epochs` must be >= 1.")
        if isinstance(train_data, tf.data.Dataset):
            dataset = train_data
        else:
            images, labels = train_data
            dataset = (
                tf.data.Dataset.from_tensor_slices(
                    (np.asarray(images, np.float32), np.asarray(labels, np.int64))
                )
                .shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
                .batch(batch_size)
            )
        self.train_data = dataset.repeat()
        self.val_data = None if val_data is None else as_dataset(val_data, batch_size)
        self.num_classes = num_classes
        self.learning_rate = learning_rate
        self.every_n_steps = every_n_steps
        self.val_every_n_epochs = val_every_n_epochs
        self.feature_key = feature_key
        self.seed = seed
        self.prefix = prefix
        self.head: keras.Model | None = None
        self._steps_seen = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        backbone = self.backbone
        if self.head is None:  # keep training the same head across repeated fit() calls
            self.head = make_linear_head(self.num_classes, seed=self.seed, name="online_probe")
            steps = self.params.get("steps")
            epochs = self.params.get("epochs")
            total = (steps * epochs) // self.every_n_steps if steps and epochs else None
            lr = (
                keras.optimizers.schedules.CosineDecay(self.learning_rate, max(1, total))
                if total
                else self.learning_rate
            )
            self.optimizer = keras.optimizers.SGD(lr, momentum=MOMENTUM)
            self._loss = keras.metrics.Mean(name="loss")
            self._accuracy = keras.metrics.SparseCategoricalAccuracy(name="top1")
            self._iterator = iter(self.train_data)
        self._features = feature_fn(backbone, self.feature_key)
        self._train_step = tf.function(self._step, reduce_retracing=True)

    def _step(self, images, labels):
        features = self._features(images)
        with tf.GradientTape() as tape:
            logits = self.head(features, training=True)
            loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            loss = tf.reduce_mean(loss)
        variables = self.head.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        self._loss.update_state(loss)
        self._accuracy.update_state(labels, logits)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._steps_seen += 1
        if self._steps_seen % self.every_n_steps:
            return
        images, labels = next(self._iterator)
        self._train_step(images, labels)

    def evaluate(self) -> dict:
        """Probe `{prefix}_val_top1`, `{prefix}_val_top5` on `val_data` ({} without it)."""
        if self.val_data is None or self.head is None:
            return {}
        features, labels = extract_features(self.backbone, self.val_data, key=self.feature_key)
        logits = np.asarray(self.head(features, training=False))
        return {
            f"{self.prefix}_val_top1": top_k_accuracy(logits, labels, 1),
            f"{self.prefix}_val_top5": top_k_accuracy(logits, labels, 5),
        }

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = {}
        if self._loss.count.numpy() > 0:
            values[f"{self.prefix}_loss"] = float(self._loss.result())
            values[f"{self.prefix}_train_top1"] = float(self._accuracy.result())
        self._loss.reset_state()
        self._accuracy.reset_state()
        if _due(epoch, self.val_every_n_epochs, self.params.get("epochs")):
            values.update(self.evaluate())
        if logs is not None:
            logs.update(values)
        self._write(values)
