"""One replica's Raft member (:class:`RaftNode`): propose commands, read its view of the cluster.

pysyncobj is not thread-safe: proposals go through its queue, everything else that acts
on it runs in its tick thread (:meth:`RaftNode.in_raft_thread`). Its failure codes become
"definitely not applied" (:class:`NotLeader`) or "unknown" (:class:`OutcomeUnknown`) here,
and nothing of pysyncobj (objects, integers) leaves this package.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.monotonic import monotonic as _pso_monotonic

from raftsso.config import Peer
from raftsso.errors import NotLeader, OutcomeUnknown
from raftsso.raft.config import RaftConfig
from raftsso.raft.elections import Elections
from raftsso.raft.hardening import harden_pysyncobj
from raftsso.raft.journal import DurableJournal, trim_journal
from raftsso.raft.machine import StateMachine
from raftsso.raft.peer_links import PeerLinks, PeerSocket
from raftsso.raft.snapshot import SnapshotCodec, check_snapshot_file, read_snapshot_file
from raftsso.raft.transport import HardenedTransport, PeerTLSTransport

log = logging.getLogger(__name__)

Result = TypeVar("Result")

ROLE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}
STOP_PATIENCE = 5.0


@dataclass(frozen=True)
class PeerView:
    id: str
    connected: bool
    last_contact: float | None  # seconds since a message from this peer was received
    match_index: int | None


# Messages that vouch for nothing in the sender's journal: the leader's own replication
# (sent before its flush, so that its fsync runs while the followers write theirs) and the
# log position of a forwarded command. Anything else (an acknowledgement of entries, a
# vote) leaves only once every entry written so far is durable.
_UNVOUCHED = frozenset({"append_entries", "apply_command_response"})
_DEADLINE = "_SyncObj__raftElectionDeadline"  # pysyncobj's election timer
# A follower's acknowledgement identical to the one it sent less than this ago is not sent
# again (see _RaftSyncObj._SyncObj__sendNextNodeIdx). At most two thirds of the append
# period (30 ms by default), so every heartbeat is still answered and the leader's view of
# who is connected (leader fallback, stickiness, status) is unchanged; wide enough that
# the commit notice's acknowledgement is still a repeat when the leader's own fsync is
# slow (a busy disk: traced at load ~12, a 10 ms window caught only half of them).
ACK_REPEAT_WINDOW = 0.02


class _RaftSyncObj(SyncObj):  # type: ignore[misc]
    """pysyncobj's member with pre-vote, stickiness and the parallel, grouped write path.

    Write path (etcd's): the leader appends the commands queued for this tick to its
    journal without flushing, sends them to the followers in one append, and then flushes
    them with one ``fdatasync`` (a *write group*, :meth:`DurableJournal.group`) while the
    followers write and flush theirs. It counts itself toward a commit only in a later
    tick, after that flush has returned; a follower flushes before its acknowledgement
    leaves (:meth:`before_send`). So an entry commits only once a majority has it on
    disk, as before, but the two flushes overlap, and every command of a tick shares them.
    """

    def __init__(self, machine: StateMachine[Any], snapshots: SnapshotCodec,
                 self_addr: str, others: list[str], conf: SyncObjConf,
                 links: PeerLinks | None = None,
                 incoming: queue.SimpleQueue[tuple[PeerSocket, str]] | None = None) -> None:
        self._machine = machine
        self._snapshots = snapshots
        self.elections = Elections(self)  # read by the transport, too
        # Read by PeerTLSTransport while SyncObj.__init__ builds it.
        self._peer_links = links
        self._peer_incoming = incoming
        # While the leader drains its command queue, its appends are sent once, after it.
        self._draining = False
        self._append_due = False
        # The last acknowledgement sent (leader node, term, next index) and when.
        self._last_ack: tuple[Any, int, int] | None = None
        self._last_ack_at = 0.0
        self._ack_window = min(ACK_REPEAT_WINDOW, conf.appendEntriesPeriod * 2 / 3)
        transport = HardenedTransport if links is None else PeerTLSTransport
        super().__init__(self_addr, others, conf, transportClass=transport)

    @property
    def journal(self) -> DurableJournal:
        return cast(DurableJournal, self._SyncObj__raftLog)

    def before_send(self, message: Any) -> None:
        """Called by the transport before ``message`` leaves: flush what it vouches for."""
        if isinstance(message, dict) and message.get("type") in _UNVOUCHED:
            return
        journal = getattr(self, "_SyncObj__raftLog", None)
        if isinstance(journal, DurableJournal):
            journal.sync()

    def _onTick(self, timeToWait: float = 0.0) -> None:
        # Every write group ends with a flush; this one is a guard: the leader's commit
        # count (at the start of pysyncobj's tick) counts its own journal as durable.
        self.journal.sync()
        # A pre-vote instead of an election, where needed; and no election that the
        # pre-vote did not allow, even if the timer runs out while this tick runs.
        may_elect = self.elections.before_tick()
        hold = not may_elect and not self._isLeader()
        deadline = float(getattr(self, _DEADLINE))
        if hold:
            setattr(self, _DEADLINE, math.inf)
        try:
            super()._onTick(timeToWait)
        finally:
            self.elections.after_tick()
            if hold and getattr(self, _DEADLINE) == math.inf:
                setattr(self, _DEADLINE, deadline)  # nothing reset it meanwhile

    def _checkCommandsToApply(self) -> None:
        # Group commit: the commands queued for this tick are appended (written, not yet
        # flushed) and sent to the followers in one append; then one fdatasync, while
        # the followers write theirs. pysyncobj would send an append per command.
        with self.journal.group():
            self._draining = True
            try:
                super()._checkCommandsToApply()
            finally:
                self._draining = False
            if self._append_due:
                self._append_due = False
                SyncObj._SyncObj__sendAppendEntries(self)

    def _SyncObj__sendAppendEntries(self) -> None:
        if self._draining:
            self._append_due = True
            return
        SyncObj._SyncObj__sendAppendEntries(self)

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        # A follower appends the entries of an append in one write group; its
        # acknowledgement flushes them first (before_send), one fdatasync for them all.
        with self.journal.group():
            SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _SyncObj__sendNextNodeIdx(self, node: Any, reset: bool = False,
                                  nextNodeIdx: int | None = None,
                                  success: bool = False) -> None:
        # A follower acknowledges every append, the leader's commit notice too: right after
        # applying an entry the leader sends an empty append that only carries the new
        # commit index, and its acknowledgement repeats, word for word, the one the
        # follower sent for the entry a moment before. The leader would only refresh its
        # last-response time with it, so a repeat within the window is not sent:
        # a commit then costs the leader two receptions (and ticks) fewer, each follower
        # one send. Anything else (a new index, a refusal, a reset, another term or
        # leader, or the heartbeat after the window) is sent as before.
        if nextNodeIdx is None:
            nextNodeIdx = int(self._SyncObj__getCurrentLogIndex()) + 1
        key = (node, self.raftCurrentTerm, nextNodeIdx)
        now = _pso_monotonic()
        if success and not reset:
            if self._last_ack == key and now - self._last_ack_at < self._ack_window:
                return
            self._last_ack, self._last_ack_at = key, now
        else:
            self._last_ack = None
        SyncObj._SyncObj__sendNextNodeIdx(self, node, reset=reset, nextNodeIdx=nextNodeIdx,
                                          success=success)

    def _SyncObj__tryLogCompaction(self) -> None:
        # After a snapshot could not be written for lack of descriptors, pysyncobj would
        # retry (and log) on every tick; wait a few seconds instead.
        if time.monotonic() >= self._snapshots.retry_at:
            SyncObj._SyncObj__tryLogCompaction(self)

    @replicated  # type: ignore[untyped-decorator]
    def _apply_command(self, command: bytes) -> Any:
        # The one replicated method: opaque bytes for the state machine.
        # pysyncobj applies entry raftLastApplied + 1 and counts it only afterwards.
        return self._machine.apply(command, self.raftLastApplied + 1)


def _outcome(result: Any, error: int) -> Any:
    """What pysyncobj's callback says: ``apply``'s result, or the exception it means."""
    if error == FAIL_REASON.SUCCESS:
        return result
    if error in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER,
                 FAIL_REASON.QUEUE_FULL, FAIL_REASON.REQUEST_DENIED):
        return NotLeader("this node cannot append the command now", leader=None)
    return OutcomeUnknown(f"outcome unknown (pysyncobj reason {error})")


class RaftNode(Generic[Result]):
    """One replica's Raft member: propose commands, read its view of the cluster.

    ``machine`` is the replicated :class:`~raftsso.raft.StateMachine`; :meth:`propose`
    returns what its ``apply`` returned. ``on_role_change(old, new)`` is called in the Raft
    thread with role names ("follower", "candidate", "leader"). ``directory()`` says who is
    who (member ids and addresses) as membership changes; by default the config's members.
    """

    def __init__(self, config: RaftConfig, machine: StateMachine[Result],
                 on_role_change: Callable[[str, str], None] | None = None,
                 directory: Callable[[], Sequence[Peer]] | None = None) -> None:
        harden_pysyncobj()
        self._cfg = config
        self._machine = machine
        self._on_role_change = on_role_change
        self._directory = directory or (lambda: config.members)
        self._sync: _RaftSyncObj | None = None
        self._tick_jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        # Peer TLS (raftsso.raft.peer_links): the links, the authenticated incoming sockets
        # waiting for the Raft thread, and members this leader is adding (raft address ->
        # node id) whose directory record has not landed yet.
        self._links: PeerLinks | None = None
        self._incoming: queue.SimpleQueue[tuple[PeerSocket, str]] = queue.SimpleQueue()
        self._joining: dict[str, str] = {}
        # Revoked certificate serials the peer links refuse: the node points this at the
        # replicated registry (raftsso.revocation) before start; none by default.
        self.revoked: Callable[[], frozenset[str]] = frozenset
        self._password = config.cluster_secret.hex()
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.journal_path = config.data_dir / "raft.journal"
        self.snapshot_path = config.data_dir / "raft.snapshot"
        self._snapshots = SnapshotCodec(machine, config.data_dir)
        if self.snapshot_path.exists():
            check_snapshot_file(self.snapshot_path, machine)

    def _conf(self) -> SyncObjConf:
        t = self._cfg.timings
        return SyncObjConf(
            password=self._password,
            bindAddress=self._cfg.raft_address,
            journalFile=str(self.journal_path),
            fullDumpFile=str(self.snapshot_path),
            serializer=self._snapshots,
            deserializer=self._snapshots.deserialize,
            useFork=False,
            appendEntriesUseBatch=False,  # batching adds ~100 ms to every write
            appendEntriesPeriod=t.append_entries_period,
            raftMinTimeout=t.election_timeout_min,
            raftMaxTimeout=t.election_timeout_max,
            leaderFallbackTimeout=t.leader_fallback_timeout,
            connectionTimeout=t.connection_timeout,
            connectionRetryTime=t.connection_retry,
            commandsWaitLeader=False,
            dynamicMembershipChange=True,
            onStateChanged=self._state_changed,
            autoTick=True,
            autoTickPeriod=min(0.02, t.append_entries_period),
            logCompactionMinEntries=t.log_compaction_min_entries,
            logCompactionMinTime=600,
        )

    # lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        cfg = self._cfg
        others = [p.raft_address for p in cfg.peers]
        if self.snapshot_path.exists() and self.journal_path.exists():
            _fsm, last, prev, _members = read_snapshot_file(self.snapshot_path)
            trim_journal(self.journal_path, prev, last)
        self._snapshots.open()
        if cfg.peer_tls:
            assert cfg.ca_cert is not None and cfg.cert is not None and cfg.key is not None
            self._links = PeerLinks(
                node_id=cfg.node_id, listen=cfg.raft_address, ca=cfg.ca_cert, cert=cfg.cert,
                key=cfg.key, members=self.peer_members,
                on_incoming=lambda sock, address: self._incoming.put((sock, address)),
                max_connections=cfg.peer_max_connections,
                max_handshakes=cfg.peer_max_handshakes,
                max_per_source=cfg.peer_max_per_source,
                revoked=lambda: self.revoked())
            self._links.start()
        else:
            log.warning("peer_tls is off in %s: Raft peers are authenticated by the cluster "
                        "secret alone (anyone who has it can join)", cfg.source or "the config")
        try:
            self._sync = _RaftSyncObj(self._machine, self._snapshots, cfg.raft_address,
                                      others, self._conf(),
                                      links=self._links, incoming=self._incoming)
        except BaseException:
            self._stop_links()
            self._snapshots.close()
            raise
        self._sync.addOnTickCallback(self._run_tick_jobs)

    def reload_certificate(self) -> bool:
        """Load this node's certificate and key again for new peer links (SIGHUP); False
        without peer TLS. :class:`~raftsso.errors.ConfigError` if they do not load."""
        if self._links is None:
            return False
        self._links.reload_certificate()
        return True

    @property
    def started(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._sync is not None

    def peer_members(self) -> dict[str, str]:
        """The current members but this node, ``{node id: raft address}`` (peer TLS)."""
        members = {p.id: p.raft_address for p in self._directory()
                   if p.id != self._cfg.node_id and not p.id.startswith("?")}
        if self._joining and self._sync is not None:
            # A member this leader is adding is in Raft before its directory record can
            # commit; with one member before, that commit needs the new member itself.
            in_raft = self.raft_addresses()
            for address, node_id in list(self._joining.items()):
                if address in in_raft and node_id not in members:
                    members[node_id] = address
        return members

    def _stop_links(self) -> None:
        if self._links is not None:
            self._links.stop()
            self._links = None
        while True:
            try:
                sock, _ = self._incoming.get_nowait()
            except queue.Empty:
                return
            sock.close()

    def stop(self) -> None:
        self._stop_links()
        if self._sync is not None:
            sync, self._sync = self._sync, None
            sync.destroy()  # the tick thread closes the journal, then ends
            thread = sync._SyncObj__thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=STOP_PATIENCE)
            if thread is not None and thread.is_alive():
                log.warning("the Raft thread did not stop within %.0f s", STOP_PATIENCE)
                return  # it may still use the snapshot files: leave them open
        self._snapshots.close()

    @property
    def sync(self) -> _RaftSyncObj:
        """The pysyncobj member (for this package and its tests; nothing else touches it)."""
        if self._sync is None:
            raise RuntimeError("the Raft node is not running")
        return self._sync

    def _state_changed(self, old: int, new: int) -> None:
        if self._on_role_change is not None:
            self._on_role_change(ROLE_NAMES.get(old, "?"), ROLE_NAMES.get(new, "?"))

    # pysyncobj is not thread-safe: anything beyond proposing (which goes through its
    # queue) must run in its tick thread. Jobs are queued here and run on the next tick.

    def _run_tick_jobs(self) -> None:
        while True:
            try:
                job = self._tick_jobs.get_nowait()
            except queue.Empty:
                return
            job()

    def in_raft_thread(self, fn: Callable[[], Any], timeout: float) -> Any:
        """Run ``fn`` in the Raft thread and return its result (or raise its exception)."""
        done = threading.Event()
        abandoned = threading.Event()
        box: dict[str, Any] = {}

        def job() -> None:
            if abandoned.is_set():  # the caller was told it failed: do not act late
                return
            try:
                box["result"] = fn()
            except Exception as exc:  # handed back to the caller
                box["error"] = exc
            done.set()

        self._tick_jobs.put(job)
        if not done.wait(timeout):
            abandoned.set()
            raise OutcomeUnknown(f"the Raft thread did not answer within {timeout:.1f} s")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    # views ---------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return bool(self.sync._isLeader())

    @property
    def role(self) -> str:
        return "leader" if self.is_leader else self._status().get("role", "follower")

    @property
    def term(self) -> int:
        return int(self.sync.raftCurrentTerm)

    @property
    def commit_index(self) -> int:
        return int(self.sync.raftCommitIndex)

    @property
    def last_applied(self) -> int:
        return int(self.sync.raftLastApplied)

    @property
    def last_log_index(self) -> int:
        return int(self.sync._SyncObj__getCurrentLogIndex())

    @property
    def leader_commit_index(self) -> int:
        """The leader's commit index as last told to this node (read-only, for /readyz)."""
        return int(self.sync._SyncObj__leaderCommitIndex or 0)

    @property
    def leader_id(self) -> str | None:
        leader = self.sync._getLeader()
        if leader is None:
            return None
        address = getattr(leader, "id", str(leader))
        return next((p.id for p in self._directory() if p.raft_address == address), None)

    @property
    def has_quorum(self) -> bool:
        """A leader has a quorum; a follower sees one (it is connected to a majority)."""
        return bool(self.sync.hasQuorum)

    def raft_addresses(self) -> set[str]:
        """The Raft configuration as pysyncobj has it now (this node included)."""
        sync = self.sync
        return {sync.selfNode.id} | {n.id for n in sync.otherNodes}

    def _status(self) -> dict[str, Any]:
        for _ in range(3):
            try:
                raw = self.sync.getStatus()
                break
            except RuntimeError:  # a dict changed size under us in the Raft thread
                continue
        else:
            return {}
        raw["role"] = ROLE_NAMES.get(raw.get("state", 0), "follower")
        return dict(raw)

    def peers(self) -> list[PeerView]:
        raw = self._status()
        transport = self.sync._SyncObj__transport
        heard = dict(getattr(transport, "last_heard", {}))
        now = time.monotonic()
        views = []
        raft_members = self.raft_addresses()
        for peer in self._directory():
            addr = peer.raft_address
            if addr == self._cfg.raft_address or addr not in raft_members:
                continue
            last = heard.get(addr)
            views.append(PeerView(
                id=peer.id,
                connected=raw.get(f"partner_node_status_server_{addr}", 0) == 2,
                last_contact=None if last is None else max(0.0, now - last),
                match_index=raw.get(f"match_idx_server_{addr}"),
            ))
        return views

    # forced compaction (issue 14: retire and seal rekey destroy) -----------------------

    def compact(self, timeout: float) -> int | None:
        """Snapshot the state machine now and cut the journal, then wait until both are on
        disk: the journal then starts at most one entry before the last applied entry
        (pysyncobj keeps the last two applied entries beside the snapshot). Returns that
        applied index, or None if it did not finish within ``timeout`` (out of descriptors,
        a snapshot transfer under way).

        The journal is rewritten into a new file that replaces the old one
        (:meth:`DurableJournal.deleteEntriesTo`), and the snapshot is written to a new file
        renamed over the old, so no earlier entry stays in either file.
        """
        deadline = time.monotonic() + timeout

        def force() -> int:
            self.sync.forceLogCompaction()
            return int(self.sync.raftLastApplied)

        def head() -> tuple[int, bool]:
            log = self.sync._SyncObj__raftLog
            first = int(log[0][1]) if len(log) else 0
            # Not checkSerializing(): it consumes the "done" state pysyncobj acts on. A
            # serializer pid of 0 means no snapshot is pending its journal cut.
            pending = getattr(self.sync._SyncObj__serializer, "_Serializer__pid", 0)
            return first, pending == 0

        target = self.in_raft_thread(force, timeout)
        while time.monotonic() < deadline:
            first, idle = self.in_raft_thread(head, max(0.1, deadline - time.monotonic()))
            if idle and first >= target - 1:
                return int(target)
            time.sleep(0.02)
        return None

    # writes --------------------------------------------------------------------------

    def propose(self, command: bytes, timeout: float) -> Result:
        """Replicate ``command`` and return what the state machine's ``apply`` returned here.

        Raises :class:`NotLeader` when the command was certainly not appended, and
        :class:`OutcomeUnknown` when it may or may not commit (timeout, leader change);
        the caller re-reads by request id and retries with the same id.
        """
        done = threading.Event()
        box: list[Result | Exception] = []

        def ended(outcome: Result | Exception) -> None:
            box.append(outcome)
            done.set()

        self.submit(command, ended)
        if not done.wait(timeout):
            raise OutcomeUnknown(f"no commit within {timeout:.1f} s")
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]

    def submit(self, command: bytes, ended: Callable[[Result | Exception], None]) -> None:
        """Queue ``command`` and return at once; ``ended`` is called once, in the Raft
        thread, right after the command is applied here (with what ``apply`` returned), or
        with :class:`NotLeader` / :class:`OutcomeUnknown` as :meth:`propose` raises them.
        If the command is lost in a leader change, ``ended`` may never be called: the
        caller keeps its own deadline.

        ``ended`` runs in the Raft thread: it must only hand the outcome on (set an event,
        ``loop.call_soon_threadsafe``), never block.
        """

        def callback(result: Any, error: int) -> None:
            try:
                ended(_outcome(result, error))
            except Exception:  # never into pysyncobj's tick: the member would stop
                log.exception("a commit callback failed")

        self.sync._apply_command(command, callback=callback)

    def change_membership(self, add: bool, raft_address: str, timeout: float,
                          node_id: str | None = None) -> bool:
        """Add or remove one member through Raft; True once the change has committed.

        False: refused (pysyncobj allows one change at a time, and only after the leader's
        no-op of its term committed). Raises :class:`OutcomeUnknown` if nothing was heard
        within ``timeout``. ``node_id`` (of a member being added) lets peer TLS admit it
        before its directory record has committed.
        """
        if add and node_id is not None:
            self._joining[raft_address] = node_id
        elif not add:
            self._joining.pop(raft_address, None)
        done = threading.Event()
        box: dict[str, int] = {}

        def callback(_result: Any, error: int) -> None:
            box["error"] = error
            done.set()

        change = self.sync.addNodeToCluster if add else self.sync.removeNodeFromCluster
        change(raft_address, callback=callback)
        if not done.wait(timeout):
            raise OutcomeUnknown(f"the membership change did not commit within {timeout:.1f} s")
        return bool(box["error"] == FAIL_REASON.SUCCESS)

    def transfer_leadership(self, node_id: str, timeout: float) -> bool:
        """Ask the member ``node_id`` to take over now (Raft TimeoutNow).

        True means the request was sent, not that the election is over: the caller polls
        :attr:`leader_id`. False: refused (the target is lagging or not connected).
        """
        address = next(p.raft_address for p in self._directory() if p.id == node_id)
        answer: dict[str, int] = {}

        def send() -> None:
            self.sync.transferLeadership(address, callback=lambda _r, err: answer.update(
                error=err))

        self.in_raft_thread(send, timeout)
        return bool(answer.get("error", FAIL_REASON.REQUEST_DENIED) == FAIL_REASON.SUCCESS)
