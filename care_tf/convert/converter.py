"""`convert_checkpoint`: the authors' PyTorch checkpoints -> a care_tf run directory.

Written aside (a temporary directory next to `out`) and renamed into place:

    RUN_DIR/backbone.keras     the online ResNet in Keras' built-in layers (what evaluate /
                               export read; loads without care_tf)
    RUN_DIR/model.keras        the full CARE model, online + target (pretraining
                               checkpoints holding both networks)
    RUN_DIR/classifier.keras   backbone + the authors' linear head (with a linear checkpoint)
    RUN_DIR/config.yaml        the model section of a care_tf config for this architecture
    RUN_DIR/convert.json       provenance: source files, SHA-256, epoch, keys used and ignored
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping

import numpy as np

from care_tf import atomic
from care_tf import model_dir as run_dir
from care_tf.convert import architecture as arch
from care_tf.convert import mapping
from care_tf.convert.torch_zip import CheckpointError, TorchTensor, load_checkpoint

CONVERT_JSON = "convert.json"
PRETRAIN, LINEAR = "pretrain", "linear"


class ConvertError(ValueError):
    """A conversion that cannot proceed (bad argument, file or checkpoint layout)."""


@dataclasses.dataclass
class StateDict:
    """A checkpoint's state_dict with normalised keys, and what we know of the file."""

    path: str
    format: str
    tensors: dict[str, TorchTensor]
    notes: list[str]
    epoch: int | None

    @property
    def shapes(self) -> dict[str, tuple]:
        return {k: tuple(t.shape) for k, t in self.tensors.items()}

    def read(self, key: str) -> np.ndarray:
        return self.tensors[key].numpy()

    def ignored(self) -> list[str]:
        return sorted(k for k in self.tensors if mapping.is_ignored(k))


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(k, str) for k in obj)


def _detect(keys: list[str]) -> str | None:
    if any(k.startswith(("student_encoder.", "teacher_encoder.")) for k in keys):
        return PRETRAIN
    if any(k.startswith("classifier.") for k in keys) and any(
        k.startswith("encoder.") for k in keys
    ):
        return LINEAR
    return None


def read_state_dict(path: str) -> StateDict:
    """Loads a pretraining or linear-evaluation checkpoint of the authors' code.

    Accepts `{"model": state_dict, "start_epoch", ...}`, `{"classifier": state_dict, ...}`,
    `{"state_dict": ...}` or a bare state_dict; keys may carry `module.` prefixes.

    Raises:
        ConvertError: not one of these layouts.
        CheckpointError: unreadable, unsafe or legacy file (see `torch_zip`).
    """
    obj = load_checkpoint(path)
    epoch = None
    candidates = []
    if isinstance(obj, Mapping):
        value = obj.get("start_epoch", obj.get("epoch"))
        epoch = value if isinstance(value, int) else None
        candidates = [obj[k] for k in ("model", "classifier", "state_dict") if k in obj]
    candidates.append(obj)
    for candidate in candidates:
        if not _is_state_dict(candidate):
            continue
        tensors, notes = mapping.normalize_keys(candidate)
        fmt = _detect(list(tensors))
        if fmt is None:
            continue
        bad = sorted(k for k, v in tensors.items() if not isinstance(v, TorchTensor))
        if bad:
            raise ConvertError(f"{path}: state_dict entries that are not tensors: {bad[:10]}")
        return StateDict(path, fmt, tensors, notes, epoch)
    top = sorted(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise ConvertError(
        f"{path} is not a CARE checkpoint of the authors' code: expected a dict with 'model' "
        "(pretraining: student_encoder.* / teacher_encoder.* keys) or 'classifier' (linear "
        f"evaluation: encoder.* and classifier.* keys); found {top}."
    )


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------- conversions
def convert_pretrain(state: StateDict, image_size: int | None = None):
    """A CARE model holding the checkpoint's networks.

    Returns:
        `(model, info)`: `model` has online weights (and target weights when the file
        holds `teacher_encoder.*`); `info` describes the architecture and coverage.
    """
    shapes = state.shapes
    backbone = arch.infer_backbone(shapes, "student_encoder.")
    transformer = arch.infer_transformer(shapes, "student_encoder.trans.")
    if transformer is not None and "student_encoder.fc2.0.weight" not in shapes:
        raise mapping.MappingError(f"{state.path}: a TransStack but no T-stream head (fc2).")
    heads = arch.infer_heads(shapes, "student_encoder.fc1.")
    implied = arch.image_size_for(backbone, transformer)
    size = implied or image_size or arch.DEFAULT_IMAGE_SIZE
    has_target = any(k.startswith("teacher_encoder.") for k in shapes)
    model = arch.build_care(backbone, transformer, heads, size)
    plan = mapping.care_assignments(model, online=True, target=has_target)
    layers = model.online_layers + (model.target_layers if has_target else [])
    variables = [v for layer in layers for v in layer.weights]
    mapping.check_plan(plan, shapes, variables, state.path)
    scalars = mapping.apply_plan(plan, state.read)
    info = {
        "backbone": dataclasses.asdict(backbone),
        "transformer": dataclasses.asdict(transformer) if transformer else None,
        "heads": dataclasses.asdict(heads),
        "image_size": size,
        "target_network": has_target,
        "keys_mapped": len(plan),
        "scalars": scalars,
    }
    return model, info


def convert_linear(state: StateDict, image_size: int):
    """The authors' linear-evaluation model as a `LinearClassifier` (backbone + Dense + BN)."""
    from care_tf.evaluate.linear import LinearClassifier, make_linear_head

    shapes = state.shapes
    spec = arch.infer_backbone(shapes, "encoder.")
    if "classifier.0.weight" not in shapes:
        raise mapping.MappingError(f"{state.path}: no classifier.0.weight (the linear layer).")
    num_classes, features = arch.checked_shape(shapes, "classifier.0.weight", arch.LINEAR)
    backbone = arch.build_backbone(spec, image_size)
    head = make_linear_head(int(num_classes), name="linear_head")
    head.build((None, int(features)))
    classifier = LinearClassifier(backbone, head, name="classifier")
    plan = mapping.classifier_assignments(classifier)
    variables = list(backbone.weights) + list(head.weights)
    mapping.check_plan(plan, shapes, variables, state.path)
    scalars = mapping.apply_plan(plan, state.read)
    classifier(np.zeros((1, image_size, image_size, 3), "float32"))  # builds the model
    info = {
        "backbone": dataclasses.asdict(spec),
        "num_classes": int(num_classes),
        "image_size": image_size,
        "keys_mapped": len(plan),
        "scalars": scalars,
    }
    return classifier, info


def _resized_backbone(source, spec_info: dict, size: int):
    """A copy of `source` (a ResNetBackbone) taking size x size images."""
    spec = arch.BackboneSpec(**spec_info)
    backbone = arch.build_backbone(spec, size)
    backbone.set_weights(source.get_weights())
    return backbone


def max_weight_difference(a, b) -> float | None:
    """Largest |a - b| over two models' weights (None when their shapes differ)."""
    wa, wb = a.get_weights(), b.get_weights()
    if [w.shape for w in wa] != [w.shape for w in wb]:
        return None
    return float(max(np.max(np.abs(x - y)) if x.size else 0.0 for x, y in zip(wa, wb, strict=True)))


def run_config(info: dict, name: str) -> dict:
    """A care_tf config (name + model section) describing the converted architecture."""
    from care_tf.models.registry import list_backbones

    spec = arch.BackboneSpec(**info["backbone"])
    model = {"backbone": spec.preset, "image_size": info["image_size"], "stem": spec.stem}
    if spec.preset not in list_backbones():
        model["backbone"] = f"resnet{spec.depth}"
        model["backbone_kwargs"] = {"width_multiplier": spec.width_multiplier}
    model["base_channels"] = spec.base_channels
    transformer = info.get("transformer")
    if "heads" in info:
        model["t_stream"] = transformer is not None
        model["hidden_dim"] = info["heads"]["hidden_dim"]
        model["projection_dim"] = info["heads"]["projection_dim"]
    if transformer:
        model["transformer_kwargs"] = {
            k: transformer[k]
            for k in ("num_blocks", "num_heads", "head_dim", "proj_factor", "downsample")
        }
    return {"name": name, "model": model}


# --------------------------------------------------------------- the job
def check_out(out: str, overwrite: bool) -> None:
    """Raises ConvertError when `out` is a file, or a non-empty directory without `overwrite`."""
    if os.path.isfile(out):
        raise ConvertError(f"--out {out!r} is a file: give a directory for the run.")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ConvertError(
            f"--out {out!r} is not empty: pass --overwrite to replace it, or choose a new "
            "directory."
        )


def _default_permissions(path: str) -> None:
    """Gives a `mkdtemp` directory (mode 0700) the usual mode under the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def convert_checkpoint(
    checkpoint: str,
    out: str,
    linear: str | None = None,
    *,
    overwrite: bool = False,
    image_size: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Converts the authors' checkpoint(s) into a run directory `out`.

    Args:
        checkpoint: str. A pretraining checkpoint (`student_encoder.*`, `teacher_encoder.*`)
            or a linear-evaluation one (`encoder.*`, `classifier.*`).
        out: str. The run directory to write (must be absent or empty unless `overwrite`).
        linear: str. A linear-evaluation checkpoint whose classifier is written too.
        overwrite: bool. Replace a non-empty `out`.
        image_size: int. Input size of backbone.keras / classifier.keras; defaults to
            the size the TransStack was trained at (224 for the authors' ResNet-50),
            else 224. model.keras always keeps the trained size.
        log: where progress lines go.

    Returns:
        The contents of convert.json (with `"paths"` of what was written).

    Raises:
        ConvertError, CheckpointError (incl. UnsafeCheckpointError), MappingError,
        FileNotFoundError: each with a message naming the file and the fix.
    """
    import keras

    out = os.path.abspath(out)
    check_out(out, overwrite)
    if image_size is not None and image_size < 32:
        raise ConvertError(f"--image_size must be >= 32 pixels; got {image_size}.")
    for flag, path in (("CHECKPOINT", checkpoint), ("--linear", linear)):
        if path is not None and not os.path.isfile(path):
            raise ConvertError(f"{flag} {path!r}: no such file.")

    log(f"[convert] reading {checkpoint}")
    first = read_state_dict(checkpoint)
    pretrain = first if first.format == PRETRAIN else None
    lin = first if first.format == LINEAR else None
    if linear is not None:
        if lin is not None:
            raise ConvertError(
                f"CHECKPOINT {checkpoint!r} is already a linear-evaluation checkpoint; pass the "
                "pretraining checkpoint as CHECKPOINT and this one as --linear."
            )
        log(f"[convert] reading {linear}")
        lin = read_state_dict(linear)
        if lin.format != LINEAR:
            raise ConvertError(
                f"--linear {linear!r} is a pretraining checkpoint; --linear takes the "
                "linear-evaluation checkpoint (encoder.* and classifier.* keys)."
            )

    record: dict = {
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sources": {},
        "ignored_on_purpose": {},
    }
    files: dict[str, object] = {}
    size = image_size
    if pretrain is not None:
        model, info = convert_pretrain(pretrain, image_size)
        size = image_size or info["image_size"]
        log(
            f"[convert] pretraining checkpoint: ResNet-{info['backbone']['depth']}, "
            f"{info['keys_mapped']} tensors mapped ({info['scalars']:,} values), "
            f"target network {'yes' if info['target_network'] else 'no'}"
        )
        backbone = model.backbone
        if size != info["image_size"]:
            backbone = _resized_backbone(backbone, info["backbone"], size)
        files[run_dir.BACKBONE] = backbone
        if info["target_network"]:
            files[run_dir.MODEL] = model
        else:
            log("[convert] no teacher_encoder.* keys: writing backbone.keras without model.keras")
        record["pretrain"] = info
        config_info = {**info, "image_size": size}
    size = size or arch.DEFAULT_IMAGE_SIZE
    if lin is not None:
        classifier, info = convert_linear(lin, size)
        log(
            f"[convert] linear checkpoint: {info['num_classes']} classes, "
            f"{info['keys_mapped']} tensors mapped"
        )
        files[run_dir.CLASSIFIER] = classifier
        if pretrain is None:
            files[run_dir.BACKBONE] = classifier.backbone
            config_info = info
        else:
            diff = max_weight_difference(files[run_dir.BACKBONE], classifier.backbone)
            info["encoder_vs_pretrain_max_abs_difference"] = diff
            if diff is None or diff > 0:
                log(
                    "[convert] note: the linear checkpoint's encoder differs from the pretrained "
                    f"online backbone (max |difference| {diff}); classifier.keras uses its own."
                )
        record["linear"] = info
    for state in (s for s in (pretrain, lin) if s is not None):
        record["sources"][state.format] = {
            "path": os.path.abspath(state.path),
            "sha256": _sha256(state.path),
            "epoch": state.epoch,
            "tensors": len(state.tensors),
            "notes": state.notes,
        }
        record["ignored_on_purpose"][state.format] = state.ignored()

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    _default_permissions(tmp)
    try:
        for name, model in files.items():
            log(f"[convert] writing {name}")
            if name == run_dir.BACKBONE:  # the plain Keras model every run has
                run_dir.save_backbone(model, os.path.join(tmp, name))
            else:
                model.save(os.path.join(tmp, name))
        import yaml

        name = os.path.splitext(os.path.basename(checkpoint))[0]
        with open(os.path.join(tmp, run_dir.CONFIG), "w") as f:
            yaml.safe_dump(run_config(config_info, f"converted-{name}"), f, sort_keys=False)
        record["files"] = sorted([*files, run_dir.CONFIG, CONVERT_JSON])
        record["keras_version"] = keras.__version__
        with open(os.path.join(tmp, CONVERT_JSON), "w") as f:
            json.dump(record, f, indent=2)
        atomic.publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"[convert] wrote {out}: {', '.join(record['files'])}")
    record["paths"] = {name: os.path.join(out, name) for name in record["files"]}
    return record


__all__ = ["CheckpointError", "ConvertError", "convert_checkpoint", "read_state_dict"]
