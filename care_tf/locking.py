"""An exclusive lock on a directory (a training run, an export root, a TFRecord folder).

    with DirLock("runs/x", "training run"):       # a second process gets a LockError
        ...

The lock is `DIR/.care.lock`, held with `fcntl.flock` for the life of the process; the
file records the holder's pid, hostname, command and start time for the error message.
The kernel releases a flock when its process dies (even by SIGKILL), so a lock file left
by a dead process is stale and is taken over (and said so). On file systems without
flock (some network mounts) a lock whose pid is not alive on this host is stale.
No TensorFlow here.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time

LOCK_FILE = ".care.lock"


class LockError(RuntimeError):
    """The directory is locked by another live process; the message names it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict) -> str:
    if not info:
        return "another process"
    return (
        f"pid {info.get('pid')} on {info.get('hostname')} "
        f"(since {info.get('started', '?')}: {info.get('command', '?')})"
    )


class DirLock:
    """An exclusive, process-lifetime lock on `directory` (created if missing).

    Args:
        directory: str. The directory to lock.
        what: str. What it is, for messages ("training run", "export directory").
        hint: str. The fix suggested when it is locked.
    """

    def __init__(self, directory: str, what: str = "directory", hint: str = "") -> None:
        self.directory = directory
        self.what = what
        self.hint = hint
        self.path = os.path.join(directory, LOCK_FILE)
        self.stale: dict = {}
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        """Takes the lock or raises LockError naming the holder."""
        os.makedirs(self.directory, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._raise_locked(_read(self.path))
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                # No flock here: fall back to the pid recorded in the file.
                info = _read(self.path)
                if (
                    info.get("hostname") == socket.gethostname()
                    and info.get("pid") not in (None, os.getpid())
                    and _alive(int(info["pid"]))
                ):
                    os.close(fd)
                    self._raise_locked(info)
            # The file may have been removed (released) between open and flock: retry.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read(self.path)
            if previous.get("pid") and previous.get("pid") != os.getpid():
                self.stale = previous
                print(
                    f"note: took over the stale lock of {self.what} {self.directory} "
                    f"left by {_describe(previous)}, which is no longer running.",
                    file=sys.stderr,
                )
            info = {
                "pid": os.getpid(),
                "hostname": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "command": " ".join(sys.argv)[:300],
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            os.fsync(fd)
            self._fd = fd
            return self
        raise LockError(f"Could not lock {self.what} {self.directory}: it keeps changing.")

    def _raise_locked(self, info: dict) -> None:
        hint = f" {self.hint}" if self.hint else ""
        what = self.what[:1].upper() + self.what[1:]
        raise LockError(
            f"{what} {self.directory} is in use by {_describe(info)}.{hint} "
            f"(If that process is gone, the lock {self.path} is freed automatically.)"
        )

    def release(self) -> None:
        """Releases the lock (removes the lock file first, then unlocks)."""
        if self._fd is None:
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
