"""The state machine's commands (what goes into the Raft log) and their outcome.

A command is ``0x01 | msgpack {"op": str, "req": bytes(16), ...fields}``: the same bytes as
before these types existed, so journals and snapshots written by earlier versions replay
unchanged (``tests/unit/test_protocol.py`` feeds such bytes). The leader builds a typed
command and :meth:`Command.encode` s it; the state machine decodes it in two steps, as it
always did: :func:`decode_envelope` (op and request id; a failure is not remembered) and,
once the request id is known not to be a retry, :func:`decode_fields` (a failure is
remembered as a ``BAD_COMMAND`` outcome of that request).

op             fields
=============  ============================================================================
``bootstrap``  ``sealed``, ``fingerprint``, ``created``
``rotate``     ``version``, ``sealed``, ``fingerprint``, ``created``, ``expect_primary``,
               ``now``
``promote``    ``version``, ``at``
``barrier``    (none)
``retire``     ``version``
``backed_up``  ``fingerprints`` (``{"<id>": fingerprint}``)
``restore``    ``versions`` (``[{id, sealed, fingerprint, created}]``), ``primary``,
               ``replace_new``, ``at``
``member``     ``node_id``, ``raft_address``, ``service_address``, ``removed``
``reseal``     ``expect_generation``, ``generation``, ``versions`` (``{"<id>": sealed}``)
=============  ============================================================================

The stores known to the cluster (:mod:`raftsso.known_stores`): ``store_report``
(``store_id``, ``kind``, ``counted_at``, ``versions_in_use`` as ``{"<id>": rows}``,
``full``) and ``store_forget`` (``store_id``).
=======
=================  ============================================================================
op                 fields
=================  ============================================================================
``bootstrap``      ``sealed``, ``fingerprint``, ``created``
``rotate``         ``version``, ``sealed``, ``fingerprint``, ``created``, ``expect_primary``,
                   ``now``
``promote``        ``version``, ``at``
``barrier``        (none)
``retire``         ``version``
``backed_up``      ``fingerprints`` (``{"<id>": fingerprint}``)
``restore``        ``versions`` (``[{id, sealed, fingerprint, created}]``), ``primary``,
                   ``replace_new``, ``at``
``member``         ``node_id``, ``raft_address``, ``service_address``, ``removed``
``cert_register``  ``serial``, ``name``, ``role``, ``not_after``, ``at``
``cert_revoke``    ``serials``, ``names`` (``{serial: name}``), ``by``, ``at``
``encryptions``    ``reports`` (``{client: {"<version>": cumulative count}}``), ``at``
``store_report``   ``store_id``, ``kind``, ``counted_at``, ``versions_in_use``
                   (``{"<id>": rows}``), ``full`` (:mod:`raftsso.known_stores`)
``store_forget``   ``store_id``
=================  ============================================================================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Self

from raftsso.encryption_counts import parse_counts
from raftsso.errors import DecodeError
from raftsso.known_stores import MAX_KIND, decode_counts, store_id_problem
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.fields import Fields
from raftsso.protocol.ids import MAX_NODE_ID, RequestId, VersionId, request_id, version_id
from raftsso.revocation import MAX_NAME as MAX_CERT_NAME
from raftsso.revocation import canonical_serial
from raftsso.seal import blob as sealed_blob
from raftsso.wire import WireMap, WireValue, unversioned, versioned

COMMAND_FORMAT = 1
MAX_REVOKE_AT_ONCE = 1024
MAX_REPORTS_AT_ONCE = 8192


@dataclass(frozen=True)
class Outcome:
    """What applying one command produced; ``code`` is None on success.

    Remembered per request id (in snapshots too) as ``{"ok", "data", "code", "message"}``
    with ``""`` for no code, the format of every earlier version.
    """

    ok: bool
    data: WireMap = field(default_factory=dict)
    code: ErrorCode | None = None
    message: str = ""

    @classmethod
    def fail(cls, code: ErrorCode, message: str) -> Outcome:
        return cls(False, code=code, message=message)

    def to_wire(self) -> WireMap:
        return {"ok": self.ok, "data": dict(self.data),
                "code": self.code.value if self.code is not None else "",
                "message": self.message}

    @classmethod
    def from_wire(cls, raw: WireValue) -> Outcome:
        f = Fields(raw, "a remembered outcome")
        code = f.text("code")
        return cls(f.flag("ok"), f.mapping("data"), ErrorCode.from_wire(code) if code else None,
                   f.text("message"))


class Command(ABC):
    """One replicated command; ``req`` makes a retry idempotent."""

    op: ClassVar[str]
    req: RequestId

    @abstractmethod
    def fields(self) -> dict[str, WireValue]: ...

    @classmethod
    @abstractmethod
    def decode(cls, req: RequestId, f: Fields) -> Self: ...

    def encode(self) -> bytes:
        request_id(self.req)  # ValueError unless 16 bytes
        return versioned(COMMAND_FORMAT, {"op": self.op, "req": self.req, **self.fields()})


def _sealed(f: Fields, name: str = "sealed") -> bytes:
    """A sealed secret of either format (61 bytes: format 1; 65: format 2 with its seal
    generation, :mod:`raftsso.seal.blob`)."""
    value = f.blob(name)
    if len(value) not in sealed_blob.SIZES:
        raise f.fail(f"{name!r} must be a sealed secret "
                     f"({' or '.join(map(str, sealed_blob.SIZES))} bytes)")
    return value


@dataclass(frozen=True)
class Bootstrap(Command):
    """The cluster's first secret, version 1 and primary; only on an empty keyring."""

    op: ClassVar[str] = "bootstrap"
    req: RequestId
    sealed: bytes = field(repr=False)
    fingerprint: str
    created: float

    def fields(self) -> dict[str, WireValue]:
        return {"sealed": self.sealed, "fingerprint": self.fingerprint,
                "created": self.created}

    @classmethod
    def decode(cls, req: RequestId, f: Fields) -> Self:
        return cls(req, _sealed(f), f.text("fingerprint"), f.number("created"))


@dataclass(frozen=True)
class Rotate(Command):
    """Version ``last + 1``, staged (or primary with ``now``): a compare-and-set on the
    primary (``expect_primary``) and on the next id."""

    op: ClassVar[str] = "rotate"
    req: RequestId
    version: VersionId
    sealed: bytes = field(repr=False)
    fingerprint: str
    created: float
    expect_primary: VersionId | None
    now: bool

    def fields(self) -> dict[str, WireValue]:
        return {"version": self.version, "sealed": self.sealed,
                "fingerprint": self.fingerprint, "created": self.created,
                "expect_primary": self.expect_primary, "now": self.now}

    @classmethod
    def decode(cls, req: RequestId, f: Fields) -> Self:
        return cls(req, f.version("version"), _sealed(f), f.text("fingerprint"),
                   f.number("created"), f.optional_version("expect_primary"), f.flag("now"))


@dataclass(frozen=True)
class Promote(Command):
    """A staged version becomes primary at ``at``."""

    op: ClassVar[str] = "promote"
    req: RequestId
    version: VersionId
    at: float

    def fields(self) -> dict[str, WireValue]:
        return {"version": self.version, "at": self.at}

    @classmethod
    def decode(cls, req: RequestId, f: Fields) -> Self:
        return cls(req, f.version("version"), f.number("at"))


@dataclass(frozen=True)
class Barrier(Command):
    """No change: a new leader proposes it to know its state machine is up to date."""

    op: ClassVar[str] = "barrier"
    req: RequestId

    def fields(self) -> dict[str, WireValue]:
        return {}

    @classmethod
    def decode(cls, req: RequestId, f: Fields) -> Self:
        return cls(req)


@dataclass(frozen=True)
class Retire(Command):
    """Destroy a non-primary version's key material."""

    op: ClassVar[str] = "retire"
    req: RequestId
    version: VersionId

    def fields(self) -> dict[str, WireValue]:
        return {"version": self.version}

    @classmethod
    def decode(cls, req: RequestId, f: Fields) -> Self:
        return cls(req, f.version("version"))


@dataclass(frozen=True)
class BackedUp(Command):
    """Versions (id -> fingerprint) a backup holds. Ids are not range-checked here, as
    before: an unknown id simply marks nothing (old journals must replay the same)."""

    op: ClassVar[str] = "backed_up"
    req: RequestId
    fingerprints: Mapping[int, str]

    def fields(self) -> dict[str, WireValue]:
        return {"fingerprints": {str(k): v for k, v in self.fingerprints.items()}}

    @classmethod
    def decode(cls, req: RequestId, f: Fields) -> Self:
        out: dict[int, str] = {}
        for key, value in f.mapping("fingerprints").items():
            if not (key.isascii() and key.isdigit()) or not isinstance(value, str):
                raise f.fail("fingerprints must map version ids to strings")
            out[int(key)] = value
        return cls(req, out)


@dataclass(frozen=True)
class SealedVersion:
    """A restored version, sealed by the leader under this cluster's seal key."""

    id: VersionId
    sealed: bytes = field(repr=False)
    fingerprint: str
    created: float

    def to_wire(self) -> dict[str, WireValue]:
        return {"id": self.id, "fingerprint": self.fingerprint, "created": self.created,
                "sealed": self.sealed}

    @classmethod
    def decode(cls, f: Fields) -> SealedVersion:
        return cls(f.version("id"), _sealed(f), f.text("fingerprint"), f.number("created"))


@dataclass(frozen=True)
class Restore(Command):
    """Merge a backup's versions; ``replace_new`` lets them replace the first secret of a
    brand-new cluster."""

    op: ClassVar[str] = "restore"
    req: RequestId
    versions: tuple[SealedVersion, ...]
    primary: VersionId | None
    replace_new: bool
    at: float

    def fields(self) -> dict[str, WireValue]:
        return {"versions": [v.to_wire() for v in self.versions], "primary": self.primary,
                "replace_new": self.replace_new, "at": self.at}

    @classmethod
    def decode(cls, req: RequestId, f: Fields) -> Self:
        at, replace_new = f.number("at"), f.flag("replace_new")
        primary = f.optional_version("primary")
        versions = f.each("versions", SealedVersion.decode)
        ids = [v.id for v in versions]
        if len(set(ids)) != len(ids):
            raise f.fail("the restored versions have duplicate ids")
        if versions and primary is not None and primary not in ids:
            raise f.fail("the backup's primary is not among its versions")
        return cls(req, versions, primary, replace_new, at)


@dataclass(frozen=True)
class Member(Command):
    """A node added to or removed from the Raft configuration (a removal is a tombstone)."""

    op: ClassVar[str] = "member"
    req: RequestId
    node_id: str
    raft_address: str
    service_address: str
    removed: bool

    def fields(self) -> dict[str, WireValue]:
        return {"node_id": self.node_id, "raft_address": self.raft_address,
                "service_address": self.service_address, "removed": self.removed}

    @classmethod
    def decode(cls, req: RequestId, f: Fields) -> Self:
        node_id = f.text("node_id")
        command = cls(req, node_id, f.text("raft_address"), f.text("service_address"),
                      f.flag("removed"))
        if not 0 < len(node_id) <= MAX_NODE_ID:
            raise f.fail(f"node ids are 1 to {MAX_NODE_ID} characters")
        return command


# -- the stores known to the cluster (raftsso.known_stores) -----------------------------------


def _store_id(f: Fields) -> str:
    value = f.text("store_id")
    problem = store_id_problem(value)
    if problem:
        raise f.fail(problem)
    return value


@dataclass(frozen=True)
class StoreReport(Command):
    """Which key versions a store uses: a full count (replaces) or a client's increment
    (adds); see :mod:`raftsso.known_stores`."""

    op: ClassVar[str] = "store_report"
    req: RequestId
    store_id: str
    kind: str
    counted_at: float
    versions_in_use: Mapping[int, int]
    full: bool

    def fields(self) -> dict[str, WireValue]:
        return {"store_id": self.store_id, "kind": self.kind, "counted_at": self.counted_at,
                "versions_in_use": {str(v): n for v, n in self.versions_in_use.items()},
                "full": self.full}

    @classmethod
    def decode(cls, req: RequestId, f: Fields) -> Self:
        return cls(req, _store_id(f), f.text("kind", MAX_KIND), f.number("counted_at"),
                   decode_counts(f, "versions_in_use"), f.flag("full"))


@dataclass(frozen=True)
class StoreForget(Command):
    """Drop a store from the known stores (the operator says it is gone)."""

    op: ClassVar[str] = "store_forget"
    req: RequestId
    store_id: str

    def fields(self) -> dict[str, WireValue]:
        return {"store_id": self.store_id}

    @classmethod
    def decode(cls, req: RequestId, f: Fields) -> Self:
        return cls(req, _store_id(f))
def _serial(f: Fields, value: WireValue) -> str:
    try:
        if not isinstance(value, str) or canonical_serial(value) != value:
            raise ValueError
    except ValueError:
        raise f.fail("certificate serials are canonical hexadecimal strings") from None
    return value


@dataclass(frozen=True)
class CertRegister(Command):
    """A certificate issued by ``certs issue`` (registered so ``certs list`` knows it)."""

    op: ClassVar[str] = "cert_register"
    req: RequestId
    serial: str
    name: str
    role: str
    not_after: float
    at: float

    def fields(self) -> dict[str, WireValue]:
        return {"serial": self.serial, "name": self.name, "role": self.role,
                "not_after": self.not_after, "at": self.at}

    @classmethod
    def decode(cls, req: RequestId, f: Fields) -> Self:
        return cls(req, _serial(f, f.raw("serial")), f.text("name", MAX_CERT_NAME),
                   f.text("role", MAX_CERT_NAME), f.number("not_after"), f.number("at"))


@dataclass(frozen=True)
class CertRevoke(Command):
    """Revoke certificates by serial (``names``: names of serials not registered)."""

    op: ClassVar[str] = "cert_revoke"
    req: RequestId
    serials: tuple[str, ...]
    names: Mapping[str, str]
    by: str
    at: float

    def fields(self) -> dict[str, WireValue]:
        return {"serials": list(self.serials), "names": dict(self.names), "by": self.by,
                "at": self.at}

    @classmethod
    def decode(cls, req: RequestId, f: Fields) -> Self:
        serials = tuple(_serial(f, s) for s in f.items("serials"))
        if not 0 < len(serials) <= MAX_REVOKE_AT_ONCE:
            raise f.fail(f"a revocation names 1 to {MAX_REVOKE_AT_ONCE} serials")
        names: dict[str, str] = {}
        for serial, name in f.mapping("names").items():
            if not isinstance(name, str) or len(name) > MAX_CERT_NAME:
                raise f.fail("'names' must map serials to short names")
            names[_serial(f, serial)] = name
        return cls(req, serials, names, f.text("by", MAX_CERT_NAME), f.number("at"))


@dataclass(frozen=True)
class Encryptions(Command):
    """Clients' cumulative encryption counts per version, as they reported them."""

    op: ClassVar[str] = "encryptions"
    req: RequestId
    reports: Mapping[str, Mapping[int, int]]
    at: float

    def fields(self) -> dict[str, WireValue]:
        return {"reports": {c: {str(v): n for v, n in counts.items()}
                            for c, counts in self.reports.items()},
                "at": self.at}

    @classmethod
    def decode(cls, req: RequestId, f: Fields) -> Self:
        raw = f.mapping("reports")
        if len(raw) > MAX_REPORTS_AT_ONCE:
            raise f.fail(f"at most {MAX_REPORTS_AT_ONCE} client reports at once")
        reports: dict[str, Mapping[int, int]] = {}
        for client, counts in raw.items():
            if len(client) > 2 * MAX_CERT_NAME + 1:
                raise f.fail("a client name is too long")
            try:
                reports[client] = parse_counts(counts)
            except ValueError as exc:
                raise f.fail(str(exc)) from None
        return cls(req, reports, f.number("at"))


# -- seal rekey (raftsso.seal.rekey) ------------------------------------------------------


@dataclass(frozen=True)
class Reseal(Command):
    """Every live version re-sealed under seal ``generation``: a compare-and-set on the
    keyring's current generation (``expect_generation``) and on its set of live versions."""

    op: ClassVar[str] = "reseal"
    req: RequestId
    expect_generation: int
    generation: int
    versions: Mapping[VersionId, bytes] = field(repr=False)

    def fields(self) -> dict[str, WireValue]:
        return {"expect_generation": self.expect_generation, "generation": self.generation,
                "versions": {str(k): v for k, v in self.versions.items()}}

    @classmethod
    def decode(cls, req: RequestId, f: Fields) -> Self:
        expect, generation = f.integer("expect_generation"), f.integer("generation")
        for gen in (expect, generation):
            if not 0 < gen <= sealed_blob.MAX_GENERATION:
                raise f.fail("seal generations are integers from 1 to 2**32-1")
        out: dict[VersionId, bytes] = {}
        for key, value in f.mapping("versions").items():
            try:
                vid = version_id(int(key)) if key.isascii() and key.isdigit() else None
            except ValueError:
                vid = None
            if vid is None or not isinstance(value, bytes) or \
                    len(value) != sealed_blob.SIZE:
                raise f.fail("versions must map version ids to format-2 sealed secrets")
            out[vid] = value
        return cls(req, expect, generation, out)


#: Every command type by its op (``docs/architecture.md`` lists each).
COMMANDS: dict[str, type[Command]] = {cls.op: cls for cls in (
    Bootstrap, Rotate, Promote, Barrier, Retire, BackedUp, Restore, Member, CertRegister,
    CertRevoke, Encryptions, Reseal)}
COMMANDS.update({cls.op: cls for cls in (StoreReport, StoreForget)})


def decode_envelope(blob: bytes) -> tuple[str, RequestId, WireMap]:
    """The op, request id and raw map of a command (:class:`DecodeError` if malformed)."""
    raw = unversioned(blob, COMMAND_FORMAT, "command")
    f = Fields(raw, "a command")
    req = f.request_id("req")
    op = f.text("op")
    assert isinstance(raw, Mapping)
    return op, req, raw


def decode_fields(op: str, req: RequestId, raw: WireMap) -> Command:
    """The typed command (:class:`DecodeError` for an unknown op or a malformed field)."""
    kind = COMMANDS.get(op)
    if kind is None:
        raise DecodeError(f"unknown command {op!r}")
    return kind.decode(req, Fields(raw, f"command {op!r}"))


def decode_command(blob: bytes) -> Command:
    return decode_fields(*decode_envelope(blob))
