"""care_tf: CARE self-supervised pretraining (NeurIPS 2021) in Keras 3 / TensorFlow.

`import care_tf` imports the whole package, registering care_tf's layers so that
`keras.saving.load_model("model.keras")` works (a run's `backbone.keras` holds Keras'
built-in layers only and loads without care_tf). Only while a command line starts
(`python -m care_tf.X` or a `care-*` console script) are the public names imported
on first use, so that `--help` answers without loading TensorFlow, and the command
selects the TensorFlow backend of Keras itself (KERAS_BACKEND=tensorflow, with a
note when the environment chose another).
"""

import json as _json
import os as _os
import sys as _sys

from care_tf._lazy import lazy_exports as _lazy_exports
from care_tf._lazy import load_all as _load_all
from care_tf.version import __version__


def _keras_backend() -> str:
    """The Keras backend in use, or the one Keras will pick (without importing Keras):
    `KERAS_BACKEND`, else `backend` in `$KERAS_HOME/keras.json` (default ~/.keras)."""
    keras = _sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    if "KERAS_BACKEND" in _os.environ:
        return _os.environ["KERAS_BACKEND"]
    home = _os.environ.get("KERAS_HOME") or _os.path.join(_os.path.expanduser("~"), ".keras")
    try:
        with open(_os.path.join(home, "keras.json")) as f:
            return _json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def _command_line_start() -> bool:
    """Whether this import is a command line's start-up: while `python -m pkg.mod`
    imports the parent packages, `sys.argv[0]` is "-m"; console scripts are `care-*`."""
    argv0 = _sys.argv[0] if _sys.argv else ""
    return argv0 == "-m" or _os.path.basename(argv0).startswith("care-")


def _select_tensorflow() -> None:
    """A command line runs on TensorFlow whatever the environment chose: sets
    KERAS_BACKEND=tensorflow (inherited by the processes it starts) before Keras is
    imported, with a note on stderr when that overrides another backend."""
    chosen = _keras_backend()
    if "keras" in _sys.modules:
        return  # too late to choose; the check below reports a wrong backend
    if chosen != "tensorflow":
        home = _os.environ.get("KERAS_HOME") or "~/.keras"
        where = "KERAS_BACKEND" if "KERAS_BACKEND" in _os.environ else f"{home}/keras.json"
        print(
            f"note: {where} selects the Keras backend {chosen!r}; care_tf runs on "
            "TensorFlow, so this command sets KERAS_BACKEND=tensorflow for itself.",
            file=_sys.stderr,
        )
    _os.environ["KERAS_BACKEND"] = "tensorflow"


if _command_line_start():
    _select_tensorflow()

if _keras_backend() != "tensorflow":
    _message = (
        f"care_tf needs the TensorFlow backend of Keras, but Keras uses {_keras_backend()!r}. "
        "Set KERAS_BACKEND=tensorflow before Keras is first imported (in a notebook: "
        "`import os; os.environ['KERAS_BACKEND'] = 'tensorflow'` in the first cell, then "
        "restart the runtime)."
    )
    if _command_line_start():
        raise SystemExit(f"error: {_message}")
    raise ImportError(_message)

_EXPORTS = {
    "data": "care_tf.data",
    "convert_checkpoint": "care_tf.convert",
    "TwoViewAugment": "care_tf.data",
    "make_eval_dataset": "care_tf.data",
    "make_pretrain_dataset": "care_tf.data",
    "KNNMonitor": "care_tf.evaluate",
    "OnlineLinearProbe": "care_tf.evaluate",
    "attention_maps": "care_tf.evaluate",
    "knn_evaluate": "care_tf.evaluate",
    "export_backbone": "care_tf.export",
    "CARE": "care_tf.models",
    "BoTBlock": "care_tf.models",
    "MLPHead": "care_tf.models",
    "MultiHeadSelfAttention2D": "care_tf.models",
    "ResNetBackbone": "care_tf.models",
    "TransStack": "care_tf.models",
    "check_backbone": "care_tf.models",
    "create_backbone": "care_tf.models",
    "feature_backbone": "care_tf.models",
    "feature_extractor": "care_tf.models",
    "feature_maps_model": "care_tf.models",
    "list_backbones": "care_tf.models",
    "plain_feature_extractor": "care_tf.models",
    "register_backbone": "care_tf.models",
    "LARS": "care_tf.optimizers",
    "TorchSGD": "care_tf.optimizers",
    "load_backbone": "care_tf.presets",
    "save_to_preset": "care_tf.presets",
    "Experiment": "care_tf.train",
    "build_experiment": "care_tf.train",
    "WarmupCosine": "care_tf.train",
    "list_configs": "care_tf.train",
    "hub_backbone": "care_tf.transfer",
    "to_keras_hub": "care_tf.transfer",
}
__all__ = sorted([*_EXPORTS, "__version__"])
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)


if "keras" in _sys.modules or not _command_line_start():
    _load_all(__name__, _EXPORTS)
