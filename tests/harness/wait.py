"""Polling with a deadline (nothing in the tests sleeps to synchronise) and the real CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from raftsso.errors import RaftssoError

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0


def wait_for(predicate: Callable[[], T | None], timeout: float = DEFAULT_TIMEOUT,
             interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``.

    ``RaftssoError`` and ``OSError`` from the predicate count as "not yet" (the last one is
    named in the failure).
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (RaftssoError, OSError) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval)


def cli(*args: str, stdin: bytes | None = None, timeout: float = 60.0,
        cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``raftsso`` command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "raftsso_cli", *args], input=stdin,
                          capture_output=True, timeout=timeout, cwd=cwd, check=False)


def sent_until_dropped(sock: Any, frame: bytes, tries: int = 20_000) -> bool:
    """Send ``frame`` over ``sock`` (with a short timeout set) until blocked: False (the
    node no longer reads); True once the node closed the connection. For
    ``wait_for(lambda: sent_until_dropped(...))`` on a client that never reads."""
    try:
        for _ in range(tries):
            sock.sendall(frame)
    except TimeoutError:
        return False
    except OSError:  # reset, broken pipe, TLS EOF: the node closed the connection
        return True
    raise AssertionError("the node kept reading although no answer was read")
