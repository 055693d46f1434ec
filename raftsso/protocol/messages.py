"""One request and one result type per operation of the node service.

A request frame is ``{"id": int, "op": str, "args": map}`` (see :mod:`raftsso.wire`); ``args``
is what a request's ``to_wire`` makes and its ``from_wire`` checks, once, at the service
boundary (a malformed one is :class:`~raftsso.errors.BadRequest`, answered ``BAD_REQUEST``).
An answer carries a result's ``to_wire``; the caller gets it back with
:meth:`Request.decode_result` (a malformed answer is :class:`~raftsso.errors.DecodeError`).
An error answer carries an :class:`ErrorBody`.

The field names are the wire contract of ``docs/architecture.md`` (*The service protocol*);
new fields are optional on decoding so that older nodes and clients keep working.

The bases (:class:`Op`, :class:`Request`, :class:`Result`, :class:`ErrorBody`) live in
:mod:`raftsso.protocol.base` and the ``ping``/``status`` types in
:mod:`raftsso.protocol.node_status`, so that a status or a client call does not build every
type here; this module re-exports them, and :data:`REQUESTS` names every op's request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import ClassVar, Self

from raftsso.config import split_address
from raftsso.encryption_counts import parse_counts
from raftsso.errors import RaftssoError
from raftsso.keyring import KeyState
from raftsso.known_stores import MAX_KIND, KnownStore, decode_counts, store_id_problem
from raftsso.protocol.base import ErrorBody, Op, Request, Result
from raftsso.protocol.fields import ErrorFactory, Fields
from raftsso.protocol.ids import (
    MAX_CLIENT_ID,
    ClientId,
    NodeId,
    RequestId,
    VersionId,
    client_id,
    is_version_id,
    new_request_id,
    version_id,
)
from raftsso.protocol.node_status import (
    NodeStatus,
    PeerStatus,
    PingRequest,
    PingResult,
    RotationPolicyView,
    SealView,
    StatusRequest,
    VersionInfo,
    version_state,
)
from raftsso.protocol.record import record
from raftsso.revocation import MAX_NAME as MAX_CERT_NAME
from raftsso.revocation import CertRecord, canonical_serial
from raftsso.wire import WireMap, WireValue

KEY_SIZE = 32  # a master secret (raftsso.envelope.KEY_SIZE; this module stays crypto-free)


def _addresses(f: Fields, *names: str) -> None:
    for name in names:
        try:
            split_address(f.text(name))
        except RaftssoError as exc:
            raise f.fail(f"{name!r}: {exc}") from None


@record
class VersionResult(Result):
    """``rotate`` and ``retire``: the version acted on, its state, the primary."""

    version: VersionId
    state: KeyState
    primary_version: VersionId | None
    # retire only: True once the leader's journal and snapshot hold no sealed copy of the
    # version any more (every other node compacts on its own); None from older nodes.
    destroyed: bool | None = None

    def to_wire(self) -> WireMap:
        out: dict[str, WireValue] = {"version": self.version, "state": self.state.value,
                                     "primary_version": self.primary_version}
        if self.destroyed is not None:
            out["destroyed"] = self.destroyed
        return out

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(f.version("version"), version_state(f), f.optional_version("primary_version"),
                   f.flag("destroyed") if f.has("destroyed") else None)


# -- keyring ---------------------------------------------------------------------------------


@record
class KeyringVersion:
    """A usable version with its key (plaintext master secret: never in a repr)."""

    info: VersionInfo
    key: bytes = field(repr=False)

    def to_wire(self) -> dict[str, WireValue]:
        return {**self.info.to_wire(), "key": self.key}

    @classmethod
    def decode(cls, f: Fields) -> KeyringVersion:
        info = VersionInfo.decode(f)
        if info.state is KeyState.RETIRED:
            raise f.fail(f"version {info.id} is retired; a keyring holds usable versions only")
        return cls(info, f.blob("key", KEY_SIZE))


@record
class KeyringResult(Result):
    """What an SSO client caches. ``commit_index`` is the Raft index the keyring reflects,
    so answers of different nodes can be ordered.

    ``unchanged``: the answer to a request whose ``known`` index holds the same keyring as
    this node at ``commit_index``; it carries no versions (the client keeps its own and
    moves its index forward), so a steady-state sync costs the same at any history length.
    """

    cluster_id: str
    node_id: str
    term: int
    commit_index: int
    primary: VersionId | None
    versions: tuple[KeyringVersion, ...] = field(repr=False)
    unchanged: bool = False

    def to_wire(self) -> WireMap:
        out: dict[str, WireValue] = {
            "cluster_id": self.cluster_id, "node_id": self.node_id, "term": self.term,
            "commit_index": self.commit_index, "primary": self.primary}
        if self.unchanged:
            out["unchanged"] = True
        else:
            out["versions"] = [v.to_wire() for v in self.versions]
        return out

    @classmethod
    def decode(cls, f: Fields) -> Self:
        if f.raw("unchanged") is True:
            if f.has("versions"):
                raise f.fail("an unchanged keyring answer carries no versions")
            return cls(f.text("cluster_id"), f.text("node_id"), f.integer("term"),
                       f.integer("commit_index"), f.optional_version("primary"), (),
                       unchanged=True)
        versions = f.each("versions", KeyringVersion.decode)
        ids = [v.info.id for v in versions]
        if len(set(ids)) != len(ids):
            raise f.fail("a version appears twice")
        primary = f.optional_version("primary")
        marked = [v.info.id for v in versions if v.info.state is KeyState.PRIMARY]
        if primary is not None and primary not in marked:
            raise f.fail(f"the primary version {primary} is not among the versions")
        if marked not in ([], [primary]):
            raise f.fail("the keyring marks more than one version primary")
        return cls(f.text("cluster_id"), f.text("node_id"), f.integer("term"),
                   f.integer("commit_index"), primary, versions)


#: The arguments an SSO client's sync carries (KeyringRequest.from_wire's fast path).
_SYNC_FIELDS = frozenset({"client_id", "known"})


@record
class KeyringRequest(Request[KeyringResult]):
    """``client_id`` lets the nodes tell which SSO clients have synced a staged version;
    ``require_leader``: the leader's keyring past its barrier (a backup); ``known``: the
    ``commit_index`` of the keyring the client holds, so the node may answer ``unchanged``
    (a request without it, as every client before it sent, gets the whole keyring)."""

    op: ClassVar[Op] = Op.KEYRING
    client_id: ClientId | None = None
    require_leader: bool = False
    known: int | None = None
    # The client's cumulative encryptions per version (max_encryptions, issue 15).
    encryptions: Mapping[int, int] | None = None

    def to_wire(self) -> WireMap:
        out: dict[str, WireValue] = {}
        if self.client_id is not None:
            out["client_id"] = self.client_id
        if self.require_leader:
            out["require_leader"] = True
        if self.known is not None:
            out["known"] = self.known
        if self.encryptions:
            out["encryptions"] = {str(v): n for v, n in self.encryptions.items()}
        return out

    @classmethod
    def from_wire(cls, args: WireValue) -> Self:
        # The hot path (issue 16.3): an SSO client's sync sends only ``client_id`` and
        # ``known`` (or nothing). That shape is read here without a Fields, with the same
        # checks and outcome as decode(); any other shape goes through decode().
        if type(args) is dict and args.keys() <= _SYNC_FIELDS:
            raw = args.get("client_id")
            cid = (ClientId(raw) if type(raw) is str and 0 < len(raw) <= MAX_CLIENT_ID
                   else None)
            known = args.get("known")
            return cls(cid, False, known if type(known) is int and 0 <= known < 2**63
                       else None)
        return super().from_wire(args)

    @classmethod
    def decode(cls, f: Fields) -> Self:
        # Lenient by design (as ever): a malformed client id or known index is ignored, not
        # refused, so an SSO client always gets its keyring (the whole one, at worst).
        try:
            cid = client_id(f.raw("client_id"))
        except ValueError:
            cid = None
        known = f.raw("known")
        if type(known) is not int or not 0 <= known < 2**63:
            known = None
        try:
            counts: Mapping[int, int] | None = (parse_counts(f.raw("encryptions"))
                                               if f.has("encryptions") else None)
        except ValueError:
            counts = None
        return cls(cid, f.raw("require_leader") is True, known, counts)

    def decode_result(self, raw: WireValue) -> KeyringResult:
        return KeyringResult.from_wire(raw)


# -- writes to the keyring ------------------------------------------------------------------


@record
class RotateRequest(Request[VersionResult]):
    """A new version, staged (or primary with ``now``): a compare-and-set on the primary
    (``expect_primary``; without it, the primary the leader sees)."""

    op: ClassVar[Op] = Op.ROTATE
    request_id: RequestId = field(default_factory=new_request_id)
    now: bool = False
    expect_primary: VersionId | None = None

    def to_wire(self) -> WireMap:
        out: dict[str, WireValue] = {"request_id": self.request_id, "now": self.now}
        if self.expect_primary is not None:
            out["expect_primary"] = self.expect_primary
        return out

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(f.request_id(), f.flag("now", False), f.optional_version("expect_primary"))

    def decode_result(self, raw: WireValue) -> VersionResult:
        return VersionResult.from_wire(raw)


@record
class RetireRequest(Request[VersionResult]):
    """Destroy a non-primary version's key; ``force`` skips the client-window check."""

    op: ClassVar[Op] = Op.RETIRE
    version: VersionId
    force: bool = False
    request_id: RequestId = field(default_factory=new_request_id)

    def to_wire(self) -> WireMap:
        return {"request_id": self.request_id, "version": self.version, "force": self.force}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(f.version("version"), f.flag("force", False), f.request_id())

    def decode_result(self, raw: WireValue) -> VersionResult:
        return VersionResult.from_wire(raw)


def _fingerprints(f: Fields, name: str) -> dict[VersionId, str]:
    """``{"<version id>": fingerprint}`` (msgpack map keys are strings here)."""
    out: dict[VersionId, str] = {}
    for key, value in f.mapping(name).items():
        vid = int(key) if key.isascii() and key.isdigit() and len(key) <= 10 else 0
        if not is_version_id(vid) or not isinstance(value, str):
            raise f.fail(f"{name!r} must map version ids to fingerprints")
        out[vid] = value
    return out


@record
class BackedUpResult(Result):
    marked: tuple[VersionId, ...]

    def to_wire(self) -> WireMap:
        return {"marked": list(self.marked)}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(tuple(_version_list(f, "marked")))


def _version_list(f: Fields, name: str) -> list[VersionId]:
    items = f.items(name, [])
    if not all(is_version_id(i) for i in items):
        raise f.fail(f"{name!r} must list version ids")
    return [VersionId(int(i)) for i in items if type(i) is int]


@record
class BackedUpRequest(Request[BackedUpResult]):
    """Record that a backup holds these versions (id -> fingerprint)."""

    op: ClassVar[Op] = Op.BACKED_UP
    fingerprints: Mapping[VersionId, str]
    request_id: RequestId = field(default_factory=new_request_id)

    def to_wire(self) -> WireMap:
        return {"request_id": self.request_id,
                "fingerprints": {str(k): v for k, v in self.fingerprints.items()}}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(_fingerprints(f, "fingerprints"), f.request_id())

    def decode_result(self, raw: WireValue) -> BackedUpResult:
        return BackedUpResult.from_wire(raw)


@record
class RestoreVersion:
    """A version from a backup, with its plaintext key (sealed by the leader)."""

    id: VersionId
    key: bytes = field(repr=False)
    fingerprint: str
    created: float

    def to_wire(self) -> dict[str, WireValue]:
        return {"id": self.id, "key": self.key, "fingerprint": self.fingerprint,
                "created": self.created}

    @classmethod
    def decode(cls, f: Fields) -> RestoreVersion:
        return cls(f.version("id"), f.blob("key", KEY_SIZE), f.text("fingerprint"),
                   f.number("created"))


@record
class RestoreResult(Result):
    added: tuple[VersionId, ...]
    revived: tuple[VersionId, ...]
    replaced: tuple[VersionId, ...]
    primary_version: VersionId | None

    def to_wire(self) -> WireMap:
        return {"added": list(self.added), "revived": list(self.revived),
                "replaced": list(self.replaced), "primary_version": self.primary_version}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(tuple(_version_list(f, "added")), tuple(_version_list(f, "revived")),
                   tuple(_version_list(f, "replaced")), f.optional_version("primary_version"))


@record
class RestoreRequest(Request[RestoreResult]):
    """Merge a backup's versions; ``force`` admits another cluster's backup (and lets it
    replace the first secret of a brand-new cluster)."""

    op: ClassVar[Op] = Op.RESTORE
    cluster_id: str
    versions: tuple[RestoreVersion, ...] = field(repr=False)
    primary: VersionId | None = None
    force: bool = False
    request_id: RequestId = field(default_factory=new_request_id)

    def to_wire(self) -> WireMap:
        return {"request_id": self.request_id, "cluster_id": self.cluster_id,
                "primary": self.primary, "force": self.force,
                "versions": [v.to_wire() for v in self.versions]}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        versions = f.each("versions", RestoreVersion.decode)
        ids = [v.id for v in versions]
        primary = f.optional_version("primary")
        if not versions or len(set(ids)) != len(ids):
            raise f.fail("'versions' must hold at least one version, with unique ids")
        if primary is not None and primary not in ids:
            raise f.fail("the primary must be among the versions")
        return cls(f.text("cluster_id"), versions, primary, f.flag("force", False),
                   f.request_id())

    def decode_result(self, raw: WireValue) -> RestoreResult:
        return RestoreResult.from_wire(raw)


# -- clients seen (node to node) --------------------------------------------------------------


@record
class ClientSeen:
    """An SSO client a node served within ``client_window``: who (certificate name and the
    client's own id), how long ago, the highest version it has been served."""

    certificate: str
    client_id: str
    age: float
    version: int


@record
class ClientsView(Result):
    """The clients a node served within its window. ``overflowed``: its table was full
    within the window (or the view too long to send), so the view is incomplete and the
    leader must take the safe choice."""

    tracking_for: float
    window: float
    clients: tuple[ClientSeen, ...]
    overflowed: bool = False

    def to_wire(self) -> WireMap:
        # Certificate names are listed once and referred to by index: the view stays small.
        names = sorted({c.certificate for c in self.clients})
        index = {n: i for i, n in enumerate(names)}
        return {"tracking_for": self.tracking_for, "window": self.window,
                "overflowed": self.overflowed, "certificates": names,
                "clients": [[index[c.certificate], c.client_id, c.age, c.version]
                            for c in self.clients]}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        names = f.items("certificates")
        if not all(isinstance(n, str) for n in names):
            raise f.fail("'certificates' must list names")
        seen = []
        for row in f.items("clients"):
            if not (isinstance(row, list | tuple) and len(row) == 4 and type(row[0]) is int
                    and 0 <= row[0] < len(names) and isinstance(row[1], str)
                    and type(row[2]) in (int, float) and type(row[3]) is int):
                raise f.fail("malformed client row")
            name, cid, age, version = names[row[0]], row[1], row[2], row[3]
            assert isinstance(name, str) and isinstance(age, int | float)
            assert isinstance(version, int)
            seen.append(ClientSeen(name, cid, float(age), version))
        return cls(f.number("tracking_for"), f.number("window"), tuple(seen),
                   f.flag("overflowed"))


@record
class ClientsRequest(Request[ClientsView]):
    op: ClassVar[Op] = Op.CLIENTS

    def to_wire(self) -> WireMap:
        return {}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls()

    def decode_result(self, raw: WireValue) -> ClientsView:
        return ClientsView.from_wire(raw)


# -- membership and leadership ---------------------------------------------------------------


@record
class TransferResult(Result):
    leader: str
    term: int
    changed: bool

    def to_wire(self) -> WireMap:
        return {"leader": self.leader, "term": self.term, "changed": self.changed}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(f.text("leader"), f.integer("term"), f.flag("changed"))


@record
class TransferLeaderRequest(Request[TransferResult]):
    op: ClassVar[Op] = Op.TRANSFER_LEADER
    node_id: NodeId

    def to_wire(self) -> WireMap:
        return {"node_id": self.node_id}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(f.node_id())

    def decode_result(self, raw: WireValue) -> TransferResult:
        return TransferResult.from_wire(raw)


@record
class MemberView:
    """A member as one node sees it (the leader's view has match indexes and lags)."""

    id: str
    raft_address: str
    address: str
    role: str
    reachable: bool
    match_index: int | None
    lag: int | None
    last_contact: float | None

    def to_wire(self) -> dict[str, WireValue]:
        return {"id": self.id, "raft_address": self.raft_address, "address": self.address,
                "role": self.role, "reachable": self.reachable,
                "match_index": self.match_index, "lag": self.lag,
                "last_contact": self.last_contact}

    @classmethod
    def decode(cls, f: Fields) -> MemberView:
        return cls(f.text("id"), f.text("raft_address"), f.text("address", default=""),
                   f.text("role"), f.flag("reachable", False),
                   f.integer("match_index") if f.has("match_index") else None,
                   f.integer("lag") if f.has("lag") else None,
                   f.optional_number("last_contact"))


@record
class MembersResult(Result):
    leader: str | None
    node_id: str
    members: tuple[MemberView, ...]

    def to_wire(self) -> WireMap:
        return {"leader": self.leader, "node_id": self.node_id,
                "members": [m.to_wire() for m in self.members]}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(f.optional_text("leader"), f.text("node_id"),
                   f.each("members", MemberView.decode))


@record
class MembersRequest(Request[MembersResult]):
    op: ClassVar[Op] = Op.MEMBERS
    require_leader: bool = False

    def to_wire(self) -> WireMap:
        return {"require_leader": True} if self.require_leader else {}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(f.raw("require_leader") is True)

    def decode_result(self, raw: WireValue) -> MembersResult:
        return MembersResult.from_wire(raw)


@record
class MemberChangeResult(Result):
    node_id: str
    members: tuple[str, ...]
    changed: bool

    def to_wire(self) -> WireMap:
        return {"node_id": self.node_id, "members": list(self.members),
                "changed": self.changed}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        members = f.items("members")
        if not all(isinstance(m, str) for m in members):
            raise f.fail("'members' must list node ids")
        return cls(f.text("node_id"), tuple(str(m) for m in members),
                   f.flag("changed", True))


@record
class MemberAddRequest(Request[MemberChangeResult]):
    op: ClassVar[Op] = Op.MEMBER_ADD
    node_id: NodeId
    raft_address: str
    service_address: str
    request_id: RequestId = field(default_factory=new_request_id)

    def to_wire(self) -> WireMap:
        return {"request_id": self.request_id, "node_id": self.node_id,
                "raft_address": self.raft_address, "service_address": self.service_address}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        _addresses(f, "raft_address", "service_address")
        return cls(f.node_id(), f.text("raft_address"), f.text("service_address"),
                   f.request_id())

    def decode_result(self, raw: WireValue) -> MemberChangeResult:
        return MemberChangeResult.from_wire(raw)


@record
class MemberRemoveRequest(Request[MemberChangeResult]):
    op: ClassVar[Op] = Op.MEMBER_REMOVE
    node_id: NodeId
    request_id: RequestId = field(default_factory=new_request_id)

    def to_wire(self) -> WireMap:
        return {"request_id": self.request_id, "node_id": self.node_id}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(f.node_id(), f.request_id())

    def decode_result(self, raw: WireValue) -> MemberChangeResult:
        return MemberChangeResult.from_wire(raw)


# -- the seal ---------------------------------------------------------------------------------


MAX_SHARE = 4096  # raftsso.seal.shares.MAX_SHARE_FILE


@record
class UnsealRequest(Request[SealView]):
    """One unseal share (the share file's bytes) for a shamir node; never logged."""

    op: ClassVar[Op] = Op.UNSEAL
    share: bytes = field(repr=False)

    def to_wire(self) -> WireMap:
        return {"share": self.share}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        share = f.blob("share")
        if not 0 < len(share) <= MAX_SHARE:
            raise f.fail(f"'share' must be a share file's bytes (at most {MAX_SHARE})")
        return cls(share)

    def decode_result(self, raw: WireValue) -> SealView:
        return SealView.from_wire(raw)


def _generation(f: Fields, name: str = "generation") -> int:
    value = f.integer(name, 1)
    if value > 0xFFFFFFFF:
        raise f.fail(f"{name!r} must be a seal generation (1 to 2**32-1)")
    return value


@record
class SealInstallRequest(Request[SealView]):
    """A seal rekey's first step on each node: hold ``key`` as seal ``generation``
    (file: written to the key file; pkcs11: imported into the token; shamir: memory)."""

    op: ClassVar[Op] = Op.SEAL_INSTALL
    generation: int
    key: bytes = field(repr=False)

    def to_wire(self) -> WireMap:
        return {"generation": self.generation, "key": self.key}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(_generation(f), f.blob("key", KEY_SIZE))

    def decode_result(self, raw: WireValue) -> SealView:
        return SealView.from_wire(raw)


@record
class SealForgetRequest(Request[SealView]):
    """A seal rekey's last step on each node: destroy an older generation's key (refused
    while the node's keyring still seals under it)."""

    op: ClassVar[Op] = Op.SEAL_FORGET
    generation: int

    def to_wire(self) -> WireMap:
        return {"generation": self.generation}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(_generation(f))

    def decode_result(self, raw: WireValue) -> SealView:
        return SealView.from_wire(raw)


@record
class ResealResult(Result):
    """The keyring's seal generation after the reseal and the versions it re-sealed;
    ``compacted``: this leader's journal and snapshot hold no older sealed copy."""

    generation: int
    versions: tuple[VersionId, ...]
    compacted: bool = False

    def to_wire(self) -> WireMap:
        return {"generation": self.generation, "versions": list(self.versions),
                "compacted": self.compacted}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        versions = []
        for v in f.items("versions", []):
            if not is_version_id(v):
                raise f.fail("'versions' must be version ids")
            versions.append(version_id(v))
        return cls(_generation(f), tuple(versions), f.flag("compacted", False))


@record
class ResealRequest(Request[ResealResult]):
    """The leader re-seals every live version under seal ``generation`` (which every node
    must hold already: ``seal_install``) through the log."""

    op: ClassVar[Op] = Op.RESEAL
    generation: int
    request_id: RequestId = field(default_factory=new_request_id)

    def to_wire(self) -> WireMap:
        return {"request_id": self.request_id, "generation": self.generation}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(_generation(f), f.request_id())

    def decode_result(self, raw: WireValue) -> ResealResult:
        return ResealResult.from_wire(raw)


# -- the stores known to the cluster (raftsso.known_stores) -----------------------------------


def _store_id(f: Fields, name: str = "store_id") -> str:
    value = f.text(name)
    problem = store_id_problem(value)
    if problem:
        raise f.fail(f"{name!r}: {problem}")
    return value


def _known_store(f: Fields) -> KnownStore:
    return KnownStore(_store_id(f, "id"), f.text("kind", MAX_KIND), f.number("reported_at"),
                      f.optional_number("counted_at"), decode_counts(f, "versions_in_use"))


@record
class StoreResult(Result):
    """A store as the cluster knows it (after a report)."""

    store: KnownStore

    def to_wire(self) -> WireMap:
        return self.store.to_wire()

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(_known_store(f))


@record
class StoreReportRequest(Request[StoreResult]):
    """Which key versions a store uses, counted at ``counted_at`` from token headers.

    ``full``: every row counted (replaces what the cluster knows; admin only); otherwise
    the rows the caller wrote since its last report (added). Bounded: see
    :mod:`raftsso.known_stores`.
    """

    op: ClassVar[Op] = Op.STORE_REPORT
    store_id: str
    kind: str
    counted_at: float
    versions_in_use: Mapping[int, int]
    full: bool = False
    request_id: RequestId = field(default_factory=new_request_id)

    def to_wire(self) -> WireMap:
        return {"request_id": self.request_id, "store_id": self.store_id, "kind": self.kind,
                "counted_at": self.counted_at, "full": self.full,
                "versions_in_use": {str(v): n for v, n in self.versions_in_use.items()}}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(_store_id(f), f.text("kind", MAX_KIND), f.number("counted_at"),
                   decode_counts(f, "versions_in_use"), f.flag("full", False),
                   f.request_id())

    def decode_result(self, raw: WireValue) -> StoreResult:
        return StoreResult.from_wire(raw)


@record
class StoresResult(Result):
    stores: tuple[KnownStore, ...]

    def to_wire(self) -> WireMap:
        return {"stores": [s.to_wire() for s in self.stores]}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(f.each("stores", _known_store))


@record
class StoresRequest(Request[StoresResult]):
    """The stores known to the cluster (the leader's view, past its barrier)."""

    op: ClassVar[Op] = Op.STORES

    def to_wire(self) -> WireMap:
        return {}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls()

    def decode_result(self, raw: WireValue) -> StoresResult:
        return StoresResult.from_wire(raw)


@record
class StoreForgetResult(Result):
    store_id: str
    forgotten: bool

    def to_wire(self) -> WireMap:
        return {"store_id": self.store_id, "forgotten": self.forgotten}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(f.text("store_id"), f.flag("forgotten"))


@record
class StoreForgetRequest(Request[StoreForgetResult]):
    op: ClassVar[Op] = Op.STORE_FORGET
    store_id: str
    request_id: RequestId = field(default_factory=new_request_id)

    def to_wire(self) -> WireMap:
        return {"request_id": self.request_id, "store_id": self.store_id}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(_store_id(f), f.request_id())

    def decode_result(self, raw: WireValue) -> StoreForgetResult:
        return StoreForgetResult.from_wire(raw)


# -- certificates (issue 15) -------------------------------------------------------------------


@record
class CertView:
    """A certificate the cluster knows of: registered by ``certs issue``, or revoked."""

    serial: str
    name: str
    role: str
    registered: float | None  # None: only revoked, never registered
    not_after: float | None
    revoked: float | None
    revoked_by: str

    def to_wire(self) -> dict[str, WireValue]:
        return {"serial": self.serial, "name": self.name, "role": self.role,
                "registered": self.registered, "not_after": self.not_after,
                "revoked": self.revoked, "revoked_by": self.revoked_by}

    @classmethod
    def of(cls, r: CertRecord) -> CertView:
        return cls(r.serial, r.name, r.role, r.registered or None, r.not_after, r.revoked,
                   r.revoked_by)

    @classmethod
    def decode(cls, f: Fields) -> CertView:
        return cls(f.text("serial"), f.text("name"), f.text("role"),
                   f.optional_number("registered"), f.optional_number("not_after"),
                   f.optional_number("revoked"), f.text("revoked_by", default=""))


@record
class CertsResult(Result):
    certificates: tuple[CertView, ...]

    def to_wire(self) -> WireMap:
        return {"certificates": [c.to_wire() for c in self.certificates]}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(f.each("certificates", CertView.decode))


@record
class CertsRequest(Request[CertsResult]):
    """Every certificate registered or revoked (``require_leader``: the leader's view)."""

    op: ClassVar[Op] = Op.CERTS
    require_leader: bool = False

    def to_wire(self) -> WireMap:
        return {"require_leader": True} if self.require_leader else {}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(f.raw("require_leader") is True)

    def decode_result(self, raw: WireValue) -> CertsResult:
        return CertsResult.from_wire(raw)


def _serial_field(f: Fields, name: str) -> str:
    try:
        return canonical_serial(f.text(name, 80))
    except ValueError:
        raise f.fail(f"{name!r} must be a certificate serial (hexadecimal)") from None


@record
class CertRegisterResult(Result):
    serial: str
    name: str

    def to_wire(self) -> WireMap:
        return {"serial": self.serial, "name": self.name}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls(f.text("serial"), f.text("name"))


@record
class CertRegisterRequest(Request[CertRegisterResult]):
    """Register a certificate made by ``certs issue`` (serial, name, role, expiry)."""

    op: ClassVar[Op] = Op.CERT_REGISTER
    serial: str
    name: str
    role: str
    not_after: float
    request_id: RequestId = field(default_factory=new_request_id)

    def to_wire(self) -> WireMap:
        return {"request_id": self.request_id, "serial": self.serial, "name": self.name,
                "role": self.role, "not_after": self.not_after}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        role = f.text("role")
        if role not in ("client", "admin", "node"):
            raise f.fail("'role' must be client, admin or node")
        name = f.text("name", MAX_CERT_NAME)
        if not name:
            raise f.fail("'name' must not be empty")
        return cls(_serial_field(f, "serial"), name, role, f.number("not_after"),
                   f.request_id())

    def decode_result(self, raw: WireValue) -> CertRegisterResult:
        return CertRegisterResult.from_wire(raw)


@record
class CertRevokeResult(Result):
    serials: tuple[str, ...]  # every serial the target named
    revoked: tuple[str, ...]  # those revoked now (the others were already)

    def to_wire(self) -> WireMap:
        return {"serials": list(self.serials), "revoked": list(self.revoked)}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        serials, revoked = f.items("serials"), f.items("revoked")
        if not all(isinstance(s, str) for s in (*serials, *revoked)):
            raise f.fail("serials must be strings")
        return cls(tuple(str(s) for s in serials), tuple(str(s) for s in revoked))


@record
class CertRevokeRequest(Request[CertRevokeResult]):
    """Revoke every registered certificate named ``target``, or the serial ``target``;
    ``name`` names a serial the cluster never registered (from ``--cert FILE``)."""

    op: ClassVar[Op] = Op.CERT_REVOKE
    target: str
    name: str = ""
    request_id: RequestId = field(default_factory=new_request_id)

    def to_wire(self) -> WireMap:
        return {"request_id": self.request_id, "target": self.target, "name": self.name}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        target = f.text("target", 128)
        if not target:
            raise f.fail("'target' must name a certificate or a serial")
        return cls(target, f.text("name", MAX_CERT_NAME, default=""), f.request_id())

    def decode_result(self, raw: WireValue) -> CertRevokeResult:
        return CertRevokeResult.from_wire(raw)


# -- encryption counts (node to node, issue 15) ------------------------------------------------


@record
class EncryptionReports(Result):
    """The latest cumulative encryption counts SSO clients reported to one node, by client
    (``certificate/client id``). ``overflowed``: some were left out (too many)."""

    reports: Mapping[str, Mapping[int, int]]
    overflowed: bool = False

    def to_wire(self) -> WireMap:
        return {"reports": {c: {str(v): n for v, n in counts.items()}
                            for c, counts in self.reports.items()},
                "overflowed": self.overflowed}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        reports: dict[str, Mapping[int, int]] = {}
        for client, counts in f.mapping("reports").items():
            try:
                reports[client] = parse_counts(counts)
            except ValueError as exc:
                raise f.fail(str(exc)) from None
        return cls(reports, f.flag("overflowed", False))


@record
class EncryptionsRequest(Request[EncryptionReports]):
    op: ClassVar[Op] = Op.ENCRYPTIONS

    def to_wire(self) -> WireMap:
        return {}

    @classmethod
    def decode(cls, f: Fields) -> Self:
        return cls()

    def decode_result(self, raw: WireValue) -> EncryptionReports:
        return EncryptionReports.from_wire(raw)


#: Every request type by its op (the service decodes with it; docs list it).
REQUESTS: dict[Op, type[Request[Result]]] = {cls.op: cls for cls in (
    PingRequest, StatusRequest, KeyringRequest, RotateRequest, RetireRequest, BackedUpRequest,
    RestoreRequest, ClientsRequest, TransferLeaderRequest, MembersRequest, MemberAddRequest,
    MemberRemoveRequest, CertsRequest, CertRegisterRequest, CertRevokeRequest,
    EncryptionsRequest)}
REQUESTS.update({cls.op: cls for cls in (StoreReportRequest, StoresRequest,
                                         StoreForgetRequest)})
REQUESTS.update({cls.op: cls for cls in (UnsealRequest, SealInstallRequest, ResealRequest,
                                         SealForgetRequest)})

__all__ = [
    "REQUESTS", "BackedUpRequest", "BackedUpResult", "CertRegisterRequest", "CertRegisterResult",
    "CertRevokeRequest", "CertRevokeResult", "CertView", "CertsRequest", "CertsResult",
    "ClientSeen", "ClientsRequest", "ClientsView", "EncryptionReports", "EncryptionsRequest",
    "ErrorBody", "ErrorFactory", "KeyringRequest", "KeyringResult", "KeyringVersion",
    "MemberAddRequest", "MemberChangeResult", "MemberRemoveRequest", "MemberView",
    "MembersRequest", "MembersResult", "NodeStatus", "Op", "PeerStatus", "PingRequest",
    "PingResult", "Request", "RestoreRequest", "RestoreResult", "RestoreVersion", "Result",
    "RetireRequest", "RotateRequest", "RotationPolicyView", "StatusRequest",
    "TransferLeaderRequest", "TransferResult", "VersionInfo", "VersionResult",
]
__all__ += ["ResealRequest", "ResealResult", "SealForgetRequest", "SealInstallRequest",
            "SealView", "UnsealRequest"]
__all__ += ["StoreForgetRequest", "StoreForgetResult", "StoreReportRequest", "StoreResult",
            "StoresRequest", "StoresResult"]
