"""Password-protected backup files of the master secrets (ENTSSO's ``-backupSecret``).

::

    "RSSOBAK" | format (1) | header length (u32 BE) | header (msgpack) | nonce (12) | sealed

The header is readable without the password (``backup-info``: cluster id, versions with
fingerprints, the password reminder, the KDF parameters) and is *authenticated*: it is the
associated data of the AES-256-GCM encryption of the body, so a changed header fails like
a wrong password. The key comes from the password through Argon2id (64 MiB, 3 passes,
4 lanes by default); parameters read from a file are capped near those (see
``_KDF_LIMITS`` and ``MAX_KDF_WORK``) and checked before any derivation. The body holds
every non-retired version's key.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from raftsso import envelope
from raftsso.errors import DecodeError, InvalidToken, RaftssoError
from raftsso.protocol.ids import version_id
from raftsso.wire import pack, unpack

MAGIC = b"RSSOBAK"
FORMAT = 1
_LEN = struct.Struct(">I")
MAX_HEADER = 1 << 20
MIN_PASSWORD = 12
# What protects the body of each format (format 2: raftsso.backup_recipient).
_PROTECTION = {1: "a password (restore it with --password-file)",
               2: "a public key (restore it with --identity KEY)"}
DEFAULT_KDF: dict[str, Any] = {"name": "argon2id", "memory_kib": 65536, "iterations": 3,
                               "lanes": 4}
# Caps on KDF parameters read from a file, close to what raftsso writes: a crafted file
# must not make us allocate gigabytes or spin for a minute before the password is even
# checked (1 GiB and 64 passes once cost 76 s). At most 256 MiB, 8 passes, 16 lanes, and
# memory x passes at most 4 times the default's (one derivation ~4x the default's time).
_KDF_LIMITS = {"memory_kib": (8, 256 << 10), "iterations": (1, 8), "lanes": (1, 16)}
MAX_KDF_WORK = 4 * 65536 * 3  # KiB x passes: 4 times the default's


class BackupError(RaftssoError):
    """A backup file cannot be used: malformed, wrong password, or damaged."""


@dataclass(frozen=True)
class BackupVersion:
    id: int
    state: str
    fingerprint: str
    created: float
    key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class BackupInfo:
    cluster_id: str
    created: float
    reminder: str
    primary: int | None
    versions: tuple[BackupVersion, ...]
    kdf: dict[str, Any]


def check_password(password: bytes) -> None:
    if len(password) < MIN_PASSWORD:
        raise BackupError(f"the backup password must be at least {MIN_PASSWORD} characters")


def _derive(password: bytes, kdf: dict[str, Any]) -> bytes:
    return Argon2id(salt=kdf["salt"], length=envelope.KEY_SIZE, iterations=kdf["iterations"],
                    lanes=kdf["lanes"], memory_cost=kdf["memory_kib"]).derive(password)


def write_backup(password: bytes, *, cluster_id: str, primary: int | None,
                 versions: list[BackupVersion], reminder: str = "",
                 kdf: dict[str, Any] | None = None) -> bytes:
    """The bytes of a backup file (the caller writes them atomically, 0600)."""
    check_password(password)
    if not versions or any(v.key is None or len(v.key) != envelope.KEY_SIZE for v in versions):
        raise BackupError("a backup needs at least one version with its key")
    params = {**(kdf or DEFAULT_KDF), "salt": os.urandom(16)}
    _kdf({"kdf": params})  # never write a file that raftsso would refuse to open
    prefix = frame(FORMAT, {"kdf": params, **describe(cluster_id, primary, versions, reminder)})
    return prefix + envelope.aead_encrypt(_derive(password, params), body(versions), prefix)


def describe(cluster_id: str, primary: int | None, versions: list[BackupVersion],
             reminder: str = "") -> dict[str, Any]:
    """The readable header fields every backup format shares (no key material)."""
    return {"cluster_id": cluster_id, "created": time.time(), "reminder": reminder,
            "primary": primary,
            "versions": [{"id": v.id, "state": v.state, "fingerprint": v.fingerprint,
                          "created": v.created} for v in versions]}


def body(versions: list[BackupVersion]) -> bytes:
    """The plaintext every backup format encrypts: each version's key and fingerprint."""
    if not versions or any(v.key is None or len(v.key) != envelope.KEY_SIZE for v in versions):
        raise BackupError("a backup needs at least one version with its key")
    return pack({"versions": [{"id": v.id, "key": v.key, "fingerprint": v.fingerprint}
                              for v in versions]})


def file_format(blob: bytes) -> int:
    """The format byte of a backup file (1: password, 2: public key, see
    :mod:`raftsso.backup_recipient`); :class:`BackupError` if it is no backup at all."""
    if len(blob) < len(MAGIC) + 1 + _LEN.size or blob[:len(MAGIC)] != MAGIC:
        raise BackupError("not a raftsso backup file")
    return blob[len(MAGIC)]


def frame(fmt: int, header: dict[str, Any]) -> bytes:
    """``MAGIC | format | header length | header``: the authenticated prefix of a file."""
    packed = pack(header)
    return MAGIC + bytes([fmt]) + _LEN.pack(len(packed)) + packed


def split(blob: bytes, fmt: int = FORMAT) -> tuple[bytes, dict[str, Any], bytes]:
    """``(authenticated prefix, header, sealed body)`` of a file of format ``fmt``."""
    head = len(MAGIC) + 1 + _LEN.size
    found = file_format(blob)
    if found != fmt:
        if found in _PROTECTION:
            raise BackupError(f"this backup file is protected by {_PROTECTION[found]}, "
                              f"not by {_PROTECTION.get(fmt, 'this method')}")
        raise BackupError(f"backup format {found} is not supported "
                          f"(this raftsso reads formats {', '.join(map(str, _PROTECTION))})")
    (length,) = _LEN.unpack_from(blob, len(MAGIC) + 1)
    if length > MAX_HEADER or head + length > len(blob):
        raise BackupError("the backup file is truncated or damaged")
    try:
        header = unpack(blob[head:head + length])
    except DecodeError:
        raise BackupError("the backup file's header is damaged") from None
    if not isinstance(header, dict):
        raise BackupError("the backup file's header is damaged")
    return blob[:head + length], header, blob[head + length:]


def _kdf(header: dict[str, Any]) -> dict[str, Any]:
    kdf = header.get("kdf")
    if not isinstance(kdf, dict) or kdf.get("name") != "argon2id" or \
            not isinstance(kdf.get("salt"), bytes) or len(kdf["salt"]) < 8:
        raise BackupError("the backup file names an unknown or damaged key derivation")
    for name, (low, high) in _KDF_LIMITS.items():
        value = kdf.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise BackupError(f"the backup file's KDF parameter {name} is out of range")
        if not low <= value <= high:
            raise BackupError(f"the backup file's KDF parameter {name} is out of range "
                              f"({value}; raftsso allows {low} to {high})")
    if kdf["memory_kib"] < 8 * kdf["lanes"]:  # Argon2's own rule
        raise BackupError("the backup file's KDF parameters are inconsistent")
    if kdf["memory_kib"] * kdf["iterations"] > MAX_KDF_WORK:
        raise BackupError(f"the backup file's KDF parameters ask for too much work "
                          f"({kdf['memory_kib']} KiB x {kdf['iterations']} passes; raftsso "
                          f"allows at most {MAX_KDF_WORK} KiB x passes, 4 times its default)")
    return kdf


def _int_id(value: Any) -> int:
    return version_id(value)  # ValueError unless 1 .. 2**32 - 1


def read_info(blob: bytes) -> BackupInfo:
    """The header, without the password (not yet authenticated: see :func:`open_backup`)."""
    _, header, _ = split(blob)
    return header_info(header, {k: v for k, v in _kdf(header).items() if k != "salt"})


def header_info(header: dict[str, Any], kdf: dict[str, Any]) -> BackupInfo:
    """The shared header fields of any format; ``kdf`` says how the body is protected."""
    try:
        versions = tuple(
            BackupVersion(_int_id(v["id"]), str(v["state"]), str(v["fingerprint"]),
                          float(v["created"]))
            for v in header["versions"])
        if len({v.id for v in versions}) != len(versions):
            raise ValueError("duplicate version ids")
        primary = header.get("primary")
        return BackupInfo(
            cluster_id=str(header["cluster_id"]), created=float(header["created"]),
            reminder=str(header.get("reminder", "")),
            primary=int(primary) if isinstance(primary, int) else None,
            versions=versions, kdf=kdf)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise BackupError(f"the backup file's header is damaged ({exc})") from None


def open_backup(blob: bytes, password: bytes) -> BackupInfo:
    """Decrypt and verify a backup; :class:`BackupError` for a wrong password or damage."""
    prefix, header, sealed = split(blob)
    info = read_info(blob)
    try:
        plain = envelope.aead_decrypt(_derive(password, _kdf(header)), sealed, prefix)
    except InvalidToken:
        raise BackupError("wrong password, or the backup file was changed or damaged") from None
    return with_keys(info, plain)


def with_keys(info: BackupInfo, plain: bytes) -> BackupInfo:
    """``info`` with every version's key from a decrypted body, checked against the
    fingerprints of the body and of the (now authenticated) header."""
    try:
        body = unpack(plain)
    except DecodeError:
        raise BackupError("the backup file's contents are damaged") from None
    keys: dict[int, bytes] = {}
    expected = {v.id: v.fingerprint for v in info.versions}
    try:
        for v in body["versions"]:
            key, vid = v["key"], _int_id(v["id"])
            # The key must match the fingerprint in the body *and* the one in the header
            # that backup-info shows and restore records.
            if not isinstance(key, bytes) or len(key) != envelope.KEY_SIZE or \
                    envelope.fingerprint(key) != v["fingerprint"]:
                raise BackupError(f"version {v.get('id')} in the backup is damaged")
            if expected.get(vid) != v["fingerprint"] or vid in keys:
                raise BackupError("the backup's header and contents disagree")
            keys[vid] = key
    except (KeyError, TypeError, ValueError):
        raise BackupError("the backup file's contents are damaged") from None
    if set(keys) != {v.id for v in info.versions}:
        raise BackupError("the backup's header and contents disagree")
    versions = tuple(BackupVersion(v.id, v.state, v.fingerprint, v.created, keys[v.id])
                     for v in info.versions)
    return BackupInfo(info.cluster_id, info.created, info.reminder, info.primary, versions,
                      info.kdf)
