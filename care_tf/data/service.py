"""Reaching a tf.data service dispatcher (`data.service`) within a bounded wait.

tf.data retries an unreachable dispatcher forever, silently; `wait_for_dispatcher`
connects to its port first, printing progress, and fails with one line naming the
address once the wait is over.
"""

from __future__ import annotations

import socket
import sys
import time


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of "grpc://HOST:PORT" (HOST may be a bracketed IPv6 address)."""
    rest = address.removeprefix("grpc://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"data.service must be grpc://HOST:PORT; got {address!r}.")
    return host.strip("[]"), int(port)


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
