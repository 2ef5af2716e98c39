"""Test helpers: the CARE authors' state_dict key scheme and a `torch.save`-format writer.

`authors_keys` generates the keys and shapes the authors' code gives (checked
against tests/fixtures/official_care_keys.tsv for ResNet-50), for any ResNet
depth / width so tests can use small models. `write_torch_zip` writes a file laid
out as `torch.save` (PyTorch >= 1.6) writes it: `archive/data.pkl` (pickle protocol
2, tensors reduced to `torch._utils._rebuild_tensor_v2` with persistent ids
`("storage", torch.FloatStorage, key, "cpu", numel)`), `archive/data/<key>` raw
little-endian storages, `archive/byteorder`, `archive/version`. PyTorch is not needed:
stand-in `torch` modules exist only while the pickle is written.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import pickle
import re
import sys
import types
import zipfile

import numpy as np

FIXTURE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "fixtures", "official_care_keys.tsv"
)
STAGES = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3))}
BN = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
STORAGE_NAMES = {"float32": "FloatStorage", "int64": "LongStorage", "float16": "HalfStorage"}


def read_fixture(path: str = FIXTURE) -> list[tuple[str, str, tuple, str, str]]:
    """Rows (format, key, shape, dtype, network) of the fixture."""
    rows = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or line.startswith("format\t"):
                continue
            fmt, key, shape, dtype, network = line.rstrip("\n").split("\t")
            dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
            rows.append((fmt, key, dims, dtype, network))
    return rows


def _bn(prefix: str, n: int) -> list:
    return [
        (f"{prefix}.weight", (n,), "float32"),
        (f"{prefix}.bias", (n,), "float32"),
        (f"{prefix}.running_mean", (n,), "float32"),
        (f"{prefix}.running_var", (n,), "float32"),
        (f"{prefix}.num_batches_tracked", (), "int64"),
    ]


def _linear(prefix: str, n_out: int, n_in: int) -> list:
    return [(f"{prefix}.weight", (n_out, n_in), "float32"), (f"{prefix}.bias", (n_out,), "float32")]


def resnet_keys(prefix: str, depth: int, base: int, width: int, stem_kernel: int) -> tuple:
    """torchvision-style ResNet keys; returns (keys, res4 channels, res5 channels)."""
    kind, blocks = STAGES[depth]
    keys = [(f"{prefix}conv1.weight", (base, 3, stem_kernel, stem_kernel), "float32")]
    keys += _bn(f"{prefix}bn1", base)
    channels, res = base, []
    for s, count in enumerate(blocks, start=1):
        planes = base * 2 ** (s - 1)
        inner = planes * width
        out = planes * 4 if kind == "bottleneck" else planes
        for b in range(count):
            p = f"{prefix}layer{s}.{b}."
            stride = 2 if (s > 1 and b == 0) else 1
            if kind == "bottleneck":
                convs = [(inner, channels, 1), (inner, inner, 3), (out, inner, 1)]
            else:
                convs = [(inner, channels, 3), (out, inner, 3)]
            for i, (o, c, k) in enumerate(convs, start=1):
                keys.append((f"{p}conv{i}.weight", (o, c, k, k), "float32"))
                keys += _bn(f"{p}bn{i}", o)
            if stride != 1 or channels != out:
                keys.append((f"{p}downsample.0.weight", (out, channels, 1, 1), "float32"))
                keys += _bn(f"{p}downsample.1", out)
            channels = out
        res.append(channels)
    return keys, res[2], res[3]


def trans_keys(prefix: str, in_ch: int, out: int, blocks: int, fmap: int, heads: int) -> list:
    """BoTNet BottleStack keys (`net.k.shortcut`, `net.k.net.0..8`)."""
    inner = out // 4
    head_dim = inner // heads
    keys = []
    for k in range(blocks):
        p = f"{prefix}net.{k}."
        c = in_ch if k == 0 else out
        size = fmap if k == 0 else fmap // 2
        if k == 0:
            keys.append((f"{p}shortcut.0.weight", (out, c, 3, 3), "float32"))
            keys += _bn(f"{p}shortcut.1", out)
        keys.append((f"{p}net.0.weight", (inner, c, 1, 1), "float32"))
        keys += _bn(f"{p}net.1", inner)
        keys.append((f"{p}net.3.to_qkv.weight", (3 * inner, inner, 1, 1), "float32"))
        keys.append((f"{p}net.3.pos_emb.height", (size, head_dim), "float32"))
        keys.append((f"{p}net.3.pos_emb.width", (size, head_dim), "float32"))
        keys += _bn(f"{p}net.5", inner)
        keys.append((f"{p}net.7.weight", (out, inner, 1, 1), "float32"))
        keys += _bn(f"{p}net.8", out)
    return keys


def head_keys(prefix: str, in_dim: int, hidden: int, proj: int, predictor: bool) -> list:
    keys = _linear(f"{prefix}0", hidden, in_dim) + _bn(f"{prefix}1", hidden)
    keys += _linear(f"{prefix}3", proj, hidden)
    if predictor:
        keys += _linear(f"{prefix}4", hidden, proj) + _bn(f"{prefix}5", hidden)
        keys += _linear(f"{prefix}7", proj, hidden)
    return keys


def authors_keys(
    fmt: str,
    depth: int = 50,
    base: int = 64,
    width: int = 1,
    stem_kernel: int = 7,
    trans_blocks: int = 5,
    fmap: int = 14,
    heads: int = 4,
    hidden: int = 4096,
    proj: int = 256,
    num_classes: int = 1000,
    prefix: str = "module.",
    target: bool = True,
    transformer: str = "trans",
) -> list[tuple[str, tuple, str]]:
    """(key, shape, dtype) of the authors' "pretrain" or "linear" state_dict, in order."""
    if fmt == "linear":
        keys, _, res5 = resnet_keys(f"{prefix}encoder.", depth, base, width, stem_kernel)
        keys += _linear(f"{prefix}encoder.fc.0", 128, res5)
        keys += _linear(f"{prefix}classifier.0", num_classes, res5)
        return keys + _bn(f"{prefix}classifier.1", num_classes)
    keys = []
    for net, online in (("student_encoder", True), ("teacher_encoder", False)):
        if not online and not target:
            continue
        p = f"{prefix}{net}."
        res, res4, res5 = resnet_keys(p, depth, base, width, stem_kernel)
        keys += res
        if trans_blocks:
            keys += trans_keys(f"{p}{transformer}.", res4, res5, trans_blocks, fmap, heads)
        keys += head_keys(f"{p}fc1.", res5, hidden, proj, online)
        if trans_blocks:
            keys += head_keys(f"{p}fc2.", res5, hidden, proj, online)
    return keys


def random_state_dict(keys, seed: int = 0) -> collections.OrderedDict:
    """Distinct random values for every key (int64 step counters get small integers)."""
    rng = np.random.default_rng(seed)
    state = collections.OrderedDict()
    for key, shape, dtype in keys:
        if dtype == "int64":
            state[key] = np.asarray(rng.integers(0, 1000), np.int64).reshape(shape)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            state[key] = rng.normal(0.0, 0.1, shape).astype(np.float32)
    return state


# ------------------------------------------------------------------ writer
class _Storage:
    def __init__(self, array: np.ndarray, storage_type):
        self.array = np.ascontiguousarray(array).reshape(-1)
        self.storage_type = storage_type


class _Tensor:
    """Pickles like a torch tensor: `_rebuild_tensor_v2(storage, offset, size, stride, ...)`."""

    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple, rebuild):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride
        self.rebuild = rebuild

    def __reduce_ex__(self, protocol):
        hooks = collections.OrderedDict()
        return (self.rebuild, (self.storage, self.offset, self.shape, self.stride, False, hooks))


STAND_IN_FUNCTIONS = (
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"),
)


@contextlib.contextmanager
def _stand_in_torch():
    """Modules `torch`, `torch._utils`, ... holding the names the pickle refers to."""
    names = ("torch", "torch._utils", "torch._tensor", "torch.nn", "torch.nn.parameter")
    saved = {name: sys.modules.get(name) for name in names}
    modules = {name: types.ModuleType(name) for name in names}
    torch = modules["torch"]
    for name in (*STORAGE_NAMES.values(), "UntypedStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    parameter = type("Parameter", (), {"__module__": "torch.nn.parameter"})
    modules["torch.nn.parameter"].Parameter = parameter

    def never_called(*args):
        raise AssertionError("never called while writing")

    for module, name in STAND_IN_FUNCTIONS:
        function = types.FunctionType(never_called.__code__, {}, name)
        function.__module__, function.__qualname__ = module, name
        setattr(modules[module], name, function)
    sys.modules.update(modules)
    try:
        yield torch, modules["torch._utils"]
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def to_torch_objects(obj, torch, utils, views: dict | None = None):
    """Replaces numpy arrays in `obj` (dicts, lists) with pickle-ready tensors."""
    views = views or {}
    if isinstance(obj, np.ndarray):
        storage_type = getattr(torch, STORAGE_NAMES[str(obj.dtype)])
        item = obj.dtype.itemsize
        if id(obj) in views:  # a strided view: reuse the base storage
            base_storage, offset = views[id(obj)]
            strides = tuple(s // item for s in obj.strides)
            return _Tensor(base_storage, offset, obj.shape, strides, utils._rebuild_tensor_v2)
        contiguous = np.array(obj, order="C")  # keeps 0-d tensors 0-d
        strides = tuple(s // item for s in contiguous.strides) if contiguous.ndim else ()
        storage = _Storage(contiguous, storage_type)
        return _Tensor(storage, 0, contiguous.shape, strides, utils._rebuild_tensor_v2)
    if isinstance(obj, dict):
        out = type(obj)()
        for key, value in obj.items():
            out[key] = to_torch_objects(value, torch, utils, views)
        if isinstance(obj, collections.OrderedDict):
            out._metadata = collections.OrderedDict({"": {"version": 1}})  # as torch's state_dict
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_torch_objects(v, torch, utils, views) for v in obj)
    return obj


def write_torch_zip(path: str, obj, archive: str = "archive", byteorder: str = "little") -> None:
    """Writes `obj` (numpy arrays for tensors) as `torch.save` does (zip serialization)."""
    with _stand_in_torch() as (torch, utils):
        converted = to_torch_objects(obj, torch, utils)
        ids: dict[int, str] = {}
        storages: list[_Storage] = []

        class Pickler(pickle.Pickler):
            def persistent_id(self, value):
                if isinstance(value, _Storage):
                    if id(value) not in ids:
                        ids[id(value)] = str(len(ids))
                        storages.append(value)
                    return ("storage", value.storage_type, ids[id(value)], "cpu", value.array.size)
                return None

        buffer = io.BytesIO()
        Pickler(buffer, protocol=2).dump(converted)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", buffer.getvalue())
        zf.writestr(f"{archive}/byteorder", byteorder)
        for storage in storages:
            data = storage.array
            if byteorder == "big":
                data = data.byteswap()
            zf.writestr(f"{archive}/data/{ids[id(storage)]}", data.tobytes())
        zf.writestr(f"{archive}/version", "3\n")


def write_pretrain_checkpoint(path: str, keys, seed: int = 0, epoch: int = 100) -> dict:
    """The authors' pretraining file: {'start_epoch', 'model', 'optimizer'}; returns the state."""
    state = random_state_dict(keys, seed)
    floats = [k for k, _, dt in keys if dt == "float32"][:3]
    optimizer = {
        "state": {i: {"momentum_buffer": np.ones_like(state[k])} for i, k in enumerate(floats)},
        "param_groups": [{"lr": 0.05, "momentum": 0.9, "params": list(range(len(floats)))}],
    }
    write_torch_zip(path, {"start_epoch": epoch, "model": state, "optimizer": optimizer})
    return state


def write_linear_checkpoint(path: str, keys, seed: int = 1) -> dict:
    """The authors' linear-evaluation file: {'epoch', 'classifier', 'best_acc1'}."""
    state = random_state_dict(keys, seed)
    write_torch_zip(path, {"epoch": 90, "classifier": state, "best_acc1": np.float32(72.02)})
    return state


# ------------------------------------------------ where each tensor belongs
def _conv_to_hwio(value):
    return value.transpose(2, 3, 1, 0)


def keras_destination(key, backbone, transformer, heads):
    """(keras variable, expected value transform) for a normalised key, derived here
    from the authors' module structure independently of care_tf.convert.mapping."""
    if m := re.fullmatch(r"conv1\.weight", key):
        return backbone.get_layer("stem_conv").kernel, _conv_to_hwio
    if m := re.fullmatch(r"bn1\.(\w+)", key):
        return getattr(backbone.get_layer("stem_bn"), BN[m[1]]), None
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.conv(\d)\.weight", key):
        return backbone.get_layer(f"stage{m[1]}_block{m[2]}_{m[3]}_conv").kernel, _conv_to_hwio
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.bn(\d)\.(\w+)", key):
        return getattr(backbone.get_layer(f"stage{m[1]}_block{m[2]}_{m[3]}_bn"), BN[m[4]]), None
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.0\.weight", key):
        return backbone.get_layer(f"stage{m[1]}_block{m[2]}_proj_conv").kernel, _conv_to_hwio
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.1\.(\w+)", key):
        return getattr(backbone.get_layer(f"stage{m[1]}_block{m[2]}_proj_bn"), BN[m[3]]), None
    if m := re.fullmatch(r"trans\.net\.(\d+)\.(.+)", key):
        block, rest = transformer.blocks[int(m[1])], m[2]
        convs = {
            "shortcut.0": block.shortcut_conv if block.project_shortcut else None,
            "net.0": block.conv_in,
            "net.3.to_qkv": block.attention.qkv,
            "net.7": block.conv_out,
        }
        bns = {
            "shortcut.1": block.shortcut_bn if block.project_shortcut else None,
            "net.1": block.bn_in,
            "net.5": block.bn_mid,
            "net.8": block.bn_out,
        }
        if rest == "net.3.pos_emb.height":
            return block.attention.pos_height, None
        if rest == "net.3.pos_emb.width":
            return block.attention.pos_width, None
        name, param = rest.rsplit(".", 1)
        if name in convs and param == "weight":
            return convs[name].kernel, _conv_to_hwio
        return getattr(bns[name], BN[param]), None
    if m := re.fullmatch(r"(fc\d|classifier)\.(\d)\.(\w+)", key):
        head = heads[m[1]][int(m[2]) // 4]  # projector 0..3, predictor 4..7
        index = int(m[2]) % 4
        if index in (0, 3):
            if m[1] == "classifier":
                dense = head.get_layer("fc")
            else:
                dense = head.dense_hidden if index == 0 else head.dense_out
            return (dense.kernel, np.transpose) if m[3] == "weight" else (dense.bias, None)
        bn = head.get_layer("bn") if m[1] == "classifier" else head.bn
        return getattr(bn, BN[m[3]]), None
    raise AssertionError(f"no destination for {key}")


def check_every_tensor(state, prefix, backbone, transformer, heads, skip=()):
    """Every non-ignored key's value sits, transformed, in exactly its variable."""
    seen = set()
    for key, value in state.items():
        short = key[len(prefix) :]
        if key.endswith("num_batches_tracked") or short.startswith(skip):
            continue
        short = short.removeprefix("encoder.")  # the linear checkpoint's backbone
        variable, transform = keras_destination(short, backbone, transformer, heads)
        expected = transform(value) if transform else value
        np.testing.assert_array_equal(np.asarray(variable), expected, err_msg=key)
        assert id(variable) not in seen, key
        seen.add(id(variable))
    return seen
