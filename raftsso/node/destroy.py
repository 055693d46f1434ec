"""Retire (and seal rekey) destroy: no copy of a dropped sealed secret stays on this node.

When the keyring stops holding a sealed blob (a version retired, or re-sealed under a new
seal generation), this node

1. drops the version's opened secret from its unseal cache (overwritten in place,
   :func:`raftsso.node.sealing.scrub`);
2. compacts its Raft log (:meth:`RaftMember.compact`) once it has applied at least one
   entry past the one that dropped the blob: the snapshot is then of a keyring without
   it, and the journal, rewritten into a new file, keeps only the last two applied
   entries (both past the command that carried the blob). The leader proposes a barrier
   right after a retirement so that every node gets that entry at once.

One thread per node ("destroy"), woken by the node after a write and otherwise polling
every 250 ms, so followers destroy within a bounded time of applying the command.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from raftsso import events
from raftsso.fsm import KeyringStateMachine
from raftsso.node.raft_member import RaftMember
from raftsso.node.sealing import NodeSeal
from raftsso.node.ticker import Ticker

log = logging.getLogger(__name__)

POLL = 0.25
COMPACT_TIMEOUT = 10.0


class Destroyer:
    def __init__(self, fsm: KeyringStateMachine, raft: RaftMember, seal: NodeSeal,
                 on_drop: Callable[[], None] = lambda: None) -> None:
        self._on_drop = on_drop  # forget cached answers that may hold a dropped key
        self._fsm = fsm
        self._raft = raft
        self._seal = seal
        self._cond = threading.Condition()
        self._ticker = Ticker("destroy", POLL, self._tick)
        self._start: int | None = None  # a compaction owed since the start (its index)
        self._done = 0  # every blob dropped at or before this index is gone from the files

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()

    def wake(self) -> None:
        self._ticker.wake()

    def wait(self, index: int, timeout: float) -> bool:
        """True once every blob dropped up to Raft index ``index`` (the state machine's
        ``last_drop``) is gone from this node's files; False after ``timeout``."""
        self.wake()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._done < index:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, POLL))
                self._ticker.wake()
        return True

    def _tick(self) -> None:
        if not self._raft.started:
            return
        try:
            self.run_once()
        except Exception:  # never let the thread die; try again on the next round
            log.exception("destroying dropped sealed secrets failed; will retry")
            time.sleep(1.0)

    def run_once(self) -> None:
        ring, index = self._fsm.view()
        drop = self._fsm.last_drop
        if self._start is None:
            # At start: a journal replayed since the last snapshot may still hold the blob
            # of a version retired (or re-sealed) before the restart. Compact once.
            stale = any(v.sealed is None for v in ring.versions) or ring.seal_generation > 1
            self._start = index if stale else 0
        if drop > self._done:
            target, past = drop, 1  # compact once the entry after the drop is applied
        elif self._start:
            target, past = self._start, 0
        else:
            with self._cond:
                self._cond.notify_all()
            return
        dropped = self._seal.prune(ring)
        self._on_drop()
        if dropped:
            log.info("opened secrets of version(s) %s left the unseal cache", dropped)
        if self._raft.last_applied < target + past:
            return
        applied = self._raft.compact(COMPACT_TIMEOUT)
        if applied is None or applied < target + past:
            log.warning("compaction to destroy dropped sealed secrets did not finish; "
                        "retrying")
            return
        retired = sorted(v.id for v in ring.versions if v.sealed is None)
        log.info("compacted the Raft log at index %d: no sealed copy dropped at or before "
                 "index %d (retired versions %s, seal generation %d) remains in this "
                 "node's files", applied, target, retired or "-", ring.seal_generation)
        events.emit(events.VERSION_DESTROYED, index=applied, retired=retired,
                    seal_generation=ring.seal_generation)
        with self._cond:
            self._done = max(self._done, target)
            if target == self._start:
                self._start = 0
            self._cond.notify_all()
