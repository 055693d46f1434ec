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

:meth:`WritePath.run_async` is the same path for the service's event loop, without a
worker thread where none is needed: when this node is ready and the write lock is free, the
command is built on the loop, proposed without blocking, and the Raft thread hands the
applied outcome straight back to the loop (``call_soon_threadsafe``). The write lock is
then released by the Raft thread the moment the entry is applied, so the next write reads
it. Anything else (waiting for the barrier or the lock, an outcome that does not come in
time) goes to a worker thread, as :meth:`WritePath.run` does it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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

# Where a loop commit with an unknown outcome is resolved, holding the write lock: never
# the loop's default pool. Writes waiting for that lock (run, via asyncio.to_thread) block
# workers of the default pool; with as many of them as it has workers, the resolution
# never got one, the lock was never released and every write hung for good. One worker
# is enough: only the holder of the write lock resolves. (Threads start on first use.)
_RESOLVER = ThreadPoolExecutor(1, thread_name_prefix="raftsso-write-resolve")


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
            return self._propose_until(request_id, what, blob,
                                       time.monotonic() + 2 * timeout, first=None)

    def _propose_until(self, request_id: RequestId, what: str, blob: bytes,
                       deadline: float, first: OutcomeUnknown | None) -> Outcome:
        """Propose ``blob`` (under the write lock) until its outcome is known or
        ``deadline`` passes; ``first``: the first proposal's outcome was not heard."""
        timeout = self._cfg.raft.commit_timeout
        while True:
            try:
                if first is not None:
                    raise first
                return self._raft.propose(blob, timeout)
            except OutcomeUnknown:
                first = None
                seen = self._fsm.request_outcome(request_id)
                if seen is not None:
                    return seen
                if not self._raft.is_leader or time.monotonic() >= deadline:
                    raise OutcomeUnknown(
                        f"the {what} may or may not have been applied; retry with the "
                        "same request id", request_id=request_id) from None

    async def run_async(self, request_id: RequestId, what: str,
                        build: Callable[[Keyring], Command | None], *,
                        require_secret: bool = True) -> Outcome | None:
        """:meth:`run` for the event loop; ``build`` runs on the loop, so it must not block
        (no I/O, no token: the caller decides).

        On the loop only when it need not wait: this node is ready and the write lock is
        free. Otherwise (or when the outcome is not heard within the commit timeout) in a
        worker thread, exactly as :meth:`run`.
        """
        seen = self._fsm.request_outcome(request_id)
        if seen is not None:
            return seen
        if not self._ready_now(require_secret) or not self._lock.acquire(blocking=False):
            return await asyncio.to_thread(self.run, request_id, what, build,
                                           require_secret=require_secret)
        try:
            seen = self._fsm.request_outcome(request_id)  # applied while we took the lock
            command = None if seen is not None else build(self._fsm.keyring)
            if command is None:
                self._lock.release()
                return seen
            blob = command.encode()
        except BaseException:
            self._lock.release()
            raise
        timeout = self._cfg.raft.commit_timeout
        commit = _LoopCommit(asyncio.get_running_loop(), self._lock, timeout,
                             lambda first: self._propose_until(
                                 request_id, what, blob, time.monotonic() + timeout, first))
        try:
            self._raft.submit(blob, commit.ended)
        except Exception as exc:  # not queued at all (the member stopped)
            commit.ended(exc)
        return await commit.outcome()

    def _ready_now(self, require_secret: bool) -> bool:
        """:meth:`wait_ready_leader` without waiting: True when ready; False when it would
        wait; its refusals raised."""
        if not self._raft.is_leader:
            raise NotLeader("not the leader", leader=self._leader_address())
        if self._ready_term != self._raft.term or (
                require_secret and not self._fsm.keyring.bootstrapped):
            return False
        if not self._raft.has_quorum:
            raise RemoteError("the leader has lost its quorum", code=ErrorCode.NO_QUORUM)
        return True


class _LoopCommit:
    """One proposal awaited on an event loop, holding the write lock until it is over.

    Exactly one side ends it and releases the lock: the Raft thread, with the applied
    outcome or a certain failure (:meth:`ended`), or, when the outcome is unknown (not
    heard within the commit timeout, or so reported), a worker thread that resolves it as
    :meth:`WritePath.run` does (``resolve``: re-read the request id, propose the same
    command again). The waiting coroutine may be cancelled meanwhile (its connection
    closed): the lock is released all the same.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, lock: threading.Lock, timeout: float,
                 resolve: Callable[[OutcomeUnknown], Outcome]) -> None:
        self._loop = loop
        self._lock = lock
        self._resolve = resolve
        self._future: asyncio.Future[Outcome] = loop.create_future()
        self._mutex = threading.Lock()
        self._over = False  # ended, or given to a worker: the other side does nothing
        self._timer = loop.call_later(
            timeout, self._expired, OutcomeUnknown(f"no commit within {timeout:.1f} s"))

    def ended(self, outcome: Outcome | Exception) -> None:
        """In the Raft thread, right after the entry was applied (or certainly failed, or
        its outcome became unknown)."""
        with self._mutex:
            if self._over:
                return
            self._over = True
        if isinstance(outcome, OutcomeUnknown):  # still under the lock, to a worker
            self._loop.call_soon_threadsafe(self._to_worker, outcome)
            return
        # Applied here: the next write, which builds on the keyring, may run now.
        self._lock.release()
        self._loop.call_soon_threadsafe(self._settle, outcome)

    def _settle(self, outcome: Outcome | Exception) -> None:
        self._timer.cancel()
        if self._future.done():  # the waiter was cancelled
            return
        if isinstance(outcome, Exception):
            self._future.set_exception(outcome)
        else:
            self._future.set_result(outcome)

    def _expired(self, unknown: OutcomeUnknown) -> None:
        with self._mutex:
            if self._over:
                return  # the outcome is on its way to _settle
            self._over = True
        self._to_worker(unknown)

    def _to_worker(self, unknown: OutcomeUnknown) -> None:
        """On the loop, holding the write lock: resolve the outcome in a worker thread."""
        self._timer.cancel()
        try:
            task = self._loop.run_in_executor(_RESOLVER, self._resolve_unlock, unknown)
        except BaseException as exc:  # the loop is shutting down: give up, unlocked
            self._lock.release()
            if not self._future.done():
                self._future.set_exception(exc)
            return
        task.add_done_callback(self._resolved)

    def _resolve_unlock(self, unknown: OutcomeUnknown) -> Outcome:
        try:
            return self._resolve(unknown)
        finally:
            self._lock.release()

    def _resolved(self, task: asyncio.Future[Outcome]) -> None:
        if self._future.done():
            if not task.cancelled():
                task.exception()  # retrieved: nobody waits for it any more
            return
        if task.cancelled():
            self._future.cancel()
        elif (exc := task.exception()) is not None:
            self._future.set_exception(exc)
        else:
            self._future.set_result(task.result())

    async def outcome(self) -> Outcome:
        return await self._future


def result_of(outcome: Outcome) -> WireMap:
    """The data of a successful outcome; the error it carries, raised, otherwise."""
    if outcome.ok:
        return outcome.data
    if outcome.code is ErrorCode.CONFLICT:
        raise Conflict(outcome.message)
    raise RemoteError(outcome.message, code=outcome.code or ErrorCode.FAILED)
