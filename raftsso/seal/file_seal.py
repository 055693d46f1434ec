"""The ``file`` seal: the seal key in a 0600 file in the node's directory (the default).

Protects a copy of ``data/`` alone (journal, snapshots hold only sealed secrets), not a
copy of the node's directory: whoever reads ``seal.key`` opens every sealed secret.

``seal.key`` with one key of generation 1 is byte for byte the file raftsso wrote before
seal providers existed (``raftsso-seal-key v1``); once a rekey adds a generation the file
becomes ``raftsso-seal-key v2`` with one ``GENERATION BASE64`` line per key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path

from raftsso import envelope
from raftsso.config import SECRET_FILE_HEADER, format_secret_file, read_secret_file
from raftsso.errors import ConfigError
from raftsso.fsutil import atomic_write, read_private
from raftsso.seal import blob
from raftsso.seal.base import SealError
from raftsso.seal.keyed import KeyedSeal, check_secret, check_version

V1_HEADER = SECRET_FILE_HEADER["seal"]
V2_HEADER = "raftsso-seal-key v2"
MAX_FILE = 64 << 10


def read_keys(path: Path) -> dict[int, bytes]:
    """Every generation's key in a seal key file (v1 or v2); :class:`ConfigError` if not."""
    raw = read_private(path, limit=MAX_FILE)
    first = raw.split(b"\n", 1)[0].decode("ascii", "replace")
    if first == V1_HEADER:
        return {blob.LEGACY_GENERATION: read_secret_file(path, "seal")}
    if first != V2_HEADER:
        raise ConfigError(f"{path} is not a raftsso seal key file (expected a first line "
                          f"{V1_HEADER!r} or {V2_HEADER!r})")
    keys: dict[int, bytes] = {}
    try:
        for line in raw.decode("ascii").splitlines()[1:]:
            if not line.strip():
                continue
            gen_text, b64 = line.split()
            generation = blob.check_generation(int(gen_text))
            key = base64.b64decode(b64, validate=True)
            check_secret(key)
            if generation in keys:
                raise ValueError
            keys[generation] = key
    except (UnicodeDecodeError, ValueError, binascii.Error):
        raise ConfigError(f"{path} is damaged: every line after the first must be "
                          "'GENERATION BASE64-KEY' (32 bytes), each generation once") from None
    if not keys:
        raise ConfigError(f"{path} holds no seal key")
    return keys


def format_keys(keys: Mapping[int, bytes]) -> bytes:
    if set(keys) == {blob.LEGACY_GENERATION}:
        return format_secret_file(keys[blob.LEGACY_GENERATION], "seal")
    lines = [V2_HEADER] + [f"{g} {base64.b64encode(keys[g]).decode()}" for g in sorted(keys)]
    return ("\n".join(lines) + "\n").encode()


def write_key_file(path: Path, key: bytes, generation: int = blob.LEGACY_GENERATION) -> None:
    """A new seal key file holding one key (``init``)."""
    check_secret(key)
    atomic_write(path, format_keys({blob.check_generation(generation): bytes(key)}))


class FileSeal(KeyedSeal):
    """Seal keys read from (and, on rekey, written back to) one 0600 file."""

    kind = "file"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        super().__init__(read_keys(self.path))

    def wrap(self, secret: bytes, *, cluster_id: str, version: int,
             generation: int | None = None) -> bytes:
        """Generation 1 seals in format 1, byte for byte what nodes sealed before seal
        providers existed, so that a node of an earlier release still applies what this
        one proposes during a rolling upgrade; later generations (after a seal rekey,
        which every node must support) seal in format 2."""
        resolved, key = self._key(generation)
        if resolved != blob.LEGACY_GENERATION:
            return super().wrap(secret, cluster_id=cluster_id, version=version,
                                generation=resolved)
        check_secret(secret)
        check_version(version)
        return envelope.seal(key, bytes(secret), cluster_id=cluster_id, version=version)

    def _save(self, keys: Mapping[int, bytes]) -> None:
        atomic_write(self.path, format_keys(keys))

    def install(self, generation: int, key: bytes) -> None:
        """Add (or replace a not yet used) generation; durable before it returns."""
        blob.check_generation(generation)
        check_secret(key)
        keys = {g: self._key(g)[1] for g in self.generations}
        keys[generation] = bytes(key)
        self._save(keys)
        super().install(generation, key)

    def forget(self, generation: int) -> None:
        """Remove a generation's key from the file (after every blob was re-sealed)."""
        remaining = {g: self._key(g)[1] for g in self.generations if g != generation}
        if not remaining:
            raise SealError(f"generation {generation} is the only seal key in {self.path}; "
                            "refusing to remove it")
        if len(remaining) == len(self.generations):
            return
        self._save(remaining)
        super().forget(generation)
