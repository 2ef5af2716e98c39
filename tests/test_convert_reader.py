"""The restricted `torch.save` reader: values, views, byte order, unsafe and legacy files."""

import collections
import os
import pickle
import zipfile

import numpy as np
import pytest
from torch_checkpoint import _stand_in_torch, _Storage, _Tensor, write_torch_zip

from care_tf.convert.torch_zip import (
    CheckpointError,
    TorchTensor,
    UnsafeCheckpointError,
    load_checkpoint,
)


def test_reads_nested_objects_and_tensor_values(tmp_path):
    rng = np.random.default_rng(0)
    state = collections.OrderedDict(
        conv=rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        steps=np.asarray(7, np.int64),
        half=rng.normal(size=(5,)).astype(np.float16),
    )
    obj = {
        "start_epoch": 3,
        "model": state,
        "extra": [1.5, "text", (2, None)],
        "best": np.float32(2.5),
    }
    path = tmp_path / "ckpt.pth"
    write_torch_zip(str(path), obj)
    loaded = load_checkpoint(path)
    assert loaded["start_epoch"] == 3
    assert loaded["extra"] == [1.5, "text", (2, None)]
    assert loaded["best"] == np.float32(2.5)
    model = loaded["model"]
    assert isinstance(model, collections.OrderedDict) and list(model) == ["conv", "steps", "half"]
    for key, value in state.items():
        assert isinstance(model[key], TorchTensor)
        assert model[key].shape == value.shape
        got = model[key].numpy()
        assert got.dtype == value.dtype
        np.testing.assert_array_equal(got, value)


def test_reads_views_with_offset_and_stride(tmp_path):
    base = np.arange(24, dtype=np.float32)
    with _stand_in_torch() as (torch, utils):
        storage = _Storage(base, torch.FloatStorage)
        # A transposed 3x4 view starting at element 5 of a shared storage.
        view = _Tensor(storage, 5, (4, 3), (1, 4), utils._rebuild_tensor_v2)
        whole = _Tensor(storage, 0, (24,), (1,), utils._rebuild_tensor_v2)
    path = tmp_path / "views.pth"
    _write_objects(path, {"view": view, "whole": whole})
    loaded = load_checkpoint(path)
    expected = np.lib.stride_tricks.as_strided(base[5:], (4, 3), (4, 16))
    np.testing.assert_array_equal(loaded["view"].numpy(), expected)
    np.testing.assert_array_equal(loaded["whole"].numpy(), base)
    with zipfile.ZipFile(path) as zf:  # one storage record for both tensors
        assert [n for n in zf.namelist() if "/data/" in n] == ["archive/data/0"]


def _write_objects(path, obj, tensors=None):
    """write_torch_zip for objects that already hold _Tensor instances."""
    import io

    with _stand_in_torch() as (torch, utils):
        for value in tensors or obj.values():
            value.rebuild = utils._rebuild_tensor_v2
            value.storage.storage_type = torch.FloatStorage
        ids, storages = {}, []

        class Pickler(pickle.Pickler):
            def persistent_id(self, value):
                if isinstance(value, _Storage):
                    if id(value) not in ids:
                        ids[id(value)] = str(len(ids))
                        storages.append(value)
                    return ("storage", value.storage_type, ids[id(value)], "cpu", value.array.size)
                return None

        buffer = io.BytesIO()
        Pickler(buffer, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buffer.getvalue())
        for storage in storages:
            zf.writestr(f"archive/data/{ids[id(storage)]}", storage.array.tobytes())


def test_big_endian_storages(tmp_path):
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "big.pth"
    write_torch_zip(str(path), {"w": value}, byteorder="big")
    np.testing.assert_array_equal(load_checkpoint(path)["w"].numpy(), value)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    # A valid checkpoint (real tensors, torch.save layout) whose pickle also calls os.system.
    path = tmp_path / "evil.pth"
    write_torch_zip(str(path), {"model": {"w": np.ones(3, np.float32)}, "x": _Evil(marker)})
    with zipfile.ZipFile(path) as zf:
        assert b"system" in zf.read("archive/data.pkl")
    with pytest.raises(
        UnsafeCheckpointError, match=r"(posix|os)\.system.*Nothing from the file was run"
    ):
        load_checkpoint(path)
    assert not marker.exists()


def test_refuses_builtins_eval_and_unknown_persistent_ids(tmp_path):
    path = tmp_path / "eval.pth"
    payload = b"\x80\x02c__builtin__\neval\nq\x00X\x04\x00\x00\x001+1q\x01\x85q\x02Rq\x03."
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
    with pytest.raises(UnsafeCheckpointError, match="__builtin__.eval"):
        load_checkpoint(path)

    class BadId(pickle.Pickler):
        def persistent_id(self, obj):
            return ("module", "os") if obj == "x" else None

    import io

    buffer = io.BytesIO()
    BadId(buffer, protocol=2).dump({"a": "x"})
    path = tmp_path / "pid.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buffer.getvalue())
    with pytest.raises(CheckpointError, match="persistent id"):
        load_checkpoint(path)


def test_legacy_format_error_says_how_to_resave(tmp_path):
    path = tmp_path / "legacy.pth"
    magic = 0x1950A86A20F9469CFC6C
    with open(path, "wb") as f:
        pickle.dump(magic, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"legacy \(PyTorch < 1\.6, non-zip\).*torch\.save"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"hello world, not a checkpoint", "not a PyTorch checkpoint"),
    ],
)
def test_other_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_torchscript_and_truncated_archives(tmp_path):
    path = tmp_path / "script.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/data.pkl", pickle.dumps({}, 2))
        zf.writestr("m/constants.pkl", pickle.dumps((), 2))
        zf.writestr("m/code/__torch__.py", "")
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_checkpoint(path)

    path = tmp_path / "short.pth"
    write_torch_zip(str(path), {"w": np.ones((4, 4), np.float32)})
    with zipfile.ZipFile(path) as zf:
        records = {n: zf.read(n) for n in zf.namelist()}
    records["archive/data/0"] = records["archive/data/0"][:10]
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in records.items():
            zf.writestr(name, data)
    tensor = load_checkpoint(path)["w"]
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        tensor.numpy()


class _Parameter:
    """Pickles like an nn.Parameter with Python state: _rebuild_from_type_v2 around
    _rebuild_parameter around a tensor."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce_ex__(self, protocol):
        import sys

        tensor_module = sys.modules["torch._tensor"]
        utils = sys.modules["torch._utils"]
        parameter = sys.modules["torch.nn.parameter"].Parameter
        args = (self.tensor, True, collections.OrderedDict())
        return (
            tensor_module._rebuild_from_type_v2,
            (utils._rebuild_parameter, parameter, args, {"note": 1}),
        )


def test_reads_parameters_rebuilt_from_type(tmp_path):
    value = np.arange(6, dtype=np.float32).reshape(3, 2)
    path = tmp_path / "param.pth"
    with _stand_in_torch() as (torch, utils):
        storage = _Storage(value, torch.FloatStorage)
        tensor = _Tensor(storage, 0, (3, 2), (2, 1), utils._rebuild_tensor_v2)
        _write_objects(path, {"p": _Parameter(tensor)}, tensors=[tensor])
    np.testing.assert_array_equal(load_checkpoint(path)["p"].numpy(), value)
