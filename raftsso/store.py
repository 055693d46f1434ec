"""The SSO store (ENTSSO's SSO database): applications, credential mappings, config values.

SQLite (stdlib :mod:`sqlite3`, WAL journal, ``secure_delete``), one file created 0600.
Nothing is ever stored in plaintext: every credential and every configuration value is a
client token (see :mod:`raftsso.envelope`) made by the *cipher* the store is given, an
object with ``encrypt(data, associated_data)`` and ``decrypt(token, associated_data)``,
normally a :class:`raftsso.client.SSOClient`. The store itself never touches the network
or a key.

Schema (version 1)::

    schema_version(version INTEGER)                         one row
    apps(name TEXT PRIMARY KEY, description TEXT, created REAL)
    credentials(app, user, token BLOB, key_version INTEGER, updated REAL)
        PRIMARY KEY (app, user), app REFERENCES apps ON DELETE CASCADE
    config_values(app, name, token BLOB, key_version INTEGER, updated REAL)
        PRIMARY KEY (app, name), app REFERENCES apps ON DELETE CASCADE

Associated data binds every token to its row, so a token copied into another row (another
application, user or setting, or from a credential into a config value) fails to decrypt::

    credential:  b"raftsso/cred/v1\\x00"   + app + b"\\x00" + user   (UTF-8)
    config:      b"raftsso/config/v1\\x00" + app + b"\\x00" + name   (UTF-8)

Names are non-empty UTF-8 text without NUL characters, which keeps that encoding
unambiguous. ``key_version`` repeats the version from the token header so that ``rewrap``
and ``retire`` can find rows by version without decrypting; :meth:`SSOStore.rows_not_under`
and :meth:`SSOStore.replace_tokens` are the primitives they build on.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Protocol

from raftsso.envelope import token_key_version
from raftsso.errors import AlreadyExists, InvalidToken, NotFound, StoreError

SCHEMA_VERSION = 1
MAX_NAME = 256
BUSY_TIMEOUT_MS = 10_000

_CRED_AD = b"raftsso/cred/v1\x00"
_CONFIG_AD = b"raftsso/config/v1\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS apps (
    name        TEXT PRIMARY KEY NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS credentials (
    app         TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    user        TEXT NOT NULL,
    token       BLOB NOT NULL,
    key_version INTEGER NOT NULL,
    updated     REAL NOT NULL,
    PRIMARY KEY (app, user)
);
CREATE TABLE IF NOT EXISTS config_values (
    app         TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    token       BLOB NOT NULL,
    key_version INTEGER NOT NULL,
    updated     REAL NOT NULL,
    PRIMARY KEY (app, name)
);
CREATE INDEX IF NOT EXISTS credentials_by_version ON credentials(key_version);
CREATE INDEX IF NOT EXISTS config_values_by_version ON config_values(key_version);
"""


class Cipher(Protocol):
    """What the store needs from the SSO client."""

    def encrypt(self, data: bytes, associated_data: bytes = b"") -> bytes: ...

    def decrypt(self, token: bytes, associated_data: bytes = b"") -> bytes: ...


class RowKind(StrEnum):
    CREDENTIAL = "credential"
    CONFIG = "config"


_TABLE = {RowKind.CREDENTIAL: ("credentials", "user"), RowKind.CONFIG: ("config_values", "name")}


@dataclass(frozen=True)
class App:
    name: str
    description: str
    created: float
    credentials: int
    config_values: int


@dataclass(frozen=True)
class Entry:
    """A credential mapping or configuration value, without its secret."""

    app: str
    name: str
    key_version: int
    updated: float


@dataclass(frozen=True, order=True)
class RowKey:
    """Where a row lives; ordered, so a batch job can resume after the last one it did."""

    kind: RowKind
    app: str
    name: str  # the user of a credential, the name of a config value


@dataclass(frozen=True)
class StoredRow:
    """One encrypted row as stored (the token is ciphertext, safe to hold)."""

    key: RowKey
    token: bytes = field(repr=False)
    key_version: int

    @property
    def associated_data(self) -> bytes:
        return associated_data(self.key.kind, self.key.app, self.key.name)


def associated_data(kind: RowKind, app: str, name: str) -> bytes:
    """The associated data that binds a token to its row (see the module docstring)."""
    prefix = _CRED_AD if kind is RowKind.CREDENTIAL else _CONFIG_AD
    return prefix + app.encode() + b"\x00" + name.encode()


def _check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise StoreError(f"the {what} name must not be empty")
    if "\x00" in value:
        raise StoreError(f"the {what} name must not contain NUL characters")
    if len(value) > MAX_NAME:
        raise StoreError(f"the {what} name is longer than {MAX_NAME} characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise StoreError(f"the {what} name is not valid text") from None
    return value


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


class SSOStore:
    """The SSO database; thread-safe (one connection, serialised), safe across processes.

    ``cipher`` may be ``None`` for administrative use that never touches a secret
    (applications, listings, the rewrap primitives); reading or writing a secret then fails.
    """

    def __init__(self, path: str | os.PathLike[str], cipher: Cipher | None = None) -> None:
        self.path = Path(path)
        self._cipher = cipher
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

    # lifecycle -------------------------------------------------------------------------

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
        with self._transaction() as db:
            have = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                              "AND name = 'schema_version'").fetchone()
            if have is None:
                tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if tables:
                    raise StoreError(f"{self.path} is an SQLite database but not an SSO store")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                return
            row = db.execute("SELECT version FROM schema_version").fetchall()
            if len(row) != 1:
                raise StoreError(f"{self.path}: the schema_version table is damaged")
            version = row[0][0]
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has SSO store schema version {version}; this raftsso reads "
                    f"version {SCHEMA_VERSION}" + (" (upgrade raftsso)"
                                                   if version > SCHEMA_VERSION else ""))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SSOStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SSOStore({str(self.path)!r})"

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: the write lock is taken up front)."""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write to the SSO store {self.path}: {exc}") from None
            try:
                yield db
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
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read the SSO store {self.path}: {exc}") from None

    def _need_cipher(self) -> Cipher:
        if self._cipher is None:
            raise StoreError("this SSO store was opened without an SSO client; secrets "
                             "cannot be read or written")
        return self._cipher

    @staticmethod
    def _require_app(db: sqlite3.Connection, app: str) -> None:
        if db.execute("SELECT 1 FROM apps WHERE name = ?", (app,)).fetchone() is None:
            raise NotFound(f"no affiliate application {app!r} in the SSO store; create it "
                           f"first (raftsso sso app add {app})")

    # applications ----------------------------------------------------------------------

    def add_app(self, name: str, description: str = "") -> None:
        _check_name("application", name)
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM apps WHERE name = ?", (name,)).fetchone():
                raise AlreadyExists(f"the application {name!r} exists already")
            db.execute("INSERT INTO apps (name, description, created) VALUES (?, ?, ?)",
                       (name, description, time.time()))

    def list_apps(self) -> list[App]:
        with self._read() as db:
            rows = db.execute(
                "SELECT a.name, a.description, a.created, "
                "(SELECT count(*) FROM credentials c WHERE c.app = a.name), "
                "(SELECT count(*) FROM config_values v WHERE v.app = a.name) "
                "FROM apps a ORDER BY a.name").fetchall()
        return [App(str(r[0]), str(r[1]), float(r[2]), int(r[3]), int(r[4])) for r in rows]

    def remove_app(self, name: str) -> tuple[int, int]:
        """Remove an application with its mappings and values; returns how many of each."""
        with self._transaction() as db:
            self._require_app(db, name)
            creds = db.execute("DELETE FROM credentials WHERE app = ?", (name,)).rowcount
            values = db.execute("DELETE FROM config_values WHERE app = ?", (name,)).rowcount
            db.execute("DELETE FROM apps WHERE name = ?", (name,))
        return int(creds), int(values)

    # credentials and configuration values -----------------------------------------------

    def _put(self, kind: RowKind, app: str, name: str, secret: bytes) -> int:
        _check_name("application", app)
        _check_name("user" if kind is RowKind.CREDENTIAL else "setting", name)
        if not isinstance(secret, bytes | bytearray | memoryview):
            raise TypeError("secrets are bytes")
        cipher = self._need_cipher()
        # Encrypt first (no network, no lock held for long), then write in one transaction.
        token = cipher.encrypt(bytes(secret), associated_data(kind, app, name))
        version = token_key_version(token)
        table, column = _TABLE[kind]
        with self._transaction() as db:
            self._require_app(db, app)
            db.execute(
                f"INSERT INTO {table} (app, {column}, token, key_version, updated) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (app, " + column + ") DO UPDATE SET "
                "token = excluded.token, key_version = excluded.key_version, "
                "updated = excluded.updated",
                (app, name, token, version, time.time()))
        return version

    def _get(self, kind: RowKind, app: str, name: str) -> bytes:
        table, column = _TABLE[kind]
        cipher = self._need_cipher()
        with self._read() as db:
            row = db.execute(f"SELECT token FROM {table} WHERE app = ? AND {column} = ?",  # noqa: S608
                             (app, name)).fetchone()
            if row is None:
                self._require_app(db, app)
        if row is None:
            what = "credential mapping for user" if kind is RowKind.CREDENTIAL else "setting"
            raise NotFound(f"no {what} {name!r} in application {app!r}")
        token = bytes(row[0])
        return cipher.decrypt(token, associated_data(kind, app, name))

    def _delete(self, kind: RowKind, app: str, name: str) -> None:
        table, column = _TABLE[kind]
        with self._transaction() as db:
            self._require_app(db, app)
            gone = db.execute(f"DELETE FROM {table} WHERE app = ? AND {column} = ?",  # noqa: S608
                              (app, name)).rowcount
            if not gone:
                what = "credential mapping for user" if kind is RowKind.CREDENTIAL else "setting"
                raise NotFound(f"no {what} {name!r} in application {app!r}")

    def _list(self, kind: RowKind, app: str) -> list[Entry]:
        table, column = _TABLE[kind]
        with self._read() as db:
            self._require_app(db, app)
            rows = db.execute(f"SELECT {column}, key_version, updated FROM {table} "  # noqa: S608
                              f"WHERE app = ? ORDER BY {column}", (app,)).fetchall()
        return [Entry(app, str(r[0]), int(r[1]), float(r[2])) for r in rows]

    def set_credential(self, app: str, user: str, credential: bytes) -> int:
        """Encrypt and store the credential of ``user`` in ``app``; returns the key version."""
        return self._put(RowKind.CREDENTIAL, app, user, credential)

    def get_credential(self, app: str, user: str) -> bytes:
        """The credential in plaintext (:class:`NotFound`, or :class:`InvalidToken`)."""
        return self._get(RowKind.CREDENTIAL, app, user)

    def delete_credential(self, app: str, user: str) -> None:
        self._delete(RowKind.CREDENTIAL, app, user)

    def list_credentials(self, app: str) -> list[Entry]:
        return self._list(RowKind.CREDENTIAL, app)

    def set_config(self, app: str, name: str, value: bytes) -> int:
        """Encrypt and store a configuration value of ``app``; returns the key version."""
        return self._put(RowKind.CONFIG, app, name, value)

    def get_config(self, app: str, name: str) -> bytes:
        return self._get(RowKind.CONFIG, app, name)

    def delete_config(self, app: str, name: str) -> None:
        self._delete(RowKind.CONFIG, app, name)

    def list_config(self, app: str) -> list[Entry]:
        return self._list(RowKind.CONFIG, app)

    # primitives for rewrap and retire ------------------------------------------------------

    def key_versions(self) -> dict[int, int]:
        """How many rows each key version encrypts (``retire`` needs zero)."""
        counts: dict[int, int] = {}
        with self._read() as db:
            for table in ("credentials", "config_values"):
                for version, n in db.execute(
                        f"SELECT key_version, count(*) FROM {table} "  # noqa: S608
                        "GROUP BY key_version"):
                    counts[int(version)] = counts.get(int(version), 0) + int(n)
        return counts

    def rows_not_under(self, version: int, *, after: RowKey | None = None,
                       limit: int = 100) -> list[StoredRow]:
        """Up to ``limit`` rows whose token is not under ``version``, in :class:`RowKey`
        order, strictly after ``after`` (so a batch job can resume where it stopped)."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        found: list[StoredRow] = []
        with self._read() as db:
            for kind in sorted(RowKind):  # the order of RowKey
                if after is not None and kind < after.kind:
                    continue
                table, column = _TABLE[kind]
                query = (f"SELECT app, {column}, token, key_version FROM {table} "  # noqa: S608
                         "WHERE key_version != ?")
                params: tuple[object, ...] = (version,)
                if after is not None and kind == after.kind:
                    # A row value lets SQLite seek to the resume point in the primary key
                    # instead of scanning from the start for every batch.
                    query += f" AND (app, {column}) > (?, ?)"
                    params += (after.app, after.name)
                query += f" ORDER BY app, {column} LIMIT ?"
                params += (limit - len(found),)
                for app, name, token, kv in db.execute(query, params):
                    found.append(StoredRow(RowKey(kind, str(app), str(name)), bytes(token),
                                           int(kv)))
                if len(found) >= limit:
                    break
        return found

    def replace_tokens(self, updates: Sequence[tuple[StoredRow, bytes]]) -> int:
        """Replace the tokens of rows in one transaction, each only if it still holds the
        token it was read with (a concurrent ``cred set`` wins); returns how many changed.

        The caller makes each new token with ``row.associated_data``; the store records
        the key version from the token header.
        """
        changed = 0
        now = time.time()
        with self._transaction() as db:
            for row, new_token in updates:
                version = token_key_version(new_token)
                table, column = _TABLE[row.key.kind]
                changed += db.execute(
                    f"UPDATE {table} SET token = ?, key_version = ?, updated = ? "  # noqa: S608
                    f"WHERE app = ? AND {column} = ? AND token = ?",
                    (new_token, version, now, row.key.app, row.key.name, row.token)).rowcount
        return changed


__all__ = [
    "App",
    "Cipher",
    "Entry",
    "InvalidToken",
    "RowKey",
    "RowKind",
    "SSOStore",
    "StoredRow",
    "associated_data",
]
