"""A follower does not repeat an acknowledgement the leader has just had (commit notices)."""

from __future__ import annotations

from typing import Any

import pytest

from raftsso.raft import member
from raftsso.raft.member import _RaftSyncObj


class _Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, dict[str, Any]]] = []

    def send(self, node: Any, message: dict[str, Any]) -> bool:
        self.sent.append((node, message))
        return True


@pytest.fixture
def follower(monkeypatch: pytest.MonkeyPatch) -> Any:
    clock = [100.0]
    monkeypatch.setattr(member, "_pso_monotonic", lambda: clock[0])
    sync: Any = object.__new__(_RaftSyncObj)  # only what acknowledging reads
    sync._last_ack = None
    sync._last_ack_at = 0.0
    sync._ack_window = member.ACK_REPEAT_WINDOW
    sync._SyncObj__transport = _Transport()
    sync._SyncObj__raftCurrentTerm = 7
    sync._SyncObj__raftLog = [(b"", 41, 7)]  # the last entry is index 41
    sync.clock = clock
    return sync


def _acks(sync: Any) -> list[tuple[int, bool, bool]]:
    sent = sync._SyncObj__transport.sent
    return [(m["next_node_idx"], m["success"], m["reset"]) for _, m in sent]


def test_a_repeated_acknowledgement_within_the_window_is_not_sent(follower: Any) -> None:
    ack = follower._SyncObj__sendNextNodeIdx
    ack("leader", nextNodeIdx=42, success=True)  # the entry's acknowledgement
    follower.clock[0] += 0.002
    ack("leader", nextNodeIdx=42, success=True)  # the commit notice's: the same
    assert _acks(follower) == [(42, True, False)]
    follower.clock[0] += member.ACK_REPEAT_WINDOW
    ack("leader", nextNodeIdx=42, success=True)  # a heartbeat after the window
    assert _acks(follower) == [(42, True, False)] * 2


def test_anything_new_is_sent_at_once(follower: Any) -> None:
    ack = follower._SyncObj__sendNextNodeIdx
    ack("leader", nextNodeIdx=42, success=True)
    ack("leader", nextNodeIdx=43, success=True)  # a new index
    ack("other", nextNodeIdx=43, success=True)  # another leader
    follower._SyncObj__raftCurrentTerm = 8
    ack("other", nextNodeIdx=43, success=True)  # another term
    ack("other", nextNodeIdx=40, success=False, reset=True)  # a refusal
    ack("other", nextNodeIdx=40, success=False, reset=True)  # refusals always go
    ack("other", nextNodeIdx=43, success=True)  # after a refusal
    ack("other", success=False, reset=False)  # a transmission chunk: current index + 1
    assert _acks(follower) == [(42, True, False), (43, True, False), (43, True, False),
                               (43, True, False), (40, False, True), (40, False, True),
                               (43, True, False), (42, False, False)]
