"""Artefacts written aside and renamed into place: a reader sees the old file or the new one.

    with replacing("runs/x/model.keras") as tmp:   # tmp: runs/x/.model.keras.<token>.tmp.keras
        model.save(tmp)                             # a failure here leaves model.keras intact
    write_json("runs/x/train_state.json", state)
    publish_dir("out/care/.tmp-1", "out/care/1")    # swap a finished directory into place

Files are flushed to disk (fsync) before the rename, and the rename is atomic on POSIX
file systems, so a crash, a full disk or a kill mid-write never leaves a truncated
artefact under the final name. No TensorFlow here: the CLIs import it before parsing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import secrets
import shutil
from collections.abc import Iterator

_RENAME_EXCHANGE = 2  # linux/fs.h


def aside_path(path: str) -> str:
    """A unique hidden path next to `path`, keeping its extension (Keras needs `.keras`)."""
    folder, base = os.path.split(os.path.abspath(path))
    _, ext = os.path.splitext(base)
    return os.path.join(folder, f".{base}.{os.getpid()}-{secrets.token_hex(4)}.tmp{ext}")


def _fsync(path: str) -> None:
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for name in files:
                _fsync(os.path.join(root, name))
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    else:
        flags = os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (e.g. some FUSE) refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yields a temporary path next to `path`; on success it replaces `path` atomically.

    On an exception (disk full, a failing serialiser, Ctrl-C) the temporary file is
    removed and `path`, if it existed, is untouched.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = aside_path(path)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise FileNotFoundError(f"Nothing was written to {tmp} (for {path}).")
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)


def write_bytes(path: str, data: bytes) -> str:
    """Writes `data` to `path` atomically; returns `path`."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def write_text(path: str, text: str) -> str:
    """Writes `text` (UTF-8) to `path` atomically; returns `path`."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj, **kwargs) -> str:
    """Writes `obj` as indented JSON (plus a final newline) atomically; returns `path`."""
    kwargs.setdefault("indent", 2)
    return write_text(path, json.dumps(obj, **kwargs) + "\n")


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps two existing paths (Linux renameat2 RENAME_EXCHANGE); False if
    the system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def publish_dir(tmp: str, final: str) -> None:
    """Moves the finished directory (or file) `tmp` to `final`, replacing an old one.

    The old version is removed only after the new one is in place. On Linux the two
    are swapped in one atomic step; elsewhere the old one is renamed aside first, so
    `final` is missing for the instant between two renames, never half-written.
    """
    _fsync(tmp)
    if not os.path.lexists(final):
        os.rename(tmp, final)
    elif os.path.isdir(final) and os.path.isdir(tmp) and _exchange(tmp, final):
        shutil.rmtree(tmp)  # now holds the old version
    elif not os.path.isdir(final) and not os.path.isdir(tmp):
        os.replace(tmp, final)
    else:
        old = aside_path(final)
        os.rename(final, old)
        os.rename(tmp, final)
        if os.path.isdir(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.remove(old)
    _fsync(os.path.dirname(os.path.abspath(final)))


def remove_stale(folder: str, prefix: str) -> list[str]:
    """Removes leftovers `folder/prefix*` (temporary files or folders of a killed writer)."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if name.startswith(prefix):
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(path)
    return removed
