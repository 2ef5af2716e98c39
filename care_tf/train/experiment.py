"""One config -> the compiled CARE model, its data and its callbacks.

`build_experiment` is the single builder behind both ways of training:

- the CLI (`python -m care_tf.train`, `care_tf/train/loop.py`) runs its own
  step-exact loop over `Experiment.model` and `Experiment.dataset`;
- Python users (a notebook, Colab) call `Experiment.fit()`, which is plain
  `model.fit` over the same model, data, schedule, optimizer and monitors.

Same config and seed, same model, optimizer, learning-rate schedule, target
momentum schedule, data subset, augmentation draws and shuffling on both routes.

Example:
>>> exp = care_tf.build_experiment("quickstart")   # a shipped config's name, or a YAML path
>>> history = exp.fit()
>>> exp.save("runs/quickstart")   # the CLI's run directory: config.yaml, model.keras, ...
"""

from __future__ import annotations

import dataclasses
import os

import keras
import tensorflow as tf

from care_tf.train.config import Config, ConfigError, Derived, derive, load_config
from care_tf.train.optimizers import build_optimizer, model_weight_decay
from care_tf.train.schedules import WarmupCosine
from care_tf.train.strategy import WorkerInfo, worker_info


# ------------------------------------------------------------------- pieces
def load_train_source(cfg: Config):
    """The training Source of `cfg.data`, cut to `max_examples` when set."""
    from care_tf.data import load_source

    try:
        source = load_source(cfg.data.source, cfg.data.split, skip_corrupt=cfg.data.skip_corrupt)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"Config key 'data.source' ({cfg.data.source!r}): {e}") from e
    n = cfg.data.max_examples
    if n is not None:
        images = getattr(source, "images", None)
        if images is None:
            raise ConfigError(
                "Config key 'data.max_examples' works with in-memory sources (fashion_mnist); "
                f"{cfg.data.source!r} is read from files: use a split expression instead."
            )
        source = dataclasses.replace(
            source, images=images[:n], labels=source.labels[:n], num_examples=min(n, len(images))
        )
    return source


def num_examples_of(cfg: Config, source) -> int:
    """Examples per epoch: `data.num_examples`, else the source's size."""
    require_prepared = getattr(source, "require_prepared", None)
    if require_prepared is not None:  # a TFDS dataset that was never built
        try:
            require_prepared()
        except FileNotFoundError as e:
            raise ConfigError(f"Config key 'data.source' ({cfg.data.source!r}): {e}") from e
    n = cfg.data.num_examples or source.num_examples
    if not n:
        raise ConfigError(
            f"The size of {cfg.data.source!r} is unknown: set data.num_examples "
            "(examples per epoch)."
        )
    return int(n)


def make_augmenter(cfg: Config):
    """The config's two-view augmentation: `TwoViewAugment(model.image_size, seed=train.seed,
    **data.augment)` (the paper's views unless `data.augment` changes them)."""
    from care_tf.data import TwoViewAugment

    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.data.augment.items()}
    try:
        return TwoViewAugment(cfg.model.image_size, seed=cfg.train.seed, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"Config key 'data.augment' ({cfg.data.augment}): {e}. Its keys are "
            "care_tf.TwoViewAugment's arguments (scale, ratio, blur_prob, ...); see docs/data.md."
        ) from e


def build_model(cfg: Config, derived: Derived):
    """The compiled CARE model of `cfg` (call inside `strategy.scope()`).

    Returns:
        (model, schedule): the schedule gives the lr of any step.
    """
    from care_tf.models import CARE

    m = cfg.model
    backbone_kwargs = dict(m.backbone_kwargs)
    if m.base_channels is not None:
        backbone_kwargs["base_channels"] = m.base_channels
    augmenter = None
    if cfg.data.placement == "device":
        augmenter = make_augmenter(cfg)
    model = CARE.from_preset(
        m.backbone,
        m.image_size,
        stem=m.stem,
        sync_bn=m.sync_bn,
        backbone_kwargs=backbone_kwargs,
        transformer_kwargs=dict(m.transformer_kwargs) if m.t_stream else None,
        hidden_dim=m.hidden_dim,
        projection_dim=m.projection_dim,
        lambda_att=m.lambda_att,
        base_momentum=m.base_momentum,
        total_steps=derived.total_steps,  # the momentum schedule spans the whole run
        t_stream=m.t_stream,
        weight_decay=model_weight_decay(cfg.optimizer),
        augmenter=augmenter,
    )
    s = cfg.schedule
    schedule = WarmupCosine(
        derived.peak_lr,
        derived.total_steps,
        derived.warmup_steps,
        warmup_start_lr=s.warmup_start_lr,
        end_lr=s.end_lr,
    )
    optimizer = build_optimizer(cfg.optimizer, schedule, model.trainable_weights)
    model.compile(optimizer=optimizer)
    model.optimizer.build(model.trainable_weights)
    return model, schedule


def make_dataset(
    cfg: Config,
    source,
    worker: WorkerInfo,
    *,
    input_context: tf.distribute.InputContext | None = None,
    start_position: int = 0,
    service_job: str | None = None,
) -> tf.data.Dataset:
    """This worker's stream of batches of global_batch / num_workers examples, or, with
    the `input_context` of `distribute_datasets_from_function`, of per-replica batches,
    from `start_position` on. Device placement yields (images, original sizes), which
    `CARE.train_step` augments on the device."""
    from care_tf.data import make_pretrain_dataset

    context = input_context or tf.distribute.InputContext(
        num_input_pipelines=worker.num_workers,
        input_pipeline_id=worker.task_id,
        num_replicas_in_sync=worker.num_workers,  # one batch per worker, sliced per replica
    )
    return make_pretrain_dataset(
        source,
        batch_size=cfg.train.global_batch_size,
        image_size=cfg.model.image_size,
        seed=cfg.train.seed,
        placement=cfg.data.placement,
        input_context=context,
        shuffle_buffer=cfg.data.shuffle_buffer,
        cache=cfg.data.cache,
        skip_corrupt=cfg.data.skip_corrupt,
        split=cfg.data.split,
        return_image_sizes=cfg.data.placement == "device",
        start_position=start_position,
        service=cfg.data.service,
        service_job=service_job,
        augment=make_augmenter(cfg) if cfg.data.placement == "host" else None,
    )


def labelled_split(spec: str, split: str, image_size: int, limit: int):
    """`(dataset, source)`: the first `limit` centre-cropped (images, labels) of a split."""
    from care_tf.data import load_source, make_eval_dataset

    try:
        source = load_source(spec, split)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"Config key 'monitor.source' ({spec!r}, split {split!r}): {e}") from e
    if not source.labelled:
        raise ConfigError(
            f"The monitors need labels, and {spec!r} split {split!r} has none: set "
            "monitor.source to a labelled source (e.g. class sub-folders for folder:/path)."
        )
    dataset = make_eval_dataset(
        source, split=split, train=False, image_size=image_size, batch_size=256
    )
    return dataset.unbatch().take(limit).batch(256), source


def make_monitors(cfg: Config, model_dir: str | None) -> list:
    """The online kNN / linear-probe callbacks asked for in `cfg.monitor` (may be [])."""
    mon = cfg.monitor
    if not mon.knn_every_epochs and not mon.linear_probe:
        return []
    from care_tf.evaluate.monitors import KNNMonitor, OnlineLinearProbe

    spec = mon.source or cfg.data.source
    train, source = labelled_split(spec, "train", cfg.model.image_size, mon.train_examples)
    val, _ = labelled_split(spec, mon.val_split, cfg.model.image_size, mon.val_examples)
    log_dir = None
    if model_dir is not None:
        from care_tf import model_dir as layout

        log_dir = os.path.join(layout.path(model_dir, layout.LOGS), "monitor")
    monitors = []
    if mon.knn_every_epochs:
        monitors.append(
            KNNMonitor(
                train,
                val,
                every_n_epochs=mon.knn_every_epochs,
                num_classes=source.num_classes,
                log_dir=log_dir,
                attention_images=mon.attention_images,
            )
        )
    if mon.linear_probe:
        monitors.append(
            OnlineLinearProbe(train, val, num_classes=source.num_classes, log_dir=log_dir)
        )
    return monitors


# -------------------------------------------------------------- experiment
@dataclasses.dataclass
class Experiment:
    """A run built from one config (see `build_experiment`).

    Attributes:
        config: the validated Config.
        derived: steps per epoch, total and warm-up steps, peak lr.
        model: the compiled CARE model (optimizer built).
        schedule: the learning-rate schedule (`schedule.value(step)`).
        source: the training Source (after `data.max_examples`).
        dataset: this worker's batches (two views, or raw images with device placement).
        callbacks: the monitors of `config.monitor` (may be empty).
        worker: this process's place among the workers.
    """

    config: Config
    derived: Derived
    model: keras.Model
    schedule: WarmupCosine
    source: object
    dataset: tf.data.Dataset
    callbacks: list
    worker: WorkerInfo

    @property
    def steps_per_epoch(self) -> int:
        return self.derived.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.derived.total_steps

    @property
    def epochs(self) -> int:
        """Whole epochs covering `total_steps` (the last may be cut short by `fit`)."""
        return -(-self.total_steps // self.steps_per_epoch)

    def fit(self, epochs: int | None = None, callbacks: list | None = None, **kwargs):
        """`model.fit` over the experiment's data for the config's schedule.

        Args:
            epochs: int. Stop after this many epochs (the schedules still span the
                config's run). Defaults to the whole run (`total_steps`).
            callbacks: extra Keras callbacks, run after the config's monitors.
            **kwargs: further `model.fit` arguments (e.g. `verbose`).

        Returns:
            The Keras `History`.
        """
        epochs = self.epochs if epochs is None else epochs
        if not 1 <= epochs <= self.epochs:
            raise ValueError(f"`epochs` must be in [1, {self.epochs}]. Received: epochs={epochs}")
        partial = self.total_steps % self.steps_per_epoch
        stop = [StopAtStep(self.total_steps)] if partial else []
        return self.model.fit(
            self.dataset,
            steps_per_epoch=self.steps_per_epoch,
            epochs=epochs,
            callbacks=[*self.callbacks, *stop, *(callbacks or [])],
            **kwargs,
        )

    def save(self, model_dir: str) -> None:
        """Writes the run directory a CLI run ends with, by the CLI's own functions:
        `config.yaml` (resolved, with `derived:`), `model.keras`, `backbone.keras` and
        `train_state.json` (step, epoch, lr, momentum, loss, weight digests).

        So every command takes `model_dir` as it takes a CLI run (`care_tf.evaluate`,
        `care_tf.export`, which reads the training step from `train_state.json`).
        `backbone.keras` is a plain Keras model, images -> pooled features
        (`care_tf.feature_extractor`); `care_tf.load_backbone(model_dir)` reads it.
        """
        from care_tf.train import loop

        step = int(self.model.steps.numpy())
        total = self.total_steps
        result = loop.RunResult(
            step=step,
            epoch=step // self.steps_per_epoch,
            total_steps=total,
            complete=step >= total,
            lr=self.schedule.value(min(step, total)),
            momentum=float(self.model.momentum()),
            # The running metrics of the last epoch, as the CLI's step function reports them.
            logs={m.name: float(m.result()) for m in self.model.metrics} if step else {},
        )
        if self.worker.is_chief:
            os.makedirs(model_dir, exist_ok=True)
            loop.write_config(model_dir, self.config, self.derived)
        loop.finish(self.model, model_dir, result, self.worker)


class StopAtStep(keras.callbacks.Callback):
    """Stops `fit` once the model's own step counter reaches `total_steps`."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = int(total_steps)

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.steps.numpy()) >= self.total_steps:
            self.model.stop_training = True


def build_experiment(
    config: str | os.PathLike | Config,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    strategy: tf.distribute.Strategy | None = None,
    model_dir: str | None = None,
) -> Experiment:
    """Builds the compiled model, dataset and monitors of one experiment config.

    Sets what the run depends on first: op determinism (`train.deterministic`),
    the global seed (`train.seed`) and the precision policy (`train.precision`).

    Args:
        config: a shipped config's name (`"quickstart"`, see `care_tf.list_configs()`),
            a YAML path (e.g. `"configs/quickstart.yaml"`) or a `Config`.
        overrides: `section.key=value` strings applied to a YAML config
            (as the CLI's `--set`).
        strategy: tf.distribute strategy to build under. Defaults to the current one.
        model_dir: run directory the monitors log to (TensorBoard); None logs nothing.

    Returns:
        An `Experiment`; `.fit()` trains it with `model.fit`.

    Raises:
        ConfigError: a bad config key, value or data source (the message names it).
    """
    if isinstance(config, Config):
        if overrides:
            raise ValueError("`overrides` apply to a YAML path; edit the Config object instead.")
        cfg = config
    else:
        cfg = load_config(os.fspath(config), list(overrides))
    strategy = strategy or tf.distribute.get_strategy()
    worker = worker_info(strategy)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg.train.seed)
    keras.mixed_precision.set_global_policy(cfg.train.precision)

    if cfg.data.service:
        from care_tf.data.service import wait_for_dispatcher

        try:
            wait_for_dispatcher(cfg.data.service, cfg.data.service_timeout)
        except ValueError as e:
            raise ConfigError(f"Config key 'data.service': {e}") from e
    source = load_train_source(cfg)
    derived = derive(cfg, num_examples_of(cfg, source))
    with strategy.scope():
        model, schedule = build_model(cfg, derived)
    dataset = make_dataset(cfg, source, worker)
    monitors = make_monitors(cfg, model_dir) if worker.is_chief else []
    return Experiment(cfg, derived, model, schedule, source, dataset, monitors, worker)


__all__ = [
    "Experiment",
    "build_experiment",
    "build_model",
    "make_dataset",
    "make_monitors",
    "load_train_source",
    "num_examples_of",
]
