"""The SQLite backend: one file per host, created 0600, WAL journal, ``secure_delete``.

One connection, serialised by a lock (thread-safe); several processes can share the file
(write transactions take the lock up front with ``BEGIN IMMEDIATE``; busy timeout 10 s).
``synchronous = FULL``: a committed write survives a power loss.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import cast

from raftsso.errors import StoreError
from raftsso.store.backend import Cursor, Tx
from raftsso.store.schema import SQLITE

BUSY_TIMEOUT_MS = 10_000


class _Tx:
    __slots__ = ("_db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        return cast(Cursor, self._db.execute(sql, params))

    def executemany(self, sql: str, params: Iterable[Sequence[object]]) -> int:
        return int(self._db.executemany(sql, params).rowcount)


def _create_private(path: Path) -> None:
    """Create the database file 0600 (never readable by others, not even for a moment)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create the SSO store {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
    finally:
        os.close(fd)


class SQLiteBackend:
    kind = "sqlite"
    dialect = SQLITE
    exclusive = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        if not self.path.parent.is_dir():
            raise StoreError(f"cannot create the SSO store {self.path}: the directory "
                             f"{self.path.parent} does not exist")
        _create_private(self.path)
        try:
            st = self.path.stat()
        except OSError as exc:
            raise StoreError(f"cannot open the SSO store {self.path}: "
                             f"{exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"the SSO store {self.path} is not a regular file")
        if st.st_mode & 0o077:
            raise StoreError(f"the SSO store {self.path} is accessible by other users "
                             f"(mode {st.st_mode & 0o777:o}); run: chmod 600 {self.path}")
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SSO store {self.path}: {exc}") from None
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        db = self._db
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA secure_delete = ON")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable SQLite database: {exc}") from None
        if not mode or str(mode[0]).lower() != "wal":
            raise StoreError(f"the SSO store {self.path} cannot use a WAL journal")

    @property
    def where(self) -> str:
        return str(self.path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One write transaction (BEGIN IMMEDIATE: the write lock is taken up front)."""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write to the SSO store {self.path}: {exc}") from None
            try:
                yield _Tx(db)
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise StoreError(f"cannot write to the SSO store {self.path}: {exc}") from None
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise StoreError(f"cannot commit to the SSO store {self.path}: {exc}") from None

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        with self._lock:
            try:
                yield _Tx(self._db)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read the SSO store {self.path}: {exc}") from None

    def lock_schema(self, tx: Tx) -> None:
        """Nothing to do: BEGIN IMMEDIATE already holds the database's write lock."""

    def tables(self, tx: Tx) -> set[str]:
        try:
            return {str(r[0]) for r in tx.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable SQLite database: {exc}") from None
