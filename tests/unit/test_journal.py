"""raftsso.raft.journal: the fsynced, CRC-checked Raft journal (and snapshot files)."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pysyncobj.journal import FileJournal

from raftsso.errors import DecodeError, StorageError
from raftsso.fsm import KeyringStateMachine
from raftsso.raft import journal as raft_journal
from raftsso.raft import meta as raft_meta
from raftsso.raft import snapshot as raft_snapshot
from raftsso.raft import storage
from raftsso.raft.journal import DurableJournal
from raftsso.raft.snapshot import read_snapshot_file
from raftsso.wire import versioned
from tests.descriptors import no_free_descriptors

HEADER = raft_journal.JOURNAL_MAGIC + bytes([raft_journal.JOURNAL_FORMAT])
RECORD_OVERHEAD = 8 + 17  # length + crc, index + term + flags


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "raft.journal")


@pytest.fixture
def opened() -> Iterator[list[DurableJournal]]:
    """Journals opened by a test, closed at the end (a reopen simulates a restart)."""
    journals: list[DurableJournal] = []
    yield journals
    for j in journals:
        j._destroy()


OpenJournal = Callable[[str], DurableJournal]


@pytest.fixture
def open_journal(opened: list[DurableJournal]) -> OpenJournal:
    def _open(p: str) -> DurableJournal:
        j = DurableJournal(p)
        opened.append(j)
        return j
    return _open


@pytest.fixture
def failures(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record storage failures instead of ending the test process."""
    calls: list[str] = []
    monkeypatch.setattr(storage, "on_storage_failure", calls.append)
    return calls


def _entries(n: int, start: int = 1, term: int = 1) -> list[tuple[bytes, int, int]]:
    return [(b"\x00cmd-%d" % i + b"x" * (i % 7), i, term + i // 3)
            for i in range(start, start + n)]


def _fill(j: DurableJournal, entries: list[tuple[bytes, int, int]]) -> None:
    for cmd, idx, term in entries:
        j.add(cmd, idx, term)


def _record_size(entry: tuple[bytes, int, int]) -> int:
    return RECORD_OVERHEAD + len(entry[0])


def _slots(path: str) -> list[Path]:
    return [Path(f"{path}.meta.0"), Path(f"{path}.meta.1")]


# -- basics -----------------------------------------------------------------------------


def test_a_new_journal_is_empty(path: str, open_journal: OpenJournal) -> None:
    j = open_journal(path)
    assert len(j) == 0
    assert j.getCurrentTerm() == 0
    assert j.getVotedForNodeId() is None
    assert j.getRaftCommitIndex() == 1
    assert Path(path).read_bytes() == HEADER
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600


def test_add_and_read_back_across_reopen(path: str, open_journal: OpenJournal) -> None:
    entries = _entries(25)
    j = open_journal(path)
    _fill(j, entries)
    assert len(j) == 25
    assert [j[i] for i in range(25)] == entries
    assert j[-1] == entries[-1]
    assert j[3:6] == entries[3:6]
    # a second open without closing the first: what a restart after SIGKILL sees
    again = open_journal(path)
    assert len(again) == 25
    assert [again[i] for i in range(25)] == entries
    assert isinstance(again[0][0], bytes)


def test_str_commands_are_stored_as_utf8(path: str, open_journal: OpenJournal) -> None:
    j = open_journal(path)
    j.add("é-command", 1, 1)
    assert j[0] == ("é-command".encode(), 1, 1)
    assert open_journal(path)[0] == ("é-command".encode(), 1, 1)


def test_empty_and_large_commands(path: str, open_journal: OpenJournal) -> None:
    big = os.urandom(1 << 20)
    j = open_journal(path)
    j.add(b"", 1, 1)
    j.add(big, 2, 1)
    again = open_journal(path)
    assert again[0] == (b"", 1, 1)
    assert again[1] == (big, 2, 1)


def test_delete_entries_from_survives_reopen(path: str, open_journal: OpenJournal) -> None:
    entries = _entries(10)
    j = open_journal(path)
    _fill(j, entries)
    j.deleteEntriesFrom(6)
    assert len(j) == 6
    j.deleteEntriesFrom(6)   # nothing more to delete
    j.deleteEntriesFrom(100)
    assert len(j) == 6
    # The cut is deferred on disk (a crash now is as if it had never arrived)...
    again = open_journal(path)
    assert [again[i] for i in range(len(again))] == entries
    # ...and made real by the first different entry, which goes right after the kept ones.
    replacement = (b"\x00new-term", 7, 9)
    j.add(*replacement)
    third = open_journal(path)
    assert [third[i] for i in range(len(third))] == [*entries[:6], replacement]


def test_delete_entries_to_compacts_and_survives_reopen(path: str,
                                                       open_journal: OpenJournal) -> None:
    entries = _entries(10)
    j = open_journal(path)
    _fill(j, entries)
    size_before = Path(path).stat().st_size
    j.deleteEntriesTo(4)
    assert len(j) == 6
    assert j[0] == entries[4]
    assert Path(path).stat().st_size < size_before
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    again = open_journal(path)
    assert [again[i] for i in range(len(again))] == entries[4:]
    # the journal still appends and truncates correctly after the swap
    more = _entries(3, start=11)
    _fill(j, more)
    j.deleteEntriesFrom(7)
    j._destroy()  # a clean stop makes a deferred cut real
    third = open_journal(path)
    assert [third[i] for i in range(len(third))] == [*entries[4:], more[0]]


def test_delete_entries_to_everything(path: str, open_journal: OpenJournal) -> None:
    j = open_journal(path)
    _fill(j, _entries(4))
    j.deleteEntriesTo(4)
    assert len(j) == 0
    assert len(open_journal(path)) == 0
    assert Path(path).read_bytes() == HEADER


def test_clear(path: str, open_journal: OpenJournal) -> None:
    j = open_journal(path)
    _fill(j, _entries(5))
    j.clear()
    assert len(j) == 0
    assert Path(path).read_bytes() == HEADER
    assert len(open_journal(path)) == 0
    j.add(b"\x00after", 1, 2)
    assert open_journal(path)[0] == (b"\x00after", 1, 2)


# -- term, vote, commit index -----------------------------------------------------------


def test_term_and_vote_are_durable_at_once(path: str, open_journal: OpenJournal) -> None:
    j = open_journal(path)
    j.setCurrentTerm(7, "127.0.0.1:7100")
    # no flush, no close: a crash right after the call still finds them
    again = open_journal(path)
    assert again.getCurrentTerm() == 7
    assert again.getVotedForNodeId() == "127.0.0.1:7100"
    j.setCurrentTerm(8, None)
    third = open_journal(path)
    assert third.getCurrentTerm() == 8
    assert third.getVotedForNodeId() is None
    for slot in _slots(path):
        assert stat.S_IMODE(slot.stat().st_mode) == 0o600
        assert slot.read_bytes().startswith(raft_meta.SLOT_MAGIC)
    assert not Path(path + ".meta").exists()


def test_commit_index_is_saved_on_flush(path: str, open_journal: OpenJournal) -> None:
    j = open_journal(path)
    j.setCurrentTerm(3, None)
    j.setRaftCommitIndex(42)
    assert j.getRaftCommitIndex() == 42
    j.onOneSecondTimer()
    again = open_journal(path)
    assert again.getRaftCommitIndex() == 42
    assert again.getCurrentTerm() == 3
    j.setRaftCommitIndex(43)
    j.flush()
    assert open_journal(path).getRaftCommitIndex() == 43


def test_destroy_flushes_meta(path: str) -> None:
    j = DurableJournal(path)
    j.setRaftCommitIndex(9)
    j._destroy()
    again = DurableJournal(path)
    try:
        assert again.getRaftCommitIndex() == 9
    finally:
        again._destroy()


def test_term_and_vote_alternate_between_two_slots(path: str,
                                                  open_journal: OpenJournal) -> None:
    j = open_journal(path)
    sizes = []
    for term in range(1, 5):
        j.setCurrentTerm(term, None)
        sizes.append(tuple(slot.read_bytes() for slot in _slots(path)))
    # every write changes one slot only, the other one keeps the previous record
    for before, after in itertools.pairwise(sizes):
        assert sum(a != b for a, b in zip(before, after, strict=True)) == 1


def test_a_torn_meta_write_falls_back_to_the_previous_record(
        path: str, open_journal: OpenJournal) -> None:
    j = open_journal(path)
    j.setCurrentTerm(3, "a:1")
    before = [slot.read_bytes() for slot in _slots(path)]
    j.setCurrentTerm(4, "b:2")
    after = [slot.read_bytes() for slot in _slots(path)]
    (written,) = [i for i in range(2) if before[i] != after[i]]
    torn = bytearray(after[written])
    torn[-1] ^= 0xFF  # a crash in the middle of the in-place write
    _slots(path)[written].write_bytes(bytes(torn))
    again = open_journal(path)
    assert (again.getCurrentTerm(), again.getVotedForNodeId()) == (3, "a:1")
    # the next write goes to the torn slot again, and wins
    again.setCurrentTerm(5, None)
    third = open_journal(path)
    assert (third.getCurrentTerm(), third.getVotedForNodeId()) == (5, None)


def test_a_torn_first_meta_write_is_no_meta(path: str, open_journal: OpenJournal) -> None:
    j = open_journal(path)
    j.setCurrentTerm(2, "a:1")
    (written,) = [slot for slot in _slots(path) if slot.stat().st_size]
    written.write_bytes(written.read_bytes()[:-3])
    assert open_journal(path).getCurrentTerm() == 0


def test_both_meta_slots_damaged_refuses_to_start(path: str,
                                                  open_journal: OpenJournal) -> None:
    j = open_journal(path)
    j.setCurrentTerm(2, None)
    j.setCurrentTerm(3, None)
    for slot in _slots(path):
        slot.write_bytes(b"\x00" * slot.stat().st_size)
    with pytest.raises(StorageError, match="both damaged"):
        DurableJournal(path)


def test_a_meta_file_of_the_old_format_is_read_and_moved_into_the_slots(
        path: str, open_journal: OpenJournal) -> None:
    old = Path(path + ".meta")
    old.write_bytes(versioned(raft_meta.META_FORMAT,
                              {"term": 6, "voted_for": "a:1", "commit_index": 17}))
    j = open_journal(path)
    assert (j.getCurrentTerm(), j.getVotedForNodeId(), j.getRaftCommitIndex()) == \
        (6, "a:1", 17)
    assert not old.exists()
    again = open_journal(path)
    assert (again.getCurrentTerm(), again.getVotedForNodeId(),
            again.getRaftCommitIndex()) == (6, "a:1", 17)


def test_an_old_meta_file_left_by_a_crash_during_the_upgrade_is_ignored(
        path: str, open_journal: OpenJournal) -> None:
    j = open_journal(path)
    j.setCurrentTerm(9, None)
    old = Path(path + ".meta")
    old.write_bytes(versioned(raft_meta.META_FORMAT, {"term": 6}))
    assert open_journal(path).getCurrentTerm() == 9
    assert not old.exists()


# -- torn and corrupt files -------------------------------------------------------------


def _torn_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "raftsso.raft.journal" and r.levelno == logging.WARNING
            and "torn or corrupt tail" in r.getMessage()]


@pytest.mark.parametrize("garbage", [b"\x00", b"\xff" * 7, b"\x00" * 8, bytes(range(30)),
                                     struct.pack(">II", 16, 0) + b"\x00" * 16,
                                     struct.pack(">II", 2**31, 0) + b"junk"],
                         ids=["1-zero", "7-ff", "8-zero", "30-random", "bad-crc", "huge-len"])
def test_garbage_tail_is_cut_with_a_warning(path: str, open_journal: OpenJournal,
                                            caplog: pytest.LogCaptureFixture,
                                            garbage: bytes) -> None:
    entries = _entries(5)
    _fill(open_journal(path), entries)
    good_size = Path(path).stat().st_size
    with Path(path).open("ab") as fh:
        fh.write(garbage)
    caplog.set_level(logging.WARNING, logger="raftsso.raft.journal")
    j = open_journal(path)
    assert [j[i] for i in range(len(j))] == entries
    assert len(_torn_warnings(caplog)) == 1
    assert Path(path).stat().st_size == good_size  # the tail is cut off on disk too
    # and the journal appends cleanly after the cut
    j.add(b"\x00next", 6, 2)
    caplog.clear()
    again = open_journal(path)
    assert [again[i] for i in range(len(again))] == [*entries, (b"\x00next", 6, 2)]
    assert not _torn_warnings(caplog)


def test_every_cut_inside_the_last_record_is_detected(path: str, open_journal: OpenJournal,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    entries = _entries(4)
    _fill(open_journal(path), entries)
    full = Path(path).read_bytes()
    last = _record_size(entries[-1])
    caplog.set_level(logging.WARNING, logger="raftsso.raft.journal")
    for cut in range(1, last):
        Path(path).write_bytes(full[:-cut])
        caplog.clear()
        j = open_journal(path)
        assert [j[i] for i in range(len(j))] == entries[:-1], cut
        assert len(_torn_warnings(caplog)) == 1, cut
        assert Path(path).read_bytes() == full[:-last]


def test_a_flipped_byte_in_the_last_record_is_caught_by_the_crc(
        path: str, open_journal: OpenJournal, caplog: pytest.LogCaptureFixture) -> None:
    entries = _entries(4)
    _fill(open_journal(path), entries)
    full = Path(path).read_bytes()
    last = _record_size(entries[-1])
    caplog.set_level(logging.WARNING, logger="raftsso.raft.journal")
    for pos in range(len(full) - last, len(full)):
        damaged = bytearray(full)
        damaged[pos] ^= 0x40
        Path(path).write_bytes(bytes(damaged))
        caplog.clear()
        j = open_journal(path)
        assert [j[i] for i in range(len(j))] == entries[:-1], pos
        assert len(_torn_warnings(caplog)) == 1, pos


def test_corruption_before_valid_records_refuses_to_start(path: str,
                                                          open_journal: OpenJournal) -> None:
    entries = _entries(6)
    _fill(open_journal(path), entries)
    damaged = bytearray(Path(path).read_bytes())
    damaged[len(HEADER) + _record_size(entries[0]) + 20] ^= 0x01  # inside record 2
    Path(path).write_bytes(bytes(damaged))
    with pytest.raises(StorageError):
        open_journal(path)


@pytest.mark.parametrize("record", [0, 2, 4], ids=["first", "middle", "second-to-last"])
def test_every_damaged_byte_before_a_valid_record_refuses_to_start(
        path: str, open_journal: OpenJournal, caplog: pytest.LogCaptureFixture,
        record: int) -> None:
    # Length field, CRC, index, term and command: wherever a record is damaged, a valid
    # record after it means disk corruption; nothing is cut and the file is left as it is.
    entries = _entries(6)
    _fill(open_journal(path), entries)
    full = Path(path).read_bytes()
    start = len(HEADER) + sum(_record_size(e) for e in entries[:record])
    caplog.set_level(logging.WARNING, logger="raftsso.raft.journal")
    for pos in range(start, start + _record_size(entries[record])):
        damaged = bytearray(full)
        damaged[pos] ^= 0x40
        Path(path).write_bytes(bytes(damaged))
        with pytest.raises(StorageError, match="corrupt") as info:
            DurableJournal(path)
        message = str(info.value)
        assert path in message and f"offset {start}" in message, pos
        assert "catch up from its peers" in message
        assert Path(path).read_bytes() == bytes(damaged), pos
    assert not _torn_warnings(caplog)


def test_a_zeroed_block_before_valid_records_refuses_to_start(
        path: str, open_journal: OpenJournal) -> None:
    entries = _entries(8)
    _fill(open_journal(path), entries)
    damaged = bytearray(Path(path).read_bytes())
    start = len(HEADER) + _record_size(entries[0])
    damaged[start:start + 2 * _record_size(entries[1])] = bytes(2 * _record_size(entries[1]))
    Path(path).write_bytes(bytes(damaged))
    with pytest.raises(StorageError, match="index 4"):
        open_journal(path)


def test_a_torn_record_that_embeds_an_older_record_is_still_a_tail(
        path: str, open_journal: OpenJournal, caplog: pytest.LogCaptureFixture) -> None:
    # Only a record *later* than the last good one counts as "valid data follows": a torn
    # command that happens to contain a copy of an earlier record is still just a tail.
    entries = _entries(4)
    _fill(open_journal(path), entries)
    full = Path(path).read_bytes()
    earlier = full[len(HEADER):len(HEADER) + _record_size(entries[0])]
    torn = struct.pack(">II", 500, 0) + struct.pack(">QQ", 5, 2) + earlier
    Path(path).write_bytes(full + torn)
    caplog.set_level(logging.WARNING, logger="raftsso.raft.journal")
    j = open_journal(path)
    assert [j[i] for i in range(len(j))] == entries
    assert len(_torn_warnings(caplog)) == 1
    assert Path(path).read_bytes() == full


def test_a_torn_tail_followed_by_a_later_record_refuses_to_start(
        path: str, open_journal: OpenJournal) -> None:
    entries = _entries(4)
    _fill(open_journal(path), entries)
    full = Path(path).read_bytes()
    later = DurableJournal(path + ".other")
    try:
        later.add(b"\x00later", 9, 3)
    finally:
        later._destroy()
    record = Path(path + ".other").read_bytes()[len(HEADER):]
    Path(path).write_bytes(full + b"\xff" * 11 + record)
    with pytest.raises(StorageError, match="index 9"):
        open_journal(path)


# -- write groups (group commit) ------------------------------------------------------------


def _count_fdatasync(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


def _flags(path: str) -> list[tuple[int, bool]]:
    """(index, starts a group) of every record in the file."""
    data = Path(path).read_bytes()
    offset, out = len(HEADER), []
    while offset < len(data):
        parsed = DurableJournal._parse(data, offset)
        assert parsed is not None
        out.append((parsed[2], parsed[4]))
        offset += parsed[0]
    return out


def test_appends_in_a_group_share_one_fdatasync(path: str, open_journal: OpenJournal,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    j = open_journal(path)
    calls = _count_fdatasync(monkeypatch)
    j.add(b"\x00alone", 1, 1)
    assert len(calls) == 1 and not j.unsynced  # outside a group: durable before add returns
    with j.group():
        for entry in _entries(4, start=2):
            j.add(*entry)
        assert len(calls) == 1 and j.unsynced  # written, not flushed yet
        with j.group():  # nested: only the outermost flushes
            j.add(*_entries(1, start=6)[0])
        assert len(calls) == 1
    assert len(calls) == 2 and not j.unsynced
    assert (j.syncs, j.appends) == (2, 6)
    assert [i for i, _ in _flags(path)] == [1, 2, 3, 4, 5, 6]
    assert [start for _, start in _flags(path)] == [True, True, False, False, False, False]


def test_sync_inside_a_group_flushes_and_starts_a_new_group(
        path: str, open_journal: OpenJournal, monkeypatch: pytest.MonkeyPatch) -> None:
    j = open_journal(path)
    calls = _count_fdatasync(monkeypatch)
    with j.group():
        _fill(j, _entries(2))
        j.sync()  # what an acknowledgement does before it leaves
        assert len(calls) == 1 and not j.unsynced
        j.sync()  # nothing new: no second flush
        assert len(calls) == 1
        _fill(j, _entries(2, start=3))
    assert len(calls) == 2
    assert [start for _, start in _flags(path)] == [True, False, True, False]
    again = open_journal(path)
    assert [again[i] for i in range(len(again))] == _entries(4)


def test_a_cut_inside_a_group_flushes_before_the_conflicting_entry(
        path: str, open_journal: OpenJournal) -> None:
    entries = _entries(5)
    j = open_journal(path)
    _fill(j, entries)
    with j.group():
        j.deleteEntriesFrom(3)
        j.add(*entries[3])  # the same entry again: kept as it is
        j.add(b"\x00other", 5, 9)  # a conflict: the old tail is cut (and flushed) first
    assert _flags(path)[-1] == (5, True)
    again = open_journal(path)
    assert [again[i] for i in range(len(again))] == [*entries[:4], (b"\x00other", 5, 9)]


def test_a_failing_group_flush_calls_the_failure_hook(path: str, open_journal: OpenJournal,
                                                      failures: list[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    j = open_journal(path)
    monkeypatch.setattr(os, "fdatasync", _eio)
    with pytest.raises(StorageError), j.group():
        _fill(j, _entries(3))
    assert len(failures) == 1 and "fdatasync" in failures[0]
    assert j.unsynced  # nothing is taken for durable


def _groups(path: str, sizes: list[int]) -> tuple[list[tuple[bytes, int, int]], list[int]]:
    """Write groups of ``sizes`` records; return the entries and each record's offset."""
    entries = _entries(sum(sizes))
    j = DurableJournal(path)
    try:
        it = iter(entries)
        for size in sizes:
            with j.group():
                for _ in range(size):
                    j.add(*next(it))
        offsets = list(j._offsets)
    finally:
        j._destroy()
    return entries, offsets


def test_a_damaged_record_in_the_last_group_is_a_torn_tail(
        path: str, caplog: pytest.LogCaptureFixture, open_journal: OpenJournal) -> None:
    # A crash of the machine can leave any part of the last group (never flushed, never
    # acknowledged) unwritten, the later records of the group intact: still a tail.
    entries, offsets = _groups(path, [3, 3])
    full = Path(path).read_bytes()
    for bad in range(3, 6):
        damaged = bytearray(full)
        damaged[offsets[bad] + 12] ^= 0x10
        Path(path).write_bytes(bytes(damaged))
        caplog.clear()
        j = open_journal(path)
        assert [j[i] for i in range(len(j))] == entries[:bad], bad
        assert len(_torn_warnings(caplog)) == 1


def test_a_damaged_record_of_a_flushed_group_refuses_to_start(path: str) -> None:
    # The next group was written after this one was flushed: this is disk corruption.
    _entries_written, offsets = _groups(path, [3, 3])
    full = Path(path).read_bytes()
    for bad in range(3):
        damaged = bytearray(full)
        damaged[offsets[bad] + 12] ^= 0x10
        Path(path).write_bytes(bytes(damaged))
        with pytest.raises(StorageError, match=r"corrupt.*index 4"):
            DurableJournal(path)


def test_a_journal_of_format_1_is_rewritten_in_format_2(path: str,
                                                        open_journal: OpenJournal) -> None:
    entries = _entries(5)
    old = raft_journal.JOURNAL_MAGIC + b"\x01"
    for cmd, idx, term in entries:
        payload = struct.pack(">QQ", idx, term) + cmd
        old += struct.pack(">II", len(payload), zlib.crc32(payload)) + payload
    Path(path).write_bytes(old)
    j = open_journal(path)
    assert [j[i] for i in range(len(j))] == entries
    assert Path(path).read_bytes().startswith(HEADER)
    assert [start for _, start in _flags(path)] == [True] * 5
    j.add(b"\x00new", 6, 3)
    again = open_journal(path)
    assert [again[i] for i in range(len(again))] == [*entries, (b"\x00new", 6, 3)]


def test_a_format_1_journal_with_a_torn_tail_is_cut_then_rewritten(
        path: str, open_journal: OpenJournal) -> None:
    entries = _entries(3)
    old = raft_journal.JOURNAL_MAGIC + b"\x01"
    for cmd, idx, term in entries:
        payload = struct.pack(">QQ", idx, term) + cmd
        old += struct.pack(">II", len(payload), zlib.crc32(payload)) + payload
    Path(path).write_bytes(old[:-3])
    j = open_journal(path)
    assert [j[i] for i in range(len(j))] == entries[:2]
    assert Path(path).read_bytes().startswith(HEADER)


@pytest.mark.parametrize("content", [
    b"",
    b"RSSOJN",
    b"RSSOJNL\x03",
    b"RSSOJNX\x02",
    b"\x80\x02}q\x00.",               # a pickle
    b"\x00" * 64,
    bytes(range(256)),
], ids=["empty", "short-magic", "format-3", "wrong-magic", "pickle", "zeros", "bytes"])
def test_a_foreign_file_is_refused_untouched(path: str, content: bytes) -> None:
    Path(path).write_bytes(content)
    with pytest.raises(StorageError, match="not a raftsso journal") as info:
        DurableJournal(path)
    assert path in str(info.value)
    assert Path(path).read_bytes() == content


def test_a_pysyncobj_journal_is_refused_untouched(path: str) -> None:
    fj = FileJournal(path)
    fj.add(b"\x01" + b"command", 1, 1)
    fj.add(b"\x01" + b"command2", 2, 1)
    fj._destroy()
    content = Path(path).read_bytes()
    with pytest.raises(StorageError, match="pysyncobj journal") as info:
        DurableJournal(path)
    assert path in str(info.value)
    assert Path(path).read_bytes() == content


@pytest.mark.parametrize("meta", [b"", b"\x80\x02}q\x00.", b"\x02\x80", b"\x01\xc1",
                                  versioned(raft_meta.META_FORMAT, [1, 2])],
                         ids=["empty", "pickle", "format-2", "garbage", "list"])
def test_a_foreign_meta_file_is_refused(path: str, meta: bytes) -> None:
    Path(path + ".meta").write_bytes(meta)
    with pytest.raises(StorageError) as info:
        DurableJournal(path)
    assert ".meta" in str(info.value)


# -- failing storage never acknowledges --------------------------------------------------


def _eio(*args: object) -> None:
    raise OSError(errno.EIO, "Input/output error")


def test_failing_fdatasync_does_not_append(path: str, open_journal: OpenJournal,
                                           failures: list[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    entries = _entries(3)
    j = open_journal(path)
    _fill(j, entries)
    monkeypatch.setattr(os, "fdatasync", _eio)
    with pytest.raises(StorageError):
        j.add(b"\x00never-acknowledged-and-rather-long", 4, 1)
    assert len(failures) == 1
    assert "fdatasync" in failures[0] and path in failures[0]
    assert len(j) == 3
    assert j[-1] == entries[-1]
    # once the disk is back (in real life: after a restart), the journal stays consistent
    monkeypatch.undo()
    monkeypatch.setattr(storage, "on_storage_failure", failures.append)
    j.add(b"\x00ok", 4, 1)
    assert [j[i] for i in range(len(j))] == [*entries, (b"\x00ok", 4, 1)]
    again = open_journal(path)
    assert [again[i] for i in range(len(again))] == [*entries, (b"\x00ok", 4, 1)]


def test_failing_write_does_not_append(path: str, open_journal: OpenJournal,
                                       failures: list[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    j = open_journal(path)
    _fill(j, _entries(2))
    monkeypatch.setattr(os, "pwrite", _eio)
    with pytest.raises(StorageError):
        j.add(b"\x00lost", 3, 1)
    assert len(failures) == 1
    assert len(j) == 2


def test_failing_fsync_of_term_and_vote_calls_the_failure_hook(
        path: str, open_journal: OpenJournal, failures: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    j = open_journal(path)
    j.setCurrentTerm(2, None)
    monkeypatch.setattr(os, "fsync", _eio)
    with pytest.raises(StorageError):
        j.setCurrentTerm(3, "127.0.0.1:7100")
    assert len(failures) == 1
    monkeypatch.undo()
    # The record is written in place: after a failed fsync a restart may read the old
    # term or the new one from the page cache. Both are safe: nothing that reflects the
    # new term was sent (the node stopped), and terms only go up.
    again = DurableJournal(path)
    try:
        assert again.getCurrentTerm() in (2, 3)
    finally:
        again._destroy()


def test_failing_term_write_leaves_the_old_term_visible(
        path: str, open_journal: OpenJournal, failures: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    j = open_journal(path)
    j.setCurrentTerm(2, None)
    monkeypatch.setattr(os, "fsync", _eio)
    with pytest.raises(StorageError):
        j.setCurrentTerm(3, "127.0.0.1:7100")
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (2, None)


def test_failing_truncation_calls_the_failure_hook(path: str, open_journal: OpenJournal,
                                                   failures: list[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    j = open_journal(path)
    _fill(j, _entries(4))
    j.deleteEntriesFrom(2)  # deferred: nothing touches the disk yet
    monkeypatch.setattr(os, "ftruncate", _eio)
    with pytest.raises(StorageError):
        j.add(b"\x00conflict", 3, 99)  # a different entry makes the cut real: it fails
    assert len(failures) == 1


def test_a_cut_followed_by_the_same_entries_rewrites_nothing(
        path: str, open_journal: OpenJournal, monkeypatch: pytest.MonkeyPatch) -> None:
    # pysyncobj cuts a follower's log and re-appends the leader's identical entries on
    # every resend: those acknowledged records must never leave the disk.
    entries = _entries(6)
    j = open_journal(path)
    _fill(j, entries)
    size = Path(path).stat().st_size
    writes: list[int] = []
    real_pwrite, real_ftruncate = os.pwrite, os.ftruncate
    monkeypatch.setattr(os, "pwrite", lambda *a: writes.append(1) or real_pwrite(*a))
    monkeypatch.setattr(os, "ftruncate", lambda *a: writes.append(2) or real_ftruncate(*a))
    j.deleteEntriesFrom(3)
    for entry in entries[3:5]:
        j.add(*entry)
    assert writes == []
    assert Path(path).stat().st_size == size
    assert [j[i] for i in range(len(j))] == entries[:5]
    # Then a conflicting entry: the rest of the old tail is cut before it is written.
    conflict = (b"\x00other", 6, 42)
    j.add(*conflict)
    assert writes == [2, 1]
    again = open_journal(path)
    assert [again[i] for i in range(len(again))] == [*entries[:5], conflict]


@pytest.mark.parametrize("operation", ["clear"])
@pytest.mark.parametrize("failing", ["ftruncate", "fdatasync"])
def test_failing_truncation_leaves_the_entries_visible(
        path: str, open_journal: OpenJournal, failures: list[str],
        monkeypatch: pytest.MonkeyPatch, operation: str, failing: str) -> None:
    entries = _entries(4)
    j = open_journal(path)
    _fill(j, entries)
    monkeypatch.setattr(os, failing, _eio)
    with pytest.raises(StorageError):
        if operation == "clear":
            j.clear()
        else:
            j.deleteEntriesFrom(2)
    assert len(failures) == 1
    assert [j[i] for i in range(len(j))] == entries


def test_failing_term_write_keeps_a_pending_commit_index(
        path: str, open_journal: OpenJournal, failures: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    j = open_journal(path)
    j.setCurrentTerm(2, "a:1")
    j.setRaftCommitIndex(7)
    monkeypatch.setattr(os, "fsync", _eio)
    with pytest.raises(StorageError):
        j.setCurrentTerm(3, None)
    assert (j.getCurrentTerm(), j.getVotedForNodeId(), j.getRaftCommitIndex()) == (2, "a:1", 7)
    monkeypatch.undo()
    monkeypatch.setattr(storage, "on_storage_failure", failures.append)
    j.setCurrentTerm(3, None)  # writes the pending commit index along with the new term
    again = open_journal(path)
    assert (again.getCurrentTerm(), again.getVotedForNodeId(),
            again.getRaftCommitIndex()) == (3, None, 7)


def test_failing_compaction_keeps_the_old_file(path: str, open_journal: OpenJournal,
                                               failures: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    entries = _entries(4)
    j = open_journal(path)
    _fill(j, entries)
    monkeypatch.setattr(os, "fsync", _eio)
    with pytest.raises(StorageError):
        j.deleteEntriesTo(2)
    assert len(failures) == 1
    assert len(j) == 4
    monkeypatch.undo()
    again = open_journal(path)
    assert [again[i] for i in range(len(again))] == entries
    assert not [p for p in Path(path).parent.iterdir() if ".tmp." in p.name]


def test_the_default_failure_hook_ends_the_process() -> None:
    assert storage.on_storage_failure is storage._die


# -- snapshot files (read before pysyncobj sees them) -----------------------------------


def test_snapshot_file_round_trip(tmp_path: Path) -> None:
    blob = versioned(raft_snapshot.SNAPSHOT_FILE_FORMAT, {
        "fsm": b"\x01fsm", "last": [b"\x00c", 10, 2], "prev": [b"\x00b", 9, 2],
        "cluster": ["127.0.0.1:7100", "127.0.0.1:7103"]})
    path = tmp_path / "raft.snapshot"
    path.write_bytes(blob)
    assert read_snapshot_file(path) == (b"\x01fsm", (b"\x00c", 10, 2), (b"\x00b", 9, 2),
                                        ["127.0.0.1:7100", "127.0.0.1:7103"])


@pytest.mark.parametrize("raw", [
    None, [], {"fsm": "text"}, {"fsm": b"x", "cluster": []},
    {"fsm": b"x", "cluster": ["a"], "last": [b"c", 1], "prev": [b"c", 1, 1]},
    {"fsm": b"x", "cluster": ["a"], "last": [b"c", 1, 1], "prev": ["c", 1, 1]},
    {"fsm": b"x", "cluster": [1], "last": [b"c", 1, 1], "prev": [b"c", 1, 1]},
    {"fsm": b"x", "cluster": "a", "last": [b"c", 1, 1], "prev": [b"c", 1, 1]},
], ids=repr)
def test_malformed_snapshot_files(tmp_path: Path, raw: object) -> None:
    path = tmp_path / "raft.snapshot"
    path.write_bytes(versioned(raft_snapshot.SNAPSHOT_FILE_FORMAT, raw))
    with pytest.raises(DecodeError):
        read_snapshot_file(path)
    path.write_bytes(b"\x1f\x8b gzip+pickle from pysyncobj")
    with pytest.raises(DecodeError):
        read_snapshot_file(path)


# -- running out of file descriptors is not a storage failure (issue 11) -----------------


def test_appends_term_vote_and_truncation_need_no_new_descriptor(
        path: str, open_journal: OpenJournal, failures: list[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="raftsso.raft.storage")
    entries = _entries(6)
    j = open_journal(path)
    _fill(j, entries)
    j.setCurrentTerm(1, None)
    replacement = (b"\x00other", 5, 3)
    with no_free_descriptors():
        with pytest.raises(OSError):
            os.open("/dev/null", os.O_RDONLY)
        j.add(b"\x00seven", 7, 2)
        j.setCurrentTerm(3, "127.0.0.1:7100")
        j.setRaftCommitIndex(4)
        j.onOneSecondTimer()
        j.deleteEntriesFrom(4)  # a conflicting append from a new leader...
        j.add(*replacement)  # ...makes the cut real (ftruncate)
        j.deleteEntriesTo(2)  # log compaction needs a new file: postponed
        assert len(j) == 5
    assert not failures, "running out of descriptors was taken for a storage failure"
    assert any("Raft log compaction postponed" in r.getMessage() for r in caplog.records)
    again = open_journal(path)
    assert [again[i] for i in range(len(again))] == [*entries[:4], replacement]
    assert (again.getCurrentTerm(), again.getVotedForNodeId(),
            again.getRaftCommitIndex()) == (3, "127.0.0.1:7100", 4)
    j.deleteEntriesTo(2)  # descriptors are back: the compaction runs
    third = open_journal(path)
    assert [third[i] for i in range(len(third))] == [*entries[2:4], replacement]


def test_a_journal_longer_than_its_snapshot_is_trimmed_at_start(
        path: str, open_journal: OpenJournal) -> None:
    entries = _entries(10)
    j = open_journal(path)
    _fill(j, entries)
    # A snapshot covering up to entry 6 was written, the compaction did not run.
    assert j.trim_to_snapshot(entries[4], entries[5]) is True
    assert [j[i] for i in range(len(j))] == entries[4:]
    assert [open_journal(path)[i] for i in range(6)] == entries[4:]
    assert j.trim_to_snapshot(entries[4], entries[5]) is False  # already at the head
    assert j.trim_to_snapshot((b"\x00x", 40, 9), (b"\x00y", 41, 9)) is False
    assert len(j) == 6


def _snapshot_blob(last: tuple[bytes, int, int], prev: tuple[bytes, int, int]) -> bytes:
    return versioned(raft_snapshot.SNAPSHOT_FILE_FORMAT, {
        "fsm": KeyringStateMachine().snapshot(), "last": list(last), "prev": list(prev),
        "cluster": ["127.0.0.1:7100"]})


def test_a_snapshot_that_finds_no_descriptor_is_postponed(tmp_path: Path,
                                                          failures: list[str]) -> None:
    codec = raft_snapshot.SnapshotCodec(KeyringStateMachine(), tmp_path)
    codec.open()
    target = str(tmp_path / "raft.snapshot.tmp")
    data = ((b"\x00c", 10, 2), (b"\x00b", 9, 2), [])
    try:
        with no_free_descriptors(), pytest.raises(storage.TransientStorageError):
            codec(target, data)
        assert codec.retry_at > 0
        assert not failures
        codec(target, data)
        assert read_snapshot_file(Path(target))[1:3] == ((b"\x00c", 10, 2), (b"\x00b", 9, 2))
        assert stat.S_IMODE(Path(target).stat().st_mode) == 0o600
    finally:
        codec.close()


def test_a_received_snapshot_is_durable_and_loads_without_a_new_descriptor(
        tmp_path: Path, failures: list[str]) -> None:
    machine = KeyringStateMachine()
    codec = raft_snapshot.SnapshotCodec(machine, tmp_path)
    codec.open()
    final = tmp_path / "raft.snapshot"
    serializer = raft_snapshot.DurableSerializer(str(final), 64, False, codec,
                                                 codec.deserialize, None)
    blob = _snapshot_blob((b"\x00c", 10, 2), (b"\x00b", 9, 2))
    try:
        # a transfer that cannot start is dropped (the leader starts it again)
        with no_free_descriptors():
            assert serializer.setTransmissionData((blob[:5], True, False)) is False
        assert serializer.setTransmissionData((blob[5:], False, False)) is False
        assert not final.exists()
        assert serializer.setTransmissionData((blob[:5], True, False)) is False
        assert serializer.setTransmissionData((blob[5:], False, False)) is False
        assert serializer.setTransmissionData((b"", False, True)) is True
        assert final.read_bytes() == blob  # in place (and fsynced) before pysyncobj loads it
        with no_free_descriptors():
            last, prev, cluster = codec.deserialize(str(final))
        assert (last, prev, cluster) == ((b"\x00c", 10, 2), (b"\x00b", 9, 2),
                                         ["127.0.0.1:7100"])
        assert codec.received_fd is None
        assert not failures
    finally:
        codec.close()
