"""What the SSO store needs from a database engine (SQLite, PostgreSQL).

A backend opens connections, runs transactions and translates its library's exceptions
into :class:`raftsso.errors.StoreError` in one place (its ``transaction``/``read``). The SQL
is shared: written with ``?`` placeholders and double-quoted identifiers, which both
engines accept (the PostgreSQL backend turns ``?`` into ``%s``); only the column types of
the schema differ (:class:`Dialect`).
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from raftsso.errors import StoreError

URI_SCHEMES = ("postgresql://", "postgres://")
REFUSED_URI = ("the SSO store URI must not hold a password; put it in a 0600 file named by "
               "store_password_file (or sso --store-password-file), or in libpq's passfile")


def is_uri(setting: object) -> bool:
    """A store setting that names a PostgreSQL database (anything else is a SQLite path)."""
    return isinstance(setting, str) and setting.startswith(URI_SCHEMES)


def store_location(setting: str | os.PathLike[str]) -> Path | str:
    """A store setting as a SQLite path or a checked PostgreSQL URI (a str)."""
    if is_uri(setting):
        return check_uri(str(setting))
    if isinstance(setting, str) and "://" in setting:
        raise StoreError(f"unknown SSO store URI scheme {setting.split('://')[0]!r}; use a "
                         "path (SQLite) or postgresql://...")
    return Path(setting)


def check_uri(uri: str) -> str:
    """Refuse a store URI that carries a password (config files, ``ps`` and shell history
    would show it). Without importing libpq: config files are checked when read."""
    parts = urllib.parse.urlsplit(uri)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    if parts.password is not None or "password" in query:
        raise StoreError(REFUSED_URI)
    if any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise StoreError("the SSO store URI must not hold control characters")
    return uri


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Tx(Protocol):
    """One open transaction (or a read on one connection)."""

    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor: ...

    def executemany(self, sql: str, params: Iterable[Sequence[object]]) -> int:
        """Run ``sql`` once per parameter row; returns the rows changed in total."""
        ...


@dataclass(frozen=True)
class Dialect:
    """Column types of the schema for one engine (see :mod:`raftsso.store.schema`)."""

    blob: str
    real: str
    bool: str


class Backend(Protocol):
    kind: str  # "sqlite" | "postgresql"
    dialect: Dialect
    # Whether the database holds nothing but the store: a SQLite file is the store's own,
    # a PostgreSQL database may hold other tables beside it.
    exclusive: bool

    @property
    def where(self) -> str:
        """The store as shown in messages: a path, or a URI without any password."""
        ...

    def transaction(self) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction: committed at the end, rolled back on any exception."""
        ...

    def read(self) -> contextlib.AbstractContextManager[Tx]:
        """A consistent read (no write lock)."""
        ...

    def lock_schema(self, tx: Tx) -> None:
        """Serialise schema changes between processes for the rest of ``tx``."""
        ...

    def tables(self, tx: Tx) -> set[str]:
        """Names of the tables (SQLite: of every object) in the store's database/schema."""
        ...

    def close(self) -> None: ...


def one_line(text: object) -> str:
    """A library's message as one line (libpq's run over several, with hints)."""
    return " ".join(str(text).split())
