"""raftsso.backup_schedule: the backup directory (real files, real fsync) and when a
backup is due (pure)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raftsso.backup_schedule import BackupDir, Content, backup_name, due
from raftsso.errors import StorageError

T0 = 1_700_000_000.0


def name(i: int, node: str = "node1") -> str:
    return backup_name(T0 + i, "c-unit", node)


def test_names_sort_by_time_and_parse_back(tmp_path: Path) -> None:
    d = BackupDir(tmp_path, keep=10)
    for i in (3, 1, 2):
        d.write(b"x" * i, name(i))
    assert [p.read_bytes() for p in d.files()] == [b"x", b"xx", b"xxx"]
    assert d.newest_time() == pytest.approx(T0 + 3)
    assert name(1).startswith("raftsso-backup-2023") and name(1).endswith("-c-unit-node1.rsso")


def test_written_whole_and_private(tmp_path: Path) -> None:
    d = BackupDir(tmp_path / "new" / "dir", keep=3)
    blob = os.urandom(300_000)
    path = d.write(blob, name(0))
    assert path.read_bytes() == blob
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.path.stat().st_mode) == 0o700
    assert os.listdir(d.path) == [path.name]  # nothing else: no temporary file left


def test_keep_rotates_the_oldest_out(tmp_path: Path) -> None:
    d = BackupDir(tmp_path, keep=3)
    for i in range(6):
        d.write(str(i).encode(), name(i))
        assert len(d.files()) == min(i + 1, 3)
    assert [p.read_bytes() for p in d.files()] == [b"3", b"4", b"5"]


def test_other_files_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "raftsso-backup-manual.rsso").write_text("a password backup")
    d = BackupDir(tmp_path, keep=1)
    d.write(b"a", name(0))
    d.write(b"b", name(1))
    assert sorted(os.listdir(tmp_path)) == sorted(["notes.txt", "raftsso-backup-manual.rsso",
                                                   name(1)])


def test_the_same_name_twice_gets_a_suffix(tmp_path: Path) -> None:
    d = BackupDir(tmp_path, keep=5)
    a, b = d.write(b"a", name(0)), d.write(b"b", name(0))
    assert a != b and a.read_bytes() == b"a" and b.read_bytes() == b"b"
    assert len(d.files()) == 2


def test_without_o_tmpfile_a_renamed_temp_is_used(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(self: BackupDir, blob: bytes, target: Path) -> None:
        raise OSError(errno.EOPNOTSUPP, "no O_TMPFILE here")

    monkeypatch.setattr(BackupDir, "_write_unnamed", unsupported)
    d = BackupDir(tmp_path, keep=2)
    # A temporary file left by a crash of the fallback path is removed by the next write.
    stale = tmp_path / f".{name(0)}.tmp.4242"
    stale.write_bytes(b"half")
    path = d.write(b"whole", name(1))
    assert path.read_bytes() == b"whole"
    assert os.listdir(tmp_path) == [path.name]


def test_a_write_killed_before_its_link_leaves_nothing(tmp_path: Path) -> None:
    """A real process writes a large backup and is SIGKILLed before the file gets its
    name (it waits for the kill with the unnamed file written and fsynced)."""
    script = f"""
import os, sys
from pathlib import Path
from raftsso.backup_schedule import BackupDir
def stall(*args, **kwargs):
    print("linking", flush=True)
    sys.stdin.read()
os.link = stall
BackupDir(Path({str(tmp_path)!r}), keep=3).write(os.urandom(1 << 20), {name(0)!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"linking\n"
    proc.kill()
    proc.wait(10)
    assert os.listdir(tmp_path) == []
    assert BackupDir(tmp_path, keep=3).files() == []


def test_an_unwritable_directory_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageError, match="could not write a backup"):
        BackupDir(blocker / "sub", keep=1).write(b"x", name(0))
    with pytest.raises(ValueError):
        BackupDir(tmp_path, keep=1).write(b"x", "other.bin")


# -- due ----------------------------------------------------------------------------------

A = Content.of([(1, "f1")], 1)
B = Content.of([(1, "f1"), (2, "f2")], 1)
B2 = Content.of([(1, "f1"), (2, "f2")], 2)


@pytest.mark.parametrize(("current", "last", "last_time", "backed_up", "now", "expected"), [
    (A, None, None, False, T0, "new_version"),       # never backed up
    (A, None, None, True, T0, "interval"),           # new leader, no file here
    (A, None, T0 - 10, True, T0, None),              # new leader, a recent file
    (A, None, T0 - 100, True, T0, "interval"),       # new leader, an old file
    (B, A, T0 - 1, False, T0, "new_version"),        # a rotation
    (B2, B, T0 - 1, True, T0, "changed"),            # a promotion
    (B, B, T0 - 59, True, T0, None),
    (B, B, T0 - 60, True, T0, "interval"),
    (Content.of([], None), None, None, False, T0, None),  # nothing to back up yet
])
def test_due(current: Content, last: Content | None, last_time: float | None,
             backed_up: bool, now: float, expected: str | None) -> None:
    assert due(now, current=current, last_written=last, last_time=last_time,
               all_backed_up=backed_up, interval=60.0) == expected


def test_due_time_is_the_callers() -> None:
    assert due(time.time(), current=A, last_written=A, last_time=time.time(),
               all_backed_up=True, interval=3600) is None
