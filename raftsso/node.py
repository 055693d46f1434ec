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
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from raftsso import envelope, events, pki
from raftsso.config import Endpoint, NodeConfig, Peer
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
from raftsso.raft import RaftConfig, RaftNode
from raftsso.remote import ClusterClient

log = logging.getLogger(__name__)

MAX_TRACKED_CLIENTS = 100_000


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
        self.raft = RaftNode(raft_config(cfg), self.fsm, on_role_change=self._role_changed,
                             directory=self.members)
        self._membership_lock = threading.Lock()
        self._duties = threading.Thread(target=self._duty_loop, name="leader-duties",
                                        daemon=True)
        # SSO clients seen by this node: id -> (monotonic time, highest version served).
        # In memory only; a restart simply makes early promotion wait for the grace period.
        self._clients: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._clients_lock = threading.Lock()
        self._started = time.monotonic()
        self._last_early_check = 0.0
        self._peers: ClusterClient | None = None

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
        if self._peers is not None:
            self._peers.close()
        self.raft.stop()

    def _role_changed(self, old: str, new: str) -> None:
        term = self.raft.term if self.raft.started else None
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
        staged = [v for v in ring.versions if v.state is KeyState.STAGED]
        for v in staged:
            if v.created + self.cfg.rotation_grace <= now:
                outcome = self._propose(encode_command("promote", _req(), version=v.id, at=now))
                log.info("promotion of staged version %d after the grace period: %s", v.id,
                         "done" if outcome.ok else outcome.message)
                if outcome.ok:
                    events.emit(events.ROTATION_PROMOTED, f"version {v.id} is primary",
                                version=v.id, reason="grace_period")
                return
        if staged and time.monotonic() - self._last_early_check >= 1.0:
            self._last_early_check = time.monotonic()
            newest = staged[-1].id
            if self._every_recent_client_has(newest):
                outcome = self._propose(encode_command("promote", _req(), version=newest,
                                                       at=now))
                log.info("promotion of staged version %d: every recently seen client has "
                         "synced it: %s", newest, "done" if outcome.ok else outcome.message)
                if outcome.ok:
                    events.emit(events.ROTATION_PROMOTED, f"version {newest} is primary",
                                version=newest, reason="clients_synced")

    # clients seen, for staged promotion ------------------------------------------------

    def record_client(self, client_id: str, highest_version: int) -> None:
        with self._clients_lock:
            self._clients[client_id] = (time.monotonic(), highest_version)
            self._clients.move_to_end(client_id)
            while len(self._clients) > MAX_TRACKED_CLIENTS:
                self._clients.popitem(last=False)

    def client_view(self) -> dict[str, Any]:
        """The clients this node served within ``client_window``, for the leader."""
        now = time.monotonic()
        window = self.cfg.client_window
        with self._clients_lock:
            recent = {cid: [now - seen, version] for cid, (seen, version)
                      in self._clients.items() if now - seen <= window}
        return {"tracking_for": now - self._started, "window": window, "clients": recent}

    def _peer_client(self) -> ClusterClient:
        """mTLS calls to the other members' services, with this node's certificate."""
        others = [Endpoint(p.id, p.service_address) for p in self.members()
                  if p.id != self.cfg.node_id and p.service_address]
        if self._peers is None or {n.address for n in self._peers.nodes} != \
                {e.address for e in others}:
            if self._peers is not None:
                self._peers.close()
            self._peers = ClusterClient(
                others or [Endpoint(self.cfg.node_id, self.cfg.service_address)],
                pki.client_context(self.cfg.ca_cert, self.cfg.cert, self.cfg.key), timeout=1.0)
        return self._peers

    def _peer_views(self) -> list[dict[str, Any]] | None:
        peers = self._peer_client()
        views = []
        for peer in peers.nodes:
            if peer.id == self.cfg.node_id:
                continue
            try:
                view = peers.call_node(peer.address, "clients", timeout=1.0)
            except (OSError, RaftssoError):
                return None  # an unknown view: fall back to the grace period
            if not isinstance(view, dict) or not isinstance(view.get("clients"), dict):
                return None
            views.append(view)
        return views

    def _every_recent_client_has(self, version: int) -> bool:
        """True when every client any node served recently has been served ``version``.

        Only trusted when every node answered and has been watching for a whole window
        (a node that just started has not seen every client yet).
        """
        peer_views = self._peer_views()
        if peer_views is None:
            return False
        views = [self.client_view(), *peer_views]
        window = self.cfg.client_window
        if any(float(v.get("tracking_for", 0)) < window for v in views):
            return False
        highest: dict[str, int] = {}
        for view in views:
            for cid, entry in view["clients"].items():
                if isinstance(entry, list) and len(entry) == 2 and entry[0] <= window:
                    highest[cid] = max(highest.get(cid, 0), int(entry[1]))
        return all(v >= version for v in highest.values())

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
        return None if leader is None else self._service_address(leader)

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

    def keyring(self, client_id: str | None = None) -> dict[str, Any]:
        """What an SSO client caches: every usable version with its key, and the primary.

        ``commit_index`` is the Raft index the keyring reflects (read together with it),
        so answers of different nodes can be ordered.
        """
        ring, index = self.fsm.view()
        term = self.raft.term
        if client_id is not None:
            self.record_client(client_id, ring.last_id)
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

    def rotate(self, request_id: bytes, now: bool,
               expect_primary: int | None = None) -> dict[str, Any]:
        """Create a new version (staged, or primary with ``now``): a CAS on the primary.

        ``expect_primary`` is the primary the caller saw; if another rotation changed it
        meanwhile, this one fails with CONFLICT. Without it the leader uses the primary it
        sees now (rotations to one leader are serialised, so none is lost).
        """

        def build(ring: Keyring) -> bytes:
            version = ring.last_id + 1
            key = envelope.new_key()
            sealed = envelope.seal(self._seal_key, key, cluster_id=self.cfg.cluster_id,
                                   version=version)
            return encode_command(
                "rotate", request_id, version=version, sealed=sealed,
                fingerprint=envelope.fingerprint(key), created=time.time(),
                expect_primary=ring.primary if expect_primary is None else expect_primary,
                now=now)

        return self._replicate(request_id, "rotation", build)

    def retire(self, request_id: bytes, version: int, force: bool = False) -> dict[str, Any]:
        """Destroy a non-primary version's key material in the replicated state.

        Clients keep encrypting with their cached primary until they resync, so a version
        that was primary until recently may still be receiving new data: refused until
        every client seen recently has been served a newer primary, or the primary has
        been primary for a whole ``client_window`` (``force`` skips this check).
        """
        ring = self.fsm.keyring
        primary = ring.get(ring.primary) if ring.primary is not None else None
        target = ring.get(version)
        if not force and target is not None and primary is not None and \
                target.id < primary.id and target.state is KeyState.ACTIVE:
            since = time.time() - (primary.promoted or primary.created)
            if since < self.cfg.client_window and \
                    not self._every_recent_client_has(primary.id):
                raise RemoteError(
                    f"version {primary.id} became primary {since:.0f} s ago; clients that "
                    f"have not resynced may still encrypt under version {version}. Retry "
                    f"after {self.cfg.client_window - since:.0f} s (and rewrap again), or "
                    "use --force", code="TOO_SOON")
        return self._replicate(request_id, "retirement", lambda ring: encode_command(
            "retire", request_id, version=version))

    def mark_backed_up(self, request_id: bytes, fingerprints: dict[int, str]) -> dict[str, Any]:
        """Record that a backup holds these versions (ids with their fingerprints)."""
        return self._replicate(request_id, "backup record", lambda ring: encode_command(
            "backed_up", request_id, fingerprints={str(k): v for k, v in fingerprints.items()}))

    # membership ---------------------------------------------------------------------------

    def members(self) -> list[Peer]:
        """The current members: ``init``'s, plus added, minus removed, as Raft has them."""
        by_id = {p.id: p for p in self.cfg.members}
        for node_id, rec in self.fsm.directory().items():
            if rec["removed"]:
                by_id.pop(node_id, None)
            else:
                by_id[node_id] = Peer(node_id, rec["raft_address"], rec["service_address"])
        if not self.raft.started:
            return sorted(by_id.values(), key=lambda p: p.id)
        in_raft = self.raft.raft_addresses()
        members = [p for p in by_id.values() if p.raft_address in in_raft]
        known = {p.raft_address for p in members}
        # In Raft but not (yet) in the directory: a change whose record did not land.
        members += [Peer(f"?{addr}", addr, "") for addr in sorted(in_raft - known)]
        return sorted(members, key=lambda p: p.id)

    def _service_address(self, node_id: str) -> str | None:
        return next((p.service_address or None for p in self.members() if p.id == node_id),
                    None)

    def _reachable(self) -> set[str]:
        """Members this leader heard from within two election timeouts (itself included)."""
        silent = max(1.0, 2 * self.cfg.raft.election_timeout_max)
        up = {self.cfg.node_id}
        for peer in self.raft.peers():
            if peer.connected and peer.last_contact is not None and peer.last_contact <= silent:
                up.add(peer.id)
        return up

    def change_member(self, request_id: bytes, node_id: str, *, add: bool,
                      raft_address: str = "", service_address: str = "") -> dict[str, Any]:
        """Add or remove one member, refusing a change that would lose the quorum."""
        self.wait_ready_leader(self.cfg.raft.commit_timeout)
        if not self._membership_lock.acquire(blocking=False):
            raise RemoteError("another membership change is in progress; retry when it is "
                              "done", code="CHANGE_PENDING")
        try:
            return self._change_member(request_id, node_id, add, raft_address,
                                       service_address)
        finally:
            self._membership_lock.release()

    def _change_member(self, request_id: bytes, node_id: str, add: bool, raft_address: str,
                       service_address: str) -> dict[str, Any]:
        members = self.members()
        by_id = {m.id: m for m in members}
        reachable = self._reachable()
        size = len(members)
        tomb = self.fsm.directory().get(node_id)
        if add:
            if node_id in by_id:
                if by_id[node_id].raft_address == raft_address:
                    return {"node_id": node_id, "members": [m.id for m in members],
                            "changed": False}
                raise RemoteError(f"{node_id} is already a member", code="CONFLICT")
            if tomb is not None and tomb["removed"]:
                raise RemoteError(f"{node_id} was removed from this cluster; a removed node "
                                  "never rejoins (prepare a new node id)", code="CONFLICT")
            if any(raft_address == m.raft_address or service_address == m.service_address
                   for m in members if not m.id.startswith("?")):
                raise RemoteError("that address belongs to another member", code="CONFLICT")
            up_after = len(reachable) + (1 if self._answers(service_address) else 0)
            if not up_after > (size + 1) / 2:
                raise RemoteError(
                    f"adding {node_id} would leave {up_after} of {size + 1} members up, no "
                    "quorum; start the new node first and make sure the others are up",
                    code="WOULD_LOSE_QUORUM")
        else:
            if node_id not in by_id:
                raise RemoteError(f"{node_id} is not a member", code="NOT_A_MEMBER")
            if node_id == self.cfg.node_id:
                raise RemoteError(f"{node_id} is the leader; move leadership first "
                                  f"(raftsso transfer-leader)", code="IS_LEADER")
            up_after = len(reachable - {node_id})
            if not up_after > (size - 1) / 2:
                raise RemoteError(
                    f"removing {node_id} would leave {up_after} of {size - 1} members up, no "
                    "quorum", code="WOULD_LOSE_QUORUM")
            raft_address = by_id[node_id].raft_address
            service_address = by_id[node_id].service_address
        timeout = 2 * self.cfg.raft.commit_timeout
        if ((raft_address in self.raft.raft_addresses()) != add
                and not self.raft.change_membership(add, raft_address, timeout,
                                                    node_id=node_id)):
            raise RemoteError("Raft refused the membership change (a previous change is "
                              "not committed yet); retry", code="CHANGE_PENDING")
        self._replicate(request_id, "membership record", lambda ring: encode_command(
            "member", request_id, node_id=node_id, raft_address=raft_address,
            service_address=service_address, removed=not add))
        log.info("member %s %s (%s)", node_id, "added" if add else "removed", raft_address)
        return {"node_id": node_id, "members": [m.id for m in self.members()], "changed": True}

    def _answers(self, service_address: str) -> bool:
        """Does a node answer at ``service_address`` (with a certificate of this CA)?"""
        probe = ClusterClient([Endpoint("new", service_address)],
                              pki.client_context(self.cfg.ca_cert, self.cfg.cert, self.cfg.key),
                              timeout=1.0)
        try:
            # "clients", not "ping": this probe presents the node certificate, and the
            # service lets the node role call "clients" only.
            probe.call_node(service_address, "clients", timeout=1.0)
            return True
        except (OSError, RaftssoError):
            return False
        finally:
            probe.close()

    def member_views(self) -> list[dict[str, Any]]:
        """Every member with this node's view of it (the leader's view is the useful one)."""
        peers = {p.id: p for p in self.raft.peers()}
        last = self.raft.last_log_index
        rows = []
        for m in self.members():
            row: dict[str, Any] = {"id": m.id, "raft_address": m.raft_address,
                                   "address": m.service_address}
            if m.id == self.cfg.node_id:
                row.update(role=self.raft.role, reachable=True, match_index=last, lag=0,
                           last_contact=0.0)
            else:
                peer = peers.get(m.id)
                match = peer.match_index if peer else None
                row.update(role="leader" if m.id == self.raft.leader_id else "follower",
                           reachable=bool(peer and peer.connected),
                           match_index=match,
                           lag=None if match is None or not self.raft.is_leader
                           else max(0, last - match),
                           last_contact=peer.last_contact if peer else None)
            rows.append(row)
        return rows

    def transfer_leadership(self, target: str, timeout: float = 10.0) -> dict[str, Any]:
        """Move leadership to ``target`` (ENTSSO's manual designation of the master secret
        server) and wait until it has happened."""
        member_ids = [m.id for m in self.members()]
        if target not in member_ids:
            raise RemoteError(f"{target} is not a member of this cluster (members: "
                              f"{', '.join(member_ids)})", code="NOT_A_MEMBER")
        if not self.raft.is_leader:
            raise NotLeader("not the leader", leader=self.leader_service_address())
        if target == self.cfg.node_id:
            return {"leader": target, "term": self.raft.term, "changed": False}
        deadline = time.monotonic() + timeout
        while True:
            peer = next((p for p in self.raft.peers() if p.id == target), None)
            if peer is None:
                raise RemoteError(f"{target} is no longer a member", code="NOT_A_MEMBER")
            silent = max(1.0, 2 * self.cfg.raft.election_timeout_max)
            if not peer.connected or peer.last_contact is None or peer.last_contact > silent:
                raise RemoteError(f"{target} is unreachable from the leader; it cannot take "
                                  "over", code="UNREACHABLE")
            lag = self.raft.last_log_index - (peer.match_index or 0)
            if lag <= 0:
                break
            if time.monotonic() >= deadline:
                raise RemoteError(f"{target} is {lag} entries behind the leader and did not "
                                  "catch up in time", code="LAGGING")
            time.sleep(0.02)
        old_term = self.raft.term
        if not self.raft.transfer_leadership(target, timeout):
            raise RemoteError(f"the transfer to {target} was refused (it is lagging or no "
                              "longer connected); try again", code="LAGGING")
        log.info("leadership transfer from %s to %s requested", self.cfg.node_id, target)
        while time.monotonic() < deadline:
            if self.raft.leader_id == target and self.raft.term > old_term:
                return {"leader": target, "term": self.raft.term, "changed": True}
            time.sleep(0.02)
        raise RemoteError(f"{target} did not take over within {timeout:.0f} s; check "
                          "`raftsso status`", code="TRANSFER_TIMEOUT")

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


def raft_config(cfg: NodeConfig) -> RaftConfig:
    """The Raft member's settings out of a node's configuration (the one place they meet)."""
    return RaftConfig(
        node_id=cfg.node_id, raft_address=cfg.raft_address, members=cfg.members,
        data_dir=cfg.data_dir, cluster_secret=cfg.cluster_secret(), timings=cfg.raft,
        peer_tls=cfg.peer_tls, ca_cert=cfg.ca_cert, cert=cfg.cert, key=cfg.key,
        peer_max_connections=cfg.limits.peer_max_connections,
        peer_max_handshakes=cfg.limits.peer_max_handshakes,
        peer_max_per_source=cfg.limits.peer_max_per_source, source=str(cfg.path))
