"""The durable Raft journal: fsynced appends, CRC-checked records, durable term and vote.

pysyncobj's own journal is an mmap it never msyncs, and its metadata (term, vote) is
replaced without fsync. :class:`DurableJournal` replaces it (through pysyncobj's
``createJournal``, see :mod:`raftsso.raft.hardening`). An appended entry is
``fdatasync``-ed before ``add`` returns, except inside a *write group*
(:meth:`DurableJournal.group`): there appends only write, and one ``fdatasync`` makes the
whole group durable when it ends, or earlier when :meth:`DurableJournal.sync` is called
(the member calls it before any message that could vouch for the entries leaves, see
:mod:`raftsso.raft.member`). So neither a follower's acknowledgement nor the leader's own
vote in the commit count runs ahead of the disk, while the leader's flush runs in parallel
with its followers' and several entries share one flush (group commit). Term and vote are
durable before any message that reflects them is sent.

Records carry a CRC. A crash (even of the machine) can only damage what was written since
the last ``fdatasync``: the last write group, never acknowledged. Each record says whether
it *started* a group (the first written after a flush); so at start a damaged record
followed only by the rest of its own group is a torn tail, cut with a warning, while a
damaged record followed by a valid record that started a later group (disk corruption:
that group was written after the damaged one was flushed) stops the node. A failed
fsync ends the process (:mod:`raftsso.raft.storage`): it never acknowledges what it could
not persist.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pysyncobj.journal import Journal

from raftsso.errors import StorageError
from raftsso.fsutil import atomic_write
from raftsso.raft import storage
from raftsso.raft.meta import MetaSlots

log = logging.getLogger(__name__)

JOURNAL_MAGIC = b"RSSOJNL"
JOURNAL_FORMAT = 2
_RECORD = struct.Struct(">II")  # payload length, crc32 of payload
_ENTRY = struct.Struct(">QQB")  # index, term, flags
_ENTRY_V1 = struct.Struct(">QQ")  # format 1 (every record flushed on its own): index, term
GROUP_START = 0x01  # flags: the first record written after a flush
_HEADER = JOURNAL_MAGIC + bytes([JOURNAL_FORMAT])
_HEADER_V1 = JOURNAL_MAGIC + bytes([1])

Parsed = tuple[int, bytes, int, int, bool]  # record size, command, index, term, starts a group


def encode_record(command: bytes, idx: int, term: int, starts_group: bool = True) -> bytes:
    """One journal record of the current format."""
    payload = _ENTRY.pack(idx, term, GROUP_START if starts_group else 0) + command
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


class DurableJournal(Journal):  # type: ignore[misc]
    """An append-only, CRC-checked, fsynced Raft journal with durable term and vote.

    File: ``RSSOJNL | format (2) | records``; a record is ``length (u32) | crc32 (u32) |
    index (u64) | term (u64) | flags (u8) | command``, the CRC over everything after it;
    flags bit 0 (:data:`GROUP_START`) marks the first record written after a flush. A file
    of format 1 (no flags; each record was flushed on its own) is rewritten in format 2
    when opened.

    ``syncs`` and ``appends`` count the flushes and the records written (for benchmarks).
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
        # Write groups: while one is open, appends are flushed together by sync().
        self._grouping = 0
        self._unsynced = False  # records written since the last fdatasync
        self.syncs = 0
        self.appends = 0
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
        if data[:len(_HEADER)] == _HEADER:
            fmt = JOURNAL_FORMAT
        elif data[:len(_HEADER_V1)] == _HEADER_V1:
            fmt = 1
        else:
            os.close(fd)
            raise StorageError(
                f"{self._path} is not a raftsso journal of format {JOURNAL_FORMAT} "
                "(a pysyncobj journal or another file?); move it away and let this node "
                "catch up from its peers")
        offset = len(_HEADER)
        while offset < len(data):
            entry = self._parse(data, offset, fmt)
            if entry is None:
                last_idx = self._entries[-1][1] if self._entries else None
                found = self._find_later_group(data, offset + 1, last_idx, fmt)
                if found is not None:
                    os.close(fd)
                    raise StorageError(
                        f"Raft journal {self._path} is corrupt: the record at offset "
                        f"{offset} is damaged but a valid record written after it was "
                        f"flushed (index {found[1]}) follows at offset {found[0]}. This is "
                        "disk corruption, not an interrupted append, and cutting the "
                        "journal here could lose acknowledged entries; this node will not "
                        "start. Move its data directory away and let it catch up from its "
                        "peers")
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
            record_len, command, idx, term, _starts = entry
            self._entries.append((command, idx, term))
            self._offsets.append(offset)
            offset += record_len
        self._end = offset
        if fmt != JOURNAL_FORMAT:
            fd = self._upgrade(fd)
        return fd

    def _upgrade(self, old_fd: int) -> int:
        """Rewrite a journal of an older format in the current one (at start)."""
        try:
            fd, offsets, end = self._write_file(self._entries)
        except OSError as exc:
            os.close(old_fd)
            raise StorageError(f"cannot rewrite the Raft journal {self._path} in format "
                               f"{JOURNAL_FORMAT}: {exc.strerror or exc}") from exc
        os.close(old_fd)
        self._offsets, self._end = offsets, end
        log.info("Raft journal %s rewritten in format %d (%d entries)", self._path,
                 JOURNAL_FORMAT, len(self._entries))
        return fd

    @classmethod
    def _find_later_group(cls, data: bytes, start: int, after_idx: int | None,
                          fmt: int = JOURNAL_FORMAT) -> tuple[int, int] | None:
        """The first ``(offset, index)`` at or after ``start`` where a valid record begins
        that started a later write group than the damaged record at ``start - 1``.

        This decides between a torn tail and corruption when the record at ``start - 1``
        fails to parse. Only the last write group can be torn: every earlier one was
        flushed before the next was written. So the damaged record is a *torn tail* (cut
        with a warning) unless a complete, CRC-valid record that *starts a group*, with an
        index greater than the last good index, begins at *any* byte offset after it, up
        to the end of the file: that group was written after the damaged record had been
        flushed, and a flushed record that no longer reads back is disk corruption. (The
        valid rest of the damaged record's own group, not flushed either, is cut with it.)
        In format 1 every record was flushed on its own, so every record starts a group.

        Every offset is tried, not only the one after the damaged record's length field:
        that field may be the damaged part. The cost is one cheap header check per byte of
        the tail, plus a CRC when the header announces a length that fits; a torn tail is
        at most one write group, and in corruption the scan stops at the next group. A
        false "corruption" needs a 32-bit CRC to match by chance (or a command that embeds
        a whole record); it errs on the safe side: the node refuses to start instead of
        dropping data.
        """
        entry_size = _ENTRY.size if fmt == JOURNAL_FORMAT else _ENTRY_V1.size
        for offset in range(start, len(data) - _RECORD.size - entry_size + 1):
            entry = cls._parse(data, offset, fmt)
            if entry is not None and entry[4] and (after_idx is None or entry[2] > after_idx):
                return offset, entry[2]
        return None

    @staticmethod
    def _parse(data: bytes, offset: int, fmt: int = JOURNAL_FORMAT) -> Parsed | None:
        if offset + _RECORD.size > len(data):
            return None
        length, crc = _RECORD.unpack_from(data, offset)
        start = offset + _RECORD.size
        entry = _ENTRY if fmt == JOURNAL_FORMAT else _ENTRY_V1
        if length < entry.size or start + length > len(data):
            return None
        payload = data[start:start + length]
        if zlib.crc32(payload) != crc:
            return None
        if fmt == JOURNAL_FORMAT:
            idx, term, flags = _ENTRY.unpack_from(payload)
            if flags & ~GROUP_START:
                return None
            starts = bool(flags & GROUP_START)
        else:
            idx, term = _ENTRY_V1.unpack_from(payload)
            starts = True
        return _RECORD.size + length, bytes(payload[entry.size:]), idx, term, starts

    @classmethod
    def _parse_record(cls, data: bytes, offset: int) -> tuple[int, bytes, int, int] | None:
        """``(record size, command, index, term)`` of a valid record of the current
        format at ``offset``, or None (for tools that read journal files)."""
        parsed = cls._parse(data, offset)
        return None if parsed is None else parsed[:4]

    def _sync(self, fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            storage.fail(f"fdatasync of the Raft journal {self._path} failed: {exc}")
            raise StorageError(str(exc)) from exc
        self._unsynced = False
        self.syncs += 1

    # write groups ------------------------------------------------------------------

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """Appends inside write only; one ``fdatasync`` covers them all at the end.

        Groups nest (the outermost flushes). Whoever opens one must call :meth:`sync`
        before anything that vouches for the entries (an acknowledgement to the leader,
        the leader's own count toward a commit) can happen.
        """
        self._grouping += 1
        try:
            yield
        finally:
            self._grouping -= 1
            if not self._grouping:
                self.sync()

    def sync(self) -> None:
        """Make every record written so far durable (one ``fdatasync``, if any is due)."""
        if self._unsynced:
            self._sync(self._fd)

    @property
    def unsynced(self) -> bool:
        """True while records written since the last flush are not durable yet."""
        return self._unsynced

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
                # The very record a deferred cut left on disk: already written, keep it
                # (if it was not flushed yet, the journal is still unsynced: see _sync).
                self._pending.pop(0)
                self._entries.append(entry)
                self._offsets.append(offset)
                self._end = self._record_end(offset, cmd)
                return
            self._cut_pending()
        record = encode_record(cmd, idx, term, starts_group=not self._unsynced)
        try:
            written = os.pwrite(self._fd, record, self._end)
            if written != len(record):
                raise OSError(f"short write ({written} of {len(record)} bytes)")
        except OSError as exc:
            storage.fail(f"writing the Raft journal {self._path} failed: {exc}")
            raise StorageError(str(exc)) from exc
        self._unsynced = True
        self.appends += 1
        if not self._grouping:
            self._sync(self._fd)
        self._entries.append((cmd, idx, term))
        self._offsets.append(self._end)
        self._end += len(record)

    def _record_end(self, offset: int, cmd: bytes) -> int:
        return offset + _RECORD.size + _ENTRY.size + len(cmd)

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
        try:
            fd, offsets, end = self._write_file(kept)
        except OSError as exc:
            if storage.is_transient(exc):
                storage.transient.warn("Raft log compaction", exc)
                return
            storage.fail(f"rewriting the Raft journal {self._path} for log compaction "
                         f"failed: {exc}")
            raise StorageError(str(exc)) from exc
        # The new file's descriptor is the journal's from now on: no reopen by name.
        os.close(self._fd)
        self._fd = fd
        self._pending = []  # the rewritten file holds only the kept entries
        self._unsynced = False  # and it was fsynced whole
        self._entries = list(kept)
        self._offsets = offsets
        self._end = end

    def _write_file(self, entries: list[tuple[bytes, int, int]]) -> tuple[int, list[int], int]:
        """Write ``entries`` to a new file, fsync it and swap it in for the journal by name.

        Returns the new file's descriptor, the records' offsets and the file's end. Each
        record starts a group: the file is durable as a whole before it replaces the old.
        Raises OSError (the old file is then untouched).
        """
        chunks = [_HEADER]
        offsets = []
        end = len(_HEADER)
        for cmd, idx, term in entries:
            record = encode_record(cmd, idx, term)
            offsets.append(end)
            chunks.append(record)
            end += len(record)
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            storage.write_all(fd, b"".join(chunks))
            os.fsync(fd)
            os.replace(tmp, self._path)
            os.fsync(self._dir_fd)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return fd, offsets, end

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
            self.sync()
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


