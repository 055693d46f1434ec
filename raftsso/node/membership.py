"""Membership and leadership: who the members are, adding and removing one, transfers.

A member change refuses what would lose the quorum, a removed id (a tombstone) and an
address in use; these checks run inside the leader's serialised write path, past its
barrier (:mod:`raftsso.node.write_path`), then Raft changes its configuration and the
directory record (the ``member`` command) commits.
"""

from __future__ import annotations

import logging
import threading
import time

from raftsso.config import Endpoint, NodeConfig, Peer
from raftsso.errors import NotLeader, RaftssoError, RemoteError
from raftsso.fsm import KeyringStateMachine
from raftsso.keyring import Keyring
from raftsso.node.raft_member import RaftMember
from raftsso.node.tracking import node_client
from raftsso.node.write_path import WritePath, result_of
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.commands import Member
from raftsso.protocol.ids import RequestId
from raftsso.protocol.messages import (
    ClientsRequest,
    MemberAddRequest,
    MemberChangeResult,
    MemberRemoveRequest,
    MembersResult,
    MemberView,
    TransferLeaderRequest,
    TransferResult,
)

log = logging.getLogger(__name__)


class Membership:
    def __init__(self, cfg: NodeConfig, fsm: KeyringStateMachine, raft: RaftMember,
                 writes: WritePath) -> None:
        self._cfg = cfg
        self._fsm = fsm
        self._raft = raft
        self._writes = writes
        self._changing = threading.Lock()

    # the directory -------------------------------------------------------------------------

    def members(self) -> list[Peer]:
        """The current members: ``init``'s, plus added, minus removed, as Raft has them."""
        by_id = {p.id: p for p in self._cfg.members}
        for node_id, rec in self._fsm.directory().items():
            if rec.removed:
                by_id.pop(node_id, None)
            else:
                by_id[node_id] = Peer(node_id, rec.raft_address, rec.service_address)
        if not self._raft.started:
            return sorted(by_id.values(), key=lambda p: p.id)
        in_raft = self._raft.raft_addresses()
        members = [p for p in by_id.values() if p.raft_address in in_raft]
        known = {p.raft_address for p in members}
        # In Raft but not (yet) in the directory: a change whose record did not land.
        members += [Peer(f"?{addr}", addr, "") for addr in sorted(in_raft - known)]
        return sorted(members, key=lambda p: p.id)

    def service_address(self, node_id: str) -> str | None:
        return next((p.service_address or None for p in self.members() if p.id == node_id),
                    None)

    def leader_service_address(self) -> str | None:
        leader = self._raft.leader_id
        return None if leader is None else self.service_address(leader)

    def _silence(self) -> float:
        return max(1.0, 2 * self._cfg.raft.election_timeout_max)

    def _reachable(self) -> set[str]:
        """Members this leader heard from within two election timeouts (itself included)."""
        up = {self._cfg.node_id}
        for peer in self._raft.peers():
            if peer.connected and peer.last_contact is not None and \
                    peer.last_contact <= self._silence():
                up.add(peer.id)
        return up

    def view(self) -> MembersResult:
        """Every member with this node's view of it (the leader's view is the useful one)."""
        raft = self._raft
        peers = {p.id: p for p in raft.peers()}
        last = raft.last_log_index
        rows = []
        for m in self.members():
            if m.id == self._cfg.node_id:
                rows.append(MemberView(m.id, m.raft_address, m.service_address, raft.role,
                                       True, last, 0, 0.0))
                continue
            peer = peers.get(m.id)
            match = peer.match_index if peer else None
            rows.append(MemberView(
                m.id, m.raft_address, m.service_address,
                "leader" if m.id == raft.leader_id else "follower",
                bool(peer and peer.connected), match,
                None if match is None or not raft.is_leader else max(0, last - match),
                peer.last_contact if peer else None))
        return MembersResult(raft.leader_id, self._cfg.node_id, tuple(rows))

    # changes -------------------------------------------------------------------------------

    def add(self, req: MemberAddRequest) -> MemberChangeResult:
        return self._change(req.request_id, req.node_id, True, req.raft_address,
                            req.service_address)

    def remove(self, req: MemberRemoveRequest) -> MemberChangeResult:
        return self._change(req.request_id, req.node_id, False, "", "")

    def _change(self, request_id: RequestId, node_id: str, add: bool, raft_address: str,
                service_address: str) -> MemberChangeResult:
        """Add or remove one member, refusing a change that would lose the quorum."""
        self._writes.wait_ready_leader(self._cfg.raft.commit_timeout)
        if not self._changing.acquire(blocking=False):
            raise RemoteError("another membership change is in progress; retry when it is "
                              "done", code=ErrorCode.CHANGE_PENDING)
        try:
            outcome = self._writes.run(
                request_id, "membership record",
                lambda ring: self._decide(ring, request_id, node_id, add, raft_address,
                                          service_address))
        finally:
            self._changing.release()
        members = tuple(m.id for m in self.members())
        if outcome is None:
            return MemberChangeResult(node_id, members, changed=False)
        result_of(outcome)
        log.info("member %s %s", node_id, "added" if add else "removed")
        return MemberChangeResult(node_id, members, changed=True)

    def _decide(self, ring: Keyring, request_id: RequestId, node_id: str, add: bool,
                raft_address: str, service_address: str) -> Member | None:
        """The checks and the Raft change (in the write path); None: nothing to change."""
        members = self.members()
        by_id = {m.id: m for m in members}
        reachable = self._reachable()
        size = len(members)
        tomb = self._fsm.directory().get(node_id)
        if add:
            if node_id in by_id:
                if by_id[node_id].raft_address == raft_address:
                    return None
                raise RemoteError(f"{node_id} is already a member", code=ErrorCode.CONFLICT)
            if tomb is not None and tomb.removed:
                raise RemoteError(f"{node_id} was removed from this cluster; a removed node "
                                  "never rejoins (prepare a new node id)",
                                  code=ErrorCode.CONFLICT)
            if any(raft_address == m.raft_address or service_address == m.service_address
                   for m in members if not m.id.startswith("?")):
                raise RemoteError("that address belongs to another member",
                                  code=ErrorCode.CONFLICT)
            up_after = len(reachable) + (1 if self._answers(service_address) else 0)
            if not up_after > (size + 1) / 2:
                raise RemoteError(
                    f"adding {node_id} would leave {up_after} of {size + 1} members up, no "
                    "quorum; start the new node first and make sure the others are up",
                    code=ErrorCode.WOULD_LOSE_QUORUM)
        else:
            if node_id not in by_id:
                raise RemoteError(f"{node_id} is not a member", code=ErrorCode.NOT_A_MEMBER)
            if node_id == self._cfg.node_id:
                raise RemoteError(f"{node_id} is the leader; move leadership first "
                                  f"(raftsso transfer-leader)", code=ErrorCode.IS_LEADER)
            up_after = len(reachable - {node_id})
            if not up_after > (size - 1) / 2:
                raise RemoteError(
                    f"removing {node_id} would leave {up_after} of {size - 1} members up, no "
                    "quorum", code=ErrorCode.WOULD_LOSE_QUORUM)
            raft_address = by_id[node_id].raft_address
            service_address = by_id[node_id].service_address
        if ((raft_address in self._raft.raft_addresses()) != add
                and not self._raft.change_membership(add, raft_address,
                                                     2 * self._cfg.raft.commit_timeout,
                                                     node_id=node_id)):
            raise RemoteError("Raft refused the membership change (a previous change is "
                              "not committed yet); retry", code=ErrorCode.CHANGE_PENDING)
        return Member(request_id, node_id, raft_address, service_address, removed=not add)

    def _answers(self, service_address: str) -> bool:
        """Does a node answer at ``service_address`` (with a certificate of this CA)?"""
        probe = node_client(self._cfg, [Endpoint("new", service_address)])
        try:
            # "clients", not "ping": this probe presents the node certificate, and the
            # service lets the node role call "clients" only.
            probe.request_node(service_address, ClientsRequest(), timeout=1.0)
            return True
        except (OSError, RaftssoError):
            return False
        finally:
            probe.close()

    # leadership ----------------------------------------------------------------------------

    def transfer(self, req: TransferLeaderRequest, timeout: float = 10.0) -> TransferResult:
        """Move leadership to ``req.node_id`` (ENTSSO's manual designation of the master
        secret server) and wait until it has happened."""
        target = req.node_id
        raft = self._raft
        member_ids = [m.id for m in self.members()]
        if target not in member_ids:
            raise RemoteError(f"{target} is not a member of this cluster (members: "
                              f"{', '.join(member_ids)})", code=ErrorCode.NOT_A_MEMBER)
        if not raft.is_leader:
            raise NotLeader("not the leader", leader=self.leader_service_address())
        if target == self._cfg.node_id:
            return TransferResult(target, raft.term, changed=False)
        deadline = time.monotonic() + timeout
        while True:
            peer = next((p for p in raft.peers() if p.id == target), None)
            if peer is None:
                raise RemoteError(f"{target} is no longer a member",
                                  code=ErrorCode.NOT_A_MEMBER)
            if not peer.connected or peer.last_contact is None or \
                    peer.last_contact > self._silence():
                raise RemoteError(f"{target} is unreachable from the leader; it cannot take "
                                  "over", code=ErrorCode.UNREACHABLE)
            lag = raft.last_log_index - (peer.match_index or 0)
            if lag <= 0:
                break
            if time.monotonic() >= deadline:
                raise RemoteError(f"{target} is {lag} entries behind the leader and did not "
                                  "catch up in time", code=ErrorCode.LAGGING)
            time.sleep(0.02)
        old_term = raft.term
        if not raft.transfer_leadership(target, timeout):
            raise RemoteError(f"the transfer to {target} was refused (it is lagging or no "
                              "longer connected); try again", code=ErrorCode.LAGGING)
        log.info("leadership transfer from %s to %s requested", self._cfg.node_id, target)
        while time.monotonic() < deadline:
            if raft.leader_id == target and raft.term > old_term:
                return TransferResult(target, raft.term, changed=True)
            time.sleep(0.02)
        raise RemoteError(f"{target} did not take over within {timeout:.0f} s; check "
                          "`raftsso status`", code=ErrorCode.TRANSFER_TIMEOUT)
