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

from raftsso import events
from raftsso.fsm import KeyringStateMachine
from raftsso.keyring import Keyring
from raftsso.node.raft_member import RaftMember
from raftsso.node.sealing import NodeSeal

log = logging.getLogger(__name__)

POLL = 0.25
COMPACT_TIMEOUT = 10.0


def _blobs(ring: Keyring) -> set[tuple[int, bytes]]:
    return {(v.id, v.sealed) for v in ring.versions if v.sealed is not None}


class Destroyer:
    def __init__(self, fsm: KeyringStateMachine, raft: RaftMember, seal: NodeSeal) -> None:
        self._fsm = fsm
        self._raft = raft
        self._seal = seal
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._known: set[tuple[int, bytes]] | None = None
        self._versions: set[int] = set()  # versions whose blob is waiting to leave the files
        self._pending: int | None = None  # the applied index that must be passed first
        self._done = 0  # every blob dropped at or before this index is gone from the files
        self._thread = threading.Thread(target=self._loop, name="destroy", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def wake(self) -> None:
        self._wake.set()

    def wait(self, index: int, timeout: float) -> bool:
        """True once every blob dropped up to Raft index ``index`` is gone from this node's
        files; False after ``timeout``."""
        self.wake()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._done < index:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, POLL))
                self._wake.set()
        return True

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(POLL)
            self._wake.clear()
            if self._stopping.is_set() or not self._raft.started:
                continue
            try:
                self.run_once()
            except Exception:  # never let the thread die; try again on the next round
                log.exception("destroying dropped sealed secrets failed; will retry")
                time.sleep(1.0)

    def run_once(self) -> None:
        ring, index = self._fsm.view()
        live = _blobs(ring)
        if self._known is None:
            # At start: a journal replayed since the last snapshot may still hold the blob
            # of a version retired (or re-sealed) before the restart. Compact once.
            if any(v.sealed is None for v in ring.versions) or ring.seal_generation > 1:
                self._pending = index - 1
        else:
            gone = self._known - live
            if gone:
                dropped = self._seal.prune(ring)
                self._versions |= {version for version, _ in gone}
                self._pending = index
                log.info("sealed secrets of version(s) %s dropped from the keyring at index "
                         "%d (unseal cache: %s); compacting once the next entry is applied",
                         sorted(self._versions), index, dropped or "none")
        self._known = live
        if self._pending is None:
            with self._cond:
                self._done = max(self._done, index)
                self._cond.notify_all()
            return
        if self._raft.last_applied <= self._pending:
            return
        target = self._pending
        applied = self._raft.compact(COMPACT_TIMEOUT)
        if applied is None or applied <= target:
            log.warning("compaction to destroy dropped sealed secrets did not finish; "
                        "retrying")
            return
        log.info("compacted the Raft log at index %d: no sealed copy of version(s) %s "
                 "remains in this node's files", applied, sorted(self._versions) or "-")
        if self._versions:
            events.emit(events.VERSION_DESTROYED, versions=sorted(self._versions),
                        index=applied)
        with self._cond:
            if self._pending == target:
                self._pending = None
                self._versions = set()
            self._done = max(self._done, target)
            self._cond.notify_all()
