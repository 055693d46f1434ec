"""The Raft write path of raftsso.raft.member: parallel flushes and group commit, still durable.

Three real members (pysyncobj with the patches of raftsso.raft, the fsynced journal) run in
this process on loopback, over pysyncobj's own links (password only: the write path is the
same over peer TLS). Every journal and every message of every member is watched:

* a follower's acknowledgement of entries (``next_node_idx``) never leaves while its
  journal holds an entry that is not flushed;
* the leader never advances its commit index while its own journal holds an entry that is
  not flushed (it counts itself toward the majority only after its fsync);
* the leader does send entries before flushing them (its fsync runs while the followers
  write theirs), and concurrent proposals share flushes (group commit).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raftsso.config import Peer, RaftTimings
from raftsso.raft import RaftConfig, RaftNode
from raftsso.raft import member as raft_member
from raftsso.raft.journal import DurableJournal
from raftsso.raft.transport import HardenedTransport
from tests.harness.ports import reserve_ports
from tests.harness.wait import wait_for

WRITERS = 8
PROPOSALS = 40


class Counter:
    def __init__(self) -> None:
        self.applied: list[bytes] = []

    def apply(self, command: bytes, index: int) -> int:
        self.applied.append(command)
        return index

    def snapshot(self) -> bytes:
        return b""

    def restore(self, blob: bytes) -> None:
        self.applied = []


class Watch:
    """What every member did, and every breach of the durability rules."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.violations: list[str] = []
        self.entries_sent_unflushed = 0
        self.acks = 0

    def breach(self, what: str) -> None:
        with self.lock:
            self.violations.append(what)


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Watch:
    w = Watch()
    real_send = HardenedTransport.send

    def send(self: HardenedTransport, node: Any, message: Any) -> bool:
        sent = real_send(self, node, message)  # the flush, if any, happens in here first
        journal = self._syncObj._SyncObj__raftLog
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "next_node_idx" and message.get("success"):
            with w.lock:
                w.acks += 1
            if journal.unsynced:
                w.breach(f"{self._selfNode.id} acknowledged entries it had not flushed")
        if kind == "append_entries" and message.get("entries") and journal.unsynced:
            with w.lock:
                w.entries_sent_unflushed += 1
        return bool(sent)

    real_commit = DurableJournal.setRaftCommitIndex

    def set_commit(self: DurableJournal, index: int) -> None:
        if index > self.getRaftCommitIndex() and self.unsynced:
            w.breach(f"{self._path} committed index {index} before flushing its own entries")
        real_commit(self, index)

    monkeypatch.setattr(HardenedTransport, "send", send)
    monkeypatch.setattr(DurableJournal, "setRaftCommitIndex", set_commit)
    return w


@pytest.fixture
def members(tmp_path: Path) -> Iterator[list[RaftNode[int]]]:
    ports = reserve_ports(3)
    peers = tuple(Peer(f"node{i + 1}", f"127.0.0.1:{ports.base + i}", f"127.0.0.1:{1 + i}")
                  for i in range(3))
    secret = bytes(range(32))
    nodes: list[RaftNode[int]] = []
    try:
        for peer in peers:
            cfg = RaftConfig(node_id=peer.id, raft_address=peer.raft_address, members=peers,
                             data_dir=tmp_path / peer.id, cluster_secret=secret,
                             timings=RaftTimings(), peer_tls=False)
            node: RaftNode[int] = RaftNode(cfg, Counter())
            node.start()
            nodes.append(node)
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        ports.release()


def _leader(nodes: list[RaftNode[int]]) -> RaftNode[int]:
    def find() -> RaftNode[int] | None:
        leaders = [n for n in nodes if n.is_leader]
        if len(leaders) == 1 and all(p.connected for p in leaders[0].peers()):
            return leaders[0]
        return None

    return wait_for(find, timeout=30, what="a leader connected to both followers")


def test_acknowledged_means_flushed_on_a_majority_with_flushes_shared(
        members: list[RaftNode[int]], watch: Watch) -> None:
    leader = _leader(members)
    leader.propose(b"first", 5.0)
    journal: DurableJournal = leader.sync.journal
    syncs0, appends0 = journal.syncs, journal.appends
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for k in range(PROPOSALS):
                leader.propose(b"w%d-%d" % (i, k), 5.0)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not watch.violations, watch.violations[:5]
    assert watch.acks > 0
    # The leader sent entries before its own flush (the flushes overlap) ...
    assert watch.entries_sent_unflushed > 0
    # ... and concurrent proposals shared flushes: fewer fsyncs than entries.
    entries = journal.appends - appends0
    assert entries >= WRITERS * PROPOSALS
    assert journal.syncs - syncs0 < entries
    # Every member ends with every command, in the same order.
    expected = leader._machine.applied  # type: ignore[attr-defined]
    wait_for(lambda: all(n._machine.applied == expected  # type: ignore[attr-defined]
                         for n in members), timeout=30, what="every member to apply all")


def test_before_send_flushes_for_everything_but_the_leaders_appends(
        tmp_path: Path) -> None:
    journal = DurableJournal(str(tmp_path / "raft.journal"))
    try:
        sync = raft_member._RaftSyncObj.__new__(raft_member._RaftSyncObj)
        sync._SyncObj__raftLog = journal
        with journal.group():
            journal.add(b"\x00a", 1, 1)
            sync.before_send({"type": "append_entries", "entries": [(b"\x00a", 1, 1)]})
            sync.before_send({"type": "apply_command_response", "log_idx": 1})
            assert journal.unsynced
            sync.before_send({"type": "next_node_idx", "success": True})
            assert not journal.unsynced
            journal.add(b"\x00b", 2, 1)
            sync.before_send({"type": "response_vote", "term": 2})
            assert not journal.unsynced
    finally:
        journal._destroy()


def test_no_election_that_the_pre_vote_did_not_allow(members: list[RaftNode[int]]) -> None:
    # A follower's timer may run out while a tick runs (a node short of CPU, after the
    # pre-vote check): pysyncobj must not elect on its own then. Here the timer is made
    # to run out right after every check; the term never moves.
    leader = _leader(members)
    follower = next(n for n in members if n is not leader)
    term = leader.term
    sync = follower.sync
    real = sync.elections.before_tick

    def late_timer() -> bool:
        allowed = real()
        sync._SyncObj__raftElectionDeadline = 0.0
        return allowed

    sync.elections.before_tick = late_timer  # type: ignore[method-assign]
    for _ in range(20):
        leader.propose(b"tick", 5.0)
    assert follower.term == term and leader.term == term and leader.is_leader
