"""Turns changes in a node's view of the cluster into events and counters.

One thread samples the node every :data:`INTERVAL` seconds (never inside the Raft thread,
never holding a lock the Raft thread needs) and emits, on a change:

* ``leader_changed`` (and ``raftsso_raft_leader_changes_total``) for every new
  ``(leader, term)`` pair it observes;
* ``quorum_lost`` once this node has seen no leader with a quorum for ``quorum_grace``
  (so that an ordinary election, a few hundred milliseconds, is not an outage), and
  ``quorum_regained`` as soon as it sees one again;
* ``peer_unreachable`` / ``peer_reachable`` when a peer becomes unreachable or comes back.
  Unreachable: its Raft connection is down, or it should be talking to us (we lead, or it
  is our leader) and has been silent for ``peer_silence`` (a cut network keeps a TCP
  connection "open" for a while); reported once that has lasted ``peer_silence`` more
  (a reconnection is not an outage). Back: connected and heard from within
  ``peer_silence`` (on an idle follower-to-follower link: a new connection, or this node
  following a leader with a quorum again). A peer never reached since start is reported
  after ``quorum_grace``;
* on the leader, ``version_not_backed_up`` for each usable version never included in a
  backup, once when first noticed and then every :data:`BACKUP_REMINDER` seconds.

The leader's own role changes (``leader_elected``, ``leadership_lost``) are emitted by the
node's role-change callback, which sees every transition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from raftsso import events
from raftsso.keyring import KeyState

if TYPE_CHECKING:
    from raftsso.metrics import NodeMetrics
    from raftsso.node import Node

log = logging.getLogger(__name__)

INTERVAL = 0.1
BACKUP_REMINDER = 3600.0


class ClusterWatch:
    def __init__(self, node: Node, metrics: NodeMetrics | None = None,
                 quorum_grace: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.metrics = metrics
        timings = node.cfg.raft
        self.quorum_grace = (quorum_grace if quorum_grace is not None else
                             max(1.0, 2 * timings.election_timeout_max,
                                 timings.leader_fallback_timeout))
        # A peer that should be talking to us (our followers, our leader) and has been
        # silent this long is unreachable even while its TCP connection looks open.
        self.peer_silence = max(timings.leader_fallback_timeout,
                                5 * timings.append_entries_period)
        self._led_at: float | None = None
        self._clock = clock
        self._started = clock()
        self._last_leader: tuple[str, int] | None = None
        self._quorum_ok: bool | None = None
        self._quorum_bad_since: float | None = None
        self._peer_up: dict[str, bool] = {}
        self._tcp_up: dict[str, bool] = {}
        self._expect_since: dict[str, float] = {}
        self._down_since: dict[str, float] = {}
        self._backup_warned: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            try:
                self.sample()
            except RuntimeError:
                continue  # the Raft member is not running (starting or stopping)
            except Exception:
                log.exception("cluster watch failed")

    def sample(self) -> None:
        """Look once and emit what changed (public for tests)."""
        raft = self.node.raft
        now = self._clock()
        leader, term, quorum = raft.leader_id, raft.term, raft.has_quorum
        if raft.leader_id != leader or raft.term != term:
            return  # changed while we looked (an election): look again next time
        if leader is not None and (leader, term) != self._last_leader:
            self._last_leader = (leader, term)
            if self.metrics is not None:
                self.metrics.leader_changes.inc()
            events.emit(events.LEADER_CHANGED, f"leader is {leader} in term {term}",
                        leader=leader, term=term)
        self._quorum(leader is not None and quorum, leader, term, now)
        leading = raft.is_leader
        if leading:
            self._led_at = now
        # A leader that just stepped down (cut off: no answers) still expects its peers.
        led = self._led_at is not None and now - self._led_at <= 2 * self.peer_silence
        peers = raft.peers()
        heard = {p.id: p.last_contact is not None and p.last_contact <= self.peer_silence
                 for p in peers}
        # Following a leader with a quorum that we hear from: no evidence of trouble left.
        settled = (leader is not None and not leading and quorum
                   and heard.get(leader, False))
        for peer in peers:
            if not (led or peer.id == leader):
                self._expect_since.pop(peer.id, None)
            reconnected = peer.connected and self._tcp_up.get(peer.id) is False
            self._tcp_up[peer.id] = peer.connected
            if not peer.connected:
                up = False
            elif led or peer.id == leader:
                # The leader hears from every peer, a follower from its leader, all the
                # time: silence means unreachable even while TCP looks open (counted from
                # when we started to expect it: a new leader, a new term).
                since = self._expect_since.setdefault(peer.id, now)
                up = heard[peer.id] or now - since < self.peer_silence
            elif self._peer_up.get(peer.id) is False:
                # Idle follower-to-follower link: "back" needs a message, a new
                # connection, or a settled cluster around us.
                up = heard[peer.id] or reconnected or settled
            else:
                up = True
            self._peer(peer.id, up, now)
        if leading:
            self._backups(now)

    def _quorum(self, ok: bool, leader: str | None, term: int, now: float) -> None:
        if ok:
            self._quorum_bad_since = None
            if self._quorum_ok is False:
                events.emit(events.QUORUM_REGAINED, f"leader {leader} with a quorum in "
                            f"term {term}", leader=leader, term=term)
            self._quorum_ok = True
            return
        if self._quorum_bad_since is None:
            self._quorum_bad_since = now if self._quorum_ok is not None else self._started
        if self._quorum_ok is not False and now - self._quorum_bad_since >= self.quorum_grace:
            self._quorum_ok = False
            events.emit(events.QUORUM_LOST,
                        f"no leader with a quorum for {now - self._quorum_bad_since:.1f} s",
                        term=term, leader=leader,
                        connected_peers=sum(1 for p in self._peer_up.values() if p))

    def _peer(self, peer: str, up: bool, now: float) -> None:
        before = self._peer_up.get(peer)
        if before is None:
            if up:
                self._peer_up[peer] = True
            elif now - self._started >= self.quorum_grace:
                self._peer_up[peer] = False
                events.emit(events.PEER_UNREACHABLE, f"peer {peer} not reached since start",
                            peer=peer, address=self._address(peer))
            return
        if up:
            self._down_since.pop(peer, None)
        elif before:
            # A reconnection takes a moment: report only a state that lasts.
            since = self._down_since.setdefault(peer, now)
            if now - since < self.peer_silence:
                return
        if up != before:
            self._down_since.pop(peer, None)
            self._peer_up[peer] = up
            events.emit(events.PEER_REACHABLE if up else events.PEER_UNREACHABLE,
                        f"peer {peer} {'is back' if up else 'is unreachable'}",
                        peer=peer, address=self._address(peer))

    def _address(self, peer: str) -> str | None:
        for p in self.node.cfg.peers:
            if p.id == peer:
                return p.raft_address
        return None

    def _backups(self, now: float) -> None:
        for v in self.node.fsm.keyring.versions:
            if v.state is KeyState.RETIRED or v.backed_up:
                self._backup_warned.pop(v.id, None)
                continue
            last = self._backup_warned.get(v.id)
            if last is None or now - last >= BACKUP_REMINDER:
                self._backup_warned[v.id] = now
                events.emit(events.VERSION_NOT_BACKED_UP,
                            f"version {v.id} ({v.state.value}) has never been backed up; "
                            "run raftsso backup", version=v.id, state=v.state.value,
                            fingerprint=v.fingerprint)
