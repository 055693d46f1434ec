"""The leader's duties, run by one background thread while this node leads.

1. a *barrier* command in each new term, so the leader's state machine has applied every
   entry committed before it answers a write (:mod:`raftsso.node.write_path` waits for it);
2. the cluster's first secret, created exactly once (the bootstrap command is a
   compare-and-set on an empty keyring);
3. promotion of a staged version, once its grace period has passed or, at most once a
   second, as soon as every recently seen client has synced it (:class:`ClientCensus`).

Bootstrap and promotions go through the serialised write path, so their checks read the
keyring past the barrier with no other write in between.
"""

from __future__ import annotations

import logging
import time

from raftsso import envelope, events
from raftsso.config import NodeConfig
from raftsso.errors import RaftssoError
from raftsso.fsm import KeyringStateMachine
from raftsso.keyring import Keyring, KeyState
from raftsso.node.raft_member import RaftMember
from raftsso.node.sealing import NodeSeal, scrub
from raftsso.node.ticker import Ticker
from raftsso.node.tracking import ClientCensus
from raftsso.node.write_path import WritePath
from raftsso.protocol.commands import Barrier, Bootstrap, Command, Promote
from raftsso.protocol.ids import VersionId, new_request_id

log = logging.getLogger(__name__)

EARLY_CHECK_INTERVAL = 1.0


class LeaderDuties:
    def __init__(self, cfg: NodeConfig, fsm: KeyringStateMachine, raft: RaftMember,
                 writes: WritePath, census: ClientCensus, seal: NodeSeal) -> None:
        self._cfg = cfg
        self._fsm = fsm
        self._raft = raft
        self._writes = writes
        self._census = census
        self._seal = seal
        self._last_early_check = 0.0
        self._ticker = Ticker("leader-duties", 0.25, self._tick)

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()

    def wake(self) -> None:
        self._ticker.wake()

    def _tick(self) -> None:
        try:
            if self._raft.is_leader:
                self.run_once()
        except RaftssoError as exc:
            log.info("leader duty deferred: %s", exc)
            time.sleep(0.05)
            if self._raft.is_leader:
                self._ticker.wake()
        except Exception:
            log.exception("unexpected error in leader duties")
            time.sleep(0.5)

    def run_once(self) -> None:
        term = self._raft.term
        if not self._writes.ready_in(term):
            self._writes.propose(Barrier(new_request_id()))
            if self._raft.term == term and self._raft.is_leader:
                self._writes.mark_ready(term)
                log.info("leader %s is ready in term %d", self._cfg.node_id, term)
        if self._seal.sealed:
            # A sealed leader (shamir, before its shares) can seal nothing: no first secret,
            # no promotion; writes answer SEALED. Transfer leadership to an unsealed node,
            # or unseal this one.
            return
        ring = self._fsm.keyring
        if not ring.bootstrapped:
            self._bootstrap()
            return
        staged = [v for v in ring.versions if v.state is KeyState.STAGED]
        now = time.time()
        for v in staged:
            if v.created + self._cfg.rotation_grace <= now:
                self._promote(VersionId(v.id), "grace_period")
                return
        if staged and time.monotonic() - self._last_early_check >= EARLY_CHECK_INTERVAL:
            self._last_early_check = time.monotonic()
            newest = VersionId(staged[-1].id)
            # Asked first outside the write path (peers may be slow to answer: do not hold
            # up writes while the answer is no), then again inside it before promoting.
            if self._census.every_recent_client_has(newest):
                self._promote(newest, "clients_synced")

    def _promote(self, version: VersionId, reason: str) -> None:
        """Promote ``version`` if, in the write path, it is still staged and ``reason``
        still holds (the grace period passed, or every recent client has synced it)."""
        req = new_request_id()

        def build(ring: Keyring) -> Command | None:
            kv = ring.get(version)
            if kv is None or kv.state is not KeyState.STAGED:
                return None
            if reason == "grace_period":
                if kv.created + self._cfg.rotation_grace > time.time():
                    return None
            elif not self._census.every_recent_client_has(version):
                return None
            return Promote(req, version, time.time())

        outcome = self._writes.run(req, "promotion", build)
        if outcome is None:
            return
        log.info("promotion of staged version %d (%s): %s", version, reason,
                 "done" if outcome.ok else outcome.message)
        if outcome.ok:
            events.emit(events.ROTATION_PROMOTED, f"version {version} is primary",
                        version=version, reason=reason)

    def _bootstrap(self) -> None:
        req = new_request_id()
        key = envelope.new_key()
        fingerprint = envelope.fingerprint(key)

        def build(ring: Keyring) -> Command | None:
            if ring.bootstrapped:
                return None
            sealed = self._seal.wrap(key, 1, ring.seal_generation)
            return Bootstrap(req, sealed, fingerprint, time.time())

        try:
            outcome = self._writes.run(req, "first secret", build, require_secret=False)
        finally:
            scrub(key)  # sealed (or not needed): overwritten, not just freed
        if outcome is not None and outcome.ok:
            log.info("created the cluster's first master secret (version 1, fingerprint %s); "
                     "back it up now", fingerprint)
            events.emit(events.FIRST_SECRET_CREATED, version=1, fingerprint=fingerprint)
