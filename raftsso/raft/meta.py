"""Term, vote and commit index, written in place into two pre-opened slots (A/B).

Raft needs term and vote on stable storage before any message that reflects them leaves.
Writing a new file each time (temp file, fsync, rename, fsync of the directory) needs two
new file descriptors per write, so a process that has run out of them (a connection flood)
could not take the next vote or step into the next term. Here both slot files are opened
once, at start; a write goes *in place* into the slot that does not hold the current
record, and is fsynced:

    slot file = "RSSOMETA" | format (2) | sequence (u64) | length (u32) | crc32 (u32) | payload
    payload   = format (1) | msgpack map: term, voted_for, commit_index

On load the valid slot with the highest sequence wins. A write torn by a crash fails its
CRC and the other slot (the previous record, which nothing sent has gone beyond) is used.
Both slots damaged is disk damage: the node refuses to start rather than forget a vote.

Upgrade: the single file of format 1 (``raft.journal.meta``, replaced atomically) is read
when no slot holds a record yet, copied into a slot, then removed.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from raftsso.errors import DecodeError, StorageError
from raftsso.raft import storage
from raftsso.wire import unversioned, versioned

META_FORMAT = 1
SLOT_MAGIC = b"RSSOMETA"
SLOT_FORMAT = 2
_SLOT_HEAD = struct.Struct(">8sBQII")  # magic, format, sequence, payload length, crc32
MAX_META = 64 << 10


def _crc(sequence: int, payload: bytes) -> int:
    return zlib.crc32(struct.pack(">Q", sequence) + payload)


def _parse_slot(data: bytes) -> tuple[int, bytes] | None:
    """``(sequence, payload)`` of a valid slot record, or None."""
    if len(data) < _SLOT_HEAD.size:
        return None
    magic, fmt, sequence, length, crc = _SLOT_HEAD.unpack_from(data)
    if magic != SLOT_MAGIC or fmt != SLOT_FORMAT or length > MAX_META:
        return None
    payload = data[_SLOT_HEAD.size:_SLOT_HEAD.size + length]
    if len(payload) != length or _crc(sequence, payload) != crc:
        return None
    return sequence, payload


def _decode(payload: bytes, where: Path) -> dict[str, Any]:
    try:
        meta = unversioned(payload, META_FORMAT, "journal meta")
    except DecodeError as exc:
        raise StorageError(f"cannot read Raft term and vote from {where}: {exc}") from exc
    if not isinstance(meta, dict):
        raise StorageError(f"{where} does not hold a map")
    return meta


def _read_fd(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, min(size, _SLOT_HEAD.size + MAX_META), 0)


class MetaSlots:
    """The two slot files of one journal, open for the life of the journal."""

    def __init__(self, journal_path: Path, dir_fd: int) -> None:
        self._legacy = Path(f"{journal_path}.meta")
        self._paths = (Path(f"{journal_path}.meta.0"), Path(f"{journal_path}.meta.1"))
        self._dir_fd = dir_fd
        self._fds: list[int] = []
        self.sequence = 0
        try:
            self.meta = self._open()
        except OSError as exc:
            self.close()
            raise StorageError(f"cannot open Raft term and vote files next to "
                               f"{journal_path}: {exc.strerror or exc}") from exc
        except BaseException:
            self.close()
            raise

    def _open(self) -> dict[str, Any]:
        created = False
        for path in self._paths:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                created = True
            except FileExistsError:
                fd = os.open(path, os.O_RDWR)
            self._fds.append(fd)
        if created:
            os.fsync(self._dir_fd)
        contents = [_read_fd(fd) for fd in self._fds]
        found = [slot for slot in map(_parse_slot, contents) if slot is not None]
        if found:
            self.sequence, payload = max(found)
            meta = _decode(payload, self._paths[self.sequence % 2])
            self._drop_legacy()
            return meta
        if all(contents):
            # Both slots were written once (or the second write started): a torn write
            # leaves the other one valid, so neither valid is damage, not a crash.
            raise StorageError(
                f"Raft term and vote in {self._paths[0]} and {self._paths[1]} are both "
                "damaged (disk damage: a crash tears at most one); this node will not start. "
                "Move its data directory away and let it catch up from its peers")
        if self._legacy.exists():
            meta = self._load_legacy()
            self.write(meta)
            self._drop_legacy()
            return meta
        return {}

    def _load_legacy(self) -> dict[str, Any]:
        try:
            raw = self._legacy.read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read Raft term and vote from {self._legacy}: "
                               f"{exc}") from exc
        try:
            return _decode(raw, self._legacy)
        except StorageError as exc:
            raise StorageError(f"{exc}; the file is written atomically, so this is disk "
                               "damage or a foreign file") from exc

    def _drop_legacy(self) -> None:
        if self._legacy.exists():
            self._legacy.unlink()
            os.fsync(self._dir_fd)

    def write(self, meta: dict[str, Any]) -> None:
        """Make ``meta`` durable in the other slot; a failed write or fsync stops the node."""
        sequence = self.sequence + 1
        fd = self._fds[sequence % 2]
        payload = versioned(META_FORMAT, meta)
        record = _SLOT_HEAD.pack(SLOT_MAGIC, SLOT_FORMAT, sequence, len(payload),
                                 _crc(sequence, payload)) + payload
        try:
            written = os.pwrite(fd, record, 0)
            if written != len(record):
                raise OSError(f"short write ({written} of {len(record)} bytes)")
            os.fsync(fd)
        except OSError as exc:
            path = self._paths[sequence % 2]
            storage.fail(f"writing Raft term and vote to {path} failed: {exc}")
            raise StorageError(f"could not write {path} durably: {exc}") from exc
        self.sequence = sequence
        self.meta = meta

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
