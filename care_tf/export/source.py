"""What gets exported: a run's backbone, its config and metadata, after checks."""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import yaml

from care_tf import model_dir as run_dir
from care_tf.version import __version__

TRAIN_STATE = "train_state.json"


class ExportError(Exception):
    """An export that cannot proceed or whose verification failed (the CLI exits 1)."""


@dataclasses.dataclass
class ExportSource:
    """A checked CARE backbone and what the export records about it.

    Attributes:
        backbone: keras.Model returning {"res4", "res5", "pooled"}.
        config: dict. The run's resolved config ({} when there is none).
        image_size: int. Side of the square crop the backbone takes, pixels.
        step: int or "unknown". Training steps of the run.
        model_dir: str. Where it came from.
        limits: preprocess.SizeLimits or None. Size limits of served images
            (None: the defaults).
    """

    backbone: keras.Model
    config: dict
    image_size: int
    step: int | str
    model_dir: str
    limits: object = None

    @property
    def output_shapes(self) -> dict[str, tuple]:
        """Per-example shapes of res4, res5 and the embedding (pooled)."""
        out = self.backbone.output
        return {
            "res4": tuple(out["res4"].shape[1:]),
            "res5": tuple(out["res5"].shape[1:]),
            "embedding": tuple(out["pooled"].shape[1:]),
        }

    def describe(self) -> dict:
        """JSON-able summary of the backbone (name, class, input/output shapes)."""
        info = {
            "name": self.backbone.name,
            "class": type(self.backbone).__name__,
            "input_shape": [self.image_size, self.image_size, 3],
            "outputs": {k: list(v) for k, v in self.output_shapes.items()},
            "parameters": int(self.backbone.count_params()),
        }
        if hasattr(self.backbone, "get_config"):
            try:
                config = self.backbone.get_config()
                if "layers" in config:  # a functional graph (a plain backbone.keras)
                    from care_tf.models.plain import resnet_arguments

                    config = resnet_arguments(self.backbone) or config
                info["config"] = _jsonable(config)
            except NotImplementedError:
                pass
        return info


def tf_variables(model: keras.Model) -> list:
    """The tf.Variables behind a Keras model's weights.

    A tf.Module must track these directly (not the Keras model): then the
    SavedModel's TF1 restore op, which TF Serving and the TFLite converter use,
    covers every variable.
    """
    return [getattr(w, "value", w) for w in model.weights]


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _nested(config: dict, dotted: str):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def read_step(model_dir: str, config: dict) -> int | str:
    """Training step count: train_state.json's "step", else config's, else "unknown"."""
    state = os.path.join(model_dir, TRAIN_STATE)
    if os.path.isfile(state):
        try:
            with open(state) as f:
                return int(json.load(f)["step"])
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            pass
    for key in ("step", "train.step", "train_state.step", "train.steps", "train.total_steps"):
        value = _nested(config, key)
        if isinstance(value, int):
            return value
    return "unknown"


def read_run_config(config_dir: str) -> dict:
    """The run's config.yaml as a dict ({} when there is none).

    Raises:
        ExportError: naming the file, when it is not YAML, not UTF-8 text or not a
            mapping (the export records it and checks the architecture against it).
    """
    path = run_dir.path(config_dir, run_dir.CONFIG)
    try:
        config = run_dir.read_config(config_dir)
    except (yaml.YAMLError, ValueError, OSError) as err:  # ValueError: also not UTF-8
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ExportError(
            f"{path} is not a readable run config (a YAML mapping): {reason[:300]}. Fix it, "
            "or move it away to export without it (the architecture is then not checked "
            "against it)."
        ) from None
    if not isinstance(config, dict):
        raise ExportError(
            f"{path} holds a YAML {type(config).__name__}, not a mapping of settings. Fix it, "
            "or move it away to export without it."
        )
    return config


def check_care_backbone(backbone) -> None:
    """Raises ExportError unless `backbone` returns a dict with 4-D res4/res5 and 2-D pooled."""
    outputs = getattr(backbone, "output", None)
    name = getattr(backbone, "name", type(backbone).__name__)
    if not isinstance(outputs, dict):
        raise ExportError(
            f"Architecture mismatch: {name!r} is not a CARE backbone. A CARE backbone returns "
            f"a dict {{'res4', 'res5', 'pooled'}}; this model returns "
            f"{type(outputs).__name__}. Export the online backbone (backbone.keras), or wrap a "
            "Keras CNN with care_tf.feature_backbone(model, res4=..., res5=...)."
        )
    missing = [k for k in ("res4", "res5", "pooled") if k not in outputs]
    if missing:
        raise ExportError(
            f"Architecture mismatch: {name!r} has no {', '.join(missing)} output(s) (it has "
            f"{sorted(outputs)}); a CARE backbone returns res4, res5 and pooled."
        )
    for key, rank in (("res4", 4), ("res5", 4), ("pooled", 2)):
        if len(outputs[key].shape) != rank:
            raise ExportError(
                f"Architecture mismatch: {name!r} output {key!r} has shape "
                f"{tuple(outputs[key].shape)}; expected rank {rank}."
            )
    inputs = backbone.inputs
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ExportError(
            f"Architecture mismatch: {name!r} must take one (B, H, W, C) image input; "
            f"it takes {[tuple(i.shape) for i in inputs]}."
        )


def check_against_config(backbone: keras.Model, config: dict) -> None:
    """Raises ExportError when config.yaml names a backbone other than the saved one.

    The named backbone is rebuilt from the registry (with the saved backbone's own
    non-identity settings, e.g. stem and base width) and its weight shapes are
    compared with the saved backbone's.
    """
    from care_tf.models import create_backbone, list_backbones
    from care_tf.models.plain import resnet_arguments

    name = _nested(config, "model.backbone")
    if isinstance(name, dict):  # e.g. {"name": "resnet50", ...}
        name = name.get("name")
    if not name:
        return
    if name not in list_backbones():
        raise ExportError(
            f"Architecture mismatch: config.yaml names backbone {name!r} (model.backbone), "
            f"which is not registered. Known: {', '.join(list_backbones())}."
        )
    kwargs = {"image_shape": tuple(backbone.inputs[0].shape[1:])}
    if hasattr(backbone, "get_config"):
        try:
            saved = backbone.get_config()
        except NotImplementedError:
            saved = {}
        for key in ("base_channels", "stem", "sync_bn"):
            if key in saved:
                kwargs[key] = saved[key]
        if "layers" in saved:  # a plain backbone.keras: read its ResNet arguments back
            arguments = resnet_arguments(backbone)
            kwargs.update({k: arguments[k] for k in ("base_channels", "stem") if k in arguments})
    try:
        reference = create_backbone(name, **kwargs)
    except (TypeError, ValueError):  # a factory without those arguments: shapes only
        reference = create_backbone(name, image_shape=kwargs["image_shape"])
    want = [tuple(w.shape) for w in reference.weights]
    have = [tuple(w.shape) for w in backbone.weights]
    if want != have:
        saved_desc = backbone.name
        if hasattr(backbone, "depth"):
            saved_desc += f" (depth {backbone.depth}, width x{backbone.width_multiplier:g})"
        raise ExportError(
            f"Architecture mismatch: config.yaml names backbone {name!r} (model.backbone) but "
            f"the saved backbone is {saved_desc}: {len(have)} weights / "
            f"{backbone.count_params():,} parameters vs {len(want)} / "
            f"{reference.count_params():,} for {name!r}. Was backbone.keras copied from "
            "another run?"
        )


def load_source(model_dir: str, image_size: int | None = None) -> ExportSource:
    """Loads and checks a run's backbone (`model_dir` or a `.keras` file).

    Args:
        model_dir: str. A training run directory (see care_tf.model_dir) or a
            `.keras` backbone file.
        image_size: int. Crop size when the backbone's input has no fixed size;
            defaults to the backbone's input size, else config `model.image_size`.

    Raises:
        ExportError: no model there, not a CARE backbone, an architecture that
            differs from config.yaml, or no known image size.
    """
    if not os.path.exists(model_dir):
        raise ExportError(f"--model_dir {model_dir!r} does not exist.")
    try:
        backbone = run_dir.load_feature_model(model_dir)
    except FileNotFoundError as err:
        raise ExportError(str(err)) from None
    except (ValueError, TypeError, OSError) as err:
        raise ExportError(f"--model_dir: {err}") from None
    check_care_backbone(backbone)
    is_file = model_dir.endswith(".keras") or os.path.isfile(model_dir)
    config_dir = os.path.dirname(model_dir) if is_file else model_dir
    config = read_run_config(config_dir)
    check_against_config(backbone, config)

    height, width, channels = tuple(backbone.inputs[0].shape[1:])
    if channels not in (None, 3):
        raise ExportError(
            f"The backbone takes {channels}-channel images; exports feed RGB (3 channels)."
        )
    configured = _nested(config, "model.image_size") or _nested(config, "data.image_size")
    if height is not None and width is not None:
        if height != width:
            raise ExportError(f"The backbone takes {height}x{width} images; expected square.")
        if image_size is not None and image_size != height:
            raise ExportError(
                f"--image_size {image_size} differs from the backbone's input size {height}."
            )
        if configured is not None and int(configured) != height:
            print(
                f"warning: config image_size={configured} but the backbone takes "
                f"{height} px; exporting at {height} px."
            )
        image_size = int(height)
    else:
        image_size = image_size or (int(configured) if configured else None)
        if image_size is None:
            raise ExportError(
                "The backbone accepts any image size and config.yaml has no model.image_size: "
                "pass --image_size."
            )
    return ExportSource(
        backbone=backbone,
        config=config,
        image_size=int(image_size),
        step=read_step(config_dir, config),
        model_dir=os.path.abspath(model_dir),
    )


def read_train_state(model_dir: str) -> dict:
    """`train_state.json` of a run ({} when absent or unreadable)."""
    path = os.path.join(model_dir, TRAIN_STATE)
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def metadata(source: ExportSource, **extra) -> dict:
    """The JSON metadata written next to every export."""
    import tensorflow as tf

    from care_tf.export.preprocess import DEFAULT_LIMITS, constants

    run = source.model_dir
    run = os.path.dirname(run) if run.endswith(".keras") else run
    return {
        "care_tf_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "model_dir": source.model_dir,
        "training_step": source.step,
        "train_state": read_train_state(run),
        "backbone": source.describe(),
        "preprocessing": constants(source.image_size, source.limits or DEFAULT_LIMITS),
        **extra,
    }
