"""Every use of AES-256-GCM in raftsso: sealing master secrets and client envelopes.

Two formats, both starting with a format version byte:

* **sealed secret** (replicated state, Raft journal, snapshots)::

      0x01 | nonce (12) | AES-GCM(seal_key, secret) (32 + 16)
      AAD = b"raftsso/seal/v1" | 0x00 | cluster_id | 0x00 | version id (u64, big endian)

  Binding cluster id and version id means a sealed blob cannot be replayed as another
  version or into another cluster.

* **client token** (what the SSO store keeps)::

      0x01 | key version id (u32, big endian) | nonce (12) | AES-GCM(master, data)
      AAD = the first 5 bytes (format and key version) | associated data

Every failure to open either format raises the one opaque :class:`InvalidToken`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from raftsso.errors import InvalidToken
from raftsso.protocol.ids import version_id

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

SEAL_FORMAT = 1
SEALED_SIZE = 1 + NONCE_SIZE + KEY_SIZE + TAG_SIZE
_SEAL_AAD_PREFIX = b"raftsso/seal/v1\x00"

TOKEN_FORMAT = 1
_TOKEN_HEADER = struct.Struct(">BI")
TOKEN_OVERHEAD = _TOKEN_HEADER.size + NONCE_SIZE + TAG_SIZE
MAX_KEY_VERSION = 0xFFFFFFFF

_FINGERPRINT_DOMAIN = b"raftsso/fingerprint/v1\x00"


def new_key() -> bytes:
    """256 fresh random bits from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_SIZE)


def fingerprint(key: bytes) -> str:
    """A short, one-way identifier of a key, safe to print and log."""
    return hashlib.sha256(_FINGERPRINT_DOMAIN + key).hexdigest()[:16]


def _seal_aad(cluster_id: str, version: int) -> bytes:
    return _SEAL_AAD_PREFIX + cluster_id.encode() + b"\x00" + struct.pack(">Q", version)


def seal(seal_key: bytes, secret: bytes, *, cluster_id: str, version: int,
         _nonce: bytes | None = None) -> bytes:
    """Wrap a master secret under the cluster seal key for replication."""
    if len(seal_key) != KEY_SIZE or len(secret) != KEY_SIZE:
        raise ValueError("seal key and secret must be 32 bytes")
    nonce = _nonce if _nonce is not None else os.urandom(NONCE_SIZE)
    body = AESGCM(seal_key).encrypt(nonce, secret, _seal_aad(cluster_id, version))
    return bytes([SEAL_FORMAT]) + nonce + body


def unseal(seal_key: bytes, sealed: bytes, *, cluster_id: str, version: int) -> bytes:
    """Open a sealed master secret; :class:`InvalidToken` on any mismatch."""
    if len(sealed) != SEALED_SIZE or sealed[0] != SEAL_FORMAT or len(seal_key) != KEY_SIZE:
        raise InvalidToken()
    nonce = sealed[1:1 + NONCE_SIZE]
    try:
        return AESGCM(seal_key).decrypt(nonce, sealed[1 + NONCE_SIZE:],
                                        _seal_aad(cluster_id, version))
    except InvalidTag:
        raise InvalidToken() from None


def token_key_version(token: bytes) -> int:
    """The key version a client token was made with (unauthenticated until decrypted)."""
    if len(token) < TOKEN_OVERHEAD or token[0] != TOKEN_FORMAT:
        raise InvalidToken()
    return int(_TOKEN_HEADER.unpack_from(token)[1])


class Envelope:
    """AES-256-GCM under one master secret version; the cipher object is built once."""

    __slots__ = ("_aead", "version")

    def __init__(self, version: int, key: bytes) -> None:
        version_id(version)  # ValueError when out of range
        if len(key) != KEY_SIZE:
            raise ValueError("a master secret is 32 bytes")
        self.version = version
        self._aead = AESGCM(key)

    def __repr__(self) -> str:  # never show key material
        return f"Envelope(version={self.version})"

    def encrypt(self, data: bytes, associated_data: bytes = b"", *,
                _nonce: bytes | None = None) -> bytes:
        header = _TOKEN_HEADER.pack(TOKEN_FORMAT, self.version)
        nonce = _nonce if _nonce is not None else os.urandom(NONCE_SIZE)
        return header + nonce + self._aead.encrypt(nonce, data, header + associated_data)

    def decrypt(self, token: bytes, associated_data: bytes = b"") -> bytes:
        if token_key_version(token) != self.version:
            raise InvalidToken()
        header = token[:_TOKEN_HEADER.size]
        nonce = token[_TOKEN_HEADER.size:_TOKEN_HEADER.size + NONCE_SIZE]
        try:
            return self._aead.decrypt(nonce, token[_TOKEN_HEADER.size + NONCE_SIZE:],
                                      header + associated_data)
        except InvalidTag:
            raise InvalidToken() from None


def aead_encrypt(key: bytes, plaintext: bytes, associated_data: bytes,
                 _nonce: bytes | None = None) -> bytes:
    """``nonce | AES-256-GCM(key, plaintext)`` for file formats (backups)."""
    nonce = _nonce if _nonce is not None else os.urandom(NONCE_SIZE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def aead_decrypt(key: bytes, blob: bytes, associated_data: bytes) -> bytes:
    if len(blob) < NONCE_SIZE + TAG_SIZE or len(key) != KEY_SIZE:
        raise InvalidToken()
    try:
        return AESGCM(key).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], associated_data)
    except InvalidTag:
        raise InvalidToken() from None
