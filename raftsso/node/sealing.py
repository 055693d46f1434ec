"""The node's seal: its provider (:mod:`raftsso.seal`) as the node uses it.

* :meth:`NodeSeal.wrap` seals a new secret under the keyring's seal generation (read in
  the leader's write path), never under a generation only this node holds;
* :meth:`NodeSeal.unwrap` opens a version's sealed key to serve the keyring, with a cache
  of opened secrets keyed by ``(version, sealed blob)``: a re-sealed or retired version is
  a miss, and :meth:`NodeSeal.prune` drops every entry the keyring no longer holds;
* the provider's errors become protocol codes here, once: no seal key yet (a shamir node
  before its shares) is ``SEALED``; a blob this node's seal cannot open is
  ``SEAL_MISMATCH``.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading

from raftsso.errors import InvalidToken, RemoteError
from raftsso.keyring import Keyring
from raftsso.protocol.codes import ErrorCode
from raftsso.seal.base import InvalidShare, Sealed, SealError, SealProvider, SealStatus
from raftsso.seal.keyed import KeyedSeal
from raftsso.seal.shares import Progress, Share

log = logging.getLogger(__name__)

_BYTES_HEADER = sys.getsizeof(b"") - 1  # CPython: the bytes object's data offset


def _references(obj: object) -> int:
    return sys.getrefcount(obj)


def scrub(secret: bytes) -> bool:
    """Overwrite a plaintext secret, before dropping it, if the caller's one local name is
    the last reference to it (else it is in use, e.g. in an answer being sent: left alone).

    CPython frees memory without clearing it: a retired master secret would otherwise
    stay readable in the process (a core dump, ``/proc/PID/mem``) until reused. Only for
    bytes objects this module created and owns (the unseal cache's entries).
    """
    if type(secret) is not bytes or not secret or _references(secret) != _SCRUB_BASELINE:
        return False
    ctypes.memset(id(secret) + _BYTES_HEADER, 0, len(secret))
    return True


def _scrub_baseline() -> int:
    owned = bytes(bytearray(32))  # a fresh object only this frame refers to, as in scrub
    return _through_scrub(owned)


def _through_scrub(secret: bytes) -> int:
    return _references(secret)


_SCRUB_BASELINE = _scrub_baseline()


def sealed_error(exc: SealError) -> RemoteError:
    if isinstance(exc, Sealed):
        return RemoteError(str(exc), code=ErrorCode.SEALED)
    return RemoteError(str(exc), code=ErrorCode.SEAL_MISMATCH)


class NodeSeal:
    """Thread-safe: the service, the leader duties and the Raft thread all use it."""

    def __init__(self, provider: SealProvider, cluster_id: str) -> None:
        self.provider = provider
        self._cluster_id = cluster_id
        self._cache: dict[tuple[int, bytes], bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"NodeSeal({self.provider!r})"

    @property
    def kind(self) -> str:
        return self.provider.kind

    @property
    def sealed(self) -> bool:
        return self.provider.sealed

    @property
    def wraps_in_memory(self) -> bool:
        """Wrapping is an AES-GCM call on a key in this process (file and shamir seals),
        never a call into a token that may block (PKCS#11)."""
        return isinstance(self.provider, KeyedSeal)

    def status(self) -> SealStatus:
        return self.provider.status()

    # wrapping ----------------------------------------------------------------------------

    def wrap(self, secret: bytes, version: int, generation: int) -> bytes:
        """``secret`` sealed for ``version`` under seal ``generation`` (the keyring's)."""
        try:
            return self.provider.wrap(secret, cluster_id=self._cluster_id, version=version,
                                      generation=generation)
        except SealError as exc:
            raise sealed_error(exc) from None

    def unwrap(self, version: int, sealed: bytes) -> bytes:
        cache_key = (version, sealed)
        with self._lock:
            key = self._cache.get(cache_key)
        if key is not None:
            return key
        try:
            key = self.provider.unwrap(sealed, cluster_id=self._cluster_id, version=version)
        except InvalidToken:
            raise RemoteError(
                f"this node cannot unseal version {version}: its seal key does not match "
                "the cluster's", code=ErrorCode.SEAL_MISMATCH) from None
        except SealError as exc:
            raise sealed_error(exc) from None
        with self._lock:
            return self._cache.setdefault(cache_key, key)

    def prune(self, ring: Keyring) -> list[int]:
        """Drop (and scrub) the opened secrets of versions the keyring no longer holds with
        that blob: retired, re-sealed. Returns the version ids dropped."""
        live = {(v.id, v.sealed) for v in ring.versions if v.sealed is not None}
        with self._lock:
            gone = [k for k in self._cache if k not in live]
        for k in gone:
            self._drop(k)
        return sorted({version for version, _ in gone})

    def _drop(self, cache_key: tuple[int, bytes]) -> None:
        with self._lock:
            secret = self._cache.pop(cache_key, None)
        if secret is not None:
            scrub(secret)

    def cached_versions(self) -> set[int]:
        with self._lock:
            return {version for version, _ in self._cache}

    # the seal's keys ---------------------------------------------------------------------

    def submit_share(self, share: Share) -> Progress:
        """One unseal share (shamir only); the share is never logged."""
        from raftsso.seal.shamir_seal import ShamirSeal

        if not isinstance(self.provider, ShamirSeal):
            raise RemoteError(f"this node's seal is {self.kind!r}; only a shamir seal takes "
                              "unseal shares", code=ErrorCode.CONFLICT)
        try:
            return self.provider.submit(share)
        except InvalidShare as exc:
            raise RemoteError(str(exc), code=ErrorCode.BAD_REQUEST) from None

    def expect_generation(self, generation: int) -> None:
        """Shamir: shares must be of the cluster's current seal generation."""
        from raftsso.seal.shamir_seal import ShamirSeal

        if isinstance(self.provider, ShamirSeal):
            self.provider.expect_generation(generation)

    def install(self, generation: int, key: bytes) -> None:
        try:
            self.provider.install(generation, key)
        except SealError as exc:
            raise sealed_error(exc) from None

    def forget(self, generation: int) -> None:
        try:
            self.provider.forget(generation)
        except SealError as exc:
            raise RemoteError(str(exc), code=ErrorCode.CONFLICT) from None

    def close(self) -> None:
        with self._lock:
            keys = list(self._cache)
        for k in keys:
            self._drop(k)
        self.provider.close()
