"""The replicated state machine: typed commands applied to the keyring.

Pure: no sockets, no clock, no randomness and no pysyncobj. Everything that varies
(key material already sealed, timestamps, request ids) is chosen by the proposer and
carried in the command, so every replica computes the same state.

``apply`` never raises: pysyncobj wedges every node for good when a replicated method
raises, so a bad command becomes an error result and leaves the state untouched.

Commands are :mod:`raftsso.protocol.commands` (``0x01 | msgpack {"op", "req", ...}``). The
``req`` id makes a retried command idempotent: the result of the last :data:`MAX_REMEMBERED`
requests is kept (in snapshots too) and returned again instead of applying twice.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raftsso.encryption_counts import EncryptionLedger
from raftsso.errors import DecodeError, InvalidToken
from raftsso.keyring import Keyring, KeyState, KeyVersion
from raftsso.known_stores import MAX_STORES, KnownStore, reported
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.commands import (
    BackedUp,
    Barrier,
    Bootstrap,
    CertRegister,
    CertRevoke,
    Command,
    Encryptions,
    Member,
    Outcome,
    Promote,
    Reseal,
    Restore,
    Retire,
    Rotate,
    StoreForget,
    StoreReport,
    decode_envelope,
    decode_fields,
)
from raftsso.protocol.ids import REQUEST_ID_SIZE, is_version_id, request_id
from raftsso.revocation import CertRecord, CertRegistry, RegistryError
from raftsso.seal import blob as sealed_blob
from raftsso.wire import WireMap, WireValue, unversioned, versioned

log = logging.getLogger(__name__)

COMMAND_FORMAT = 1
SNAPSHOT_FORMAT = 1
MAX_REMEMBERED = 4096

__all__ = ["MAX_REMEMBERED", "REQUEST_ID_SIZE", "SNAPSHOT_FORMAT", "KeyringStateMachine",
           "MemberRecord", "Outcome", "encode_command"]


def _fail(code: ErrorCode, message: str) -> Outcome:
    return Outcome.fail(code, message)


def encode_command(op: str, req: bytes, **fields: Any) -> bytes:
    """A command map with *unchecked* fields, for tests that need malformed or foreign
    commands; the node builds typed commands (:mod:`raftsso.protocol.commands`)."""
    request_id(req)  # ValueError unless 16 bytes
    return versioned(COMMAND_FORMAT, {"op": op, "req": req, **fields})


@dataclass(frozen=True)
class MemberRecord:
    """A node added (or removed: a tombstone) after ``init``."""

    raft_address: str
    service_address: str
    removed: bool

    def to_wire(self) -> WireMap:
        return {"raft_address": self.raft_address, "service_address": self.service_address,
                "removed": self.removed}


class KeyringStateMachine:
    """Applies commands to a :class:`Keyring`; readers get immutable snapshots.

    Implements the Raft member's state machine contract: ``apply`` is deterministic,
    never raises and runs on the Raft thread; ``snapshot``/``restore`` round-trip the state.
    """

    def __init__(self) -> None:
        self._keyring = Keyring()
        self._index = 0  # the Raft index of the last command applied to the keyring
        # The index at which the keyring last changed (a snapshot's index after a restore):
        # the keyring at any index from here to ``_index`` is the same, which lets a node
        # answer a client that holds one of them "unchanged" (see :meth:`view_since`).
        self._changed = 0
        # Nodes added or removed after init. The Raft configuration itself lives in
        # pysyncobj; this is the directory of ids and service addresses, and the
        # tombstones that stop a removed id from rejoining.
        self._directory: dict[str, MemberRecord] = {}
        self._requests: OrderedDict[bytes, Outcome] = OrderedDict()
        # The Raft index of the last command that dropped a sealed secret (a retirement, a
        # reseal, a restore replacing the first secret): the node compacts past it so no
        # copy stays in its files (raftsso.node.destroy). Not snapshotted: 0 after a start.
        self._last_drop = 0
        # The SSO stores known to the cluster, by id (raftsso.known_stores).
        self._stores: dict[str, KnownStore] = {}
        # Day-two state (issue 15): issued and revoked certificates, and the clients'
        # encryption counts per version (raftsso.revocation, raftsso.encryption_counts).
        self._certs = CertRegistry()
        self._ledger = EncryptionLedger()
        # Written only by the Raft thread; the lock makes a read of (keyring, requests)
        # from a service thread consistent.
        self._lock = threading.Lock()

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    def view(self) -> tuple[Keyring, int]:
        """The keyring and the Raft index it reflects, read together.

        Two replicas at the same index hold the same keyring, so clients can order
        answers from different nodes by this index.
        """
        with self._lock:
            return self._keyring, self._index

    @property
    def last_drop(self) -> int:
        """The Raft index of the last command that dropped a sealed secret (0: none since
        this process started)."""
        return self._last_drop

    def certs(self) -> CertRegistry:
        """Issued and revoked certificates (immutable; replaced by every change)."""
        return self._certs

    def encryptions(self) -> EncryptionLedger:
        """Encryptions per version, as SSO clients reported them (immutable)."""
        return self._ledger

    def view_since(self) -> tuple[Keyring, int, int]:
        """:meth:`view` plus the index at which the keyring last changed: a client holding
        the keyring of any index in ``[changed, index]`` holds this very keyring."""
        with self._lock:
            return self._keyring, self._index, self._changed

    def directory(self) -> dict[str, MemberRecord]:
        """Members added or removed after ``init`` (see :meth:`_member`)."""
        with self._lock:
            return dict(self._directory)

    def stores(self) -> dict[str, KnownStore]:
        """The SSO stores known to the cluster, by id."""
        with self._lock:
            return dict(self._stores)

    def request_outcome(self, req: bytes) -> Outcome | None:
        """The remembered outcome of a request id, if it was applied."""
        with self._lock:
            return self._requests.get(req)

    # -- applying -------------------------------------------------------------

    def apply(self, command: bytes, index: int | None = None) -> Outcome:
        """Apply one command (``index``: its Raft log index, recorded with the result)."""
        try:
            op, req, raw = decode_envelope(command)
        except DecodeError as exc:
            log.error("rejected a malformed replicated command: %s", exc)
            return _fail(ErrorCode.BAD_COMMAND, str(exc))
        except Exception as exc:
            log.exception("unexpected error decoding a replicated command")
            return _fail(ErrorCode.INTERNAL, f"{type(exc).__name__}")

        with self._lock:
            if index is not None and index > self._index:
                self._index = index
            seen = self._requests.get(req)
            if seen is not None:
                return seen
            # Fields are decoded only now, as ever: a malformed command is remembered as
            # BAD_COMMAND under its request id.
            before = self._keyring
            try:
                outcome = self._dispatch(decode_fields(op, req, raw))
            except DecodeError as exc:
                outcome = _fail(ErrorCode.BAD_COMMAND, str(exc))
            except Exception as exc:
                log.exception("unexpected error applying %s", op)
                outcome = _fail(ErrorCode.INTERNAL, f"{type(exc).__name__}")
            if self._keyring is not before:
                # Without an index (tests), no index may claim this keyring: one past the
                # last makes every "unchanged" check fail until a real index arrives.
                self._changed = self._index if index is not None else self._index + 1
            self._requests[req] = outcome
            while len(self._requests) > MAX_REMEMBERED:
                self._requests.popitem(last=False)
            return outcome

    def _dispatch(self, command: Command) -> Outcome:
        match command:
            case Bootstrap():
                return self._bootstrap(command)
            case Rotate():
                return self._rotate(command)
            case Promote():
                return self._promote(command)
            case Barrier():
                # Proposed by a new leader: once applied, its state reflects every earlier
                # commit.
                return Outcome(True, {"last_id": self._keyring.last_id})
            case Retire():
                return self._retire(command)
            case BackedUp():
                self._keyring, marked = self._keyring.mark_backed_up(dict(command.fingerprints))
                return Outcome(True, {"marked": marked})
            case Restore():
                return self._restore(command)
            case Member():
                return self._member(command)
            case StoreReport():
                return self._store_report(command)
            case StoreForget():
                return self._store_forget(command)
            case CertRegister():
                return self._cert_register(command)
            case CertRevoke():
                return self._cert_revoke(command)
            case Encryptions():
                live = frozenset(v.id for v in self._keyring.versions
                                 if v.state is not KeyState.RETIRED)
                self._ledger = self._ledger.add_reports(command.reports, at=command.at,
                                                        live_versions=live)
                return Outcome(True, {"clients": len(command.reports)})
            case Reseal():
                return self._reseal(command)
        return _fail(ErrorCode.BAD_COMMAND, f"unknown command {command.op!r}")

    def _summary(self, version: int) -> WireMap:
        kv = self._keyring.get(version)
        return {"version": version, "state": kv.state.value if kv else None,
                "primary_version": self._keyring.primary}

    def _wrong_generation(self, *sealed: bytes) -> Outcome | None:
        """CONFLICT unless every blob is sealed under the keyring's seal generation.

        A leader seals under the generation it read in its write path; a seal rekey
        committed in between (another leader's) makes its blob stale. Format-1 blobs (every
        earlier journal) are generation 1, so old logs replay unchanged."""
        generation = self._keyring.seal_generation
        for one in sealed:
            try:
                theirs = sealed_blob.generation_of(one)
            except InvalidToken:
                return _fail(ErrorCode.BAD_COMMAND, "a sealed secret of an unknown format")
            if theirs != generation:
                return _fail(ErrorCode.CONFLICT, f"sealed under seal generation {theirs}, "
                                                 f"but the cluster seals under {generation} "
                                                 "(a seal rekey won); retry")
        return None

    def _bootstrap(self, cmd: Bootstrap) -> Outcome:
        if self._keyring.bootstrapped:
            return _fail(ErrorCode.CONFLICT, "the cluster already has its first secret")
        if (stale := self._wrong_generation(cmd.sealed)) is not None:
            return stale
        self._keyring = self._keyring.with_version(
            KeyVersion(1, KeyState.PRIMARY, cmd.sealed, cmd.fingerprint, cmd.created,
                       promoted=cmd.created))
        return Outcome(True, self._summary(1))

    def _rotate(self, cmd: Rotate) -> Outcome:
        ring = self._keyring
        if not ring.bootstrapped:
            return _fail(ErrorCode.NOT_READY, "the cluster has no first secret yet")
        if cmd.expect_primary != ring.primary:
            return _fail(ErrorCode.CONFLICT, f"the primary changed to version {ring.primary} "
                                             "(another rotation won)")
        if cmd.version != ring.last_id + 1:
            return _fail(ErrorCode.CONFLICT, f"version {cmd.version} is not next (last is "
                                             f"{ring.last_id}; another rotation won)")
        if (stale := self._wrong_generation(cmd.sealed)) is not None:
            return stale
        ring = ring.with_version(KeyVersion(cmd.version, KeyState.STAGED, cmd.sealed,
                                            cmd.fingerprint, cmd.created))
        if cmd.now:
            ring = ring.promote(cmd.version, cmd.created)
        self._keyring = ring
        return Outcome(True, self._summary(cmd.version))

    def _promote(self, cmd: Promote) -> Outcome:
        version = cmd.version
        kv = self._keyring.get(version)
        if kv is None:
            return _fail(ErrorCode.NOT_FOUND, f"version {version} does not exist")
        if kv.state is KeyState.PRIMARY:
            return Outcome(True, self._summary(version))
        if kv.state is not KeyState.STAGED:
            return _fail(ErrorCode.CONFLICT, f"version {version} is {kv.state.value}, not staged")
        primary = self._keyring.primary
        if primary is not None and version < primary:
            return _fail(ErrorCode.CONFLICT, f"version {version} is older than primary {primary}")
        self._keyring = self._keyring.promote(version, cmd.at)
        return Outcome(True, self._summary(version))

    def _retire(self, cmd: Retire) -> Outcome:
        version = cmd.version
        kv = self._keyring.get(version)
        if kv is None:
            return _fail(ErrorCode.NOT_FOUND, f"version {version} does not exist")
        if kv.state is KeyState.PRIMARY:
            return _fail(ErrorCode.CONFLICT, f"version {version} is the primary; rotate first")
        if kv.state is not KeyState.RETIRED:
            self._keyring = self._keyring.retire(version)
            self._last_drop = self._index
        return Outcome(True, self._summary(version))

    def _member(self, cmd: Member) -> Outcome:
        """Record a node added to or removed from the Raft configuration.

        A removed id is a tombstone: it never becomes a member again, so a node that
        comes back with the stale data of a removed member cannot slip back in.
        """
        current = self._directory.get(cmd.node_id)
        if current is not None and current.removed and not cmd.removed:
            return _fail(ErrorCode.CONFLICT, f"{cmd.node_id} was removed from this cluster; a "
                                             "removed node never rejoins (use a new node id)")
        self._directory[cmd.node_id] = MemberRecord(cmd.raft_address, cmd.service_address,
                                                    cmd.removed)
        return Outcome(True, {"node_id": cmd.node_id, "removed": cmd.removed})

    def _reseal(self, cmd: Reseal) -> Outcome:
        """Every live version re-sealed under a new seal generation (a seal rekey).

        A compare-and-set: on the generation (two rekeys never both win) and on the set of
        live versions (a rotation, restore or retirement in between makes it stale: the
        caller re-seals again). Every blob must name the new generation."""
        ring = self._keyring
        if ring.seal_generation == cmd.generation and cmd.expect_generation != cmd.generation:
            return Outcome(True, self._reseal_summary())  # a rerun after it committed
        if cmd.expect_generation != ring.seal_generation:
            return _fail(ErrorCode.CONFLICT, f"the cluster seals under generation "
                                             f"{ring.seal_generation}, not "
                                             f"{cmd.expect_generation}")
        if cmd.generation <= ring.seal_generation:
            return _fail(ErrorCode.BAD_COMMAND, "a seal rekey moves to a newer generation")
        live = {v.id for v in ring.live()}
        if set(cmd.versions) != live:
            return _fail(ErrorCode.CONFLICT, "the live versions changed while they were "
                                             "re-sealed; retry")
        if any(sealed_blob.generation_of(b) != cmd.generation for b in cmd.versions.values()):
            return _fail(ErrorCode.BAD_COMMAND, f"every re-sealed secret must be of seal "
                                                f"generation {cmd.generation}")
        self._keyring = ring.resealed(cmd.generation, {int(k): v for k, v in cmd.versions.items()})
        self._last_drop = self._index
        return Outcome(True, self._reseal_summary())

    def _reseal_summary(self) -> WireMap:
        return {"generation": self._keyring.seal_generation,
                "versions": [v.id for v in self._keyring.live()]}

    def _store_report(self, cmd: StoreReport) -> Outcome:
        current = self._stores.get(cmd.store_id)
        if current is None and len(self._stores) >= MAX_STORES:
            return _fail(ErrorCode.TOO_MANY_STORES,
                         f"the cluster already knows {MAX_STORES} stores, the most it keeps; "
                         "forget stores that are gone (raftsso stores forget ID)")
        store = reported(current, cmd.store_id, cmd.kind, cmd.counted_at,
                         cmd.versions_in_use, cmd.full)
        self._stores[cmd.store_id] = store
        return Outcome(True, store.to_wire())

    def _store_forget(self, cmd: StoreForget) -> Outcome:
        if self._stores.pop(cmd.store_id, None) is None:
            return _fail(ErrorCode.NOT_FOUND, f"no known store has id {cmd.store_id}")
        return Outcome(True, {"store_id": cmd.store_id, "forgotten": True})
    def _cert_register(self, cmd: CertRegister) -> Outcome:
        try:
            self._certs = self._certs.register(
                CertRecord(cmd.serial, cmd.name, cmd.role, cmd.at, cmd.not_after), cmd.at)
        except RegistryError as exc:
            return _fail(ErrorCode.CONFLICT, str(exc))
        return Outcome(True, {"serial": cmd.serial, "name": cmd.name})

    def _cert_revoke(self, cmd: CertRevoke) -> Outcome:
        try:
            self._certs, newly = self._certs.revoke(cmd.serials, at=cmd.at, by=cmd.by,
                                                    names=cmd.names)
        except RegistryError as exc:
            return _fail(ErrorCode.CONFLICT, str(exc))
        return Outcome(True, {"serials": list(cmd.serials), "revoked": newly})

    def _restore(self, cmd: Restore) -> Outcome:
        """Merge versions from a backup; never drops or overwrites a different version.

        A *new* cluster (only its bootstrap version, never backed up) may have that version
        replaced when ``replace_new`` is set: disaster recovery into a fresh deployment.
        """
        incoming = [KeyVersion(id=v.id, state=KeyState.ACTIVE, sealed=v.sealed,
                               fingerprint=v.fingerprint, created=v.created, backed_up=True)
                    for v in cmd.versions]
        if not incoming:
            return _fail(ErrorCode.BAD_COMMAND, "the backup holds no versions")
        if (stale := self._wrong_generation(*(v.sealed for v in cmd.versions))) is not None:
            return stale
        ring = self._keyring
        conflicts = [v.id for v in incoming
                     if (cur := ring.get(v.id)) is not None and cur.fingerprint != v.fingerprint]
        replaced: list[int] = []
        if conflicts:
            new = (len(ring.versions) == 1 and ring.versions[0].id == 1
                   and not ring.versions[0].backed_up)
            if not (cmd.replace_new and new):
                return _fail(ErrorCode.CONFLICT, (
                    f"version(s) {', '.join(map(str, conflicts))} of this cluster differ from "
                    "the backup's; restore only merges into the cluster the backup came "
                    "from, or replaces the first secret of a brand-new cluster"))
            replaced = [ring.versions[0].id]
            ring = Keyring(seal_generation=ring.seal_generation)
            self._last_drop = self._index
        added, revived = [], []
        for v in incoming:
            cur = ring.get(v.id)
            if cur is None:
                ring = ring.with_version(v)
                added.append(v.id)
            elif cur.state is KeyState.RETIRED:
                ring = ring.with_version(v)  # the same key, destroyed too early: bring it back
                revived.append(v.id)
        ring, _ = ring.mark_backed_up({v.id: v.fingerprint for v in incoming})
        primary = ring.primary
        if cmd.primary is not None and (primary is None or cmd.primary > primary):
            ring = ring.promote(cmd.primary, cmd.at)
        elif ring.primary is None:  # a backup without a primary: never leave none
            ring = ring.promote(ring.last_id, cmd.at)
        self._keyring = ring
        return Outcome(True, {"added": added, "revived": revived, "replaced": replaced,
                              "primary_version": ring.primary})

    # -- snapshots ------------------------------------------------------------

    def snapshot(self) -> bytes:
        with self._lock:
            state: dict[str, WireValue] = {
                "index": self._index,
                "directory": {k: v.to_wire() for k, v in self._directory.items()},
                "versions": [v.to_wire() for v in self._keyring.versions],
                "requests": [[k, o.to_wire()] for k, o in self._requests.items()],
            }
            if self._keyring.seal_generation != 1:
                # Only once a seal rekey happened: until then a snapshot is byte for byte
                # what earlier versions wrote (and read).
                state["seal_generation"] = self._keyring.seal_generation
            if self._stores:  # absent without stores: the bytes of earlier versions
                state["stores"] = [s.to_wire() for s in self._stores.values()]
            return versioned(SNAPSHOT_FORMAT, state | self._daytwo_snapshot())

    def _daytwo_snapshot(self) -> dict[str, WireValue]:
        # Only when there is something: a snapshot of a keyring that never saw these
        # commands stays byte for byte what earlier versions wrote.
        out: dict[str, WireValue] = {}
        if len(self._certs):
            out["certs"] = self._certs.to_wire()
        if self._ledger.totals or self._ledger.clients:
            out["encryptions"] = self._ledger.to_wire()
        return out

    def restore(self, blob: bytes) -> None:
        """Replace the state with a snapshot; raises :class:`DecodeError` if malformed."""
        raw = unversioned(blob, SNAPSHOT_FORMAT, "snapshot")
        if not isinstance(raw, Mapping):
            raise DecodeError("a snapshot must be a map")
        try:
            versions = tuple(_snapshot_version(v) for v in _list(raw["versions"]))
            requests = OrderedDict(_snapshot_request(r) for r in _list(raw["requests"]))
            index = raw.get("index", 0)
            generation = raw.get("seal_generation", 1)  # absent: written before seal rekeys
            sealed_blob.check_generation(generation)
            raw_directory = raw.get("directory", {})
            if not isinstance(raw_directory, Mapping):
                raise TypeError("the member directory must be a map")
            directory = {str(k): _member_record(v) for k, v in raw_directory.items()}
            # Snapshots of versions without known stores have no "stores".
            stores = {s.id: s for s in map(KnownStore.from_wire, _list(raw.get("stores", [])))}
            # Absent from snapshots written before issue 15: nothing issued or counted yet.
            certs = CertRegistry.from_wire(raw.get("certs", []))
            ledger = EncryptionLedger.from_wire(raw.get("encryptions", {}))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError,
                DecodeError) as exc:
            raise DecodeError(f"malformed snapshot: {exc}") from None
        ids = [v.id for v in versions]
        if ids != sorted(set(ids)):
            raise DecodeError("malformed snapshot: version ids are not unique and increasing")
        if sum(v.state is KeyState.PRIMARY for v in versions) > 1:
            raise DecodeError("malformed snapshot: more than one primary")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise DecodeError("malformed snapshot: bad index")
        with self._lock:
            self._keyring = Keyring(versions, seal_generation=generation)
            self._requests = requests
            self._index = index
            self._changed = index
            self._directory = directory
            self._stores = stores
            self._certs = certs
            self._ledger = ledger


def _list(raw: WireValue) -> list[WireValue]:
    if isinstance(raw, str | bytes) or not isinstance(raw, list | tuple):
        raise TypeError("expected a list")
    return list(raw)


def _member_record(raw: WireValue) -> MemberRecord:
    if not isinstance(raw, Mapping):
        raise TypeError("a member record must be a map")
    return MemberRecord(str(raw["raft_address"]), str(raw["service_address"]),
                        bool(raw["removed"]))


def _snapshot_version(raw: WireValue) -> KeyVersion:
    if not isinstance(raw, Mapping):
        raise TypeError("a version must be a map")
    version = KeyVersion.from_wire(dict(raw))
    if not is_version_id(raw["id"]):
        raise ValueError("version id out of range")
    if version.sealed is None:
        if version.state is not KeyState.RETIRED:
            raise ValueError(f"version {version.id} has no key but is {version.state.value}")
    elif not isinstance(version.sealed, bytes) or len(version.sealed) not in sealed_blob.SIZES:
        raise ValueError(f"version {version.id} has a malformed sealed key")
    return version


def _snapshot_request(raw: WireValue) -> tuple[bytes, Outcome]:
    if not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[1], Mapping):
        raise ValueError("a remembered request must be [16 bytes, outcome]")
    return request_id(raw[0]), Outcome.from_wire(raw[1])
