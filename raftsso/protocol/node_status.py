"""The reads every node answers: ``ping`` and ``status`` (with the versions, peers, rotation
policy and seal a status shows).

Apart from :mod:`raftsso.protocol.messages` so that ``raftsso status`` and the cluster
survey load only these types (see :mod:`raftsso.protocol.base`); ``messages`` re-exports
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import ClassVar, Self

from raftsso.encryption_counts import parse_counts
from raftsso.errors import DecodeError
from raftsso.keyring import KeyState, KeyVersion
from raftsso.protocol.base import Op, Request, Result
from raftsso.protocol.fields import Fields
from raftsso.protocol.ids import VersionId
from raftsso.protocol.record import record
from raftsso.wire import WireMap, WireValue


@record
class VersionInfo:
    """A version as ``status`` shows it (no key material)."""

    id: VersionId
    state: KeyState
    fingerprint: str
    created: float
    promoted: float | None = None
    backed_up: bool = False

    @classmethod
    def of(cls, v: KeyVersion) -> VersionInfo:
        return cls(VersionId(v.id), v.state, v.fingerprint, v.created, v.promoted,
                   v.backed_up)

    def to_wire(self) -> dict[str, WireValue]:
        return {"id": self.id, "state": self.state.value, "fingerprint": self.fingerprint,
                "created": self.created, "promoted": self.promoted,
                "backed_up": self.backed_up}

    @classmethod
    def decode(cls, f: Fields) -> VersionInfo:
        # Only id, state and fingerprint are needed by an SSO client; the rest is shown.
        return cls(f.version("id"), version_state(f), f.text("fingerprint"),
                   f.optional_number("created") or 0.0, f.optional_number("promoted"),
                   f.flag("backed_up", False))


def version_state(f: Fields) -> KeyState:
    try:
        return KeyState(f.text("state"))
    except ValueError:
        raise f.fail(f"unknown version state {f.raw('state')!r}") from None


# -- ping, status ------------------------------------------------------------------------------


@record
class PingResult(Result):
    node_id: str
    cluster_id: str | None = None  # since the typed protocol; older nodes leave it out

    def to_wire(self) -> WireMap:
        return {"node_id": self.node_id, "cluster_id": self.cluster_id}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(f.text("node_id"), f.optional_text("cluster_id"))


@record
class PingRequest(Request[PingResult]):
    op: ClassVar[Op] = Op.PING

    def to_wire(self) -> WireMap:
        return {}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls()

    def decode_result(self, raw: WireValue) -> PingResult:
        return PingResult.from_wire(raw)


@record
class PeerStatus:
    id: str
    connected: bool
    last_contact: float | None
    match_index: int | None

    def to_wire(self) -> dict[str, WireValue]:
        return {"id": self.id, "connected": self.connected, "last_contact": self.last_contact,
                "match_index": self.match_index}

    @classmethod
    def decode(cls, f: Fields) -> PeerStatus:
        return cls(f.text("id"), f.flag("connected", False), f.optional_number("last_contact"),
                   f.integer("match_index") if f.has("match_index") else None)


@record
class NodeStatus(Result):
    """One node's own view: Raft, the keyring without keys, its peers."""

    node_id: str
    cluster_id: str
    address: str
    raft_address: str
    role: str
    term: int
    commit_index: int
    last_applied: int
    leader: str | None
    leader_address: str | None
    has_quorum: bool
    ready: bool
    primary_version: VersionId | None
    versions: tuple[VersionInfo, ...]
    peers: tuple[PeerStatus, ...]
    # Day-two operations (issue 15); absent from older nodes' answers.
    policy: RotationPolicyView = field(default_factory=lambda: RotationPolicyView())
    encryptions: Mapping[int, int] = field(default_factory=dict)
    last_backup: float | None = None  # this node's last scheduled backup (wall clock)
    # The node's seal (None from nodes older than seal providers).
    seal: SealView | None = None

    @property
    def sealed(self) -> bool | None:
        return None if self.seal is None else self.seal.sealed

    def to_wire(self) -> WireMap:
        return {
            "node_id": self.node_id, "cluster_id": self.cluster_id, "address": self.address,
            "raft_address": self.raft_address, "role": self.role, "term": self.term,
            "commit_index": self.commit_index, "last_applied": self.last_applied,
            "leader": self.leader, "leader_address": self.leader_address,
            "has_quorum": self.has_quorum, "ready": self.ready,
            "primary_version": self.primary_version,
            "versions": [v.to_wire() for v in self.versions],
            "peers": [p.to_wire() for p in self.peers],
            "policy": self.policy.to_wire(),
            "encryptions": {str(v): n for v, n in self.encryptions.items()},
            "last_backup": self.last_backup,
            **({} if self.seal is None else {"sealed": self.seal.sealed,
                                            "seal": self.seal.to_wire()}),
        }

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(
            node_id=f.text("node_id"), cluster_id=f.text("cluster_id"),
            address=f.text("address", default=""), raft_address=f.text("raft_address",
                                                                       default=""),
            role=f.text("role"), term=f.integer("term"), commit_index=f.integer("commit_index"),
            last_applied=f.integer("last_applied"), leader=f.optional_text("leader"),
            leader_address=f.optional_text("leader_address"),
            has_quorum=f.flag("has_quorum", False), ready=f.flag("ready", False),
            primary_version=f.optional_version("primary_version"),
            versions=f.each("versions", VersionInfo.decode),
            peers=f.each("peers", PeerStatus.decode) if f.has("peers") else (),
            policy=(RotationPolicyView.decode(Fields(f.raw("policy"), "policy", DecodeError))
                    if f.has("policy") else RotationPolicyView()),
            encryptions=_counts(f, "encryptions"),
            last_backup=f.optional_number("last_backup"),
            seal=SealView.decode(Fields(f.raw("seal"), "the seal of a status", DecodeError))
            if f.has("seal") else None)


def _counts(f: Fields, name: str) -> Mapping[int, int]:
    if not f.has(name):
        return {}
    try:
        return parse_counts(f.raw(name))
    except ValueError as exc:
        raise f.fail(f"{name!r}: {exc}") from None


@record
class RotationPolicyView:
    """The leader's rotation policy (``rotation_period``, ``max_encryptions``; 0: off)."""

    rotation_period: float = 0.0
    max_encryptions: int = 0
    rotate_at: int | None = None  # the primary's count that starts a rotation
    next_rotation: float | None = None  # when the period rotates next (wall clock)

    def to_wire(self) -> dict[str, WireValue]:
        return {"rotation_period": self.rotation_period,
                "max_encryptions": self.max_encryptions, "rotate_at": self.rotate_at,
                "next_rotation": self.next_rotation}

    @classmethod
    def decode(cls, f: Fields) -> RotationPolicyView:
        return cls(f.optional_number("rotation_period") or 0.0,
                   f.integer("max_encryptions") if f.has("max_encryptions") else 0,
                   f.integer("rotate_at") if f.has("rotate_at") else None,
                   f.optional_number("next_rotation"))


@record
class StatusRequest(Request[NodeStatus]):
    op: ClassVar[Op] = Op.STATUS

    def to_wire(self) -> WireMap:
        return {}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls()

    def decode_result(self, raw: WireValue) -> NodeStatus:
        return NodeStatus.from_wire(raw)


# -- the seal ---------------------------------------------------------------------------------


@record
class SealView(Result):
    """A node's seal: its kind, whether it is sealed, the generations it holds, the
    cluster's current seal generation (its keyring's), unseal progress. Never a key."""

    kind: str
    sealed: bool
    generations: tuple[int, ...]
    seal_generation: int
    supplied: int | None = None   # shamir, while sealed: shares supplied so far
    threshold: int | None = None  # shamir, while sealed: shares needed

    def to_wire(self) -> WireMap:
        return {"kind": self.kind, "sealed": self.sealed,
                "generations": list(self.generations),
                "seal_generation": self.seal_generation, "supplied": self.supplied,
                "threshold": self.threshold}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        generations = tuple(g for g in f.items("generations", []) if type(g) is int)
        if len(generations) != len(f.items("generations", [])):
            raise f.fail("'generations' must be a list of integers")
        return cls(f.text("kind"), f.flag("sealed"), generations,
                   f.integer("seal_generation", 1),
                   f.integer("supplied") if f.raw("supplied") is not None else None,
                   f.integer("threshold") if f.raw("threshold") is not None else None)
