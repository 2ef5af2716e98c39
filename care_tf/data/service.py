"""Reaching a tf.data service dispatcher (`data.service`) within a bounded wait.

tf.data retries an unreachable dispatcher forever, silently; `wait_for_dispatcher`
connects to its port first, printing progress, and fails with one line naming the
address once the wait is over.
"""

from __future__ import annotations

import socket
import sys
import time


def _split(address: str) -> tuple[str, str] | None:
    """(host, port digits) of "grpc://HOST:PORT", or None when it is not of that form."""
    if not address.startswith("grpc://"):
        return None
    host, sep, port = address.removeprefix("grpc://").rpartition(":")
    return (host, port) if sep and host and port.isdigit() else None


def is_address(address: str) -> bool:
    """Whether `address` is a dispatcher address "grpc://HOST:PORT" (the config's check)."""
    return _split(address) is not None


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of "grpc://HOST:PORT" (HOST may be a bracketed IPv6 address)."""
    parts = _split(address)
    if parts is None:
        raise ValueError(f"data.service must be grpc://HOST:PORT; got {address!r}.")
    return parts[0].strip("[]"), int(parts[1])


def wait_for_dispatcher(
    address: str, timeout: float = 60.0, *, every: float = 10.0, out=None
) -> float:
    """Waits until the dispatcher at `address` accepts a connection.

    Args:
        address: str. "grpc://HOST:PORT".
        timeout: float. Seconds to keep trying.
        every: float. Seconds between progress lines.
        out: text stream of the progress lines (default: stderr).

    Returns:
        Seconds waited.

    Raises:
        ValueError: nothing answered at `address` within `timeout` seconds.
    """
    host, port = parse_address(address)
    out = out or sys.stderr
    start = time.monotonic()
    next_report = start + every
    reason = ""
    while True:
        now = time.monotonic()
        left = timeout - (now - start)
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(left, 5.0))):
                return time.monotonic() - start
        except OSError as e:
            reason = e.strerror or type(e).__name__
        now = time.monotonic()
        if now - start >= timeout:
            raise ValueError(
                f"no tf.data service dispatcher answers at {address} ({reason}) after "
                f"{timeout:g} s: start it (docs/training.md), fix data.service, or raise "
                "data.service_timeout."
            )
        if now >= next_report:
            print(
                f"data.service: waiting for the dispatcher at {address} ({reason}); "
                f"{now - start:.0f} of {timeout:g} s.",
                file=out,
                flush=True,
            )
            next_report += every
        time.sleep(min(1.0, max(0.0, timeout - (now - start))))
