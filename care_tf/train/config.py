"""The typed experiment config of `python -m care_tf.train`: schema, loading, overrides.

A config is a YAML file of sections (`model`, `data`, `optimizer`, `schedule`,
`train`, `checkpoint`, `monitor`), validated against the dataclasses below: an
unknown key or a value of the wrong type is a `ConfigError` naming the key
(`optimizer.base_lr`). A file may start from another with `base: other.yaml`
(a path relative to the file; its keys are overridden key by key). A config is
given as a path or as the name of one shipped with care_tf (`quickstart`; see
`care_tf.list_configs()` and `care_tf/train/config_names.py`). Values given
on the command line as `--set section.key=value` are parsed as YAML and applied
last.

Durations are given in epochs or steps and converted to steps once, in
`derive()`; the derived numbers (steps per epoch, total and warm-up steps, the
peak learning rate = base_lr x global_batch / base_batch_size) are written with
the resolved config into `model_dir/config.yaml` under `derived:`.

Regenerate the reference: `python -m care_tf.train.config --markdown > docs/configs.md`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import types
import typing
from typing import Any, Literal

import yaml

from care_tf.train.config_names import describe_missing, resolve_config

BASE_KEY = "base"
DERIVED_KEY = "derived"


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


def _field(default: Any, help: str) -> Any:
    """A dataclass field with a documented default (lists/dicts are copied)."""
    if isinstance(default, (dict, list)):
        return dataclasses.field(
            default_factory=lambda: copy.deepcopy(default), metadata={"help": help}
        )
    return dataclasses.field(default=default, metadata={"help": help})


# --------------------------------------------------------------------- schema
@dataclasses.dataclass
class ModelConfig:
    """The CARE model (`care_tf.CARE.from_preset`)."""

    backbone: str = _field("resnet50", "Backbone preset, one of `care_tf.list_backbones()`.")
    image_size: int = _field(224, "Square training crop size in pixels.")
    stem: Literal["imagenet", "cifar"] | None = _field(
        None, "ResNet stem; null picks `cifar` (3x3/1, no max-pool) for images <= 64 px."
    )
    base_channels: int | None = _field(
        None, "Backbone stem width (64 in the paper); smaller shrinks every stage (CPU configs)."
    )
    backbone_kwargs: dict = _field({}, "Extra backbone arguments.")
    transformer_kwargs: dict = _field(
        {},
        "Extra TransStack arguments (e.g. `num_blocks`; `sync_bn: true` synchronises its BN, "
        "per-replica by default as the authors'; `zero_init_residual: true`).",
    )
    t_stream: bool = _field(True, "Train the transformer stream; false = the BYOL baseline.")
    hidden_dim: int = _field(4096, "Hidden width of every projector / predictor MLP.")
    projection_dim: int = _field(256, "Output width of every projector / predictor MLP.")
    lambda_att: float = _field(100.0, "Weight of the attention loss L_att.")
    base_momentum: float = _field(
        0.99, "Target momentum at step 0; rises to 1 by a cosine over the run's total steps."
    )
    sync_bn: bool = _field(
        True, "Synchronised BatchNorm across replicas in the backbone and heads (the paper's)."
    )


@dataclasses.dataclass
class DataConfig:
    """The pre-training input pipeline (`care_tf.data`)."""

    source: str = _field(
        "fashion_mnist",
        "Image source: `fashion_mnist`, `tfds:NAME`, `folder:/path` or `tfrecord:/glob`.",
    )
    split: str = _field("train", "Split of the source to train on.")
    max_examples: int | None = _field(
        None, "Use only the first N examples of the split (small CPU runs); null = all."
    )
    num_examples: int | None = _field(
        None, "Examples per epoch when the source cannot tell (null = the source's count)."
    )
    placement: Literal["host", "device"] = _field(
        "host", "Where the two-view augmentation runs: `host` (tf.data) or `device` (in the step)."
    )
    shuffle_buffer: int = _field(
        10_000,
        "Record sources (TFRecord, TFDS): records shuffled together in one window "
        "(in memory, never checkpointed). Arrays and folders permute whole epochs.",
    )
    cache: bool = _field(False, "Ignored by pre-training (kept for old configs).")
    skip_corrupt: bool = _field(
        False,
        "Replace unreadable images by another image of their batch (logged) instead of failing.",
    )
    service: str | None = _field(
        None,
        "`grpc://HOST:PORT` of a tf.data service dispatcher: decode and augment on its "
        "workers (see docs/training.md); null = on this host.",
    )
    service_timeout: float = _field(
        60.0,
        "Seconds to wait for the `data.service` dispatcher to answer before failing "
        "(progress is printed meanwhile).",
    )
    augment: dict = _field(
        {},
        "Arguments of the two-view augmentation (`care_tf.TwoViewAugment`) that differ from "
        "the paper's, e.g. `{scale: [0.2, 1.0], blur_prob: [0.0, 0.0]}` for small images; "
        "{} = the paper's.",
    )


@dataclasses.dataclass
class OptimizerConfig:
    """Optimizer and weight decay. lr = base_lr x global_batch / base_batch_size."""

    name: Literal["sgd", "lars", "adamw", "lamb"] = _field(
        "sgd", "`sgd` (the paper's), `lars`, `adamw` or `lamb`."
    )
    base_lr: float = _field(0.05, "Learning rate per `base_batch_size` images (0.05 in the paper).")
    base_batch_size: int = _field(256, "Batch size `base_lr` refers to (linear scaling rule).")
    momentum: float = _field(0.9, "Momentum (sgd, lars); beta_1 for adamw / lamb.")
    nesterov: bool = _field(False, "Nesterov momentum (sgd, lars).")
    beta_2: float = _field(0.999, "Second-moment decay (adamw, lamb).")
    epsilon: float = _field(1e-6, "Numerical epsilon (adamw, lamb).")
    weight_decay: float = _field(
        1e-4,
        "Weight decay. sgd: coupled L2 on every online weight (PyTorch SGD, the paper's); "
        "lars: coupled, inside the trust ratio; adamw / lamb: decoupled.",
    )
    trust_coefficient: float = _field(0.001, "LARS trust coefficient (eta).")
    exclude_bias_and_norm: bool | None = _field(
        None,
        "Exclude 1-D weights (BN, biases) from weight decay and LARS adaptation; "
        "null = true for lars / adamw / lamb, false for sgd (which decays every weight).",
    )
    global_clipnorm: float | None = _field(None, "Clip gradients to this global norm; null = off.")


@dataclasses.dataclass
class ScheduleConfig:
    """Duration and learning-rate schedule: linear warm-up, then cosine, per step."""

    epochs: float | None = _field(100, "Training length in epochs (or set `steps`).")
    steps: int | None = _field(None, "Training length in steps; overrides `epochs` when set.")
    warmup_epochs: float | None = _field(10, "Linear warm-up length in epochs.")
    warmup_steps: int | None = _field(None, "Warm-up length in steps; overrides `warmup_epochs`.")
    warmup_start_lr: float = _field(1e-6, "Learning rate at step 0.")
    end_lr: float = _field(0.0, "Learning rate at the last step (end of the cosine).")


@dataclasses.dataclass
class TrainConfig:
    """Batch, precision, devices and logging."""

    global_batch_size: int = _field(1024, "Global batch over all replicas (divisible by them).")
    seed: int = _field(0, "Seed of weights, data order and augmentation.")
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = _field(
        "float32", "Keras dtype policy (`mixed_float16` in the paper on GPUs)."
    )
    deterministic: bool = _field(
        False, "`tf.config.experimental.enable_op_determinism()`: bitwise-reproducible runs."
    )
    strategy: Literal["auto", "one_device", "mirrored", "multi_worker", "tpu"] = _field(
        "auto", "Distribution strategy (`--strategy` overrides); see docs/training.md."
    )
    num_cpu_replicas: int = _field(
        2, "`mirrored` without a GPU: the CPU is split into this many logical devices."
    )
    log_every_steps: int = _field(10, "TensorBoard scalars and progress-bar refresh interval.")
    steps_per_execution: int | None = _field(
        None,
        "Steps per call of the compiled train function (metrics reach the host once per "
        "call); null = 32 on TPU, 1 otherwise.",
    )
    weight_histograms: bool = _field(
        False, "Write a TensorBoard histogram of every weight (online and target) each epoch."
    )


@dataclasses.dataclass
class CheckpointConfig:
    """tf.train checkpoints of model, optimizer and data position (exact resume)."""

    every_steps: int = _field(1000, "Save every N steps (0 = only at epoch ends).")
    every_epoch: bool = _field(True, "Also save at the end of every epoch.")
    keep: int = _field(3, "Keep the last K checkpoints.")
    save_data_iterator: bool = _field(
        True,
        "Store the input position (one integer per worker) for an exact resume; false "
        "restarts the data order at a resume.",
    )


@dataclasses.dataclass
class MonitorConfig:
    """Online monitors (`care_tf.evaluate.monitors`) on a labelled source."""

    knn_every_epochs: int = _field(0, "kNN accuracy every N epochs (0 = off).")
    linear_probe: bool = _field(False, "Train an online linear probe alongside pre-training.")
    source: str | None = _field(None, "Labelled source for the monitors; null = `data.source`.")
    train_examples: int = _field(2048, "Labelled training examples (kNN bank / probe).")
    val_split: str = _field("test", "Split the monitors report accuracy on.")
    val_examples: int = _field(1000, "Validation examples.")
    attention_images: int = _field(
        8, "With the kNN monitor: a TensorBoard grid of attention maps of this many images."
    )


@dataclasses.dataclass
class Config:
    """A CARE pre-training experiment."""

    name: str = _field("care", "Experiment name (logs only).")
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------- validation
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _check_value(key: str, value: Any, tp: Any) -> Any:
    """`value` converted to `tp` (int -> float only), or a ConfigError naming `key`."""
    if isinstance(value, float) and not math.isfinite(value):  # YAML's .inf / .nan
        raise ConfigError(f"Config key '{key}' must be a finite number; got {value!r}.")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(
            f"Config key '{key}' must be {_type_name(tp)}; got {type(value).__name__} {value!r}."
        )
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"Config key '{key}' must be one of {_type_name(tp)}; got {value!r}.")
        return value
    if tp is float and isinstance(value, str):
        try:  # PyYAML reads 1e-4 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        dict: lambda v: isinstance(v, dict),
    }[tp](value)
    if not ok:
        raise ConfigError(
            f"Config key '{key}' must be {_type_name(tp)}; got {type(value).__name__} {value!r}."
        )
    if tp is float and not math.isfinite(value):  # "inf" / "nan" strings
        raise ConfigError(f"Config key '{key}' must be a finite number; got {value!r}.")
    return float(value) if tp is float else value


def _build(cls: type, values: Any, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(
            f"Config section '{prefix.rstrip('.') or '<top>'}' must be a mapping; got {values!r}."
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(
                f"Unknown config key '{full}'. Valid keys"
                f"{' in ' + repr(prefix.rstrip('.')) if prefix else ''}: {', '.join(names)}."
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{full}.")
        else:
            kwargs[key] = _check_value(full, value, tp)
    return cls(**kwargs)


def _check_ranges(cfg: Config) -> None:
    def need(cond: bool, key: str, what: str, value: Any) -> None:
        if not cond:
            raise ConfigError(f"Config key '{key}' must be {what}; got {value!r}.")

    t, s, o, c = cfg.train, cfg.schedule, cfg.optimizer, cfg.checkpoint
    need(
        t.global_batch_size >= 2,
        "train.global_batch_size",
        ">= 2 (BatchNorm in training needs more than one example per channel)",
        t.global_batch_size,
    )
    need(t.num_cpu_replicas >= 1, "train.num_cpu_replicas", ">= 1", t.num_cpu_replicas)
    need(t.log_every_steps >= 1, "train.log_every_steps", ">= 1", t.log_every_steps)
    if t.steps_per_execution is not None:
        need(
            t.steps_per_execution >= 1,
            "train.steps_per_execution",
            ">= 1 (or null)",
            t.steps_per_execution,
        )
    d = cfg.data
    need(d.shuffle_buffer >= 1, "data.shuffle_buffer", ">= 1", d.shuffle_buffer)
    for key in ("max_examples", "num_examples"):
        value = getattr(d, key)
        if value is not None:
            need(value >= 1, f"data.{key}", ">= 1 examples (or null)", value)
    need(d.service_timeout > 0, "data.service_timeout", "> 0 seconds", d.service_timeout)
    if cfg.data.service is not None:
        from care_tf.data.service import is_address

        need(
            is_address(cfg.data.service),
            "data.service",
            "a dispatcher address grpc://HOST:PORT",
            cfg.data.service,
        )
    need(cfg.model.image_size >= 16, "model.image_size", ">= 16", cfg.model.image_size)
    need(o.base_lr > 0, "optimizer.base_lr", "> 0", o.base_lr)
    need(o.base_batch_size >= 1, "optimizer.base_batch_size", ">= 1", o.base_batch_size)
    need(o.weight_decay >= 0, "optimizer.weight_decay", ">= 0", o.weight_decay)
    need(0 <= o.momentum <= 1, "optimizer.momentum", "in [0, 1]", o.momentum)
    need(0 <= o.beta_2 < 1, "optimizer.beta_2", "in [0, 1)", o.beta_2)
    need(o.epsilon > 0, "optimizer.epsilon", "> 0", o.epsilon)
    need(o.trust_coefficient > 0, "optimizer.trust_coefficient", "> 0", o.trust_coefficient)
    if o.global_clipnorm is not None:
        need(o.global_clipnorm > 0, "optimizer.global_clipnorm", "> 0 (or null)", o.global_clipnorm)
    need(s.warmup_start_lr >= 0, "schedule.warmup_start_lr", ">= 0", s.warmup_start_lr)
    need(s.end_lr >= 0, "schedule.end_lr", ">= 0", s.end_lr)
    m = cfg.model
    need(m.lambda_att >= 0, "model.lambda_att", ">= 0", m.lambda_att)
    need(m.hidden_dim >= 1, "model.hidden_dim", ">= 1", m.hidden_dim)
    need(m.projection_dim >= 1, "model.projection_dim", ">= 1", m.projection_dim)
    if m.base_channels is not None:
        need(m.base_channels >= 1, "model.base_channels", ">= 1 (or null)", m.base_channels)
    need(
        0 <= cfg.model.base_momentum <= 1,
        "model.base_momentum",
        "in [0, 1]",
        cfg.model.base_momentum,
    )
    need(
        s.steps is not None or s.epochs is not None,
        "schedule.epochs",
        "set (or set schedule.steps)",
        s.epochs,
    )
    if s.steps is not None:
        need(s.steps >= 1, "schedule.steps", ">= 1", s.steps)
    if s.epochs is not None:
        need(s.epochs > 0, "schedule.epochs", "> 0", s.epochs)
    if s.warmup_steps is not None:
        need(s.warmup_steps >= 0, "schedule.warmup_steps", ">= 0", s.warmup_steps)
    if s.warmup_epochs is not None:
        need(s.warmup_epochs >= 0, "schedule.warmup_epochs", ">= 0", s.warmup_epochs)
    need(c.every_steps >= 0, "checkpoint.every_steps", ">= 0", c.every_steps)
    need(c.keep >= 1, "checkpoint.keep", ">= 1", c.keep)
    need(
        cfg.monitor.knn_every_epochs >= 0,
        "monitor.knn_every_epochs",
        ">= 0",
        cfg.monitor.knn_every_epochs,
    )
    for key in ("train_examples", "val_examples"):
        need(getattr(cfg.monitor, key) >= 1, f"monitor.{key}", ">= 1", getattr(cfg.monitor, key))
    need(
        cfg.monitor.attention_images >= 0,
        "monitor.attention_images",
        ">= 0",
        cfg.monitor.attention_images,
    )
    if o.name == "sgd":
        need(
            not o.exclude_bias_and_norm,
            "optimizer.exclude_bias_and_norm",
            "false or null with sgd (the paper decays every weight; use lars / adamw / lamb)",
            o.exclude_bias_and_norm,
        )


def from_dict(values: dict) -> Config:
    """A validated `Config` from a nested dict (`derived:` and `base:` are ignored)."""
    values = {k: v for k, v in (values or {}).items() if k not in (DERIVED_KEY, BASE_KEY)}
    cfg = _build(Config, values, "")
    _check_ranges(cfg)
    return cfg


# -------------------------------------------------------------------- loading
def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if (
            isinstance(value, dict)
            and isinstance(out.get(key), dict)
            and key
            not in (
                "backbone_kwargs",
                "transformer_kwargs",
                "augment",
            )
        ):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """The raw dict of a config file with its `base:` chain merged in.

    `path` may also name a shipped config (`quickstart`, see `config_names`); a `base:`
    is a path relative to the file that names it.
    """
    if not _seen:
        path = resolve_config(path)
    path = os.path.abspath(path)
    if path in _seen:
        raise ConfigError(f"Config 'base' loop: {' -> '.join(_seen + (path,))}")
    if os.path.isdir(path):
        raise ConfigError(f"Config path {path} is a folder; give a YAML file (configs/*.yaml).")
    if not os.path.isfile(path):
        if _seen:
            raise ConfigError(f"Config file not found: {path} (the 'base' of {_seen[-1]}).")
        raise ConfigError(f"Config file not found: {path}. {describe_missing()}")
    with open(path) as f:
        try:
            values = yaml.safe_load(f)
        except yaml.YAMLError as e:
            from care_tf.model_dir import yaml_problem

            raise ConfigError(f"Config file {path} is not valid YAML ({yaml_problem(e)}).") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"Config file {path} is not a YAML text file ({e}).") from e
    if values is None:
        raise ConfigError(
            f"Config file {path} is empty: start from a file in configs/ "
            "(or `base: other.yaml`) and change what differs."
        )
    if not isinstance(values, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of sections.")
    base = values.pop(BASE_KEY, None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"Config key 'base' must be a file path; got {base!r}.")
        parent = read_yaml(os.path.join(os.path.dirname(path), base), _seen + (path,))
        values = _merge(parent, values)
    return values


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """`values` with `section.key=value` strings applied (values parsed as YAML)."""
    values = copy.deepcopy(values)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(
                f"--set expects key=value (e.g. optimizer.base_lr=0.1); got {item!r}."
            )
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {e}") from e
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section.")
            node = child
        node[parts[-1]] = value
    return values


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """The validated config of a YAML file or shipped config name (or the defaults, for
    None) with `--set` overrides."""
    values = read_yaml(path) if path else {}
    return from_dict(apply_overrides(values, overrides or []))


# -------------------------------------------------------------- derived values
@dataclasses.dataclass
class Derived:
    """Numbers computed once from the config and the data (written under `derived:`).

    steps_per_epoch: int. floor(num_examples / global_batch_size), >= 1.
    total_steps: int. Steps of the run (also the momentum schedule's K).
    warmup_steps: int. Linear warm-up steps.
    peak_lr: float. base_lr x global_batch_size / base_batch_size (linear scaling rule).
    num_examples: int. Examples per epoch.
    """

    num_examples: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float


def derive(cfg: Config, num_examples: int) -> Derived:
    """Converts epochs to steps and scales the learning rate by the global batch."""
    batch = cfg.train.global_batch_size
    if num_examples < batch:
        raise ConfigError(
            f"Config key 'train.global_batch_size' ({batch}) exceeds the {num_examples} training "
            "examples: lower the batch or use more data."
        )
    steps_per_epoch = num_examples // batch  # the remainder of each epoch is dropped
    s = cfg.schedule
    total = s.steps if s.steps is not None else max(1, math.ceil(s.epochs * steps_per_epoch))
    if s.warmup_steps is not None:
        warmup = s.warmup_steps
    else:
        warmup = round((s.warmup_epochs or 0) * steps_per_epoch)
    if warmup >= total:
        raise ConfigError(
            f"Config key 'schedule.warmup_epochs'/'schedule.warmup_steps' gives {warmup} warm-up "
            f"steps, not fewer than the {total} total steps."
        )
    # Linear scaling rule: lr = base_lr * global_batch / 256 (0.05 * 1024 / 256 = 0.2).
    peak_lr = cfg.optimizer.base_lr * batch / cfg.optimizer.base_batch_size
    return Derived(num_examples, steps_per_epoch, total, warmup, peak_lr)


def resolved_dict(cfg: Config, derived: Derived | None = None) -> dict:
    """The config as written to `model_dir/config.yaml` (with `derived:` when known)."""
    out = cfg.to_dict()
    if derived is not None:
        out[DERIVED_KEY] = dataclasses.asdict(derived)
    return out


def dump_yaml(values: dict) -> str:
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=False)


# ------------------------------------------------------------------ reference
def markdown() -> str:
    """The configuration reference (docs/configs.md), generated from the schema."""
    lines = [
        "# Training configuration reference",
        "",
        "<!-- Generated by `python -m care_tf.train.config --markdown > docs/configs.md`;"
        " do not edit. -->",
        "",
        "Configs are YAML files of the sections below (see `configs/`; the shipped ones",
        "are also accepted by name, `--config quickstart`, and listed by",
        "`python -m care_tf.train --list_configs`). A file may start",
        "from another with `base: other.yaml`. Override any key on the command line with",
        "`--set section.key=value` (the value is parsed as YAML). Unknown keys and wrong",
        "types are errors naming the key. The resolved config, with the derived values",
        "(`derived:` steps per epoch, total and warm-up steps, peak learning rate), is",
        "written to `model_dir/config.yaml`.",
        "",
        f"Top level: `name` ({_type_name(str)}, default `{Config.name!r}`): "
        + dataclasses.fields(Config)[0].metadata["help"],
        "",
    ]
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        section = hints[f.name]
        if not dataclasses.is_dataclass(section):
            continue
        lines += [f"## `{f.name}`", "", (section.__doc__ or "").strip(), ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        section_hints = typing.get_type_hints(section)
        default = section()
        for sf in dataclasses.fields(section):
            value = getattr(default, sf.name)
            shown = (
                "null" if value is None else yaml.safe_dump(value, default_flow_style=True).strip()
            )
            shown = shown.removesuffix("\n...").removesuffix("...").strip()
            tp = _type_name(section_hints[sf.name]).replace("|", "\\|")
            help_ = sf.metadata.get("help", "").replace("|", "\\|")
            lines.append(f"| `{f.name}.{sf.name}` | {tp} | `{shown}` | {help_} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the reference")
    parser.add_argument("--config", help="print this config resolved (defaults filled in)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(dump_yaml(resolved_dict(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
