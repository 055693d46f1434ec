"""The replicated state machine: versioned msgpack commands applied to the keyring.

Pure: no sockets, no clock, no randomness and no pysyncobj. Everything that varies
(key material already sealed, timestamps, request ids) is chosen by the proposer and
carried in the command, so every replica computes the same state.

``apply`` never raises: pysyncobj wedges every node for good when a replicated method
raises, so a bad command becomes an error result and leaves the state untouched.

A command is ``0x01 | msgpack {"op": str, "req": bytes(16), ...}``. The ``req`` id makes a
retried command idempotent: the result of the last :data:`MAX_REMEMBERED` requests is kept
(in snapshots too) and returned again instead of applying twice.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from raftsso.envelope import SEALED_SIZE
from raftsso.errors import DecodeError
from raftsso.keyring import Keyring, KeyState, KeyVersion
from raftsso.wire import unversioned, versioned

log = logging.getLogger(__name__)

COMMAND_FORMAT = 1
SNAPSHOT_FORMAT = 1
MAX_REMEMBERED = 4096
REQUEST_ID_SIZE = 16


@dataclass(frozen=True)
class Outcome:
    """What applying one command produced. ``code`` is empty on success."""

    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    code: str = ""
    message: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"ok": self.ok, "data": self.data, "code": self.code, "message": self.message}

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Outcome:
        return cls(bool(raw["ok"]), dict(raw["data"]), str(raw["code"]), str(raw["message"]))


def _fail(code: str, message: str) -> Outcome:
    return Outcome(False, code=code, message=message)


def encode_command(op: str, req: bytes, **fields: Any) -> bytes:
    if len(req) != REQUEST_ID_SIZE:
        raise ValueError("request ids are 16 bytes")
    return versioned(COMMAND_FORMAT, {"op": op, "req": req, **fields})


def _field(cmd: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = cmd.get(name)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass: accept it only where a bool is what the field is.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise DecodeError(f"command field {name!r} is missing or has the wrong type")
    return value


def _version_field(cmd: dict[str, Any], name: str) -> int:
    value = _field(cmd, name, int)
    if not 0 < value < 2**32:
        raise DecodeError(f"command field {name!r} is out of range")
    return int(value)


def _time_field(cmd: dict[str, Any], name: str) -> float:
    value = float(_field(cmd, name, (int, float)))
    if not math.isfinite(value) or value < 0:
        raise DecodeError(f"command field {name!r} is not a valid time")
    return value


def _sealed_field(cmd: dict[str, Any]) -> bytes:
    sealed = _field(cmd, "sealed", bytes)
    if len(sealed) != SEALED_SIZE:
        raise DecodeError("sealed secret has the wrong size")
    return bytes(sealed)


def _optional_version(cmd: dict[str, Any], name: str) -> int | None:
    if cmd.get(name) is None:
        return None
    return _version_field(cmd, name)


class KeyringStateMachine:
    """Applies commands to a :class:`Keyring`; readers get immutable snapshots."""

    def __init__(self) -> None:
        self._keyring = Keyring()
        self._index = 0  # the Raft index of the last command applied to the keyring
        # Nodes added or removed after init: id -> {raft_address, service_address, removed}.
        # The Raft configuration itself lives in pysyncobj; this is the directory of ids
        # and service addresses, and the tombstones that stop a removed id from rejoining.
        self._directory: dict[str, dict[str, Any]] = {}
        self._requests: OrderedDict[bytes, Outcome] = OrderedDict()
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

    def directory(self) -> dict[str, dict[str, Any]]:
        """Members added or removed after ``init`` (see :meth:`_member`)."""
        with self._lock:
            return {k: dict(v) for k, v in self._directory.items()}

    def request_outcome(self, req: bytes) -> Outcome | None:
        """The remembered outcome of a request id, if it was applied."""
        with self._lock:
            return self._requests.get(req)

    # -- applying -------------------------------------------------------------

    def apply(self, command: bytes, index: int | None = None) -> Outcome:
        """Apply one command (``index``: its Raft log index, recorded with the result)."""
        try:
            cmd = unversioned(command, COMMAND_FORMAT, "command")
            if not isinstance(cmd, dict):
                raise DecodeError("a command must be a map")
            req = _field(cmd, "req", bytes)
            if len(req) != REQUEST_ID_SIZE:
                raise DecodeError("request id has the wrong size")
            op = _field(cmd, "op", str)
        except DecodeError as exc:
            log.error("rejected a malformed replicated command: %s", exc)
            return _fail("BAD_COMMAND", str(exc))
        except Exception as exc:
            log.exception("unexpected error decoding a replicated command")
            return _fail("INTERNAL", f"{type(exc).__name__}")

        with self._lock:
            if index is not None and index > self._index:
                self._index = index
            seen = self._requests.get(req)
            if seen is not None:
                return seen
            try:
                outcome = self._dispatch(op, cmd)
            except DecodeError as exc:
                outcome = _fail("BAD_COMMAND", str(exc))
            except Exception as exc:
                log.exception("unexpected error applying %s", op)
                outcome = _fail("INTERNAL", f"{type(exc).__name__}")
            self._requests[req] = outcome
            while len(self._requests) > MAX_REMEMBERED:
                self._requests.popitem(last=False)
            return outcome

    def _dispatch(self, op: str, cmd: dict[str, Any]) -> Outcome:
        handler = {
            "bootstrap": self._bootstrap,
            "rotate": self._rotate,
            "promote": self._promote,
            "barrier": self._barrier,
            "retire": self._retire,
            "backed_up": self._backed_up,
            "restore": self._restore,
            "member": self._member,
        }.get(op)
        if handler is None:
            return _fail("BAD_COMMAND", f"unknown command {op!r}")
        return handler(cmd)

    def _summary(self, version: int) -> dict[str, Any]:
        kv = self._keyring.get(version)
        return {"version": version, "state": kv.state.value if kv else None,
                "primary_version": self._keyring.primary}

    def _barrier(self, cmd: dict[str, Any]) -> Outcome:
        # Proposed by a new leader: once applied, its state reflects every earlier commit.
        return Outcome(True, {"last_id": self._keyring.last_id})

    def _bootstrap(self, cmd: dict[str, Any]) -> Outcome:
        sealed = _sealed_field(cmd)
        fp = _field(cmd, "fingerprint", str)
        created = _time_field(cmd, "created")
        if self._keyring.bootstrapped:
            return _fail("CONFLICT", "the cluster already has its first secret")
        self._keyring = self._keyring.with_version(
            KeyVersion(1, KeyState.PRIMARY, sealed, fp, created, promoted=created))
        return Outcome(True, self._summary(1))

    def _rotate(self, cmd: dict[str, Any]) -> Outcome:
        version = _version_field(cmd, "version")
        sealed = _sealed_field(cmd)
        fp = _field(cmd, "fingerprint", str)
        created = _time_field(cmd, "created")
        expect = _optional_version(cmd, "expect_primary")
        now = bool(_field(cmd, "now", bool))
        ring = self._keyring
        if not ring.bootstrapped:
            return _fail("NOT_READY", "the cluster has no first secret yet")
        if expect != ring.primary:
            return _fail("CONFLICT", f"the primary changed to version {ring.primary} "
                                     "(another rotation won)")
        if version != ring.last_id + 1:
            return _fail("CONFLICT", f"version {version} is not next (last is {ring.last_id}; "
                                     "another rotation won)")
        ring = ring.with_version(KeyVersion(version, KeyState.STAGED, sealed, fp, created))
        if now:
            ring = ring.promote(version, created)
        self._keyring = ring
        return Outcome(True, self._summary(version))

    def _promote(self, cmd: dict[str, Any]) -> Outcome:
        version = _version_field(cmd, "version")
        at = _time_field(cmd, "at")
        kv = self._keyring.get(version)
        if kv is None:
            return _fail("NOT_FOUND", f"version {version} does not exist")
        if kv.state is KeyState.PRIMARY:
            return Outcome(True, self._summary(version))
        if kv.state is not KeyState.STAGED:
            return _fail("CONFLICT", f"version {version} is {kv.state.value}, not staged")
        primary = self._keyring.primary
        if primary is not None and version < primary:
            return _fail("CONFLICT", f"version {version} is older than primary {primary}")
        self._keyring = self._keyring.promote(version, at)
        return Outcome(True, self._summary(version))

    def _retire(self, cmd: dict[str, Any]) -> Outcome:
        version = _version_field(cmd, "version")
        kv = self._keyring.get(version)
        if kv is None:
            return _fail("NOT_FOUND", f"version {version} does not exist")
        if kv.state is KeyState.PRIMARY:
            return _fail("CONFLICT", f"version {version} is the primary; rotate first")
        if kv.state is not KeyState.RETIRED:
            self._keyring = self._keyring.retire(version)
        return Outcome(True, self._summary(version))

    def _backed_up(self, cmd: dict[str, Any]) -> Outcome:
        raw = _field(cmd, "fingerprints", dict)
        fingerprints: dict[int, str] = {}
        for key, value in raw.items():
            if not (isinstance(key, str) and key.isascii() and key.isdigit()) or \
                    not isinstance(value, str):
                raise DecodeError("fingerprints must map version ids to strings")
            fingerprints[int(key)] = value
        self._keyring, marked = self._keyring.mark_backed_up(fingerprints)
        return Outcome(True, {"marked": marked})

    def _member(self, cmd: dict[str, Any]) -> Outcome:
        """Record a node added to or removed from the Raft configuration.

        A removed id is a tombstone: it never becomes a member again, so a node that
        comes back with the stale data of a removed member cannot slip back in.
        """
        node_id = _field(cmd, "node_id", str)
        raft_address = _field(cmd, "raft_address", str)
        service_address = _field(cmd, "service_address", str)
        removed = bool(_field(cmd, "removed", bool))
        if not 0 < len(node_id) <= 64:
            raise DecodeError("node ids are 1 to 64 characters")
        current = self._directory.get(node_id)
        if current is not None and current["removed"] and not removed:
            return _fail("CONFLICT", f"{node_id} was removed from this cluster; a removed "
                                     "node never rejoins (use a new node id)")
        self._directory[node_id] = {"raft_address": raft_address,
                                    "service_address": service_address, "removed": removed}
        return Outcome(True, {"node_id": node_id, "removed": removed})

    def _restore(self, cmd: dict[str, Any]) -> Outcome:
        """Merge versions from a backup; never drops or overwrites a different version.

        A *new* cluster (only its bootstrap version, never backed up) may have that version
        replaced when ``replace_new`` is set: disaster recovery into a fresh deployment.
        """
        at = _time_field(cmd, "at")
        replace_new = bool(_field(cmd, "replace_new", bool))
        backup_primary = _optional_version(cmd, "primary")
        incoming = []
        for raw in _field(cmd, "versions", list):
            if not isinstance(raw, dict):
                raise DecodeError("restored versions must be maps")
            incoming.append(KeyVersion(
                id=_version_field(raw, "id"), state=KeyState.ACTIVE, sealed=_sealed_field(raw),
                fingerprint=_field(raw, "fingerprint", str),
                created=_time_field(raw, "created"), backed_up=True))
        if not incoming:
            return _fail("BAD_COMMAND", "the backup holds no versions")
        if len({v.id for v in incoming}) != len(incoming):
            raise DecodeError("the restored versions have duplicate ids")
        if backup_primary is not None and backup_primary not in {v.id for v in incoming}:
            raise DecodeError("the backup's primary is not among its versions")
        ring = self._keyring
        conflicts = [v.id for v in incoming
                     if (cur := ring.get(v.id)) is not None and cur.fingerprint != v.fingerprint]
        replaced: list[int] = []
        if conflicts:
            new = (len(ring.versions) == 1 and ring.versions[0].id == 1
                   and not ring.versions[0].backed_up)
            if not (replace_new and new):
                return _fail("CONFLICT", (
                    f"version(s) {', '.join(map(str, conflicts))} of this cluster differ from "
                    "the backup's; restore only merges into the cluster the backup came "
                    "from, or replaces the first secret of a brand-new cluster"))
            replaced = [ring.versions[0].id]
            ring = Keyring()
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
        if backup_primary is not None and (primary is None or backup_primary > primary):
            ring = ring.promote(backup_primary, at)
        elif ring.primary is None:  # a backup without a primary: never leave none
            ring = ring.promote(ring.last_id, at)
        self._keyring = ring
        return Outcome(True, {"added": added, "revived": revived, "replaced": replaced,
                              "primary_version": ring.primary})

    # -- snapshots ------------------------------------------------------------

    def snapshot(self) -> bytes:
        with self._lock:
            return versioned(SNAPSHOT_FORMAT, {
                "index": self._index,
                "directory": self._directory,
                "versions": [v.to_wire() for v in self._keyring.versions],
                "requests": [[k, o.to_wire()] for k, o in self._requests.items()],
            })

    def restore(self, blob: bytes) -> None:
        """Replace the state with a snapshot; raises :class:`DecodeError` if malformed."""
        raw = unversioned(blob, SNAPSHOT_FORMAT, "snapshot")
        if not isinstance(raw, dict):
            raise DecodeError("a snapshot must be a map")
        try:
            versions = tuple(_snapshot_version(v) for v in raw["versions"])
            requests = OrderedDict(_snapshot_request(r) for r in raw["requests"])
            index = raw.get("index", 0)
            raw_directory = raw.get("directory", {})
            if not isinstance(raw_directory, dict):
                raise TypeError("the member directory must be a map")
            directory = {str(k): {"raft_address": str(v["raft_address"]),
                                  "service_address": str(v["service_address"]),
                                  "removed": bool(v["removed"])}
                         for k, v in raw_directory.items()}
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise DecodeError(f"malformed snapshot: {exc}") from None
        ids = [v.id for v in versions]
        if ids != sorted(set(ids)):
            raise DecodeError("malformed snapshot: version ids are not unique and increasing")
        if sum(v.state is KeyState.PRIMARY for v in versions) > 1:
            raise DecodeError("malformed snapshot: more than one primary")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise DecodeError("malformed snapshot: bad index")
        with self._lock:
            self._keyring = Keyring(versions)
            self._requests = requests
            self._index = index
            self._directory = directory


def _snapshot_version(raw: Any) -> KeyVersion:
    if not isinstance(raw, dict):
        raise TypeError("a version must be a map")
    version = KeyVersion.from_wire(raw)
    if not 0 < version.id < 2**32 or isinstance(raw["id"], bool):
        raise ValueError("version id out of range")
    if version.sealed is None:
        if version.state is not KeyState.RETIRED:
            raise ValueError(f"version {version.id} has no key but is {version.state.value}")
    elif not isinstance(version.sealed, bytes) or len(version.sealed) != SEALED_SIZE:
        raise ValueError(f"version {version.id} has a malformed sealed key")
    return version


def _snapshot_request(raw: Any) -> tuple[bytes, Outcome]:
    if not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[0], bytes) or \
            len(raw[0]) != REQUEST_ID_SIZE or not isinstance(raw[1], dict):
        raise ValueError("a remembered request must be [16 bytes, outcome]")
    return raw[0], Outcome.from_wire(raw[1])
