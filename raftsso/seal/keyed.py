"""Seal keys held in this process's memory: the common part of the file and shamir seals.

Every AES-GCM operation goes through :mod:`raftsso.envelope` (the one module that touches
AES-GCM); this module only chooses the key of a blob's generation and builds the AAD.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from raftsso import envelope
from raftsso.seal import blob
from raftsso.seal.base import Sealed, SealError, SealStatus


def check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes | bytearray) or len(secret) != envelope.KEY_SIZE:
        raise ValueError("a master secret (and a seal key) is 32 bytes")


def check_version(version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**64:
        raise ValueError("a version id is an integer from 0 to 2**64-1")


class KeyedSeal:
    """Seal keys by generation, in memory only; thread-safe."""

    kind = "memory"

    def __init__(self, keys: Mapping[int, bytes] | None = None) -> None:
        self._lock = threading.Lock()
        self._keys: dict[int, bytes] = {}
        for generation, key in (keys or {}).items():
            self._put(generation, key)

    def __repr__(self) -> str:  # never the keys
        return f"{type(self).__name__}(generations={list(self.generations)})"

    def _put(self, generation: int, key: bytes) -> None:
        blob.check_generation(generation)
        check_secret(key)
        with self._lock:
            self._keys[generation] = bytes(key)

    def _drop(self, generation: int) -> None:
        with self._lock:
            self._keys.pop(generation, None)

    @property
    def sealed(self) -> bool:
        return not self._keys

    @property
    def generations(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(sorted(self._keys))

    def status(self) -> SealStatus:
        return SealStatus(self.kind, self.sealed, self.generations)

    def _check_unsealed(self) -> None:
        if not self._keys:
            raise Sealed("this node is sealed: it holds no seal key until enough unseal "
                         "shares are supplied (raftsso unseal)")

    def _key(self, generation: int | None) -> tuple[int, bytes]:
        with self._lock:
            self._check_unsealed()
            if generation is None:
                generation = max(self._keys)
            key = self._keys.get(generation)
            if key is None:
                raise SealError(f"this node holds no seal key of generation {generation} "
                                f"(it holds {', '.join(map(str, sorted(self._keys)))})")
            return generation, key

    def wrap(self, secret: bytes, *, cluster_id: str, version: int,
             generation: int | None = None) -> bytes:
        check_secret(secret)
        check_version(version)
        generation, key = self._key(generation)
        head = blob.header(generation)
        return head + envelope.aead_encrypt(key, bytes(secret),
                                            blob.aad(head, cluster_id, version))

    def unwrap(self, sealed: bytes, *, cluster_id: str, version: int) -> bytes:
        check_version(version)
        self._check_unsealed()  # before the blob: "sealed" says more than "invalid"
        _, key = self._key(blob.generation_of(sealed))
        if blob.is_legacy(sealed):
            return envelope.unseal(key, sealed, cluster_id=cluster_id, version=version)
        head, body = blob.split(sealed)
        return envelope.aead_decrypt(key, body, blob.aad(head, cluster_id, version))

    def install(self, generation: int, key: bytes) -> None:
        """Hold ``key`` as ``generation`` (replacing a key of that generation not yet used:
        a rekey run again after an interruption installs its new key again)."""
        self._put(generation, key)

    def forget(self, generation: int) -> None:
        self._drop(generation)

    def close(self) -> None:
        with self._lock:
            self._keys.clear()
