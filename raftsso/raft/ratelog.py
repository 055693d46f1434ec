"""Log lines that may repeat fast (refused connections, postponed writes), rate-limited."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable

MAX_KEYS = 1024


class RateLimitedLog:
    """At most one line per ``period`` seconds for each key; the rest are counted.

    The next line of a key says how many were suppressed since the last one. Thread-safe.
    """

    def __init__(self, logger: logging.Logger, period: float = 1.0) -> None:
        self._logger = logger
        self.period = period
        self._lock = threading.Lock()
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def warn(self, key: Hashable, message: str, level: int = logging.WARNING,
             period: float | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e9) < (self.period if period is None else period):
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            if len(self._last) >= MAX_KEYS:  # many keys (hosts): forget the old ones
                self._last.clear()
                self._suppressed.clear()
            self._last[key] = now
            more = self._suppressed.pop(key, 0)
        self._logger.log(level, "%s%s", message,
                         f" ({more} more like it suppressed)" if more else "")
