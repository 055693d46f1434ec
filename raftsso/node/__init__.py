"""One replica: the keyring state machine, its Raft member and the leader's duties.

The node owns the seal key. It proposes only sealed secrets (generated and sealed *before*
proposing, so ``apply`` stays deterministic) and unseals them in memory to serve SSO
clients. The TLS service (:mod:`raftsso.server`) calls the methods here with typed requests
(:mod:`raftsso.protocol.messages`) and gets typed results.

==================================  ===========================================================
module                              concern
==================================  ===========================================================
``raftsso.node`` (this)             :class:`Node`: lifecycle, reads (status, keyring), wiring
:mod:`~raftsso.node.raft_member`    the Raft member the node is given (a protocol), its hooks
:mod:`~raftsso.node.write_path`     the barrier and the serialised, exactly-once write path
:mod:`~raftsso.node.keyring_writes` rotate, retire, backup record, restore (and their checks)
:mod:`~raftsso.node.duties`         the leader's thread: barrier, first secret, promotion
:mod:`~raftsso.node.tracking`       SSO clients seen (per certificate) and the leader's census
:mod:`~raftsso.node.membership`     members, adding/removing one, leadership transfer
:mod:`~raftsso.node.store_reports`  the SSO stores known to the cluster (reports, forget)
==================================  ===========================================================

The Raft member is built by the wiring code (:func:`raftsso.runner.build_node`) and passed
in; the node never imports the Raft module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from raftsso import events
from raftsso.config import NodeConfig, Peer
from raftsso.errors import RaftssoError, RemoteError
from raftsso.fsm import KeyringStateMachine
from raftsso.keyring import Keyring, KeyState
from raftsso.node.certificates import CertificateWrites, RevokedSerials
from raftsso.node.destroy import Destroyer
from raftsso.node.duties import LeaderDuties
from raftsso.node.keyring_writes import MAX_LIVE_VERSIONS, KeyringWrites
from raftsso.node.membership import Membership
from raftsso.node.raft_member import RaftHooks, RaftMember
from raftsso.node.schedule import ScheduledDuties
from raftsso.node.seal_ops import SealOps
from raftsso.node.sealing import NodeSeal
from raftsso.node.store_reports import StoreReports
from raftsso.node.tracking import ClientCensus, ClientTracker
from raftsso.node.usage import EncryptionReportTracker
from raftsso.node.write_path import WritePath
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.commands import Barrier
from raftsso.protocol.ids import VersionId, new_request_id
from raftsso.protocol.messages import (
    BackedUpRequest,
    BackedUpResult,
    CertRegisterRequest,
    CertRegisterResult,
    CertRevokeRequest,
    CertRevokeResult,
    CertsResult,
    ClientsView,
    EncryptionReports,
    KeyringRequest,
    KeyringResult,
    KeyringVersion,
    MemberAddRequest,
    MemberChangeResult,
    MemberRemoveRequest,
    MembersResult,
    NodeStatus,
    PeerStatus,
    PingResult,
    ResealRequest,
    ResealResult,
    RestoreRequest,
    RestoreResult,
    RetireRequest,
    RotateRequest,
    RotationPolicyView,
    SealForgetRequest,
    SealInstallRequest,
    SealView,
    StoreForgetRequest,
    StoreForgetResult,
    StoreReportRequest,
    StoreResult,
    StoresResult,
    TransferLeaderRequest,
    TransferResult,
    UnsealRequest,
    VersionInfo,
    VersionResult,
)
from raftsso.seal.base import SealProvider
from raftsso.seal.settings import open_seal

log = logging.getLogger(__name__)

__all__ = ["MAX_LIVE_VERSIONS", "Node", "RaftHooks", "RaftMember"]


class Node:
    """A running replica (Raft member plus keyring); thread-safe for the service."""

    def __init__(self, cfg: NodeConfig, fsm: KeyringStateMachine, raft: RaftMember,
                 hooks: RaftHooks | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 seal: SealProvider | None = None) -> None:
        self.cfg = cfg
        self.fsm = fsm
        self.raft = raft
        # The seal provider (file, pkcs11, shamir): opened here unless the wiring code
        # passed one; a wrong PIN or a missing key file stops the node before Raft starts.
        self.seal = NodeSeal(seal if seal is not None else open_seal(cfg.seal, cfg.cluster_id),
                             cfg.cluster_id)
        # The last keyring answer of each kind (whole, unchanged), with what it was built
        # from (the keyring object, its index, the term): clients syncing between two
        # changes get the same object. Each slot is replaced whole: no lock needed.
        self._answers: dict[bool, tuple[Keyring, int, int, KeyringResult]] = {}
        self.writes = WritePath(cfg, fsm, raft, self.leader_service_address,
                                lambda: self.duties.wake())
        self.membership = Membership(cfg, fsm, raft, self.writes)
        self.clients = ClientTracker(cfg.client_window, clock)
        self.census = ClientCensus(cfg, self.clients, self.membership.members)
        self.keyring_writes = KeyringWrites(cfg, self.writes, self.census, self.seal,
                                            fsm.stores)
        self.store_reports = StoreReports(fsm, self.writes)
        self.duties = LeaderDuties(cfg, fsm, raft, self.writes, self.census, self.seal)
        # Day-two operations (issue 15): certificates, encryption counts, the leader's
        # scheduled duties (backups to a public key, rotation policy).
        self.certificates = CertificateWrites(fsm, self.writes)
        self._revoked = RevokedSerials(fsm, cfg.data_dir / "revoked.serials")
        self.reports = EncryptionReportTracker(clock)
        self.schedule = ScheduledDuties(cfg, fsm, raft, self.writes, self.keyring_writes,
                                        self.reports, self.membership.members,
                                        lambda: self.keyring(KeyringRequest(), ""))
        # Called (from the destroy thread) once the keyring dropped a sealed secret: cached
        # answers that may hold its key are forgotten (the service adds its packed frames).
        self.drop_listeners: list[Callable[[], None]] = []
        self.destroyer = Destroyer(fsm, raft, self.seal, self._forget_answers)
        self.seal_ops = SealOps(cfg, fsm, self.writes, self.seal, self.duties.wake,
                                self._compact_now, self._destroy_after_write)
        if hooks is not None:
            hooks.bind(self)

    def __repr__(self) -> str:
        return f"Node({self.cfg.node_id!r})"

    # lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.raft.start()
        self.duties.start()
        self.schedule.start()
        self.destroyer.start()
        if self.seal.sealed:
            log.warning("node %s is sealed: it serves no keyring until %s unseal shares are "
                        "supplied (raftsso unseal %s --share-file FILE)", self.cfg.node_id,
                        self.cfg.seal.threshold or "enough", self.cfg.node_id)
            events.emit(events.NODE_SEALED, f"{self.cfg.node_id} is sealed",
                        seal=self.seal.kind)
        log.info("node %s started: raft %s, service %s, cluster %s", self.cfg.node_id,
                 self.cfg.raft_address, self.cfg.service_address, self.cfg.cluster_id)

    def stop(self) -> None:
        self.schedule.stop()
        self.destroyer.stop()
        self.duties.stop()
        self.census.close()
        self.raft.stop()
        self.seal.close()

    def role_changed(self, old: str, new: str) -> None:
        """Called by the Raft member, in the Raft thread: events.emit only queues."""
        term = self.raft.term if self.raft.started else None
        log.info("raft role of %s: %s -> %s (term %s)", self.cfg.node_id, old, new,
                 "?" if term is None else term)
        if new == "leader":
            events.emit(events.LEADER_ELECTED, f"{self.cfg.node_id} leads in term {term}",
                        term=term)
        elif old == "leader":
            events.emit(events.LEADERSHIP_LOST, f"{self.cfg.node_id} is now {new}",
                        term=term, role=new)
        self.duties.wake()
        self.schedule.wake()

    @property
    def ready_for_writes(self) -> bool:
        """This node leads and has applied its term's barrier (read-only, any thread)."""
        return self.writes.ready_for_writes

    def wait_ready_leader(self, timeout: float) -> None:
        self.writes.wait_ready_leader(timeout)

    # reads ------------------------------------------------------------------------------------

    def members(self) -> list[Peer]:
        return self.membership.members()

    def leader_service_address(self) -> str | None:
        return self.membership.leader_service_address()

    def ping(self) -> PingResult:
        return PingResult(self.cfg.node_id, self.cfg.cluster_id)

    def status(self) -> NodeStatus:
        ring = self.fsm.keyring
        raft = self.raft
        return NodeStatus(
            node_id=self.cfg.node_id, cluster_id=self.cfg.cluster_id,
            address=self.cfg.service_address, raft_address=self.cfg.raft_address,
            role=raft.role, term=raft.term, commit_index=raft.commit_index,
            last_applied=raft.last_applied, leader=raft.leader_id,
            leader_address=self.leader_service_address(), has_quorum=raft.has_quorum,
            ready=self.ready_for_writes,
            primary_version=VersionId(ring.primary) if ring.primary is not None else None,
            versions=tuple(VersionInfo.of(v) for v in ring.versions),
            peers=tuple(PeerStatus(p.id, p.connected, p.last_contact, p.match_index)
                        for p in raft.peers()),
            policy=self.policy_view(ring),
            encryptions=dict(self.fsm.encryptions().totals),
            last_backup=self.schedule.last_backup,
            seal=self.seal_ops.view())

    def policy_view(self, ring: Keyring) -> RotationPolicyView:
        policy = self.schedule.policy
        return RotationPolicyView(policy.period, policy.max_encryptions,
                                  policy.encryption_threshold, policy.next_rotation(ring))

    def keyring(self, req: KeyringRequest, certificate: str) -> KeyringResult:
        """What an SSO client caches: every usable version with its key, and the primary.

        ``commit_index`` is the Raft index the keyring reflects (read together with it),
        so answers of different nodes can be ordered. With a ``client_id``, the client is
        remembered under ``certificate`` (the verified certificate's name) for the census.
        """
        if self.seal.sealed:
            raise RemoteError(f"node {self.cfg.node_id} is sealed: it serves no keyring until "
                              "enough unseal shares are supplied; ask another node",
                              code=ErrorCode.SEALED)
        ring, index, changed = self.fsm.view_since()
        term = self.raft.term
        if req.client_id is not None:
            self.clients.record(certificate, req.client_id, ring.last_id)
            if req.encryptions:
                self.reports.record(certificate, req.client_id, req.encryptions)
        # The client's index holds this keyring: tell it so, without the versions.
        unchanged = req.known is not None and changed <= req.known <= index
        cached = self._answers.get(unchanged)
        if cached is not None and cached[0] is ring and cached[1] == index \
                and cached[2] == term:
            return cached[3]  # the same (immutable) answer: the service reuses its bytes
        result = KeyringResult(
            cluster_id=self.cfg.cluster_id, node_id=self.cfg.node_id, term=term,
            commit_index=index,
            primary=VersionId(ring.primary) if ring.primary is not None else None,
            versions=() if unchanged else tuple(
                KeyringVersion(VersionInfo.of(v), self._unseal(ring, v.id))
                for v in ring.versions if v.state is not KeyState.RETIRED),
            unchanged=unchanged)
        self._answers[unchanged] = (ring, index, term, result)
        return result

    def _forget_answers(self) -> None:
        self._answers = {}
        for listener in self.drop_listeners:
            listener()

    def _unseal(self, ring: Keyring, version: int) -> bytes:
        kv = ring.get(version)
        assert kv is not None and kv.sealed is not None  # a usable version has its key
        return self.seal.unwrap(version, kv.sealed)

    def clients_view(self) -> ClientsView:
        """The SSO clients this node served within ``client_window`` (for the leader)."""
        return self.clients.view()

    def members_view(self) -> MembersResult:
        return self.membership.view()

    def certs_view(self) -> CertsResult:
        return self.certificates.view()

    def encryption_reports(self) -> EncryptionReports:
        """The SSO clients' latest encryption counts as this node received them."""
        return self.reports.view()

    def revoked(self) -> frozenset[str]:
        """Revoked certificate serials (the same object until the set changes)."""
        return self._revoked()

    # writes -----------------------------------------------------------------------------------

    def rotate(self, req: RotateRequest) -> VersionResult:
        return self.keyring_writes.rotate(req)

    async def rotate_async(self, req: RotateRequest) -> VersionResult:
        """:meth:`rotate` on the service's event loop (no worker thread when none is
        needed)."""
        return await self.keyring_writes.rotate_async(req)

    def retire(self, req: RetireRequest) -> VersionResult:
        """Retire, then destroy: the answer says whether this node's files already hold no
        sealed copy of the version (``destroyed``); every other node compacts on its own
        within a bounded time of applying the retirement."""
        result = self.keyring_writes.retire(req)
        return replace(result, destroyed=self._destroy_after_write())

    def _destroy_after_write(self) -> bool:
        """After a write that dropped sealed blobs (retire, reseal): one more entry, so
        every node's compaction leaves that write (and the one before it, which may have
        carried the blob) out of the two entries it keeps; then wait for this node's
        compaction. True once this node's files hold no dropped blob."""
        index = self.fsm.last_drop
        try:
            self.writes.propose(Barrier(new_request_id()))
        except RaftssoError as exc:
            log.info("no barrier after the write (%s); compaction waits for the next entry",
                     exc)
        return self.destroyer.wait(index, self.cfg.raft.commit_timeout * 2)

    def _compact_now(self) -> bool:
        """Wait until this node's files hold no blob the keyring dropped (seal rekey)."""
        index = self.fsm.last_drop
        return self.destroyer.wait(index, self.cfg.raft.commit_timeout * 2)

    # the seal -------------------------------------------------------------------------------

    def seal_view(self) -> SealView:
        return self.seal_ops.view()

    def unseal(self, req: UnsealRequest) -> SealView:
        return self.seal_ops.unseal(req)

    def seal_install(self, req: SealInstallRequest) -> SealView:
        return self.seal_ops.install(req)

    def seal_forget(self, req: SealForgetRequest) -> SealView:
        return self.seal_ops.forget(req)

    def reseal(self, req: ResealRequest) -> ResealResult:
        return self.seal_ops.reseal(req)

    def mark_backed_up(self, req: BackedUpRequest) -> BackedUpResult:
        return self.keyring_writes.mark_backed_up(req)

    def restore(self, req: RestoreRequest) -> RestoreResult:
        return self.keyring_writes.restore(req)

    def member_add(self, req: MemberAddRequest) -> MemberChangeResult:
        return self.membership.add(req)

    def member_remove(self, req: MemberRemoveRequest) -> MemberChangeResult:
        return self.membership.remove(req)

    def transfer_leadership(self, req: TransferLeaderRequest) -> TransferResult:
        return self.membership.transfer(req)

    # the stores known to the cluster ------------------------------------------------------

    def store_report(self, req: StoreReportRequest, role: str) -> StoreResult:
        return self.store_reports.report(req, role)

    def store_forget(self, req: StoreForgetRequest) -> StoreForgetResult:
        return self.store_reports.forget(req)

    def stores_view(self) -> StoresResult:
        return self.store_reports.view()
    def cert_register(self, req: CertRegisterRequest) -> CertRegisterResult:
        return self.certificates.register(req)

    def cert_revoke(self, req: CertRevokeRequest, by: str) -> CertRevokeResult:
        return self.certificates.revoke(req, by)
