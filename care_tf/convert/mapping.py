"""The exact key map from the CARE authors' PyTorch `state_dict`s to our Keras layers.

Authors' names (after the `module.` prefix is stripped; `bot.` is read as `trans.`):

| PyTorch key | care_tf layer | transform |
|---|---|---|
| `conv1`, `bn1` | backbone `stem_conv`, `stem_bn` | conv OIHW -> HWIO |
| `layer{s}.{b}.conv{i}`, `.bn{i}` | `stage{s}_block{b}_{i}_conv`, `_{i}_bn` | |
| `layer{s}.{b}.downsample.0`, `.1` | `stage{s}_block{b}_proj_conv`, `_proj_bn` | |
| `trans.net.{k}.shortcut.0`, `.1` | TransStack `block{k+1}.shortcut_conv`, `shortcut_bn` | |
| `trans.net.{k}.net.0`, `.1` | `conv_in`, `bn_in` | |
| `trans.net.{k}.net.3.to_qkv` | `mhsa.qkv` (channels q, k, v x heads x dim: same order) | |
| `trans.net.{k}.net.3.pos_emb.height`, `.width` | `mhsa.pos_height`, `mhsa.pos_width` | none |
| `trans.net.{k}.net.5`, `.7`, `.8` | `bn_mid`, `conv_out`, `bn_out` | |
| `fc1.0/1/3` (`fc2.*`) | C- (T-) projector `dense_hidden/bn/dense_out` | (out, in) -> (in, out) |
| `fc1.4/5/7` (`fc2.*`) | C- (T-) stream predictor (online network only) | |
| `classifier.0`, `classifier.1` | linear head `fc` (Dense), `bn` (BatchNorm) | |

BatchNorm: `weight, bias, running_mean, running_var` -> `gamma, beta, moving_mean,
moving_variance`. `num_batches_tracked` (a step counter) is ignored on purpose, as
is the linear checkpoint's `encoder.fc.*` (a 128-d projection its classifier does
not read). Every other key must be used exactly once and every weight of the
Keras layers assigned exactly once, with matching shapes, or `MappingError` lists
what is missing, unknown or mis-shaped.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

import numpy as np

IGNORED_SUFFIXES = (".num_batches_tracked",)
BN_NAMES = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
MAX_LISTED = 20


class MappingError(ValueError):
    """The checkpoint's keys or shapes do not match the architecture they map onto."""


@dataclasses.dataclass(frozen=True)
class Assignment:
    """One checkpoint tensor -> one Keras variable.

    Attributes:
        key: str. The PyTorch key (normalised: no `module.` prefix, `trans.` for `bot.`).
        variable: the Keras variable to assign.
        kind: str. "conv" (OIHW -> HWIO), "dense" (out x in -> in x out) or "copy".
    """

    key: str
    variable: object
    kind: str

    @property
    def torch_shape(self) -> tuple:
        """The shape the PyTorch tensor must have."""
        shape = tuple(int(d) for d in self.variable.shape)
        if self.kind == "conv":  # HWIO -> OIHW
            return (shape[3], shape[2], shape[0], shape[1])
        if self.kind == "dense":
            return (shape[1], shape[0])
        return shape


def to_keras(value: np.ndarray, kind: str) -> np.ndarray:
    """A PyTorch weight in Keras layout: conv OIHW -> HWIO, linear (out, in) -> (in, out)."""
    if kind == "conv":
        return np.transpose(value, (2, 3, 1, 0))
    if kind == "dense":
        return np.transpose(value)
    return value


# -------------------------------------------------------------- key helpers
def normalize_keys(state: Mapping) -> tuple[dict, list[str]]:
    """Strips `module.` prefixes and renames `bot.` to `trans.`.

    Returns:
        `(state, notes)`: the renamed dict and human-readable notes on renames.
    """
    out, notes = {}, []
    stripped = renamed = 0
    for key, value in state.items():
        new = key
        while new.startswith("module."):
            new = new[len("module.") :]
        if new != key:
            stripped += 1
        fixed = re.sub(r"(^|\.)bot\.", r"\1trans.", new)
        if fixed != new:
            renamed += 1
        if fixed in out:
            raise MappingError(f"Key {key!r} duplicates {fixed!r} after normalisation.")
        out[fixed] = value
    if stripped:
        notes.append(f"stripped the 'module.' prefix of {stripped} keys")
    if renamed:
        notes.append(f"read 'bot.' as 'trans.' in {renamed} keys")
    return out, notes


def is_ignored(key: str) -> bool:
    """Keys dropped on purpose: BN step counters and the linear encoder's unused fc."""
    return key.endswith(IGNORED_SUFFIXES) or key.startswith("encoder.fc.")


def _conv(prefix: str, layer) -> list[Assignment]:
    out = [Assignment(f"{prefix}.weight", layer.kernel, "conv")]
    if getattr(layer, "use_bias", False):
        out.append(Assignment(f"{prefix}.bias", layer.bias, "copy"))
    return out


def _dense(prefix: str, layer) -> list[Assignment]:
    return [
        Assignment(f"{prefix}.weight", layer.kernel, "dense"),
        Assignment(f"{prefix}.bias", layer.bias, "copy"),
    ]


def _bn(prefix: str, layer) -> list[Assignment]:
    return [
        Assignment(f"{prefix}.{torch_name}", getattr(layer, keras_name), "copy")
        for keras_name, torch_name in BN_NAMES.items()
    ]


_STAGE = re.compile(r"^stage(\d+)_block(\d+)_(\d+|proj)_(conv|bn)$")


def backbone_assignments(prefix: str, backbone) -> list[Assignment]:
    """A `ResNetBackbone`'s weights <- `{prefix}conv1 ... layer4.*` (torchvision names)."""
    plan = []
    for layer in backbone.layers:
        if not layer.weights:
            continue
        if layer.name == "stem_conv":
            plan += _conv(f"{prefix}conv1", layer)
            continue
        if layer.name == "stem_bn":
            plan += _bn(f"{prefix}bn1", layer)
            continue
        match = _STAGE.match(layer.name)
        if match is None:
            raise MappingError(
                f"Backbone layer {layer.name!r} has no counterpart in the authors' ResNet: "
                "only care_tf's ResNetBackbone can be converted."
            )
        stage, block, index, kind = match.groups()
        base = f"{prefix}layer{stage}.{block}."
        if index == "proj":
            name = base + ("downsample.0" if kind == "conv" else "downsample.1")
        else:
            name = f"{base}{kind}{index}"
        plan += _conv(name, layer) if kind == "conv" else _bn(name, layer)
    return plan


def transformer_assignments(prefix: str, stack) -> list[Assignment]:
    """A `TransStack`'s weights <- `{prefix}net.{k}.*` (BoTNet `BottleBlock`s)."""
    plan = []
    for k, block in enumerate(stack.blocks):
        base = f"{prefix}net.{k}."
        if block.project_shortcut:
            plan += _conv(base + "shortcut.0", block.shortcut_conv)
            plan += _bn(base + "shortcut.1", block.shortcut_bn)
        plan += _conv(base + "net.0", block.conv_in)
        plan += _bn(base + "net.1", block.bn_in)
        mhsa = block.attention
        plan += _conv(base + "net.3.to_qkv", mhsa.qkv)
        plan.append(Assignment(base + "net.3.pos_emb.height", mhsa.pos_height, "copy"))
        plan.append(Assignment(base + "net.3.pos_emb.width", mhsa.pos_width, "copy"))
        plan += _bn(base + "net.5", block.bn_mid)
        plan += _conv(base + "net.7", block.conv_out)
        plan += _bn(base + "net.8", block.bn_out)
    return plan


def mlp_assignments(prefix: str, head, start: int = 0) -> list[Assignment]:
    """An `MLPHead` <- `{prefix}{start}` Linear, `{start+1}` BN, `{start+3}` Linear."""
    return (
        _dense(f"{prefix}{start}", head.dense_hidden)
        + _bn(f"{prefix}{start + 1}", head.bn)
        + _dense(f"{prefix}{start + 3}", head.dense_out)
    )


def care_assignments(model, online: bool = True, target: bool = True) -> list[Assignment]:
    """Every weight of a CARE model <- `student_encoder.*` (online), `teacher_encoder.*` (target).

    The online `fc1`/`fc2` Sequentials hold projector (0-3) then predictor (4-7).
    """
    plan = []
    if online:
        plan += backbone_assignments("student_encoder.", model.backbone)
        plan += mlp_assignments("student_encoder.fc1.", model.c_projector, 0)
        plan += mlp_assignments("student_encoder.fc1.", model.c_predictor, 4)
        if model.t_stream:
            plan += transformer_assignments("student_encoder.trans.", model.transformer)
            plan += mlp_assignments("student_encoder.fc2.", model.t_projector, 0)
            plan += mlp_assignments("student_encoder.fc2.", model.t_predictor, 4)
    if target:
        plan += backbone_assignments("teacher_encoder.", model.target_backbone)
        plan += mlp_assignments("teacher_encoder.fc1.", model.target_c_projector, 0)
        if model.t_stream:
            plan += transformer_assignments("teacher_encoder.trans.", model.target_transformer)
            plan += mlp_assignments("teacher_encoder.fc2.", model.target_t_projector, 0)
    return plan


def classifier_assignments(classifier) -> list[Assignment]:
    """A `LinearClassifier` <- `encoder.*` (backbone) + `classifier.0` (Linear), `.1` (BN)."""
    head = classifier.head
    return (
        backbone_assignments("encoder.", classifier.backbone)
        + _dense("classifier.0", head.get_layer("fc"))
        + _bn("classifier.1", head.get_layer("bn"))
    )


# --------------------------------------------------------------- apply
def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    more = f" ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return shown + more


def check_plan(
    plan: list[Assignment],
    shapes: Mapping[str, tuple],
    variables: list,
    what: str,
) -> None:
    """Raises MappingError unless `plan` uses every key of `shapes` (but the ignored ones)
    once, assigns every variable of `variables` once, and every shape matches.

    Args:
        plan: the assignments.
        shapes: checkpoint key -> PyTorch shape, for the keys this plan must consume.
        variables: every Keras variable the plan must cover.
        what: names the checkpoint in messages.
    """
    problems = []
    planned = [a.key for a in plan]
    duplicated = sorted({k for k in planned if planned.count(k) > 1})
    if duplicated:
        problems.append(f"keys used twice: {_listing(duplicated)}")
    ids = [id(a.variable) for a in plan]
    if len(set(ids)) != len(ids):
        problems.append("a Keras variable is assigned twice")
    covered = set(ids)
    uncovered = [v.path for v in variables if id(v) not in covered]
    if uncovered:
        problems.append(f"Keras weights without a checkpoint key: {_listing(uncovered)}")
    wanted = set(planned)
    missing = sorted(k for k in wanted if k not in shapes)
    unknown = sorted(k for k in shapes if k not in wanted and not is_ignored(k))
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unknown:
        hint = ""
        if any(".pos_emb.rel_" in k for k in unknown):
            hint = (
                " (relative position embeddings: care_tf's TransStack uses the absolute "
                "embedding of the paper, rel_pos_emb=False)"
            )
        problems.append(f"unknown keys ({len(unknown)}): {_listing(unknown)}{hint}")
    mismatched = [
        f"{a.key} {tuple(shapes[a.key])} (expected {a.torch_shape})"
        for a in plan
        if a.key in shapes and tuple(shapes[a.key]) != a.torch_shape
    ]
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_listing(mismatched)}")
    if problems:
        raise MappingError(f"{what} does not match the architecture: " + "; ".join(problems))


def apply_plan(
    plan: list[Assignment], read: Callable[[str], np.ndarray], dtype: str = "float32"
) -> int:
    """Assigns every planned tensor (read by `read(key)`); returns the number of scalars."""
    total = 0
    for a in plan:
        value = np.asarray(read(a.key))
        if value.dtype.kind not in "fiu":
            raise MappingError(f"{a.key}: expected a numeric tensor, got {value.dtype}.")
        value = to_keras(value.astype(dtype, copy=False), a.kind)
        a.variable.assign(value)
        total += value.size
    return total
