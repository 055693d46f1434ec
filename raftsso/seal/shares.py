"""Unseal share files, and the in-memory :class:`Unsealer` that collects them.

A share file (0600, one per key holder) is text, so that it can be printed or typed::

    raftsso-seal-share v1
    cluster_id = c-0123456789ab
    generation = 1
    index = 3
    shares = 5
    threshold = 3
    key_check = 16 hex digits
    value = base64 (32 bytes)
    checksum = 16 hex digits

``checksum`` (SHA-256 of the lines above it) catches a damaged or mistyped file; it is
not a signature. ``key_check`` (HMAC-SHA-256 keyed with the seal key itself, over the
cluster id and generation) lets a node tell a wrong set of shares from the right one at
once, before it has a sealed secret to try; it reveals nothing usable, as checking a
guess needs the whole 256-bit key. The shares themselves reveal nothing below the
threshold (:mod:`raftsso.seal.shamir`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
from dataclasses import dataclass, field
from pathlib import Path

from raftsso import envelope
from raftsso.errors import ConfigError
from raftsso.fsutil import atomic_write, read_private
from raftsso.seal import blob, shamir
from raftsso.seal.base import InvalidShare

HEADER = "raftsso-seal-share v1"
_FIELDS = ("cluster_id", "generation", "index", "shares", "threshold", "key_check", "value")
_CHECK_DOMAIN = b"raftsso/seal-check/v1\x00"
MAX_SHARE_FILE = 4096


def key_check(key: bytes, cluster_id: str, generation: int) -> str:
    """A short public value that confirms a reconstructed seal key."""
    msg = _CHECK_DOMAIN + cluster_id.encode() + b"\x00" + generation.to_bytes(4, "big")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:16]


def _checksum(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Share:
    cluster_id: str
    generation: int
    index: int
    shares: int
    threshold: int
    key_check: str
    value: bytes = field(repr=False)

    def encode(self) -> bytes:
        values = {"cluster_id": self.cluster_id, "generation": self.generation,
                  "index": self.index, "shares": self.shares, "threshold": self.threshold,
                  "key_check": self.key_check,
                  "value": base64.b64encode(self.value).decode()}
        body = "".join(f"{name} = {values[name]}\n" for name in _FIELDS)
        return f"{HEADER}\n{body}checksum = {_checksum(body)}\n".encode()


def make_shares(key: bytes, *, cluster_id: str, generation: int, shares: int,
                threshold: int) -> list[Share]:
    """Split a seal key into ``shares`` shares, any ``threshold`` of which recover it."""
    blob.check_generation(generation)
    if len(key) != envelope.KEY_SIZE:
        raise ValueError("a seal key is 32 bytes")
    check = key_check(key, cluster_id, generation)
    return [Share(cluster_id, generation, x, shares, threshold, check, y)
            for x, y in shamir.split(key, shares, threshold)]


def parse_share(raw: bytes, source: str = "the share") -> Share:
    """Parse a share file's bytes; :class:`InvalidShare` with one clear line if wrong."""
    if len(raw) > MAX_SHARE_FILE:
        raise InvalidShare(f"{source} is not a raftsso seal share (too large)")
    try:
        lines = raw.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise InvalidShare(f"{source} is not a raftsso seal share (not text)") from None
    if not lines or lines[0] != HEADER:
        raise InvalidShare(f"{source} is not a raftsso seal share (expected a first line "
                           f"{HEADER!r})")
    pairs = [line.partition(" = ") for line in lines[1:] if line.strip()]
    names = [p[0] for p in pairs]
    if names != [*_FIELDS, "checksum"] or any(not p[1] for p in pairs):
        raise InvalidShare(f"{source} is damaged: expected the lines "
                           f"{', '.join((*_FIELDS, 'checksum'))} in that order")
    values = {p[0]: p[2] for p in pairs}
    body = "".join(f"{name} = {values[name]}\n" for name in _FIELDS)
    if not hmac.compare_digest(_checksum(body), values["checksum"]):
        raise InvalidShare(f"{source} is damaged or was altered (its checksum does not "
                           "match); use an intact copy")
    try:
        share = Share(values["cluster_id"], int(values["generation"]), int(values["index"]),
                      int(values["shares"]), int(values["threshold"]), values["key_check"],
                      base64.b64decode(values["value"], validate=True))
        blob.check_generation(share.generation)
    except (ValueError, binascii.Error):
        raise InvalidShare(f"{source} is damaged (a field has the wrong type)") from None
    if not (1 <= share.threshold <= share.shares <= shamir.MAX_SHARES
            and 1 <= share.index <= share.shares and len(share.value) == envelope.KEY_SIZE
            and len(share.key_check) == 16):
        raise InvalidShare(f"{source} is damaged (index, counts or value out of range)")
    return share


def read_share_file(path: Path) -> Share:
    """Read a 0600 share file (:class:`ConfigError` if unreadable or too open)."""
    return parse_share(read_private(path, limit=MAX_SHARE_FILE), str(path))


def write_share_file(path: Path, share: Share) -> None:
    atomic_write(path, share.encode())


@dataclass(frozen=True)
class Progress:
    supplied: int
    threshold: int | None
    done: bool


class Unsealer:
    """Collects shares in memory until ``threshold`` of them rebuild the seal key.

    Shares are never logged nor shown in a repr. A share for another cluster or
    generation, a duplicate index, or a set whose key check fails is refused with
    :class:`InvalidShare`; a failed reconstruction discards every share supplied so
    far (start again), as a wrong share cannot be told from the others afterwards.
    """

    def __init__(self, cluster_id: str, generation: int | None = None) -> None:
        self.cluster_id = cluster_id
        self.generation = generation
        self._lock = threading.Lock()
        self._shares: dict[int, Share] = {}

    def __repr__(self) -> str:
        return f"Unsealer(cluster_id={self.cluster_id!r}, progress={self.progress})"

    @property
    def progress(self) -> tuple[int, int | None]:
        with self._lock:
            first = next(iter(self._shares.values()), None)
            return len(self._shares), None if first is None else first.threshold

    def reset(self) -> None:
        with self._lock:
            self._shares.clear()

    def submit(self, share: Share) -> tuple[Progress, bytes | None]:
        """Add one share; return the progress and, once complete, the seal key."""
        if share.cluster_id != self.cluster_id:
            raise InvalidShare(f"share {share.index} is of cluster {share.cluster_id}, this "
                               f"is {self.cluster_id}")
        if self.generation is not None and share.generation != self.generation:
            raise InvalidShare(f"share {share.index} is of seal generation "
                               f"{share.generation}; this cluster's seal key is generation "
                               f"{self.generation} (use the shares of the latest rekey)")
        with self._lock:
            first = next(iter(self._shares.values()), None)
            if first is not None and (share.generation, share.key_check, share.threshold,
                                      share.shares) != (first.generation, first.key_check,
                                                        first.threshold, first.shares):
                raise InvalidShare(f"share {share.index} belongs to another set of shares "
                                   f"than the {len(self._shares)} supplied so far")
            if share.index in self._shares:
                raise InvalidShare(f"share {share.index} was supplied already")
            self._shares[share.index] = share
            if len(self._shares) < share.threshold:
                return Progress(len(self._shares), share.threshold, False), None
            points = [(s.index, s.value) for s in self._shares.values()]
            self._shares.clear()
        key = shamir.combine(points)
        if not hmac.compare_digest(key_check(key, share.cluster_id, share.generation),
                                   share.key_check):
            raise InvalidShare(f"the {len(points)} shares supplied do not rebuild the seal "
                               "key (one was altered or is of another set); every share "
                               "was discarded: start again")
        return Progress(len(points), share.threshold, True), key


def ensure_share_dir(path: Path) -> None:
    """The directory for new share files: 0700, and empty (shares are never overwritten)."""
    if path.exists() and any(path.iterdir()):
        raise ConfigError(f"{path} is not empty; refusing to overwrite unseal shares")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
