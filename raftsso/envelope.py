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
import importlib
import itertools
import os
import secrets
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from raftsso.errors import InvalidToken
from raftsso.protocol.ids import version_id


class _Accelerator(Protocol):
    """raftsso._tokens (see raftsso/_tokens.pyi)."""

    def reseed(self, start: bytes, /) -> None: ...
    def next_nonce(self) -> bytes: ...
    def seal(self, encrypt_into: _Into, header: bytes, data: bytes,
             associated_data: bytes, /) -> bytes: ...
    def open(self, decrypt_into_by_version: dict[int, _Into], token: bytes,
             associated_data: bytes, /) -> bytes | None: ...
    ClientCore: type[_PyClientCore]


_Into = Callable[..., int]  # AESGCM.encrypt_into / decrypt_into


def _load_accelerator() -> _Accelerator | None:
    """The C token hot path (raftsso/_tokens.c), unless absent or RAFTSSO_PURE_PYTHON is set."""
    if os.environ.get("RAFTSSO_PURE_PYTHON"):
        return None
    try:
        # By name: a static "from raftsso import _tokens" reads to the import linter as an
        # import of the raftsso package (client, admin...); the C module imports nothing.
        tokens: _Accelerator = importlib.import_module("raftsso._tokens")
    except ImportError:  # built without a C compiler: the pure-Python path, same tokens
        return None
    return tokens


#: raftsso._tokens, or None: the pure-Python path (tests switch it per Envelope/Keyset)
_accel = _load_accelerator()

#: What :attr:`Keyset.open` raises for a token of its versions that does not open (callers
#: translate it to :class:`InvalidToken`; cryptography is imported only here).
TokenDoesNotOpen = InvalidTag

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


def _nonce_start() -> int:
    return int.from_bytes(os.urandom(NONCE_SIZE), "big") % (_NONCE_SPACE - _NONCE_RUN)


def _nonce_run() -> Iterator[bytes]:
    # map over count and int.to_bytes: one C-level __next__ (no Python frame), ~50 ns.
    run = map(int.to_bytes, itertools.count(_nonce_start()), itertools.repeat(NONCE_SIZE))
    return run if _gil_enabled() else _LockedRun(run)


def _reseed_accelerator() -> None:
    if _accel is not None:  # the C module counts in a 96-bit integer of its own
        _accel.reseed(_nonce_start().to_bytes(NONCE_SIZE, "big"))


# The pure-Python path's run (always there: tests switch paths within one process; two runs
# from independent random starts are as safe as two processes).
_nonces = _nonce_run()
_reseed_accelerator()


def _new_nonce_runs_after_fork() -> None:
    # A fresh lock too: one held by another thread at fork time would never be released.
    global _nonces
    _nonces = _nonce_run()
    _reseed_accelerator()


os.register_at_fork(after_in_child=_new_nonce_runs_after_fork)


def next_nonce() -> bytes:
    """A 12-byte nonce never returned before in this process (nor in its forks)."""
    return _accel.next_nonce() if _accel is not None else next(_nonces)


class Envelope:
    """AES-256-GCM under one master secret version; the cipher object is built once.

    The hot path is written for CPython's costs: the header (format and version) is packed
    once, the cipher's bound methods are kept, and :attr:`seal` is the C accelerator
    (raftsso._tokens: the token allocated once, the ciphertext written into it, no Python
    frame) or, without it, :meth:`_seal_py`; both make the same bytes.
    """

    __slots__ = ("_decrypt_into", "_encrypt_into", "_open", "_seal", "header", "seal",
                 "version")

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
        self._encrypt_into = aead.encrypt_into
        self._decrypt_into = aead.decrypt_into
        #: ``seal(data, associated_data)``: a token under the next nonce (the client's path)
        self.seal: Callable[[bytes, bytes], bytes] = (
            self._seal_py if _accel is None
            else partial(_accel.seal, self._encrypt_into, self.header))

    def __repr__(self) -> str:  # never show key material
        return f"Envelope(version={self.version})"

    def _seal_py(self, data: bytes, associated_data: bytes) -> bytes:
        nonce = next(_nonces)
        header = self.header
        return header + nonce + self._seal(nonce, data, header + associated_data)

    def encrypt(self, data: bytes, associated_data: bytes = b"", *,
                _nonce: bytes | None = None) -> bytes:
        if _nonce is None:
            return self.seal(data, associated_data)
        header = self.header
        return header + _nonce + self._seal(_nonce, data, header + associated_data)

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

    :attr:`open` is the client's hot path (the C accelerator, or :meth:`_open_py`: the same
    answers); :meth:`decrypt` is the general one.
    """

    __slots__ = ("_by_header", "_into_by_version", "open")

    def __init__(self, envelopes: Iterable[Envelope]) -> None:
        self._by_header = {e.header: e for e in envelopes}
        self._into_by_version = {e.version: e._decrypt_into for e in self._by_header.values()}
        #: ``open(token, associated_data)``: the plaintext; ``None`` unless ``token`` is a
        #: ``bytes`` token (long enough, format 1) of a version here; :data:`TokenDoesNotOpen`
        #: when it is one but does not open.
        self.open: Callable[[bytes, bytes], bytes | None] = (
            self._open_py if _accel is None else partial(_accel.open, self._into_by_version))

    def _open_py(self, token: bytes, associated_data: bytes) -> bytes | None:
        if type(token) is not bytes or len(token) < TOKEN_OVERHEAD:
            return None
        found = self._by_header.get(token[:_HEADER_END])
        if found is None:
            return None
        body = token[_NONCE_END:] if len(token) < _VIEW_FROM else memoryview(token)[_NONCE_END:]
        return found._open(token[_HEADER_END:_NONCE_END], body, found.header + associated_data)

    def decrypt(self, token: bytes, associated_data: bytes = b"") -> bytes | None:
        """The plaintext; ``None`` when no envelope here made a token with this header
        (another version, or not a token at all); :class:`InvalidToken` when one did but
        the token does not open."""
        try:
            found = self._by_header.get(token[:_HEADER_END])
        except (TypeError, ValueError):  # unhashable (bytearray, writable memoryview)
            return None
        return None if found is None else found.decrypt(token, associated_data)


class _PyClientCore:
    """The base class of :class:`raftsso.client.SSOClient`: its ``encrypt`` and ``decrypt``.

    They take the common case only (one or two positional arguments; encrypt: *armed*
    with a primary and fresh by the client's own clock; decrypt: a ``bytes`` token of an
    armed version) and hand every other call, unchanged, to the client's ``_encrypt_slow``
    and ``_decrypt_slow``, the one definition of what the client does. The client arms
    them (:func:`arm_client`) with each keyring it installs and disarms them when it
    closes.

    This is the pure-Python class; with the C module, :data:`ClientCore` is
    ``raftsso._tokens.ClientCore``, the same methods in C: a call then costs what a call of
    a built-in method costs (no Python frame, no bound method, no attribute lookups), a
    fifth of AES-GCM on a 1 KiB token.
    """

    _sealing: tuple[Callable[[], float], float, Iterator[int],
                    Callable[[bytes, bytes], bytes]] | None = None
    _opening: Callable[[bytes, bytes], bytes | None] | None = None

    def encrypt(self, data: bytes, associated_data: bytes = b"") -> bytes:
        """Encrypt under the primary version; :class:`StaleSecret` once the cache is stale.

        The token is ``0x01 | version (u32 BE) | nonce (12) | AES-256-GCM ciphertext``, with
        the header and ``associated_data`` authenticated (see :mod:`raftsso.envelope`).
        """
        sealing = self._sealing
        if sealing is not None:
            clock, fresh_until, uses, seal = sealing
            if clock() < fresh_until:
                next(uses)
                return seal(data, associated_data)
        return self._encrypt_slow(data, associated_data)

    def decrypt(self, token: bytes, associated_data: bytes = b"") -> bytes:
        """Decrypt with whichever cached version made ``token``; works with no node up.

        A version newer than every cached one triggers one immediate (rate-limited) resync.
        Every failure raises the one opaque :class:`InvalidToken`.
        """
        opening = self._opening
        if opening is not None:
            try:
                plaintext = opening(token, associated_data)
            except InvalidTag:
                raise InvalidToken() from None
            if plaintext is not None:
                return plaintext
        return self._decrypt_slow(token, associated_data)

    def _encrypt_slow(self, data: bytes, associated_data: bytes = b"") -> bytes:
        raise NotImplementedError

    def _decrypt_slow(self, token: bytes, associated_data: bytes = b"") -> bytes:
        raise NotImplementedError


if TYPE_CHECKING:
    ClientCore = _PyClientCore
else:
    ClientCore = _PyClientCore if _accel is None else _accel.ClientCore


def arm_client(client: _PyClientCore, clock: Callable[[], float], fresh_until: float,
               uses: Iterator[int], primary: Envelope | None, keyset: Keyset) -> None:
    """Point a client's ``encrypt`` at ``primary`` (fresh until ``fresh_until`` by
    ``clock``, counting on ``uses``) and its ``decrypt`` at ``keyset``."""
    if isinstance(client, _PyClientCore):
        client._sealing = None if primary is None else (clock, fresh_until, uses, primary.seal)
        client._opening = keyset.open
        return
    c: Any = client  # raftsso._tokens.ClientCore
    if primary is None:
        c._disarm_encrypt()
    else:
        # None: the C code reads CLOCK_MONOTONIC itself, as time.monotonic does
        c._arm_encrypt(None if clock is time.monotonic else clock, fresh_until, uses,
                       primary._encrypt_into, primary.header)
    c._arm_decrypt(keyset._into_by_version, InvalidToken, InvalidTag)


def disarm_client(client: _PyClientCore) -> None:
    """Send every call of a client's ``encrypt`` and ``decrypt`` to its slow methods."""
    if isinstance(client, _PyClientCore):
        client._sealing = client._opening = None
        return
    c: Any = client
    c._disarm_encrypt()
    c._disarm_decrypt()


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
