"""Backups encrypted to a public key: what a node can write with no password (``[backup]``).

The operator makes a key pair once (``raftsso backup keygen --out KEY``: ``KEY`` is the
*identity*, kept offline, 0600; ``KEY.pub`` the *recipient*, given to the nodes). A node
encrypts each backup to the recipient; only the identity opens it. The scheme is age's
X25519 recipient, with raftsso's own framing::

    "RSSOBAK" | format (2) | header length (u32 BE) | header (msgpack) | nonce (12) | sealed

    header = {"recipient": {"scheme", "key_id", "ephemeral"}, "cluster_id", "created",
              "reminder", "primary", "versions": [{id, state, fingerprint, created}]}

* a fresh ephemeral X25519 key per file; ``shared = X25519(ephemeral, recipient)``;
* ``file key = HKDF-SHA256(shared, salt = ephemeral public | recipient public,
  info = "raftsso/backup/x25519/v1")``, 32 bytes, used for this one file only;
* the body (every version's key, :func:`raftsso.backup.body`) is AES-256-GCM under the file
  key through :func:`raftsso.envelope.aead_encrypt`, with the whole prefix (magic, format,
  header) as associated data: a changed header, key id or ephemeral key fails like a wrong
  identity.

``key_id`` (a hash of the recipient's public key) is in the header so that ``restore`` can
say which identity a file needs; it is authenticated with the rest of the header. Format 1
(password backups, :mod:`raftsso.backup`) is unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from raftsso import envelope
from raftsso.backup import FORMAT as PASSWORD_FORMAT
from raftsso.backup import (
    BackupError,
    BackupInfo,
    BackupVersion,
    body,
    describe,
    file_format,
    frame,
    header_info,
    read_info,
    split,
    with_keys,
)
from raftsso.errors import ConfigError, InvalidToken
from raftsso.fsutil import atomic_write, read_private

FORMAT = 2
SCHEME = "x25519-hkdf-sha256"
_KEY_SIZE = 32
_HKDF_INFO = b"raftsso/backup/x25519/v1"
_KEY_ID_DOMAIN = b"raftsso/backup-recipient/v1\x00"
IDENTITY_HEADER = "raftsso-backup-identity v1"
RECIPIENT_HEADER = "raftsso-backup-recipient v1"


def key_id(public: bytes) -> str:
    """A short name of a recipient key, safe to print (in the header and in KEY.pub)."""
    return hashlib.sha256(_KEY_ID_DOMAIN + public).hexdigest()[:16]


class Recipient:
    """A recipient public key (``KEY.pub``)."""

    __slots__ = ("_key", "key_id", "public")

    def __init__(self, public: bytes) -> None:
        if len(public) != _KEY_SIZE:
            raise ValueError("an X25519 public key is 32 bytes")
        self.public = public
        self._key = X25519PublicKey.from_public_bytes(public)
        self.key_id = key_id(public)

    def __repr__(self) -> str:
        return f"Recipient(key_id={self.key_id!r})"


class Identity:
    """An identity (the private key, ``KEY``); never shown in a repr."""

    __slots__ = ("_key", "recipient")

    def __init__(self, private: bytes) -> None:
        if len(private) != _KEY_SIZE:
            raise ValueError("an X25519 private key is 32 bytes")
        self._key = X25519PrivateKey.from_private_bytes(private)
        self.recipient = Recipient(self._key.public_key().public_bytes_raw())

    def __repr__(self) -> str:
        return f"Identity(key_id={self.recipient.key_id!r})"

    @classmethod
    def generate(cls) -> Identity:
        return cls(X25519PrivateKey.generate().private_bytes_raw())

    def private_bytes(self) -> bytes:
        return self._key.private_bytes_raw()

    def exchange(self, public: bytes) -> bytes:
        return _exchange(self._key, public)


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # a low-order point gives an all-zero secret: refused by cryptography
        raise BackupError("the backup's ephemeral key is not a valid X25519 key") from None


def _file_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=envelope.KEY_SIZE,
                salt=ephemeral + recipient, info=_HKDF_INFO).derive(shared)


# -- key files ----------------------------------------------------------------------------


def _key_file(text: str, header: str, path: Path, what: str) -> bytes:
    try:
        first, b64 = text.split("\n", 2)[:2]
        if first.split(" key-id ")[0] != header:
            raise ValueError
        raw = base64.b64decode(b64.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise ConfigError(f"{path} is not a raftsso backup {what} file (expected a first "
                          f"line {header!r}; made by `raftsso backup keygen`)") from None
    if len(raw) != _KEY_SIZE:
        raise ConfigError(f"{path}: a backup {what} key is {_KEY_SIZE} bytes")
    return raw


def load_identity(path: Path) -> Identity:
    """Read ``KEY`` (must be 0600: whoever reads it opens every backup)."""
    raw = read_private(path, limit=4096)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a raftsso backup identity file") from None
    return Identity(_key_file(text, IDENTITY_HEADER, path, "identity"))


def load_recipient(path: Path) -> Recipient:
    """Read ``KEY.pub`` (public; any mode)."""
    try:
        raw = path.read_bytes()[:4096]
        text = raw.decode("ascii")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a raftsso backup recipient file") from None
    return Recipient(_key_file(text, RECIPIENT_HEADER, path, "recipient"))


def public_path(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def keygen(path: Path) -> Identity:
    """Write a new identity to ``path`` (0600) and its recipient to ``path.pub`` (0644).

    Refuses to replace either file: losing an identity loses every backup made for it.
    """
    pub = public_path(path)
    for p in (path, pub):
        if p.exists():
            raise ConfigError(f"{p} exists; a backup identity is never overwritten "
                              "(the backups made for it would become unreadable)")
    identity = Identity.generate()
    recipient = identity.recipient
    atomic_write(path, f"{IDENTITY_HEADER}\n"
                       f"{base64.b64encode(identity.private_bytes()).decode()}\n".encode(),
                 mode=0o600)
    atomic_write(pub, f"{RECIPIENT_HEADER} key-id {recipient.key_id}\n"
                      f"{base64.b64encode(recipient.public).decode()}\n".encode(), mode=0o644)
    return identity


# -- files --------------------------------------------------------------------------------


def write_backup(recipient: Recipient, *, cluster_id: str, primary: int | None,
                 versions: list[BackupVersion], reminder: str = "") -> bytes:
    """The bytes of a backup file encrypted to ``recipient`` (write them atomically)."""
    plain = body(versions)  # checks that every version carries its key
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    shared = _exchange(ephemeral, recipient.public)
    prefix = frame(FORMAT, {
        "recipient": {"scheme": SCHEME, "key_id": recipient.key_id,
                      "ephemeral": ephemeral_public},
        **describe(cluster_id, primary, versions, reminder)})
    return prefix + envelope.aead_encrypt(
        _file_key(shared, ephemeral_public, recipient.public), plain, prefix)


def _recipient_header(header: dict[str, Any]) -> dict[str, Any]:
    raw = header.get("recipient")
    if not isinstance(raw, dict) or raw.get("scheme") != SCHEME or \
            not isinstance(raw.get("key_id"), str) or \
            not isinstance(raw.get("ephemeral"), bytes) or len(raw["ephemeral"]) != _KEY_SIZE:
        raise BackupError("the backup file names an unknown or damaged recipient scheme")
    return raw


def read_recipient_info(blob: bytes) -> BackupInfo:
    """The header of a format-2 file, unauthenticated until :func:`open_backup`."""
    _, header, _ = split(blob, FORMAT)
    recipient = _recipient_header(header)
    return header_info(header, {"name": SCHEME, "key_id": recipient["key_id"]})


def open_backup(blob: bytes, identity: Identity) -> BackupInfo:
    """Decrypt and verify a format-2 file; :class:`BackupError` for the wrong identity or
    any damage."""
    prefix, header, sealed = split(blob, FORMAT)
    info = read_recipient_info(blob)
    recipient = _recipient_header(header)
    mine = identity.recipient
    if recipient["key_id"] != mine.key_id:
        raise BackupError(f"this backup is encrypted to key {recipient['key_id']}, not to "
                          f"this identity (key {mine.key_id})")
    shared = identity.exchange(recipient["ephemeral"])
    try:
        plain = envelope.aead_decrypt(_file_key(shared, recipient["ephemeral"], mine.public),
                                      sealed, prefix)
    except InvalidToken:
        raise BackupError("the backup file was changed or damaged (it does not open with "
                          "its identity)") from None
    return with_keys(info, plain)


def read_any_info(blob: bytes) -> BackupInfo:
    """The header of a backup of either format (``backup-info``)."""
    return read_recipient_info(blob) if file_format(blob) == FORMAT else read_info(blob)


def is_recipient_backup(blob: bytes) -> bool:
    """True for a format-2 file; False for a password backup; :class:`BackupError` for
    anything else."""
    fmt = file_format(blob)
    if fmt not in (FORMAT, PASSWORD_FORMAT):
        split(blob, FORMAT)  # raises the one "format not supported" error
    return fmt == FORMAT
