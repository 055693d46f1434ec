"""The PostgreSQL backend: one SSO database shared by every application host of a group.

psycopg 3 with its connection pool. The store setting is a libpq URI
(``postgresql://raftsso@db.example:5432/sso?sslmode=verify-full&sslrootcert=ca.pem``);
every libpq parameter in it passes through (``sslmode``, ``sslrootcert``, ``passfile``,
``connect_timeout``, ...). A password never sits in the URI: it comes from
``store_password_file`` (a 0600 file, checked like ``seal.key``) or from libpq's own
passfile (``~/.pgpass``, ``PGPASSFILE`` or ``passfile=`` in the URI).

Transactions run at READ COMMITTED: a compare-and-set ``UPDATE ... WHERE token = ?`` that
waits on a row a concurrent writer holds re-reads the row once that writer commits, so it
changes nothing when the token it read is gone (see ``SSOStore.replace_tokens``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from raftsso.errors import StoreError
from raftsso.fsutil import read_private
from raftsso.store.backend import REFUSED_URI, Cursor, Tx, check_uri, one_line
from raftsso.store.schema import POSTGRESQL

CONNECT_TIMEOUT = 10  # seconds, unless the URI sets connect_timeout
POOL_SIZE = 8
# pg_advisory_xact_lock key serialising schema migrations ("raftsso" in ASCII).
_SCHEMA_LOCK = int.from_bytes(b"raftsso", "big")


def parse_uri(uri: str) -> dict[str, Any]:
    """libpq's reading of a store URI (the authority on what it holds), without password."""
    check_uri(uri)
    try:
        params = conninfo_to_dict(uri)
    except psycopg.Error as exc:
        raise StoreError(f"the SSO store URI is not valid: {one_line(exc)}") from None
    if "password" in params:
        raise StoreError(REFUSED_URI)
    return params


def read_password(path: Path) -> str:
    raw = read_private(path, limit=4096)
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        password = raw.decode()
    except UnicodeDecodeError:
        raise StoreError(f"{path} does not hold a UTF-8 password") from None
    if not password or "\n" in password:
        raise StoreError(f"{path} must hold the store password on one line")
    return password


@functools.lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    # The shared SQL uses "?" placeholders (sqlite3's); psycopg wants "%s". No statement
    # of the store has a literal "?" or "%".
    return sql.replace("%", "%%").replace("?", "%s")


class _Tx:
    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        return self._conn.execute(_pg_sql(sql), params)

    def executemany(self, sql: str, params: Iterable[Sequence[object]]) -> int:
        with self._conn.cursor() as cur:
            cur.executemany(_pg_sql(sql), params)
            return cur.rowcount


class PostgresBackend:
    kind = "postgresql"
    dialect = POSTGRESQL
    exclusive = False

    def __init__(self, uri: str, *, password_file: Path | None = None,
                 pool_size: int = POOL_SIZE) -> None:
        params = parse_uri(uri)
        self._uri = uri
        # Autocommit: a read is one round trip; writes open a transaction explicitly.
        kwargs: dict[str, Any] = {"application_name": "raftsso", "autocommit": True}
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = CONNECT_TIMEOUT
        if password_file is not None:
            kwargs["password"] = read_password(password_file)
        self._timeout = float(params.get("connect_timeout") or CONNECT_TIMEOUT)
        # One direct connection first: the pool retries silently and then says only
        # "timeout", while libpq's own error names the cause (refused, auth, TLS).
        try:
            psycopg.connect(uri, **kwargs).close()
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the SSO store {self.where}: "
                             f"{one_line(exc)}") from None
        self._pool = ConnectionPool(uri, kwargs=kwargs, min_size=1, max_size=pool_size,
                                    open=False, name="raftsso-store", timeout=self._timeout)
        try:
            self._pool.open(wait=True, timeout=self._timeout)
        except PoolTimeout:
            self._pool.close()
            raise StoreError(f"cannot connect to the SSO store {self.where} within "
                             f"{self._timeout:g} s") from None

    @property
    def where(self) -> str:
        return self._uri

    def close(self) -> None:
        self._pool.close()

    @contextlib.contextmanager
    def _connection(self, transaction: bool) -> Iterator[Tx]:
        try:
            with self._pool.connection() as conn:
                if not transaction:
                    yield _Tx(conn)
                    return
                with conn.transaction():  # COMMIT at the end, ROLLBACK if the block raises
                    yield _Tx(conn)
        except PoolTimeout:
            raise StoreError(f"no connection to the SSO store {self.where} within "
                             f"{self._timeout:g} s") from None
        except psycopg.Error as exc:
            raise StoreError(f"the SSO store {self.where} failed: {one_line(exc)}") from None

    def transaction(self) -> contextlib.AbstractContextManager[Tx]:
        """A transaction on a pooled connection."""
        return self._connection(transaction=True)

    def read(self) -> contextlib.AbstractContextManager[Tx]:
        """Statements in autocommit: each sees what was committed when it started (the
        store's reads need nothing more), one round trip each."""
        return self._connection(transaction=False)

    def lock_schema(self, tx: Tx) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))

    def tables(self, tx: Tx) -> set[str]:
        return {str(r[0]) for r in tx.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
