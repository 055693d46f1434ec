"""raftsso.raft.elections: the pre-vote and stickiness rules, and what an old node makes of them.

The rules run against a stand-in for pysyncobj's private state (the attributes Elections
reads and writes); the end-to-end behaviour is in tests/integration/test_elections.py. The
rolling-upgrade half feeds every new message to a real, unpatched pysyncobj SyncObj.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.monotonic import monotonic
from pysyncobj.node import TCPNode

from raftsso.raft import elections as el
from raftsso.raft.elections import Elections

FOLLOWER, CANDIDATE, LEADER = 0, 1, 2


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, node: TCPNode, message: dict[str, Any]) -> bool:
        self.sent.append((node.id, message))
        return True


class FakeSync:
    """The pysyncobj state Elections touches, as plain attributes (mangled names)."""

    def __init__(self, peers: int = 2) -> None:
        self.selfNode = TCPNode("127.0.0.1:7100")
        self.nodes = [TCPNode(f"127.0.0.1:{7101 + i}") for i in range(peers)]
        self.conf = SyncObjConf(raftMinTimeout=0.25, raftMaxTimeout=0.5)
        self.transport = FakeTransport()
        self.leader_changes = 0
        state: dict[str, Any] = {
            "raftState": FOLLOWER, "raftCurrentTerm": 5, "raftElectionDeadline": 0.0,
            "raftLeader": self.nodes[0] if self.nodes else None,
            "otherNodes": set(self.nodes), "connectedNodes": set(self.nodes),
            "transferInProgress": False, "lastResponseTime": {}, "transport": self.transport,
            "votedForNodeId": None,
        }
        for key, value in state.items():
            setattr(self, f"_SyncObj__{key}", value)
        self.last_log = (40, 5)  # index, term

    def _SyncObj__getCurrentLogIndex(self) -> int:
        return self.last_log[0]

    def _SyncObj__getCurrentLogTerm(self) -> int:
        return self.last_log[1]

    def _SyncObj__generateRaftTimeout(self) -> float:
        return 0.3

    def _SyncObj__onLeaderChanged(self) -> None:
        self.leader_changes += 1

    def _SyncObj__setCurrentTerm(self, term: int, voted: str | None) -> None:
        self._SyncObj__raftCurrentTerm = term
        self._SyncObj__votedForNodeId = voted

    def _SyncObj__setState(self, state: int) -> None:
        self._SyncObj__raftState = state

    def sent(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        return [(to, m) for to, m in self.transport.sent if m.get("type") == kind]


@pytest.fixture
def sync() -> FakeSync:
    return FakeSync()


def _speaks(elections: Elections, sync: FakeSync) -> None:
    for node in sync.nodes:
        assert elections.on_message(node, {"type": el.HELLO, el.EXTENSIONS_KEY: 1})


def _answer(elections: Elections, sync: FakeSync, node: TCPNode, granted: bool) -> None:
    _, request = sync.sent(el.PRE_VOTE)[-1]
    elections.on_message(node, {"type": el.PRE_VOTE_RESPONSE, "term": request["term"],
                                "round": request["round"], "granted": granted,
                                el.EXTENSIONS_KEY: 1})


def test_an_expired_timer_starts_a_pre_vote_not_an_election(sync: FakeSync) -> None:
    e = Elections(sync)
    _speaks(e, sync)
    e.before_tick()
    assert sync._SyncObj__raftCurrentTerm == 5  # no term change
    asked = sync.sent(el.PRE_VOTE)
    assert sorted(to for to, _ in asked) == [n.id for n in sync.nodes]
    assert {m["term"] for _, m in asked} == {6}
    assert asked[0][1]["last_log_index"] == 40 and asked[0][1]["last_log_term"] == 5
    assert sync._SyncObj__raftElectionDeadline > monotonic()  # pysyncobj will not elect
    assert sync._SyncObj__raftLeader is None and sync.leader_changes == 1
    # one yes (and this node's own) is a majority of three: pysyncobj elects next tick
    _answer(e, sync, sync.nodes[0], True)
    assert sync._SyncObj__raftElectionDeadline == 0
    e.before_tick()  # lets pysyncobj's election run (no new round)
    assert len(sync.sent(el.PRE_VOTE)) == 2


def test_a_refused_pre_vote_starts_no_election(sync: FakeSync,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=el.__name__)
    e = Elections(sync)
    _speaks(e, sync)
    e.before_tick()
    for node in sync.nodes:
        _answer(e, sync, node, False)
    assert sync._SyncObj__raftElectionDeadline > monotonic()
    assert sync._SyncObj__raftCurrentTerm == 5
    assert any("pre-vote for term 6 refused" in r.getMessage() for r in caplog.records)
    # a late yes from an earlier round counts for nothing
    _answer(e, sync, sync.nodes[0], True)
    assert sync._SyncObj__raftElectionDeadline > 0


def test_a_live_leader_ends_a_pre_vote_round(sync: FakeSync) -> None:
    e = Elections(sync)
    _speaks(e, sync)
    e.before_tick()
    assert not e.on_message(sync.nodes[1], {"type": "append_entries", "term": 5})
    _answer(e, sync, sync.nodes[0], True)
    assert sync._SyncObj__raftElectionDeadline > 0  # the round was over: no election


def test_silent_members_that_speak_pre_vote_count_as_no(sync: FakeSync) -> None:
    # cut off: every member is known to speak pre-vote, nobody answers, nothing passes
    e = Elections(sync)
    _speaks(e, sync)
    for _ in range(3):
        sync._SyncObj__raftElectionDeadline = 0.0
        e.before_tick()
        assert sync._SyncObj__raftElectionDeadline > 0
    assert sync._SyncObj__raftCurrentTerm == 5


def test_old_members_count_as_yes_while_connected(sync: FakeSync) -> None:
    # Rolling upgrade: old nodes never answer a pre-vote; they would vote (or not) in the
    # real election, as before the upgrade, so a mixed cluster elects as it used to.
    e = Elections(sync)
    e.before_tick()
    assert sync._SyncObj__raftElectionDeadline == 0  # elect in this very tick
    sync._SyncObj__connectedNodes = set()
    sync._SyncObj__otherNodes = set(sync.nodes)
    e2 = Elections(sync)
    sync._SyncObj__connectedNodes = {sync.nodes[0]}
    e2.on_message(sync.nodes[0], {"type": el.HELLO, el.EXTENSIONS_KEY: 1})
    e2.before_tick()  # the one connected member speaks pre-vote and has not answered
    assert sync._SyncObj__raftElectionDeadline > 0


def test_a_member_that_just_connected_is_not_taken_for_an_old_one(sync: FakeSync) -> None:
    # A node that has just restarted has heard no HELLO yet: if it counted every member
    # as an old one, its first pre-vote would pass without asking anybody.
    e = Elections(sync)
    for node in sync.nodes:
        e.on_connected(node)
    e.before_tick()
    assert sync._SyncObj__raftElectionDeadline > 0  # asked, waiting for answers
    assert len(sync.sent(el.PRE_VOTE)) == 2 and sync._SyncObj__raftCurrentTerm == 5
    # an old node never greets: once its link is older than an election timeout, it is one
    for node in sync.nodes:
        e._linked_at[node.id] -= sync.conf.raftMinTimeout
    sync._SyncObj__raftElectionDeadline = 0.0
    e.before_tick()
    assert sync._SyncObj__raftElectionDeadline == 0


def test_two_members_asking_for_the_same_term_do_not_both_pass(sync: FakeSync) -> None:
    e = Elections(sync)
    _speaks(e, sync)
    sync._SyncObj__raftLeader = None
    e.before_tick()  # this node (127.0.0.1:7100) asks for term 6
    smaller, larger = TCPNode("127.0.0.1:7000"), sync.nodes[0]
    assert not _pre_vote(e, larger)  # the larger id waits for us
    assert e._round_term == 6
    sync._SyncObj__otherNodes.add(smaller)
    assert _pre_vote(e, smaller)  # we wait for the smaller id: our round is over
    assert e._round_term is None
    _answer(e, sync, sync.nodes[1], True)  # a late yes to our round elects nobody
    assert sync._SyncObj__raftElectionDeadline > 0
    # Once our own pre-vote has passed, we stand in that term: nobody else passes in it
    # (until pysyncobj's election runs in the next tick, our term has not moved yet).
    sync._SyncObj__raftElectionDeadline = 0.0
    e.before_tick()
    for node in sync.nodes:
        _answer(e, sync, node, True)
    assert sync._SyncObj__raftElectionDeadline == 0  # passed
    assert not _pre_vote(e, smaller)


def test_a_refusal_from_the_asker_lets_it_go_first(sync: FakeSync) -> None:
    # We asked first and the other survivor refused (it had not yet noticed that the
    # leader's link dropped); when it asks in turn, we yield although our id is smaller.
    e = Elections(sync)
    _speaks(e, sync)
    sync._SyncObj__raftLeader = None
    dead, other = sync.nodes
    sync._SyncObj__connectedNodes = {dead, other}
    e.before_tick()
    _answer(e, sync, other, False)
    assert e._round_term == 6  # the dead leader's link is still up: it may yet answer
    assert _pre_vote(e, other)
    assert e._round_term is None


def test_a_round_ends_once_every_connected_member_refused(sync: FakeSync) -> None:
    e = Elections(sync)
    _speaks(e, sync)
    _dead, other = sync.nodes
    sync._SyncObj__connectedNodes = {other}  # the leader's link is gone
    e.before_tick()
    _answer(e, sync, other, False)
    assert e._round_term is None  # over: nothing to wait for


def test_losing_the_leaders_link_asks_for_a_pre_vote_in_turn(sync: FakeSync) -> None:
    e = Elections(sync)
    _speaks(e, sync)
    leader, other = sync.nodes
    sync._SyncObj__raftElectionDeadline = monotonic() + 10
    e.on_message(leader, {"type": "append_entries", "term": 5})
    assert e.in_lease()
    e.on_disconnected(other)  # not our leader: nothing changes
    assert e.in_lease() and sync._SyncObj__raftElectionDeadline > monotonic() + 5
    e.on_disconnected(leader)
    assert not e.in_lease()  # we no longer hear it: we grant pre-votes again
    # survivors 127.0.0.1:7100 (this node) and :7102: this node goes first, at once
    assert sync._SyncObj__raftElectionDeadline <= monotonic()
    e.before_tick()
    assert {m["term"] for _, m in sync.sent(el.PRE_VOTE)} == {6}
    # the second survivor waits a third of the minimum election timeout
    sync2 = FakeSync()
    sync2.selfNode = TCPNode("127.0.0.1:7103")
    e2 = Elections(sync2)
    sync2._SyncObj__raftElectionDeadline = monotonic() + 10
    e2.on_disconnected(sync2.nodes[0])
    wait = sync2._SyncObj__raftElectionDeadline - monotonic()
    assert 0 < wait <= el.STAGGER * sync2.conf.raftMinTimeout
    # a leader, or a node whose leader transfer is under way, does not react
    sync3 = FakeSync()
    sync3._SyncObj__raftState = LEADER
    sync3._SyncObj__raftElectionDeadline = deadline = monotonic() + 10
    Elections(sync3).on_disconnected(sync3.nodes[0])
    assert sync3._SyncObj__raftElectionDeadline == deadline


def test_heartbeats_waiting_unread_are_read_before_a_pre_vote(sync: FakeSync) -> None:
    # A node that did not get the CPU for a while finds its timer run out, with the
    # leader's heartbeats in its socket: it reads them first, and asks nobody.
    e = Elections(sync)
    _speaks(e, sync)
    leader = sync.nodes[0]

    class Poller:
        def poll(self, timeout: float) -> None:
            assert timeout == 0
            e.on_message(leader, {"type": "append_entries", "term": 5})
            sync._SyncObj__raftElectionDeadline = monotonic() + 0.2  # pysyncobj's part

    sync._poller = Poller()  # type: ignore[attr-defined]
    e.before_tick()
    assert not sync.sent(el.PRE_VOTE)


def test_a_pre_vote_is_answered_after_the_rest_of_the_read(sync: FakeSync) -> None:
    # The request and the leader's heartbeat arrive together: the answer reflects both.
    e = Elections(sync)
    _speaks(e, sync)
    leader, asker = sync.nodes
    e.on_message(asker, {"type": el.PRE_VOTE, "term": 6, "round": 1, "last_log_index": 40,
                         "last_log_term": 5, el.EXTENSIONS_KEY: 1})
    assert not sync.sent(el.PRE_VOTE_RESPONSE)
    e.on_message(leader, {"type": "append_entries", "term": 5})
    sync._SyncObj__raftElectionDeadline = monotonic() + 0.2
    e.before_tick()
    (to, reply), = sync.sent(el.PRE_VOTE_RESPONSE)
    assert to == asker.id and reply["granted"] is False


def test_a_pre_vote_that_passed_long_ago_starts_no_election(sync: FakeSync) -> None:
    # The node lost the CPU between the yes and its next tick: the yes is stale.
    e = Elections(sync)
    _speaks(e, sync)
    e.before_tick()
    _answer(e, sync, sync.nodes[0], True)
    assert sync._SyncObj__raftElectionDeadline == 0  # pysyncobj would elect next tick
    e._passed_at -= 2 * sync.conf.raftMinTimeout
    e.before_tick()
    assert sync._SyncObj__raftElectionDeadline > monotonic()  # it will not
    assert len(sync.sent(el.PRE_VOTE)) == 2  # and nobody was asked again yet


def test_a_single_member_elects_itself_at_once() -> None:
    sync = FakeSync(peers=0)
    e = Elections(sync)
    e.before_tick()
    assert sync._SyncObj__raftElectionDeadline == 0


def _pre_vote(e: Elections, node: TCPNode, term: int = 6, index: int = 40,
              log_term: int = 5) -> bool:
    e.on_message(node, {"type": el.PRE_VOTE, "term": term, "round": 1,
                        "last_log_index": index, "last_log_term": log_term,
                        el.EXTENSIONS_KEY: 1})
    e.answer_pre_votes()  # at the end of the read
    transport: FakeTransport = e._get("transport")
    reply = transport.sent[-1][1]
    assert reply["type"] == el.PRE_VOTE_RESPONSE and reply["round"] == 1
    return bool(reply["granted"])


def test_pre_vote_answers(sync: FakeSync) -> None:
    e = Elections(sync)
    asker = sync.nodes[1]
    assert _pre_vote(e, asker)  # no leader heard, newer term, log as long
    assert not _pre_vote(e, asker, term=5)  # not beyond this node's term
    assert not _pre_vote(e, asker, index=39)  # shorter log
    assert not _pre_vote(e, asker, log_term=4, index=99)  # older last term
    assert _pre_vote(e, asker, log_term=6, index=1)  # newer last term
    e.on_message(sync.nodes[0], {"type": "append_entries", "term": 5})  # a live leader
    assert not _pre_vote(e, asker)
    assert sync._SyncObj__raftCurrentTerm == 5 and sync._SyncObj__votedForNodeId is None
    stranger = TCPNode("127.0.0.1:7199")
    assert not _pre_vote(e, stranger)


def test_a_leader_with_a_fresh_majority_refuses_pre_votes_and_votes(sync: FakeSync) -> None:
    e = Elections(sync)
    _speaks(e, sync)
    sync._SyncObj__raftState = LEADER
    sync._SyncObj__lastResponseTime = {sync.nodes[0]: monotonic()}
    assert not _pre_vote(e, sync.nodes[1])
    assert e.on_message(sync.nodes[1], {"type": "request_vote", "term": 6,
                                        el.EXTENSIONS_KEY: 1})  # ignored
    sync._SyncObj__lastResponseTime = {sync.nodes[0]: monotonic() - 10}
    assert _pre_vote(e, sync.nodes[1])
    assert not e.on_message(sync.nodes[1], {"type": "request_vote", "term": 6,
                                            el.EXTENSIONS_KEY: 1})


def test_stickiness_spares_old_members_and_transfers(sync: FakeSync) -> None:
    e = Elections(sync)
    e.on_message(sync.nodes[0], {"type": "append_entries", "term": 5, el.EXTENSIONS_KEY: 1})
    new, old = sync.nodes[1], TCPNode("127.0.0.1:7150")
    vote = {"type": "request_vote", "term": 6, "last_log_index": 40, "last_log_term": 5}
    assert e.on_message(new, {**vote, el.EXTENSIONS_KEY: 1})  # ignored: leader is live
    assert not e.on_message(new, {**vote, el.EXTENSIONS_KEY: 1, el.TRANSFER_KEY: True})
    assert not e.on_message(old, vote)  # an old node is let in the old way
    e._leader_heard = monotonic() - 1.0  # the leader fell silent
    assert not e.on_message(new, {**vote, el.EXTENSIONS_KEY: 1})


def test_outgoing_messages_are_tagged_and_transfers_marked(sync: FakeSync) -> None:
    e = Elections(sync)
    assert e.outgoing("127.0.0.1:7100") == "127.0.0.1:7100"  # the hello is not a dict
    vote = {"type": "request_vote", "term": 6}
    assert e.outgoing(vote) == {**vote, el.EXTENSIONS_KEY: 1}
    assert vote == {"type": "request_vote", "term": 6}  # the caller's dict is not changed
    sync._SyncObj__transferInProgress = True
    sync._SyncObj__raftElectionDeadline = 0.0
    e.before_tick()  # TimeoutNow: no pre-vote, the election runs now, marked as a transfer
    assert not sync.sent(el.PRE_VOTE)
    assert e.outgoing(vote)[el.TRANSFER_KEY] is True
    e.after_tick()
    assert el.TRANSFER_KEY not in e.outgoing(vote)


def test_a_newer_term_from_a_member_is_adopted(sync: FakeSync) -> None:
    e = Elections(sync)
    sync._SyncObj__raftState = LEADER
    e.on_message(sync.nodes[0], {"type": el.NEWER_TERM, "term": 4})  # older: ignored
    assert sync._SyncObj__raftState == LEADER
    e.on_message(TCPNode("127.0.0.1:7199"), {"type": el.NEWER_TERM, "term": 9})  # stranger
    assert sync._SyncObj__raftCurrentTerm == 5
    e.on_message(sync.nodes[0], {"type": el.NEWER_TERM, "term": 9})
    assert (sync._SyncObj__raftCurrentTerm, sync._SyncObj__raftState,
            sync._SyncObj__raftLeader) == (9, FOLLOWER, None)
    # and a node ahead of a leader's term says so, at most once per election timeout
    sync._SyncObj__raftState = FOLLOWER
    for _ in range(3):
        e.on_message(sync.nodes[1], {"type": "append_entries", "term": 8})
    assert [m["term"] for _, m in sync.sent(el.NEWER_TERM)] == [9]


# -- what an old node makes of the new messages ---------------------------------------------


@pytest.fixture
def old_node(tmp_path: Path) -> Iterator[SyncObj]:
    """A plain pysyncobj member, as every raftsso node before pre-vote ran it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node = SyncObj(f"127.0.0.1:{port}", ["127.0.0.1:1", "127.0.0.1:2"],
                   SyncObjConf(autoTick=False, journalFile=str(tmp_path / "raft.journal")))
    yield node
    node.destroy()


@pytest.mark.parametrize("message", [
    {"type": el.HELLO, el.EXTENSIONS_KEY: 1},
    {"type": el.PRE_VOTE, "term": 9, "round": 1, "last_log_index": 1, "last_log_term": 0,
     el.EXTENSIONS_KEY: 1},
    {"type": el.PRE_VOTE_RESPONSE, "term": 9, "round": 1, "granted": True,
     el.EXTENSIONS_KEY: 1},
    {"type": el.NEWER_TERM, "term": 9, el.EXTENSIONS_KEY: 1},
], ids=lambda m: m["type"])
def test_an_old_node_ignores_the_new_messages(old_node: SyncObj,
                                              message: dict[str, Any]) -> None:
    peer = next(iter(old_node.otherNodes))
    before = (old_node.raftCurrentTerm, old_node._getLeader(), old_node._isLeader())
    old_node._SyncObj__onMessageReceived(peer, message)
    assert (old_node.raftCurrentTerm, old_node._getLeader(), old_node._isLeader()) == before


def test_an_old_node_reads_tagged_messages_as_before(old_node: SyncObj) -> None:
    peer = next(iter(old_node.otherNodes))
    old_node._SyncObj__onMessageReceived(peer, {
        "type": "request_vote", "term": 3, "last_log_index": 5, "last_log_term": 1,
        el.EXTENSIONS_KEY: 1, el.TRANSFER_KEY: True})
    assert old_node.raftCurrentTerm == 3  # handled exactly as an untagged vote request
    old_node._SyncObj__onMessageReceived(peer, {
        "type": "append_entries", "term": 4, "commit_index": 1, "prevLogIdx": 1,
        "prevLogTerm": 0, "entries": [], el.EXTENSIONS_KEY: 1})
    assert old_node.raftCurrentTerm == 4 and old_node._getLeader() == peer
