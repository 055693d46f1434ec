"""One replica: the keyring state machine, its Raft member and the leader's duties.

The node owns the seal key. It proposes only sealed secrets (generated and sealed *before*
proposing, so ``apply`` stays deterministic) and unseals them in memory to serve SSO
clients. The TLS service (:mod:`raftsso.server`) calls the methods here.

Leader duties, run by one background thread while this node leads:

1. a *barrier* command in the new term, so the leader's state machine has applied every
   entry committed before it answers a write (otherwise a new leader would compute the
   next version from a stale keyring);
2. the cluster's first secret, created exactly once (the bootstrap command is a
   compare-and-set on an empty keyring);
3. promotion of staged versions whose grace period has passed.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raftsso import envelope, events
from raftsso.config import NodeConfig
from raftsso.errors import (
    Conflict,
    InvalidToken,
    NotLeader,
    OutcomeUnknown,
    RaftssoError,
    RemoteError,
)
from raftsso.fsm import REQUEST_ID_SIZE, KeyringStateMachine, Outcome, encode_command
from raftsso.keyring import Keyring, KeyState
from raftsso.raft import RaftNode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Unsealed:
    version: int
    key: bytes

    def __repr__(self) -> str:
        return f"_Unsealed(version={self.version})"


class Node:
    """A running replica (Raft member plus keyring); thread-safe for the service."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self._seal_key = cfg.seal_key()
        self.fsm = KeyringStateMachine()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._ready_term = -1
        self._write_lock = threading.Lock()
        self._unsealed: dict[tuple[int, bytes], bytes] = {}
        self.raft = RaftNode(cfg, self.fsm, on_role_change=self._role_changed)
        self._duties = threading.Thread(target=self._duty_loop, name="leader-duties",
                                        daemon=True)
        self._service_by_id = {p.id: p.service_address for p in cfg.members}

    def __repr__(self) -> str:
        return f"Node({self.cfg.node_id!r})"

    # lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.raft.start()
        self._duties.start()
        log.info("node %s started: raft %s, service %s, cluster %s", self.cfg.node_id,
                 self.cfg.raft_address, self.cfg.service_address, self.cfg.cluster_id)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._duties.is_alive():
            self._duties.join(timeout=5)
        self.raft.stop()

    def _role_changed(self, old: str, new: str) -> None:
        term = self.raft.sync.raftCurrentTerm if self.raft._sync else None
        log.info("raft role of %s: %s -> %s (term %s)", self.cfg.node_id, old, new,
                 "?" if term is None else term)
        # Runs in the Raft thread: events.emit only queues the line.
        if new == "leader":
            events.emit(events.LEADER_ELECTED, f"{self.cfg.node_id} leads in term {term}",
                        term=term)
        elif old == "leader":
            events.emit(events.LEADERSHIP_LOST, f"{self.cfg.node_id} is now {new}",
                        term=term, role=new)
        self._wake.set()

    # leader duties -------------------------------------------------------------------

    def _duty_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(0.25)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                if self.raft.is_leader:
                    self._leader_duties()
            except RaftssoError as exc:
                log.info("leader duty deferred: %s", exc)
                time.sleep(0.05)
                if self.raft.is_leader:
                    self._wake.set()
            except Exception:
                log.exception("unexpected error in leader duties")
                time.sleep(0.5)

    def _leader_duties(self) -> None:
        term = self.raft.term
        if self._ready_term != term:
            self._propose(encode_command("barrier", _req()))
            if self.raft.term == term and self.raft.is_leader:
                self._ready_term = term
                log.info("leader %s is ready in term %d", self.cfg.node_id, term)
        ring = self.fsm.keyring
        if not ring.bootstrapped:
            self._bootstrap()
            return
        now = time.time()
        for v in ring.versions:
            if v.state is KeyState.STAGED and v.created + self.cfg.rotation_grace <= now:
                outcome = self._propose(encode_command("promote", _req(), version=v.id, at=now))
                log.info("promotion of staged version %d after the grace period: %s", v.id,
                         "done" if outcome.ok else outcome.message)
                if outcome.ok:
                    events.emit(events.ROTATION_PROMOTED, f"version {v.id} is primary",
                                version=v.id, reason="grace_period")

    def _bootstrap(self) -> None:
        key = envelope.new_key()
        sealed = envelope.seal(self._seal_key, key, cluster_id=self.cfg.cluster_id, version=1)
        outcome = self._propose(encode_command(
            "bootstrap", _req(), sealed=sealed, fingerprint=envelope.fingerprint(key),
            created=time.time()))
        if outcome.ok:
            log.info("created the cluster's first master secret (version 1, fingerprint %s); "
                     "back it up now", envelope.fingerprint(key))
            events.emit(events.FIRST_SECRET_CREATED, version=1,
                        fingerprint=envelope.fingerprint(key))

    def _propose(self, command: bytes) -> Outcome:
        return self.raft.propose(command, self.cfg.raft.commit_timeout)

    @property
    def ready_for_writes(self) -> bool:
        """This node leads and has applied its term's barrier (read-only, any thread)."""
        return self._ready_term == self.raft.term and self.raft.is_leader

    def wait_ready_leader(self, timeout: float) -> None:
        """Block until this node leads with a quorum and has applied its term's barrier."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.raft.is_leader:
                raise NotLeader("not the leader", leader=self.leader_service_address())
            if self._ready_term == self.raft.term and self.fsm.keyring.bootstrapped:
                if not self.raft.has_quorum:
                    raise RemoteError("the leader has lost its quorum", code="NO_QUORUM")
                return
            if time.monotonic() >= deadline:
                raise RemoteError("the new leader is not ready yet; retry",
                                  code="UNAVAILABLE")
            self._wake.set()
            time.sleep(0.01)

    # views -----------------------------------------------------------------------------

    def leader_service_address(self) -> str | None:
        leader = self.raft.leader_id
        return None if leader is None else self._service_by_id.get(leader)

    def status(self) -> dict[str, Any]:
        ring = self.fsm.keyring
        leader = self.raft.leader_id
        return {
            "node_id": self.cfg.node_id,
            "cluster_id": self.cfg.cluster_id,
            "address": self.cfg.service_address,
            "raft_address": self.cfg.raft_address,
            "role": self.raft.role,
            "term": self.raft.term,
            "commit_index": self.raft.commit_index,
            "last_applied": self.raft.last_applied,
            "leader": leader,
            "leader_address": self.leader_service_address(),
            "has_quorum": self.raft.has_quorum,
            "ready": self._ready_term == self.raft.term and self.raft.is_leader,
            "primary_version": ring.primary,
            "versions": [_public_version(v) for v in ring.versions],
            "peers": [
                {"id": p.id, "connected": p.connected, "last_contact": p.last_contact,
                 "match_index": p.match_index}
                for p in self.raft.peers()
            ],
        }

    def keyring(self) -> dict[str, Any]:
        """What an SSO client caches: every usable version with its key, and the primary."""
        index = self.raft.last_applied
        term = self.raft.term
        ring = self.fsm.keyring
        return {
            "cluster_id": self.cfg.cluster_id,
            "node_id": self.cfg.node_id,
            "term": term,
            "commit_index": index,
            "primary": ring.primary,
            "versions": [
                {**_public_version(v), "key": self._unseal(ring, v.id)}
                for v in ring.versions if v.state is not KeyState.RETIRED
            ],
        }

    def _unseal(self, ring: Keyring, version: int) -> bytes | None:
        kv = ring.get(version)
        if kv is None or kv.sealed is None:
            return None
        cache_key = (version, kv.sealed)
        key = self._unsealed.get(cache_key)
        if key is None:
            try:
                key = envelope.unseal(self._seal_key, kv.sealed,
                                      cluster_id=self.cfg.cluster_id, version=version)
            except InvalidToken:
                raise RemoteError(
                    f"this node cannot unseal version {version}: its seal key does not match "
                    "the cluster's", code="SEAL_MISMATCH") from None
            self._unsealed[cache_key] = key
        return key

    # writes ---------------------------------------------------------------------------

    def _replicate(self, request_id: bytes, what: str,
                   build: Callable[[Keyring], bytes]) -> dict[str, Any]:
        """Propose the command ``build`` makes from the current keyring, exactly once.

        Writes are serialised on this leader (two would read the same keyring and one lose
        its compare-and-set for nothing). An unknown outcome is resolved by re-reading the
        request id, then retrying the very same command, which the state machine applies
        at most once.
        """
        if len(request_id) != REQUEST_ID_SIZE:
            raise RemoteError("request_id must be 16 bytes", code="BAD_REQUEST")
        timeout = self.cfg.raft.commit_timeout
        self.wait_ready_leader(timeout)
        seen = self.fsm.request_outcome(request_id)
        if seen is not None:
            return _result(seen)
        with self._write_lock:
            command = build(self.fsm.keyring)
            deadline = time.monotonic() + 2 * timeout
            while True:
                try:
                    return _result(self.raft.propose(command, timeout))
                except OutcomeUnknown:
                    seen = self.fsm.request_outcome(request_id)
                    if seen is not None:
                        return _result(seen)
                    if not self.raft.is_leader or time.monotonic() >= deadline:
                        raise OutcomeUnknown(
                            f"the {what} may or may not have been applied; retry with the "
                            "same request id", request_id=request_id) from None

    def rotate(self, request_id: bytes, now: bool) -> dict[str, Any]:
        """Create a new version (staged, or primary with ``now``): a CAS on the primary."""

        def build(ring: Keyring) -> bytes:
            version = ring.last_id + 1
            key = envelope.new_key()
            sealed = envelope.seal(self._seal_key, key, cluster_id=self.cfg.cluster_id,
                                   version=version)
            return encode_command(
                "rotate", request_id, version=version, sealed=sealed,
                fingerprint=envelope.fingerprint(key), created=time.time(),
                expect_primary=ring.primary, now=now)

        return self._replicate(request_id, "rotation", build)

    def retire(self, request_id: bytes, version: int) -> dict[str, Any]:
        """Destroy a non-primary version's key material in the replicated state."""
        return self._replicate(request_id, "retirement", lambda ring: encode_command(
            "retire", request_id, version=version))

    def mark_backed_up(self, request_id: bytes, fingerprints: dict[int, str]) -> dict[str, Any]:
        """Record that a backup holds these versions (ids with their fingerprints)."""
        return self._replicate(request_id, "backup record", lambda ring: encode_command(
            "backed_up", request_id, fingerprints={str(k): v for k, v in fingerprints.items()}))

    def restore(self, request_id: bytes, *, cluster_id: str, primary: int | None,
                versions: list[dict[str, Any]], force: bool) -> dict[str, Any]:
        """Merge a backup's versions (plaintext keys from the operator) into this cluster.

        The keys are sealed here, under this cluster's seal key and id. A backup of
        another cluster needs ``force``, which also lets it replace the first secret of a
        brand-new cluster (disaster recovery).
        """
        if cluster_id != self.cfg.cluster_id and not force:
            raise Conflict(f"the backup is of cluster {cluster_id}, this is "
                           f"{self.cfg.cluster_id}; use --force for disaster recovery")
        sealed_versions = []
        for v in versions:
            key, vid = v.get("key"), v.get("id")
            if not isinstance(key, bytes) or len(key) != envelope.KEY_SIZE or \
                    not isinstance(vid, int) or not 0 < vid < 2**32 or \
                    envelope.fingerprint(key) != v.get("fingerprint"):
                raise RemoteError("a restored version is malformed or its fingerprint does "
                                  "not match its key", code="BAD_REQUEST")
            created = v.get("created")
            sealed_versions.append({
                "id": vid, "fingerprint": v["fingerprint"],
                "created": float(created) if isinstance(created, int | float) else time.time(),
                "sealed": envelope.seal(self._seal_key, key, cluster_id=self.cfg.cluster_id,
                                        version=vid),
            })
        return self._replicate(request_id, "restore", lambda ring: encode_command(
            "restore", request_id, versions=sealed_versions, primary=primary,
            replace_new=force, at=time.time()))


def _req() -> bytes:
    return secrets.token_bytes(REQUEST_ID_SIZE)


def _public_version(v: Any) -> dict[str, Any]:
    return {"id": v.id, "state": v.state.value, "fingerprint": v.fingerprint,
            "created": v.created, "promoted": v.promoted, "backed_up": v.backed_up}


def _result(outcome: Outcome) -> dict[str, Any]:
    if outcome.ok:
        return dict(outcome.data)
    if outcome.code == "CONFLICT":
        raise Conflict(outcome.message)
    raise RemoteError(outcome.message, code=outcome.code or "FAILED")
