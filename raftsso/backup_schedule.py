"""Unattended backups (``[backup]`` in node.toml): when the leader writes one, and how.

**When** (:func:`due`): the leader writes a backup, encrypted to the operator's public key
(:mod:`raftsso.backup_recipient`), as soon as the keyring holds something no backup of its
own holds yet (a new version, a promotion, a restore: the set of live versions or the
primary changed), and otherwise every ``interval`` seconds. A new leader does not know what
its predecessor wrote, so it looks at the keyring's ``backed_up`` marks and at the newest
file's time: a version its predecessor did not finish backing up is written at once.

**How** (:class:`BackupDir`): the file is written where no reader can see it, fsynced, and
only then given its name (an ``O_TMPFILE`` inode linked in with ``linkat``; where the file
system cannot, a dot-named temporary file renamed into place, and leftovers of a crash are
removed before the next write), then the directory is fsynced. A leader killed at any
moment therefore leaves either no new file or a complete one. Old files beyond ``keep`` are
deleted, oldest first. Files are named
``raftsso-backup-<UTC time>-<cluster id>-<node id>.rsso`` so that the names sort by time
and leaders sharing one directory do not collide.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from raftsso.errors import StorageError
from raftsso.fsutil import fsync_dir

log = logging.getLogger(__name__)

PREFIX = "raftsso-backup-"
SUFFIX = ".rsso"
_STALE_TEMP = re.compile(r"\.raftsso-backup-.*\.tmp\.\d+")
_NAME = re.compile(r"raftsso-backup-(\d{8}T\d{6}\.\d{6}Z)-.*\.rsso")


def backup_name(when: float, cluster_id: str, node_id: str) -> str:
    stamp = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{PREFIX}{stamp}-{cluster_id}-{node_id}{SUFFIX}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class BackupDir:
    """The directory of scheduled backups: atomic writes, listing, rotation."""

    def __init__(self, path: Path, keep: int) -> None:
        self.path = path
        self.keep = keep

    def files(self) -> list[Path]:
        """Every complete backup file, oldest first (by the time in its name)."""
        try:
            names = [e.name for e in os.scandir(self.path) if e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        return [self.path / n for n in sorted(n for n in names if _NAME.fullmatch(n))]

    def newest_time(self) -> float | None:
        """When the newest file was written (from its name), if there is one."""
        files = self.files()
        if not files:
            return None
        match = _NAME.fullmatch(files[-1].name)
        assert match is not None
        stamp = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S.%fZ")
        return stamp.replace(tzinfo=dt.UTC).timestamp()

    def write(self, blob: bytes, name: str) -> Path:
        """Write ``blob`` as ``name`` (0600) so that it appears whole or not at all; then
        delete the oldest files beyond ``keep``. :class:`StorageError` on failure."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a backup file name")
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._remove_stale_temps()
            target = self._unique(name)
            try:
                self._write_unnamed(blob, target)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL,
                                     errno.ENOENT, errno.EXDEV):
                    raise
                self._write_renamed(blob, target)  # no O_TMPFILE (or no /proc) here
            fsync_dir(self.path)
        except OSError as exc:
            raise StorageError(f"could not write a backup into {self.path}: "
                               f"{exc.strerror or exc}") from exc
        self.rotate()
        return target

    def rotate(self) -> list[Path]:
        """Delete the oldest files beyond ``keep``; return them."""
        files = self.files()
        gone = files[:max(0, len(files) - self.keep)]
        for path in gone:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if gone:
            with contextlib.suppress(OSError):
                fsync_dir(self.path)
        return gone

    def _unique(self, name: str) -> Path:
        target = self.path / name
        n = 1
        while target.exists():  # two backups in the same microsecond (or a clock step back)
            target = self.path / name.replace(SUFFIX, f"-{n}{SUFFIX}")
            n += 1
        return target

    def _write_unnamed(self, blob: bytes, target: Path) -> None:
        dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o600, dir_fd=dir_fd)
            try:
                os.fchmod(fd, 0o600)
                _write_all(fd, blob)
                os.fsync(fd)
                proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    # linkat(..., AT_SYMLINK_FOLLOW) gives the unnamed inode its name; until
                    # this call nothing in the directory shows the file.
                    os.link(str(fd), target.name, src_dir_fd=proc, dst_dir_fd=dir_fd)
                finally:
                    os.close(proc)
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)

    def _write_renamed(self, blob: bytes, target: Path) -> None:
        tmp = self.path / f".{target.name}.tmp.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)
                _write_all(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, target)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def _remove_stale_temps(self) -> None:
        for entry in os.scandir(self.path):
            if _STALE_TEMP.fullmatch(entry.name):
                log.info("removing %s, left by a backup that did not finish", entry.name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


# -- when ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    """What a backup holds: the live versions (id, fingerprint) and the primary."""

    versions: frozenset[tuple[int, str]]
    primary: int | None

    @classmethod
    def of(cls, versions: Iterable[tuple[int, str]], primary: int | None) -> Content:
        return cls(frozenset(versions), primary)


def due(now: float, *, current: Content, last_written: Content | None,
        last_time: float | None, all_backed_up: bool, interval: float) -> str | None:
    """Why a backup is due now (``"new_version"``, ``"changed"``, ``"interval"``), or None.

    ``last_written``/``last_time``: this leader's last backup (None: none yet in this
    leadership, then ``last_time`` is the newest file's time, if any); ``all_backed_up``:
    every live version carries the keyring's ``backed_up`` mark.
    """
    if not current.versions:
        return None
    if not all_backed_up:
        return "new_version"
    if last_written is not None and last_written != current:
        return "changed"
    if last_time is None or now - last_time >= interval:
        return "interval"
    return None
