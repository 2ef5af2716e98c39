"""Reads PyTorch `torch.save` checkpoints without PyTorch and without running their code.

A `torch.save` file (PyTorch >= 1.6, the default "zip" serialization) is a zip
archive: `ARCHIVE/data.pkl` pickles the saved object, each tensor's storage is
the raw little-endian bytes of `ARCHIVE/data/KEY`, and the pickle refers to a
storage by a persistent id `("storage", StorageType, KEY, location, numel)`.

A pickle can call any importable function while it loads (`os.system` too). This
reader's unpickler resolves only an allow-list of globals, each replaced by a
function of ours that builds plain data: the tensor-rebuild calls
(`torch._utils._rebuild_tensor_v2` ...), the storage types, `collections.OrderedDict`
and a few harmless builtins. Any other global stops the load with
`UnsafeCheckpointError` before it is called: nothing from the file runs. Tensors
come back as `TorchTensor` (shape, dtype, offset, stride) whose bytes are read from
the archive only when `numpy()` is called.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import tarfile
import zipfile

import numpy as np

# Storage class name (pickled as GLOBAL torch.<name>) -> numpy dtype of its elements.
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "UntypedStorage": "u1",
}
# torch dtype objects (pickled as GLOBAL torch.<name>, used by _rebuild_tensor_v3).
TORCH_DTYPES: dict[str, str] = {
    "float64": "<f8",
    "float32": "<f4",
    "float16": "<f2",
    "bfloat16": "bfloat16",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "i1",
    "uint8": "u1",
    "bool": "?",
}
# A legacy (PyTorch < 1.6) file starts with a protocol-2 pickle of this magic number.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
RESAVE_HINT = (
    "re-save it with PyTorch >= 1.6, whose default is the zip serialization care_tf reads: "
    "python -c \"import torch; torch.save(torch.load('OLD.pth', map_location='cpu', "
    "weights_only=True), 'NEW.pth')\""
)


class CheckpointError(ValueError):
    """A file that is not a readable zip-format `torch.save` checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint's pickle names a global outside the allow-list; nothing was run."""


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        from ml_dtypes import bfloat16  # a TensorFlow dependency

        return np.dtype(bfloat16)
    return np.dtype(name)


@dataclasses.dataclass(frozen=True)
class StorageType:
    """A torch storage class named in the pickle (e.g. `torch.FloatStorage`)."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return _numpy_dtype(STORAGE_DTYPES[self.name])


@dataclasses.dataclass(frozen=True)
class TorchDtype:
    """A torch dtype object named in the pickle (e.g. `torch.float32`)."""

    name: str


@dataclasses.dataclass
class Storage:
    """One storage record of the archive: `numel` elements of `dtype`, read on demand."""

    archive: zipfile.ZipFile
    record: str
    dtype: np.dtype
    numel: int
    byteorder: str

    def array(self) -> np.ndarray:
        """The whole storage as a 1-D array (read from the archive now)."""
        with self.archive.open(self.record) as f:
            data = f.read()
        nbytes = self.numel * self.dtype.itemsize
        if len(data) < nbytes:
            raise CheckpointError(
                f"Storage {self.record} holds {len(data)} bytes, expected {nbytes}: the "
                "checkpoint is truncated or corrupt; download it again."
            )
        array = np.frombuffer(data, self.dtype, count=self.numel)
        if self.byteorder == "big" and self.dtype.itemsize > 1:
            array = array.byteswap()
        return array


@dataclasses.dataclass
class TorchTensor:
    """A tensor of the checkpoint: metadata now, values from `numpy()`.

    Attributes:
        storage: Storage. Where the elements live.
        offset: int. First element, in elements of the storage.
        shape: tuple. PyTorch's shape (e.g. OIHW for a conv weight).
        stride: tuple. Strides in elements.
    """

    storage: Storage
    offset: int
    shape: tuple
    stride: tuple
    dtype: np.dtype

    def numpy(self) -> np.ndarray:
        """The values as a C-contiguous numpy array of `shape`."""
        flat = self.storage.array()
        if flat.dtype != self.dtype:  # an untyped (byte) storage viewed as `dtype`
            flat = flat.view(self.dtype)
        size = int(np.prod(self.shape)) if self.shape else 1
        if size == 0:
            return np.zeros(self.shape, self.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        if self.offset < 0 or last >= len(flat):
            raise CheckpointError(
                f"Tensor of shape {self.shape} reaches past its storage {self.storage.record}: "
                "the checkpoint is corrupt."
            )
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], self.shape, tuple(s * item for s in self.stride), writeable=False
        )
        return np.ascontiguousarray(view)

    def __repr__(self) -> str:
        return f"TorchTensor(shape={self.shape}, dtype={self.dtype})"


# ------------------------------------------------------------ allowed globals
def _rebuild_tensor(storage, offset, size, stride, dtype=None) -> TorchTensor:
    if not isinstance(storage, _TypedStorage):
        raise CheckpointError("A tensor refers to something that is not a storage.")
    if not (_ints(size) and _ints(stride) and len(size) == len(stride)):
        raise CheckpointError(f"A tensor has an invalid size {size!r} / stride {stride!r}.")
    return TorchTensor(
        storage.storage, int(offset), tuple(size), tuple(stride), dtype or storage.storage.dtype
    )


def _ints(values) -> bool:
    return isinstance(values, (tuple, list)) and all(isinstance(v, int) and v >= 0 for v in values)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    if not isinstance(dtype, TorchDtype):
        raise CheckpointError(f"A tensor names an unknown dtype {dtype!r}.")
    return _rebuild_tensor(storage, offset, size, stride, _numpy_dtype(TORCH_DTYPES[dtype.name]))


def _rebuild_parameter(data, requires_grad, hooks, state=None):
    return data


@dataclasses.dataclass(frozen=True)
class TensorType:
    """A tensor class named in the pickle (`torch.Tensor`, `torch.nn.parameter.Parameter`)."""

    name: str


def _rebuild_from_type_v2(func, new_type, args, state):
    # How torch pickles a tensor that carries Python attributes: rebuild, then set them.
    if func not in _REBUILDERS or not isinstance(new_type, TensorType):
        raise CheckpointError(f"Unexpected tensor rebuild {func!r} / {new_type!r}.")
    return func(*args)


def _codecs_encode(text, encoding="utf-8"):
    # Protocol-2 pickles write `bytes` as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError("Unexpected _codecs.encode call in the checkpoint.")
    return text.encode("latin1")


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise CheckpointError("A numpy scalar of a non-numeric type in the checkpoint.")
    return np.frombuffer(data, dtype, count=1)[0]


def _numpy_dtype_global(name, align=False, copy=False):
    dtype = np.dtype(name)
    if dtype.hasobject:
        raise CheckpointError("A numpy object dtype in the checkpoint.")
    return dtype


@dataclasses.dataclass
class _TypedStorage:
    storage: Storage


_REBUILDERS = (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)
_SAFE_GLOBALS = {
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): TensorType("Tensor"),
    ("torch._tensor", "Tensor"): TensorType("Tensor"),
    ("torch.nn.parameter", "Parameter"): TensorType("Parameter"),
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype_global,
}
_SAFE_GLOBALS.update({("torch", name): StorageType(name) for name in STORAGE_DTYPES})
_SAFE_GLOBALS.update({("torch", name): TorchDtype(name) for name in TORCH_DTYPES})


def allowed_globals() -> list[str]:
    """The `module.name` globals a checkpoint may use, sorted (for docs and errors)."""
    return sorted(f"{m}.{n}" for m, n in _SAFE_GLOBALS)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: str):
        super().__init__(file, encoding="utf-8")
        self._archive = archive
        self._prefix = prefix
        self._byteorder = byteorder
        self._path = path
        self._storages: dict[str, Storage] = {}

    def find_class(self, module: str, name: str):
        safe = _SAFE_GLOBALS.get((module, name))
        if safe is None:
            raise UnsafeCheckpointError(
                f"{self._path}: refused to load: its pickle calls {module}.{name}, which is not "
                "one of the tensor-rebuild calls and plain containers a weights checkpoint "
                "needs, so it may run arbitrary code. Nothing from the file was run. Use a "
                "checkpoint from a source you trust (the authors' release page)."
            )
        return safe

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._path}: unknown persistent id {pid!r:.80} in the pickle.")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, StorageType) or not isinstance(numel, int):
            raise CheckpointError(f"{self._path}: invalid storage record {pid!r:.80}.")
        key = str(key)
        if key not in self._storages:
            record = f"{self._prefix}data/{key}"
            try:
                self._archive.getinfo(record)
            except KeyError:
                raise CheckpointError(
                    f"{self._path}: storage {record} is missing from the archive (truncated?)."
                ) from None
            self._storages[key] = Storage(
                self._archive, record, storage_type.dtype, numel, self._byteorder
            )
        return _TypedStorage(self._storages[key])


def _legacy_error(path: str, kind: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is a {kind} checkpoint, which care_tf does not read; {RESAVE_HINT}"
    )


def _check_not_legacy(path: str) -> None:
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"{path} is empty: download the checkpoint again.")
    if head[:1] == b"\x80":  # a raw pickle: torch.save(..., _use_new_zipfile_serialization=False)
        # LONG1 opcode, 10 bytes: the magic number pickled by legacy torch.save.
        magic = int.from_bytes(head[4:14], "little") if head[2:4] == b"\x8a\x0a" else None
        kind = "legacy (PyTorch < 1.6, non-zip)" if magic == LEGACY_MAGIC else "raw pickle"
        raise _legacy_error(path, kind)
    if tarfile.is_tarfile(path):
        raise _legacy_error(path, "legacy tar-format (PyTorch < 0.4)")
    raise CheckpointError(
        f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle): pass the "
        ".pth/.pth.tar file written by torch.save."
    )


def _archive_prefix(archive: zipfile.ZipFile, path: str) -> str:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if any(n.endswith("/constants.pkl") for n in names) or any("/code/" in n for n in names):
        raise CheckpointError(
            f"{path} is a TorchScript archive (torch.jit.save), not a torch.save checkpoint; "
            "convert the state_dict saved by torch.save(model.state_dict(), path)."
        )
    if len(pickles) != 1:
        raise CheckpointError(
            f"{path} is a zip file but not a torch.save checkpoint (expected one "
            f"ARCHIVE/data.pkl, found {len(pickles)})."
        )
    return pickles[0][: -len("data.pkl")]


def load_checkpoint(path: str | os.PathLike) -> object:
    """The object a zip-format `torch.save` file holds, tensors as `TorchTensor`.

    The archive stays open while tensors are read: keep the returned object (and
    call `TorchTensor.numpy()`) within the process; the file is read lazily.

    Args:
        path: a `.pth` / `.pth.tar` file written by `torch.save` (PyTorch >= 1.6).

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle names a global outside `allowed_globals()`.
        CheckpointError: a legacy (non-zip) file, a TorchScript archive, or corrupt data.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file.")
    if not zipfile.is_zipfile(path):
        _check_not_legacy(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{path}: unreadable zip archive ({err}); download it again."
        ) from None
    prefix = _archive_prefix(archive, path)
    byteorder = "little"
    if f"{prefix}byteorder" in archive.namelist():
        byteorder = archive.read(f"{prefix}byteorder").decode().strip() or "little"
    data = archive.read(f"{prefix}data.pkl")
    unpickler = _RestrictedUnpickler(io.BytesIO(data), archive, prefix, byteorder, path)
    try:
        return unpickler.load()
    except CheckpointError:
        raise
    except Exception as err:  # a malformed pickle: report, never a traceback from inside
        raise CheckpointError(
            f"{path}: the checkpoint's pickle could not be read ({type(err).__name__}: {err})."
        ) from None
