"""The node's write path, with a Raft member that ticks in memory (no sockets).

The Raft member is passed in to :class:`raftsso.node.Node`, so these tests give it
:class:`LaggingRaft`: a leader whose log holds entries committed under the previous leader
that its state machine has not applied yet, exactly the state a real new leader is in until
its first entry of the new term commits. What is under test is the *node's* ordering (its
checks run past the barrier); the real Raft member and real processes are exercised by
``tests/integration``. The state machine, the seal key and the envelopes are the real ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raftsso import envelope
from raftsso.config import NodeConfig, load_node_config
from raftsso.deployment import init_deployment
from raftsso.errors import NotLeader, RemoteError
from raftsso.fsm import KeyringStateMachine
from raftsso.keyring import KeyState
from raftsso.node import MAX_LIVE_VERSIONS, Node
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.commands import Bootstrap, Command, Outcome, Retire, Rotate
from raftsso.protocol.ids import VersionId, new_request_id
from raftsso.protocol.messages import KeyringRequest, RetireRequest, RotateRequest
from raftsso.wire import MAX_FRAME, encode_frame, ok

LONG_AGO = time.time() - 100_000


@dataclass
class LaggingRaft:
    """A leader with committed-but-unapplied entries: they are applied (in order) when the
    leader's next entry commits, before that entry, as Raft does."""

    fsm: KeyringStateMachine
    raft_address: str
    unapplied: list[bytes] = field(default_factory=list)
    term: int = 2
    is_leader: bool = True
    role: str = "leader"
    leader_id: str | None = "node1"
    has_quorum: bool = True
    started: bool = True
    index: int = 0
    proposed: list[bytes] = field(default_factory=list)

    def _apply(self, blob: bytes) -> Outcome:
        self.index += 1
        return self.fsm.apply(blob, index=self.index)

    def commit_earlier(self, command: Command) -> None:
        """An entry the previous leader committed; this member has it, unapplied."""
        self.unapplied.append(command.encode())

    def apply_now(self, command: Command) -> Outcome:
        return self._apply(command.encode())

    def propose(self, command: bytes, timeout: float) -> Outcome:
        if not self.is_leader:
            raise NotLeader("not the leader")
        self.proposed.append(command)
        while self.unapplied:
            self._apply(self.unapplied.pop(0))
        return self._apply(command)

    @property
    def commit_index(self) -> int:
        return self.index + len(self.unapplied)

    @property
    def last_applied(self) -> int:
        return self.index

    @property
    def leader_commit_index(self) -> int:
        return self.commit_index

    @property
    def last_log_index(self) -> int:
        return self.commit_index

    def peers(self) -> list[object]:
        return []

    def raft_addresses(self) -> set[str]:
        return {self.raft_address}

    def change_membership(self, add: bool, raft_address: str, timeout: float,
                          node_id: str | None = None) -> bool:
        return False

    def transfer_leadership(self, node_id: str, timeout: float) -> bool:
        return False

    def compact(self, timeout: float) -> int | None:
        """No files here: a compaction is done at once, at the applied index (without it,
        every retire waits out the destroy timeout)."""
        return self.index

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    cfg: NodeConfig
    fsm: KeyringStateMachine
    raft: LaggingRaft
    clock: Clock
    node: Node


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    init_deployment(tmp_path, nodes=1, base_port=7100)
    cfg = load_node_config(tmp_path / "node1" / "node.toml")
    fsm = KeyringStateMachine()
    raft = LaggingRaft(fsm, cfg.raft_address)
    clock = Clock()
    node = Node(cfg, fsm, raft, clock=clock)
    # The duties are run by hand here; the destroy thread runs as in a node, so a retire's
    # answer does not wait out its timeout for a compaction nobody does.
    node.destroyer.start()
    yield Setup(cfg, fsm, raft, clock, node)
    node.stop()


def _rotate(s: Setup, version: int, *, now: bool, created: float) -> Rotate:
    key = envelope.new_key()
    return Rotate(new_request_id(), VersionId(version),
                  envelope.seal(s.cfg.seal_key(), key, cluster_id=s.cfg.cluster_id,
                                version=version),
                  envelope.fingerprint(key), created, VersionId(version - 1), now)


def _bootstrap(s: Setup, created: float = LONG_AGO) -> None:
    key = envelope.new_key()
    sealed = envelope.seal(s.cfg.seal_key(), key, cluster_id=s.cfg.cluster_id, version=1)
    assert s.raft.apply_now(Bootstrap(new_request_id(), sealed, envelope.fingerprint(key),
                                      created)).ok


def _in_thread(fn: object) -> tuple[threading.Thread, dict[str, object]]:
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = fn()  # type: ignore[operator]
        except Exception as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_a_stale_new_leader_refuses_the_retire_of_the_just_demoted_primary(
        setup: Setup) -> None:
    """The previous leader committed ``rotate --now`` (version 2 primary, now); the new
    leader has not applied it. A retire of version 1 arrives: its client-window check must
    see version 2 as the primary of a moment ago, not version 1 as the primary of always."""
    s = setup
    _bootstrap(s)
    s.clock.now += 10 * s.cfg.client_window  # this node has watched for whole windows
    s.node.clients.record("sso-a", "process-1", 1)  # a client that has version 1 only
    s.raft.commit_earlier(_rotate(s, 2, now=True, created=time.time()))
    assert s.fsm.keyring.primary == 1  # what a check before the barrier would read

    thread, box = _in_thread(lambda: s.node.retire(RetireRequest(VersionId(1))))
    # The retire waits for the barrier of this term, which the leader duties propose.
    s.node.duties.run_once()
    thread.join(timeout=30)
    assert not thread.is_alive()
    error = box.get("error")
    assert isinstance(error, RemoteError), box
    assert error.code is ErrorCode.TOO_SOON
    assert "version 2 became primary" in str(error)
    assert s.fsm.keyring.get(1) is not None and s.fsm.keyring.get(1).state is KeyState.ACTIVE

    # Once the client has been served version 2, the same retire goes through.
    s.node.clients.record("sso-a", "process-1", 2)
    result = s.node.retire(RetireRequest(VersionId(1)))
    assert result.state is KeyState.RETIRED


def test_a_retried_retire_returns_its_outcome_without_checking_again(setup: Setup) -> None:
    s = setup
    _bootstrap(s)
    s.node.duties.run_once()
    assert s.raft.apply_now(_rotate(s, 2, now=True, created=LONG_AGO)).ok
    request = RetireRequest(VersionId(1))
    first = s.node.retire(request)
    assert first.state is KeyState.RETIRED and first.destroyed
    s.node.clients.record("sso-a", "process-1", 1)  # would refuse a new retire
    assert s.node.retire(request).state is KeyState.RETIRED


def test_a_flood_of_fresh_ids_from_one_certificate_keeps_the_safe_choice(
        setup: Setup) -> None:
    """Certificate b's fresh ids fill b's share of the table; a's lagging client stays
    remembered, and the overflow alone is enough to refuse (never to admit)."""
    from raftsso.node.tracking import MAX_CLIENTS_PER_CERTIFICATE

    s = setup
    _bootstrap(s)
    s.node.duties.run_once()
    s.clock.now += 10 * s.cfg.client_window
    assert s.raft.apply_now(_rotate(s, 2, now=True, created=time.time())).ok
    s.node.clients.record("sso-a", "lagging", 1)
    for i in range(MAX_CLIENTS_PER_CERTIFICATE + 100):
        s.node.clients.record("sso-b", f"fresh-{i}", 2)
    view = s.node.clients.view()
    assert view.overflowed
    assert ("sso-a", "lagging") in {(c.certificate, c.client_id) for c in view.clients}
    with pytest.raises(RemoteError) as refused:
        s.node.retire(RetireRequest(VersionId(1)))
    assert refused.value.code is ErrorCode.TOO_SOON
    # Even with a's client up to date, the overflow within the window keeps the refusal.
    s.node.clients.record("sso-a", "lagging", 2)
    with pytest.raises(RemoteError):
        s.node.retire(RetireRequest(VersionId(1)))
    # Once the window has passed without overflow, the view is trusted again.
    s.clock.now += s.cfg.client_window + 1
    s.node.clients.record("sso-a", "lagging", 2)
    assert s.node.retire(RetireRequest(VersionId(1))).state is KeyState.RETIRED


def test_rotation_past_the_live_version_cap_is_refused_until_one_is_retired(
        setup: Setup) -> None:
    s = setup
    _bootstrap(s)
    s.node.duties.run_once()
    for version in range(2, MAX_LIVE_VERSIONS + 1):
        assert s.raft.apply_now(_rotate(s, version, now=True, created=LONG_AGO)).ok
    before = len(s.raft.proposed)
    with pytest.raises(RemoteError) as refused:
        s.node.rotate(RotateRequest(now=True))
    assert refused.value.code is ErrorCode.TOO_MANY_VERSIONS
    assert "retire" in str(refused.value)
    assert len(s.raft.proposed) == before  # nothing was proposed
    # The keyring answer at the cap fits a frame with room to spare.
    answer = s.node.keyring(KeyringRequest(), "sso-a")
    assert len(answer.versions) == MAX_LIVE_VERSIONS
    assert len(encode_frame(ok(1, answer.to_wire()))) < MAX_FRAME * 0.75
    assert s.raft.apply_now(Retire(new_request_id(), VersionId(1))).ok
    assert s.node.rotate(RotateRequest(now=True)).version == MAX_LIVE_VERSIONS + 1
