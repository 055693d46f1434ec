"""The node's write path, with a Raft member that ticks in memory (no sockets).

The Raft member is passed in to :class:`raftsso.node.Node`, so these tests give it
:class:`LaggingRaft`: a leader whose log holds entries committed under the previous leader
that its state machine has not applied yet, exactly the state a real new leader is in until
its first entry of the new term commits. What is under test is the *node's* ordering (its
checks run past the barrier); the real Raft member and real processes are exercised by
``tests/integration``. The state machine, the seal key and the envelopes are the real ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raftsso import envelope
from raftsso.config import NodeConfig, load_node_config
from raftsso.deployment import init_deployment
from raftsso.errors import NotLeader, OutcomeUnknown, RemoteError
from raftsso.fsm import KeyringStateMachine
from raftsso.keyring import KeyState
from raftsso.node import MAX_LIVE_VERSIONS, Node
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.commands import Bootstrap, Command, Outcome, Retire, Rotate
from raftsso.protocol.ids import VersionId, new_request_id
from raftsso.protocol.messages import (
    KeyringRequest,
    RetireRequest,
    RotateRequest,
    VersionResult,
)
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
    # How submit() hands the outcome back: "thread" (from another thread, as the Raft
    # thread does), "hold" (only when release_held() is called), "lose" (never: the
    # entry was lost in a leader change) or "unknown" (OutcomeUnknown, nothing applied).
    submit_mode: str = "thread"
    held: list[Callable[[], None]] = field(default_factory=list)

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

    def submit(self, command: bytes, ended: Callable[[Outcome | Exception], None]) -> None:
        def run() -> None:
            try:
                outcome: Outcome | Exception = self.propose(command, 0.0)
            except Exception as exc:
                outcome = exc
            ended(outcome)

        if self.submit_mode == "lose":
            return
        if self.submit_mode == "unknown":  # e.g. discarded by a leader change
            threading.Thread(target=ended, args=(OutcomeUnknown("discarded"),),
                             daemon=True).start()
            return
        if self.submit_mode == "hold":
            self.held.append(run)
            return
        threading.Thread(target=run, daemon=True).start()

    def release_held(self) -> None:
        while self.held:
            self.held.pop(0)()

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


# -- the service's event loop: rotate without a worker thread (raftsso.node.write_path) ---------


def _ready(s: Setup) -> None:
    _bootstrap(s)
    s.node.duties.run_once()  # the barrier of this term
    assert s.node.writes.ready_for_writes


def test_rotate_on_the_loop_answers_the_applied_outcome_and_frees_the_write_lock(
        setup: Setup) -> None:
    s = setup
    _ready(s)

    async def rotations() -> list[int]:
        return [(await s.node.rotate_async(RotateRequest(new_request_id()))).version
                for _ in range(3)]

    assert asyncio.run(rotations()) == [2, 3, 4]
    assert s.fsm.keyring.last_id == 4
    # The lock is free: a write from a thread (the leader duties do this) goes through.
    assert s.node.rotate(RotateRequest(new_request_id())).version == 5
    # A retried request id gets its remembered outcome, with nothing proposed again.
    request = RotateRequest(new_request_id())
    first = s.node.rotate(request)
    proposed = len(s.raft.proposed)
    assert asyncio.run(s.node.rotate_async(request)) == first
    assert len(s.raft.proposed) == proposed


def test_a_write_on_the_loop_holds_the_write_lock_until_its_entry_is_applied(
        setup: Setup) -> None:
    """A write in a thread waits while a loop write's entry is not applied yet, then builds
    on the keyring that holds it (the next version id, not a conflict)."""
    s = setup
    _ready(s)
    s.raft.submit_mode = "hold"

    async def scenario() -> tuple[int, int]:
        loop_write = asyncio.ensure_future(
            s.node.rotate_async(RotateRequest(new_request_id())))
        while not s.raft.held:
            await asyncio.sleep(0.001)
        s.raft.submit_mode = "thread"
        thread, box = _in_thread(lambda: s.node.rotate(RotateRequest(new_request_id())))
        thread.join(timeout=0.2)
        assert thread.is_alive(), "the thread's write ran while the loop's held the lock"
        s.raft.release_held()
        first = await loop_write
        await asyncio.to_thread(thread.join, 30)
        result = box.get("result")
        assert isinstance(result, VersionResult), box
        return first.version, result.version

    assert asyncio.run(scenario()) == (2, 3)


def test_a_lost_commit_callback_is_resolved_in_a_worker_and_frees_the_lock(
        setup: Setup) -> None:
    """The Raft member never calls back (the entry was lost in a leader change): after the
    commit timeout the outcome is resolved as the thread path does (re-read the request id,
    propose the same command again), and the lock is released."""
    s = setup
    raft_timings = dataclasses.replace(s.cfg.raft, commit_timeout=0.2)
    cfg = dataclasses.replace(s.cfg, raft=raft_timings)
    node = Node(cfg, s.fsm, s.raft, clock=s.clock)
    try:
        _bootstrap(s)
        node.duties.run_once()
        s.raft.submit_mode = "lose"
        result = asyncio.run(node.rotate_async(RotateRequest(new_request_id())))
        assert result.version == 2
        assert len(s.raft.proposed) == 2  # the barrier, then the retried rotation
        assert node.rotate(RotateRequest(new_request_id())).version == 3
    finally:
        node.stop()


def test_an_unknown_outcome_on_the_loop_is_resolved_by_proposing_the_same_command(
        setup: Setup) -> None:
    s = setup
    _ready(s)
    s.raft.submit_mode = "unknown"
    proposed = len(s.raft.proposed)
    result = asyncio.run(s.node.rotate_async(RotateRequest(new_request_id())))
    assert result.version == 2
    assert len(s.raft.proposed) == proposed + 1  # proposed again, applied once
    s.raft.submit_mode = "thread"
    assert s.node.rotate(RotateRequest(new_request_id())).version == 3


def test_a_cancelled_waiter_on_the_loop_still_frees_the_lock_once_applied(
        setup: Setup) -> None:
    s = setup
    _ready(s)
    s.raft.submit_mode = "hold"

    async def scenario() -> None:
        waiter = asyncio.ensure_future(s.node.rotate_async(RotateRequest(new_request_id())))
        while not s.raft.held:
            await asyncio.sleep(0.001)
        waiter.cancel()  # its connection closed
        with pytest.raises(asyncio.CancelledError):
            await waiter
        s.raft.release_held()  # the entry is applied after all

    asyncio.run(scenario())
    assert s.fsm.keyring.last_id == 2
    s.raft.submit_mode = "thread"
    assert s.node.rotate(RotateRequest(new_request_id())).version == 3


def test_rotate_on_the_loop_refuses_on_a_follower_and_waits_for_the_barrier(
        setup: Setup) -> None:
    s = setup
    _bootstrap(s)
    s.raft.is_leader = False
    with pytest.raises(NotLeader):
        asyncio.run(s.node.rotate_async(RotateRequest(new_request_id())))
    s.raft.is_leader = True

    async def before_the_barrier() -> int:
        # Not ready yet: the rotation waits (in a worker thread) for the barrier.
        pending = asyncio.ensure_future(s.node.rotate_async(RotateRequest(new_request_id())))
        await asyncio.sleep(0.05)
        assert not pending.done()
        await asyncio.to_thread(s.node.duties.run_once)
        return (await pending).version

    assert asyncio.run(before_the_barrier()) == 2
