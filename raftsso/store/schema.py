"""The SSO store's schema, its version table and forward migrations (both engines).

Every store starts empty and is brought to :data:`SCHEMA_VERSION` by the same numbered
migrations, on SQLite and PostgreSQL alike (only column types differ, see
:class:`raftsso.store.backend.Dialect`). Each migration runs in the transaction that records
its number, so a crash leaves the store at the previous version, never in between.
Migrations only go forward; a store newer than this raftsso is refused.

Schema version 2::

    schema_version(version INTEGER)                                      one row
    store_info(id = 1, store_id TEXT, cluster_id TEXT NULL, created)     one row
    apps(name TEXT PRIMARY KEY, description TEXT, created,
         type TEXT ('individual' | 'group' | 'config'), enabled BOOLEAN,
         users_group TEXT NULL, admins_group TEXT NULL)
    credentials(app, "user", token BLOB, updated)     PRIMARY KEY (app, "user")
    config_values(app, name, token BLOB, updated)      PRIMARY KEY (app, name)
        app REFERENCES apps ON DELETE CASCADE

History: version 1 (raftsso 0.1) had no ``store_info``, no application type, flag or
groups, and a ``key_version`` column that repeated the token header. ``rewrap`` and
``retire`` trusted that column, so a row whose column lied was skipped and its key could be
retired; version 2 drops it and every version is read from the token header.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from raftsso.errors import StoreError
from raftsso.store.backend import Backend, Dialect, Tx

SCHEMA_VERSION = 2
TABLES = frozenset({"schema_version", "store_info", "apps", "credentials", "config_values"})

SQLITE = Dialect(blob="BLOB", real="REAL", bool="INTEGER")
POSTGRESQL = Dialect(blob="BYTEA", real="DOUBLE PRECISION", bool="BOOLEAN")

Step = str | Callable[[Tx], None]


def _new_store_info(tx: Tx) -> None:
    tx.execute("INSERT INTO store_info (id, store_id, cluster_id, created) VALUES (1, ?, NULL, ?)",
               (str(uuid.uuid4()), time.time()))


MIGRATIONS: dict[int, list[Step]] = {
    1: [
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        "INSERT INTO schema_version (version) VALUES (0)",
        """CREATE TABLE apps (
            name        TEXT PRIMARY KEY NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            created     {real} NOT NULL)""",
        """CREATE TABLE credentials (
            app         TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
            "user"      TEXT NOT NULL,
            token       {blob} NOT NULL,
            key_version INTEGER NOT NULL,
            updated     {real} NOT NULL,
            PRIMARY KEY (app, "user"))""",
        """CREATE TABLE config_values (
            app         TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
            name        TEXT NOT NULL,
            token       {blob} NOT NULL,
            key_version INTEGER NOT NULL,
            updated     {real} NOT NULL,
            PRIMARY KEY (app, name))""",
        "CREATE INDEX credentials_by_version ON credentials(key_version)",
        "CREATE INDEX config_values_by_version ON config_values(key_version)",
    ],
    2: [
        """CREATE TABLE store_info (
            id          INTEGER PRIMARY KEY CHECK (id = 1),
            store_id    TEXT NOT NULL,
            cluster_id  TEXT,
            created     {real} NOT NULL)""",
        _new_store_info,
        "ALTER TABLE apps ADD COLUMN type TEXT NOT NULL DEFAULT 'individual' "
        "CHECK (type IN ('individual', 'group', 'config'))",
        "ALTER TABLE apps ADD COLUMN enabled {bool} NOT NULL DEFAULT TRUE",
        "ALTER TABLE apps ADD COLUMN users_group TEXT",
        "ALTER TABLE apps ADD COLUMN admins_group TEXT",
        "DROP INDEX credentials_by_version",
        "DROP INDEX config_values_by_version",
        "ALTER TABLE credentials DROP COLUMN key_version",
        "ALTER TABLE config_values DROP COLUMN key_version",
    ],
}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


def _version(backend: Backend, tx: Tx) -> int | None:
    """The store's schema version; None for a database with no store in it yet."""
    tables = backend.tables(tx)
    if "schema_version" not in tables:
        foreign = tables if backend.exclusive else tables & TABLES
        if foreign:
            raise StoreError(f"{backend.where} is a {backend.kind} database but not an SSO "
                             f"store (it holds {', '.join(sorted(foreign)[:3])})")
        return None
    rows = tx.execute("SELECT version FROM schema_version").fetchall()
    if len(rows) != 1 or type(rows[0][0]) is not int:
        raise StoreError(f"{backend.where}: the schema_version table of the SSO store is "
                         "damaged (it must hold one integer row)")
    version: int = rows[0][0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"{backend.where} has SSO store schema version {version}; this "
                         f"raftsso reads version {SCHEMA_VERSION} (upgrade raftsso)")
    return version


def _apply(backend: Backend, tx: Tx, version: int) -> None:
    for step in MIGRATIONS[version]:
        if callable(step):
            step(tx)
        else:
            d = backend.dialect
            tx.execute(step.format(blob=d.blob, real=d.real, bool=d.bool))
    tx.execute("UPDATE schema_version SET version = ?", (version,))


def ensure_schema(backend: Backend, *, migrate: bool = True) -> tuple[int | None, int]:
    """Create or migrate the schema; returns (version found, version now).

    ``migrate=False`` refuses an older store instead of migrating it (for roles that may
    not change the schema: ``raftsso sso migrate`` then does it). Concurrent openers are
    serialised (SQLite's write lock, a PostgreSQL advisory lock); the second sees the work
    of the first.
    """
    with backend.read() as tx:
        found = _version(backend, tx)
    if found == SCHEMA_VERSION:
        return found, found
    if found is not None and not migrate:
        raise StoreError(f"{backend.where} has SSO store schema version {found}; this "
                         f"raftsso needs {SCHEMA_VERSION}: run `raftsso sso migrate`")
    with backend.transaction() as tx:
        backend.lock_schema(tx)
        found = _version(backend, tx)  # another process may have done it meanwhile
        start = 0 if found is None else found
        for version in range(start + 1, SCHEMA_VERSION + 1):
            _apply(backend, tx, version)
    return found, SCHEMA_VERSION
