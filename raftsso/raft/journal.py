"""The durable Raft journal: fsynced appends, CRC-checked records, durable term and vote.

pysyncobj's own journal is an mmap it never msyncs, and its metadata (term, vote) is
replaced without fsync. :class:`DurableJournal` replaces it (through pysyncobj's
``createJournal``, see :mod:`raftsso.raft.hardening`): every appended entry is
``fdatasync``-ed before ``add`` returns, so neither a follower's acknowledgement nor the
leader's own vote in the commit count can run ahead of the disk. Term and vote are durable
before any message that reflects them is sent. Records carry a CRC; a torn tail (a crash
mid-append, never acknowledged) is cut off at start with a warning, while a damaged record
followed by valid ones (disk corruption) stops the node at start. A failed fsync ends the
process (:mod:`raftsso.raft.storage`): it never acknowledges what it could not persist.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from pysyncobj.journal import Journal

from raftsso.errors import StorageError
from raftsso.fsutil import atomic_write
from raftsso.raft import storage
from raftsso.raft.meta import MetaSlots

log = logging.getLogger(__name__)

JOURNAL_MAGIC = b"RSSOJNL"
JOURNAL_FORMAT = 1
_RECORD = struct.Struct(">II")  # payload length, crc32 of payload
_ENTRY = struct.Struct(">QQ")  # index, term
_HEADER = JOURNAL_MAGIC + bytes([JOURNAL_FORMAT])


class DurableJournal(Journal):  # type: ignore[misc]
    """An append-only, CRC-checked, fsynced Raft journal with durable term and vote.

    File: ``RSSOJNL | format (1) | records``; a record is ``length (u32) | crc32 (u32) |
    index (u64) | term (u64) | command``.
    """

    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._entries: list[tuple[bytes, int, int]] = []
        self._offsets: list[int] = []
        # Records cut from the view but still on disk (see deleteEntriesFrom).
        self._pending: list[tuple[tuple[bytes, int, int], int]] = []
        # Every descriptor the journal needs while it runs is opened here, at start: the
        # journal, its directory (for fsyncs after a rename) and the two meta slots. A
        # process out of descriptors can still append, truncate and change term or vote.
        try:
            self._dir_fd = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise StorageError(f"cannot open the directory of {self._path}: "
                               f"{exc.strerror or exc}") from exc
        try:
            self._slots = MetaSlots(self._path, self._dir_fd)
        except BaseException:
            os.close(self._dir_fd)
            raise
        self._meta = self._slots.meta
        self._meta_dirty = False
        try:
            self._fd = self._open_and_recover()
        except BaseException:
            self._slots.close()
            os.close(self._dir_fd)
            raise

    # file handling -----------------------------------------------------------------

    def _open_and_recover(self) -> int:
        if not self._path.exists():
            atomic_write(self._path, _HEADER)
        fd = os.open(self._path, os.O_RDWR)
        data = b""
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0)
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot read the Raft journal {self._path}: {exc}") from exc
        if data[:len(_HEADER)] != _HEADER:
            os.close(fd)
            raise StorageError(
                f"{self._path} is not a raftsso journal of format {JOURNAL_FORMAT} "
                "(a pysyncobj journal or another file?); move it away and let this node "
                "catch up from its peers")
        offset = len(_HEADER)
        while offset < len(data):
            entry = self._parse_record(data, offset)
            if entry is None:
                last_idx = self._entries[-1][1] if self._entries else None
                found = self._find_valid_record(data, offset + 1, last_idx)
                if found is not None:
                    os.close(fd)
                    raise StorageError(
                        f"Raft journal {self._path} is corrupt: the record at offset "
                        f"{offset} is damaged but a valid record (index {found[1]}) follows "
                        f"at offset {found[0]}. This is disk corruption, not an interrupted "
                        "append, and cutting the journal here could lose acknowledged "
                        "entries; this node will not start. Move its data directory away "
                        "and let it catch up from its peers")
                dropped = len(data) - offset
                log.warning(
                    "Raft journal %s has a torn or corrupt tail at offset %d (%d bytes "
                    "dropped): a crash interrupted an append that this node never "
                    "acknowledged; the entries will be replicated again by the leader",
                    self._path, offset, dropped)
                try:
                    self._truncate_fd(fd, offset)
                except StorageError:
                    os.close(fd)
                    raise
                break
            record_len, command, idx, term = entry
            self._entries.append((command, idx, term))
            self._offsets.append(offset)
            offset += record_len
        self._end = offset
        return fd

    @classmethod
    def _find_valid_record(cls, data: bytes, start: int,
                           after_idx: int | None) -> tuple[int, int] | None:
        """The first ``(offset, index)`` at or after ``start`` where a valid record begins.

        This decides between a torn tail and corruption when the record at ``start - 1``
        fails to parse. The rule: the damaged record is a *torn tail* (cut with a warning)
        only if no complete, CRC-valid record whose index is greater than the last good
        index begins at *any* byte offset after the damaged record's start, up to the end of
        the file. Otherwise valid data follows damaged data, which no crash of an
        append-only writer produces (an append is one ``pwrite`` at the end, made durable
        before the next one starts; truncations are fsynced), so it is disk corruption.

        Every offset is tried, not only the one after the damaged record's length field:
        that field may be the damaged part. The cost is one cheap header check per byte of
        the tail, plus a CRC when the header announces a length that fits; a torn tail is
        at most one record, and in corruption the scan stops at the next good record. A
        false "corruption" needs a 32-bit CRC to match by chance (or a command that embeds
        a whole record); it errs on the safe side: the node refuses to start instead of
        dropping data.
        """
        for offset in range(start, len(data) - _RECORD.size - _ENTRY.size + 1):
            entry = cls._parse_record(data, offset)
            if entry is not None and (after_idx is None or entry[2] > after_idx):
                return offset, entry[2]
        return None

    @staticmethod
    def _parse_record(data: bytes, offset: int) -> tuple[int, bytes, int, int] | None:
        if offset + _RECORD.size > len(data):
            return None
        length, crc = _RECORD.unpack_from(data, offset)
        start = offset + _RECORD.size
        if length < _ENTRY.size or start + length > len(data):
            return None
        payload = data[start:start + length]
        if zlib.crc32(payload) != crc:
            return None
        idx, term = _ENTRY.unpack_from(payload)
        return _RECORD.size + length, bytes(payload[_ENTRY.size:]), idx, term

    def _sync(self, fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            storage.fail(f"fdatasync of the Raft journal {self._path} failed: {exc}")
            raise StorageError(str(exc)) from exc

    def _truncate_fd(self, fd: int, size: int) -> None:
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            storage.fail(f"truncating the Raft journal {self._path} failed: {exc}")
            raise StorageError(str(exc)) from exc
        self._sync(fd)

    # Journal interface -------------------------------------------------------------

    def add(self, command: bytes | str, idx: int, term: int) -> None:
        cmd = command if isinstance(command, bytes) else command.encode("utf-8")
        if self._pending:
            entry, offset = self._pending[0]
            if entry == (cmd, idx, term) and offset == self._end:
                # The very record a deferred cut left on disk: already durable, keep it.
                self._pending.pop(0)
                self._entries.append(entry)
                self._offsets.append(offset)
                self._end = offset + _RECORD.size + _ENTRY.size + len(cmd)
                return
            self._cut_pending()
        payload = _ENTRY.pack(idx, term) + cmd
        record = _RECORD.pack(len(payload), zlib.crc32(payload)) + payload
        try:
            os.pwrite(self._fd, record, self._end)
        except OSError as exc:
            storage.fail(f"writing the Raft journal {self._path} failed: {exc}")
            raise StorageError(str(exc)) from exc
        self._sync(self._fd)
        self._entries.append((cmd, idx, term))
        self._offsets.append(self._end)
        self._end += len(record)

    # The in-memory view changes only once the disk has: if a truncation fails (and the
    # failure hook returns, as in tests), the journal still reports what the file holds.

    def clear(self) -> None:
        self._truncate_fd(self._fd, len(_HEADER))
        self._pending = []
        self._entries = []
        self._offsets = []
        self._end = len(_HEADER)

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """Cut the log from ``entryFrom``, deferring the cut on disk.

        pysyncobj cuts a follower's log whenever an append reaches back before its last
        entry, then appends the leader's entries, which are usually the very same ones
        (a resend). Cutting the file at once would briefly un-persist entries this node
        has acknowledged; so the records stay on disk, are re-used when the same entries
        come back, and are cut only when a different entry is appended (a real
        conflict). Raft does not need a cut to be durable: after a crash, the kept
        records are as if the cut had never arrived, which the protocol tolerates.
        """
        if entryFrom >= len(self._entries):
            return
        cut = list(zip(self._entries[entryFrom:], self._offsets[entryFrom:], strict=True))
        self._pending = cut + self._pending
        self._end = self._offsets[entryFrom]
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]

    def _cut_pending(self) -> None:
        """Make a deferred cut real before anything different is written after it."""
        if self._pending:
            self._truncate_fd(self._fd, self._end)
            self._pending = []

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Log compaction: write the kept entries to a new file and swap it in atomically.

        The new file needs a new descriptor: without one (EMFILE, ENFILE) the log simply
        stays longer for now; pysyncobj compacts again later, and a snapshot newer than
        the journal's head is reconciled at start (:meth:`trim_to_snapshot`).
        """
        kept = self._entries[entryTo:]
        chunks = [_HEADER]
        offsets = []
        end = len(_HEADER)
        for cmd, idx, term in kept:
            payload = _ENTRY.pack(idx, term) + cmd
            record = _RECORD.pack(len(payload), zlib.crc32(payload)) + payload
            offsets.append(end)
            chunks.append(record)
            end += len(record)
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            if storage.is_transient(exc):
                storage.transient.warn("Raft log compaction", exc)
                return
            storage.fail(f"creating {tmp} for log compaction failed: {exc}")
            raise StorageError(str(exc)) from exc
        try:
            storage.write_all(fd, b"".join(chunks))
            os.fsync(fd)
            os.replace(tmp, self._path)
            os.fsync(self._dir_fd)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            storage.fail(f"rewriting the Raft journal {self._path} for log compaction "
                         f"failed: {exc}")
            raise StorageError(str(exc)) from exc
        # The new file's descriptor is the journal's from now on: no reopen by name.
        os.close(self._fd)
        self._fd = fd
        self._pending = []  # the rewritten file holds only the kept entries
        self._entries = list(kept)
        self._offsets = offsets
        self._end = end

    def trim_to_snapshot(self, prev: tuple[bytes, int, int],
                         last: tuple[bytes, int, int]) -> bool:
        """Start the journal at the snapshot's last two entries if it holds them later on.

        pysyncobj clears a journal whose head is not the snapshot's ``(prev, last)``,
        entries after the snapshot included. That head is normal after a compaction, but
        a crash between writing a snapshot and compacting the journal, or a compaction
        postponed for lack of descriptors, leaves older entries in front. Called at start,
        before pysyncobj opens the journal. True if entries were dropped.
        """
        for i in range(len(self._entries) - 1):
            if self._entries[i] == prev and self._entries[i + 1] == last:
                if i == 0:
                    return False
                self.deleteEntriesTo(i)
                if self._entries[:1] != [prev]:
                    raise StorageError(f"could not trim {self._path} to its snapshot")
                log.info("Raft journal %s: dropped %d entries already in the snapshot "
                         "(a compaction that had not run)", self._path, i)
                return True
        return False

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self._flush_meta()
        with contextlib.suppress(StorageError):
            self._cut_pending()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._slots.close()
        with contextlib.suppress(OSError):
            os.close(self._dir_fd)

    def flush(self) -> None:
        self._flush_meta()

    # meta: term, vote, commit index ---------------------------------------------------

    def _store_meta(self, meta: dict[str, Any] | None = None) -> None:
        """Write ``meta`` (default: the current meta) durably, then make it current."""
        new = self._meta if meta is None else meta
        self._slots.write(new)
        self._meta = new
        self._meta_dirty = False

    def _flush_meta(self) -> None:
        if self._meta_dirty:
            self._store_meta()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        # Raft does not need the commit index to be durable (it is re-learnt from the
        # leader); it is saved once a second, as pysyncobj does, to speed up restarts.
        if self._meta.get("commit_index") != raftCommitIndex:
            self._meta["commit_index"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:
        return int(self._meta.get("commit_index", 1))

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        # Term and vote must be on disk before a vote or an append reflecting them leaves,
        # and are visible in memory only once they are: a failed write leaves the old ones.
        self._store_meta({**self._meta, "term": term, "voted_for": votedForNodeId})

    def getCurrentTerm(self) -> int:
        return int(self._meta.get("term", 0))

    def getVotedForNodeId(self) -> str | None:
        value = self._meta.get("voted_for")
        return value if isinstance(value, str) else None

    def onOneSecondTimer(self) -> None:
        self._flush_meta()


def trim_journal(path: Path, prev: tuple[bytes, int, int], last: tuple[bytes, int, int]) -> None:
    """Open the journal at ``path`` and :meth:`~DurableJournal.trim_to_snapshot` it (at start)."""
    journal = DurableJournal(str(path))
    try:
        journal.trim_to_snapshot(prev, last)
    finally:
        journal._destroy()


def create_journal(journal_file: str | None = None) -> DurableJournal:
    if journal_file is None:
        raise StorageError("raftsso never runs Raft with an in-memory journal")
    return DurableJournal(journal_file)


