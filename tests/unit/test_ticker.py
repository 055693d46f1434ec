"""The node's background-thread shape (raftsso.node.ticker): a wake runs the step without
waiting for the period, stop ends the thread, and pause returns early once stopped."""

from __future__ import annotations

import threading

from raftsso.node.ticker import Ticker
from tests.harness import wait_for


def test_wake_runs_the_step_at_once_and_stop_ends_the_thread() -> None:
    ran = threading.Event()
    ticker = Ticker("test-ticker", 3600.0, ran.set)  # the period alone would never fire
    ticker.start()
    try:
        ticker.wake()
        assert ran.wait(10)
    finally:
        ticker.stop()
    assert not any(t.name == "test-ticker" for t in threading.enumerate())


def test_pause_returns_early_once_stopped() -> None:
    ticker = Ticker("test-pause", 3600.0, lambda: None)
    ticker.start()
    done = threading.Event()

    def pause() -> None:
        ticker.pause(3600.0)
        done.set()

    threading.Thread(target=pause, daemon=True).start()
    ticker.stop()
    wait_for(done.is_set, 10, what="pause to return after stop")
