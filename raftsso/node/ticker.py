"""One background thread that runs a step every ``period`` seconds, or at once when woken,
until stopped: the shape of the leader's duties, its scheduled duties and the destroyer.

The step owns its error handling (each one defers, logs or backs off differently); the
ticker owns only the thread, the wake-up and the stop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Ticker:
    def __init__(self, name: str, period: float, step: Callable[[], None]) -> None:
        self._period = period
        self._step = step
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def wake(self) -> None:
        self._wake.set()

    def pause(self, seconds: float) -> None:
        """Back off after a failed step; returns early when the ticker is stopped."""
        self._stopping.wait(seconds)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._period)
            self._wake.clear()
            if self._stopping.is_set():
                return
            self._step()
