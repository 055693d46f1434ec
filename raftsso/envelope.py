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

**Client token nonces** are not drawn from ``os.urandom`` per call (a ``getrandom`` system
call that costs as much as the AES-GCM call itself): each process draws one random 96-bit
starting point and counts up from it (:func:`next_nonce`). Uniqueness, which is all GCM
needs from a nonce:

* threads: ``itertools.count`` hands out each number exactly once; its ``__next__`` is one
  C call that runs no Python code, so under the GIL two threads never get the same one (a
  free-threaded build takes a lock instead);
* ``fork()``: a child would otherwise continue the parent's sequence, so
  ``os.register_at_fork(after_in_child=...)`` draws a fresh starting point in every child
  before any of its Python code runs (``multiprocessing``, gunicorn and ``os.fork`` all
  run the hook; ``subprocess`` runs no Python in the child);
* processes (and forks, and restarts) using the same key: each is a run of consecutive
  numbers from a uniformly random start in a 96-bit space, so two runs of at most *L*
  nonces overlap with probability at most 2L / 2^96. Over S runs and M messages in all
  under one key, a repeat has probability at most S * M / 2^96: with M = 2^32 messages
  (the NIST SP 800-38D limit for random 96-bit nonces) and a million runs that is below
  2^-44, far better than random nonces (M^2 / 2^97 = 2^-33 at the same M). Keys rotate
  long before: a rotation starts a new key, and every figure above is per key.

A restored VM snapshot or a cloned process image repeats its counter (as it would repeat
a userspace random generator's state); fork is the case that Python can see, and does.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Iterator

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
_HEADER_END = _TOKEN_HEADER.size  # plain ints below: Struct.size is a slower lookup
_NONCE_END = _HEADER_END + NONCE_SIZE
TOKEN_OVERHEAD = _NONCE_END + TAG_SIZE
_VIEW_FROM = 4096
MAX_KEY_VERSION = 0xFFFFFFFF

_FINGERPRINT_DOMAIN = b"raftsso/fingerprint/v1\x00"


def new_key() -> bytes:
    """256 fresh random bits from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_SIZE)


def fingerprint(key: bytes) -> str:
    """A short, one-way identifier of a key, safe to print and log."""
    return hashlib.sha256(_FINGERPRINT_DOMAIN + key).hexdigest()[:16]


def seal_aad(cluster_id: str, version: int) -> bytes:
    """The associated data of a format-1 sealed secret (a PKCS#11 token opens those too)."""
    return _SEAL_AAD_PREFIX + cluster_id.encode() + b"\x00" + struct.pack(">Q", version)


def seal(seal_key: bytes, secret: bytes, *, cluster_id: str, version: int,
         _nonce: bytes | None = None) -> bytes:
    """Wrap a master secret under the cluster seal key for replication."""
    if len(seal_key) != KEY_SIZE or len(secret) != KEY_SIZE:
        raise ValueError("seal key and secret must be 32 bytes")
    nonce = _nonce if _nonce is not None else os.urandom(NONCE_SIZE)
    body = AESGCM(seal_key).encrypt(nonce, secret, seal_aad(cluster_id, version))
    return bytes([SEAL_FORMAT]) + nonce + body


def unseal(seal_key: bytes, sealed: bytes, *, cluster_id: str, version: int) -> bytes:
    """Open a sealed master secret; :class:`InvalidToken` on any mismatch."""
    if len(sealed) != SEALED_SIZE or sealed[0] != SEAL_FORMAT or len(seal_key) != KEY_SIZE:
        raise InvalidToken()
    nonce = sealed[1:1 + NONCE_SIZE]
    try:
        return AESGCM(seal_key).decrypt(nonce, sealed[1 + NONCE_SIZE:],
                                        seal_aad(cluster_id, version))
    except InvalidTag:
        raise InvalidToken() from None


def token_key_version(token: bytes) -> int:
    """The key version a client token was made with (unauthenticated until decrypted)."""
    if len(token) < TOKEN_OVERHEAD or token[0] != TOKEN_FORMAT:
        raise InvalidToken()
    return int(_TOKEN_HEADER.unpack_from(token)[1])


# -- token nonces: one counter per process from a random start (see the module docstring) --

_NONCE_SPACE = 1 << (8 * NONCE_SIZE)
# A start below 2^96 - 2^64 leaves every process 2^64 nonces before the 96-bit counter
# could wrap (at a billion encryptions a second, 584 years).
_NONCE_RUN = 1 << 64


def _gil_enabled() -> bool:
    probe: Callable[[], bool] | None = getattr(sys, "_is_gil_enabled", None)
    return True if probe is None else probe()


class _LockedRun:  # pragma: no cover - free-threaded CPython only
    """Free-threaded CPython: ``count.__next__`` is not atomic there, so take a lock."""

    def __init__(self, run: Iterator[bytes]) -> None:
        self._run = run
        self._lock = threading.Lock()

    def __iter__(self) -> _LockedRun:
        return self

    def __next__(self) -> bytes:
        with self._lock:
            return next(self._run)


def _nonce_run() -> Iterator[bytes]:
    start = int.from_bytes(os.urandom(NONCE_SIZE), "big") % (_NONCE_SPACE - _NONCE_RUN)
    # map over count and int.to_bytes: one C-level __next__ (no Python frame), ~50 ns.
    run = map(int.to_bytes, itertools.count(start), itertools.repeat(NONCE_SIZE))
    return run if _gil_enabled() else _LockedRun(run)


_nonces = _nonce_run()


def _new_nonce_run_after_fork() -> None:
    # A fresh lock too: one held by another thread at fork time would never be released.
    global _nonces
    _nonces = _nonce_run()


os.register_at_fork(after_in_child=_new_nonce_run_after_fork)


def next_nonce() -> bytes:
    """A 12-byte nonce never returned before in this process (nor in its forks)."""
    return next(_nonces)


class Envelope:
    """AES-256-GCM under one master secret version; the cipher object is built once.

    The hot path is written for CPython's costs: the header (format and version) is packed
    once, the cipher's bound methods are kept, and a token is opened with one comparison of
    its first five bytes; every Python operation here costs a tenth of the AES call.
    """

    __slots__ = ("_open", "_seal", "header", "version")

    def __init__(self, version: int, key: bytes) -> None:
        version_id(version)  # ValueError when out of range
        if len(key) != KEY_SIZE:
            raise ValueError("a master secret is 32 bytes")
        self.version = version
        #: the first five bytes of every token made under this version (also its AAD prefix)
        self.header = _TOKEN_HEADER.pack(TOKEN_FORMAT, version)
        aead = AESGCM(key)
        self._seal = aead.encrypt
        self._open = aead.decrypt

    def __repr__(self) -> str:  # never show key material
        return f"Envelope(version={self.version})"

    def encrypt(self, data: bytes, associated_data: bytes = b"", *,
                _nonce: bytes | None = None) -> bytes:
        nonce = next(_nonces) if _nonce is None else _nonce
        header = self.header
        return header + nonce + self._seal(nonce, data, header + associated_data)

    def decrypt(self, token: bytes, associated_data: bytes = b"") -> bytes:
        header = self.header
        size = len(token)
        # The length check first: a short token must not reach the slicing below.
        if size < TOKEN_OVERHEAD or token[:_HEADER_END] != header:
            raise InvalidToken()
        # Slicing copies; past a few KiB a memoryview (a fixed ~0.1 us) is cheaper.
        body = token[_NONCE_END:] if size < _VIEW_FROM else memoryview(token)[_NONCE_END:]
        try:
            return self._open(token[_HEADER_END:_NONCE_END], body, header + associated_data)
        except InvalidTag:
            raise InvalidToken() from None


class Keyset:
    """The envelopes of one keyring, found by a token's first five bytes (format, version).

    :meth:`decrypt` is the client's hot path: the lookup checks the format byte and finds
    the version at once, and the token is opened in the same frame.
    """

    __slots__ = ("_by_header",)

    def __init__(self, envelopes: Iterable[Envelope]) -> None:
        self._by_header = {e.header: (e.header, e._open) for e in envelopes}

    def decrypt(self, token: bytes, associated_data: bytes = b"") -> bytes | None:
        """The plaintext; ``None`` when no envelope here made a token with this header
        (another version, or not a token at all); :class:`InvalidToken` when one did but
        the token does not open."""
        try:
            found = self._by_header.get(token[:_HEADER_END])
        except (TypeError, ValueError):  # unhashable (bytearray, writable memoryview)
            return None
        if found is None:
            return None
        header, open_ = found
        size = len(token)
        if size < TOKEN_OVERHEAD:
            raise InvalidToken()
        body = token[_NONCE_END:] if size < _VIEW_FROM else memoryview(token)[_NONCE_END:]
        try:
            return open_(token[_HEADER_END:_NONCE_END], body, header + associated_data)
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
