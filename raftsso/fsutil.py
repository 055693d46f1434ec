"""Durable file writes: temp file, fsync, rename, fsync of the directory; 0600 by default."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from raftsso.errors import ConfigError, StorageError


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file.

    The temporary file is created with ``mode`` from the start (never world-readable, not
    even for a moment), fsynced, renamed over the target, and the directory is fsynced so
    the rename itself survives a power loss.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed or the file pre-existed
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"could not write {target} durably: {exc.strerror or exc}") from exc


def check_private(path: str | os.PathLike[str]) -> os.stat_result:
    """Refuse a secret file (key, seal key) that is group- or world-accessible."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror or exc}") from exc
    if st.st_mode & 0o077:
        raise ConfigError(f"{p} is accessible by other users (mode {st.st_mode & 0o777:o}); "
                           f"run: chmod 600 {p}")
    return st


def read_private(path: str | os.PathLike[str], limit: int = 1 << 20) -> bytes:
    """Read a small secret file, refusing one that is group- or world-accessible."""
    p = Path(path)
    st = check_private(p)
    if st.st_size > limit:
        raise ConfigError(f"{p} is larger than {limit} bytes; is it the right file?")
    return p.read_bytes()
