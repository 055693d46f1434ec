"""What the node's log lines share: JSON that cannot leak bytes, UTC timestamps, a logging
queue so that no thread blocks on a slow log consumer, and a per-key rate limit.

Used by the event lines (:mod:`raftsso.events`), the audit file (:mod:`raftsso.audit`), the
node's own log (:mod:`raftsso.runner`) and the peer links' refusal warnings.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import logging.handlers
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any


def json_scalar(value: Any, max_len: int, other: Callable[[Any], Any]) -> Any:
    """``value`` if it is a JSON scalar (None, bool, int, finite float, str; a long str cut
    to ``max_len`` characters with an ellipsis), else ``other(value)``.

    Bytes, containers (which could hide bytes), non-finite floats and any other object go
    to ``other``, which decides what the line may say instead (a placeholder, or None).
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str):
        return value if len(value) <= max_len else value[:max_len] + "…"
    return other(value)


def utc_timestamp(when: float | dt.datetime) -> str:
    """``2025-01-01T12:00:00.123Z``: UTC, milliseconds (a POSIX time or a datetime)."""
    t = (dt.datetime.fromtimestamp(when, dt.UTC) if isinstance(when, float | int)
         else when.astimezone(dt.UTC))
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def json_line(record: dict[str, Any]) -> str:
    """One compact JSON line (no newline); refuses NaN rather than writing invalid JSON."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def log_through_queue(logger: logging.Logger, handler: logging.Handler,
                      level: int) -> Callable[[], None]:
    """Route ``logger`` through a queue to ``handler`` (written by one listener thread).

    A record is then only put on a queue: a slow consumer (a full stderr pipe, a stalled
    journald) never delays the thread that logs, the Raft thread included. Returns the
    function that flushes the queue and stops the listener; it runs at exit anyway, and
    running it twice is harmless.
    """
    log_queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    logger.handlers[:] = [logging.handlers.QueueHandler(log_queue)]
    logger.setLevel(level)
    listener = logging.handlers.QueueListener(log_queue, handler)
    listener.start()
    lock = threading.Lock()
    running = [True]

    def stop() -> None:
        with lock:
            if running[0]:
                running[0] = False
                listener.stop()

    atexit.register(stop)
    return stop


class RateLimiter:
    """At most one line per key per ``interval``; the next one says how many were held back.

    For what a remote party can cause at will (refused requests, failing syncs, refused
    peer connections), so that it cannot flood the node log.
    """

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000) -> None:
        self.interval = interval
        self.max_keys = max_keys  # past this many keys, forget them all (many peers)
        self._clock = clock
        self._state: dict[Hashable, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def allow(self, key: Hashable) -> int | None:
        """None to hold this one back; else how many were held back since the last one."""
        now = self._clock()
        with self._lock:
            last = self._state.get(key)
            if last is not None and now - last[0] < self.interval:
                self._state[key] = (last[0], last[1] + 1)
                return None
            if len(self._state) >= self.max_keys:
                self._state.clear()
            self._state[key] = (now, 0)
        return last[1] if last is not None else 0

    def log(self, key: Hashable, logger: logging.Logger, level: int, message: str) -> bool:
        """Log ``message`` unless held back (then False)."""
        held = self.allow(key)
        if held is None:
            return False
        logger.log(level, "%s%s", message, f" ({held} more like it suppressed)" if held else "")
        return True
