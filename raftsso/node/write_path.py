"""The leader's serialised write path: past the barrier, one write at a time, exactly once.

A new leader's state machine may lag the log: entries committed under the previous leader
are applied only once the new leader commits an entry of its own term. So the leader
proposes a *barrier* in each new term (:mod:`raftsso.node.duties`) and serves writes only
after it has applied it. Every write then goes through :meth:`WritePath.run`:

1. wait until this node leads, has applied its term's barrier and (usually) has a secret;
2. a retried request id gets its remembered outcome (no check runs again);
3. under the write lock, ``build`` reads the keyring *now* (past the barrier, with no
   other write of this leader in between) and makes the command, or refuses: every check
   that decides a write (retire's client window, the rotate compare-and-set, the version
   cap, membership refusals, early promotion) runs here;
4. the command is proposed; an unknown outcome is resolved by re-reading the request id,
   then retrying the very same command, which the state machine applies at most once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from raftsso.config import NodeConfig
from raftsso.errors import Conflict, NotLeader, OutcomeUnknown, RemoteError
from raftsso.fsm import KeyringStateMachine
from raftsso.keyring import Keyring
from raftsso.node.raft_member import RaftMember
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.commands import Command, Outcome
from raftsso.protocol.ids import RequestId
from raftsso.wire import WireMap

log = logging.getLogger(__name__)


class WritePath:
    def __init__(self, cfg: NodeConfig, fsm: KeyringStateMachine, raft: RaftMember,
                 leader_address: Callable[[], str | None],
                 wake_duties: Callable[[], None]) -> None:
        self._cfg = cfg
        self._fsm = fsm
        self._raft = raft
        self._leader_address = leader_address
        self._wake_duties = wake_duties
        self._ready_term = -1
        self._lock = threading.Lock()

    # the barrier --------------------------------------------------------------------------

    def ready_in(self, term: int) -> bool:
        return self._ready_term == term

    def mark_ready(self, term: int) -> None:
        """The barrier of ``term`` is applied here (called by the leader duties)."""
        self._ready_term = term

    @property
    def ready_for_writes(self) -> bool:
        """This node leads and has applied its term's barrier (read-only, any thread)."""
        return self._ready_term == self._raft.term and self._raft.is_leader

    def propose(self, command: Command) -> Outcome:
        """Propose outside the write path: only the barrier, which the write path waits for."""
        return self._raft.propose(command.encode(), self._cfg.raft.commit_timeout)

    def wait_ready_leader(self, timeout: float, require_secret: bool = True) -> None:
        """Block until this node leads with a quorum and has applied its term's barrier."""
        deadline = time.monotonic() + timeout
        while True:
            if not self._raft.is_leader:
                raise NotLeader("not the leader", leader=self._leader_address())
            if self._ready_term == self._raft.term and (
                    not require_secret or self._fsm.keyring.bootstrapped):
                if not self._raft.has_quorum:
                    raise RemoteError("the leader has lost its quorum", code=ErrorCode.NO_QUORUM)
                return
            if time.monotonic() >= deadline:
                raise RemoteError("the new leader is not ready yet; retry",
                                  code=ErrorCode.UNAVAILABLE)
            self._wake_duties()
            time.sleep(0.01)

    # writes -------------------------------------------------------------------------------

    def run(self, request_id: RequestId, what: str, build: Callable[[Keyring], Command | None],
            *, require_secret: bool = True) -> Outcome | None:
        """Propose what ``build`` makes of the current keyring, exactly once.

        ``build`` may raise a :class:`RemoteError` to refuse, or return None when there is
        nothing to do (then so does this). A failed outcome is returned, not raised (see
        :func:`result_of`).
        """
        timeout = self._cfg.raft.commit_timeout
        self.wait_ready_leader(timeout, require_secret)
        seen = self._fsm.request_outcome(request_id)
        if seen is not None:
            return seen
        with self._lock:
            # Leadership may have moved (and come back in a new term) while we waited.
            self.wait_ready_leader(timeout, require_secret)
            seen = self._fsm.request_outcome(request_id)
            if seen is not None:
                return seen
            command = build(self._fsm.keyring)
            if command is None:
                return None
            blob = command.encode()
            deadline = time.monotonic() + 2 * timeout
            while True:
                try:
                    return self._raft.propose(blob, timeout)
                except OutcomeUnknown:
                    seen = self._fsm.request_outcome(request_id)
                    if seen is not None:
                        return seen
                    if not self._raft.is_leader or time.monotonic() >= deadline:
                        raise OutcomeUnknown(
                            f"the {what} may or may not have been applied; retry with the "
                            "same request id", request_id=request_id) from None


def result_of(outcome: Outcome) -> WireMap:
    """The data of a successful outcome; the error it carries, raised, otherwise."""
    if outcome.ok:
        return outcome.data
    if outcome.code is ErrorCode.CONFLICT:
        raise Conflict(outcome.message)
    raise RemoteError(outcome.message, code=outcome.code or ErrorCode.FAILED)
