"""Fixtures of the SSO store tests: both backends, and one real PostgreSQL server per session."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from raftsso.store.schema import MIGRATIONS, POSTGRESQL, SQLITE
from tests.pgserver import PostgresServer, find_bin_dir, start_server, stop_server

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session (initdb in a temp dir, loopback)."""
    if find_bin_dir() is None:
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql; .ci/run "
                    "installs it)")
    server = start_server()
    try:
        yield server
    finally:
        stop_server(server)


@dataclass
class Target:
    """One store to test: its setting, and raw SQL access beside raftsso (to damage rows)."""

    kind: str
    setting: str | Path
    password_file: Path | None
    server: PostgresServer | None = None

    def sql(self, statement: str, params: Sequence[object] = ()) -> list[Any]:
        """Run one statement outside raftsso (``?`` placeholders), committed at once."""
        if self.server is None:
            db = sqlite3.connect(self.setting, isolation_level=None)
            try:
                return db.execute(statement, params).fetchall()
            finally:
                db.close()
        with psycopg.connect(self.server.uri, password=self.server.password_file.read_text()
                             .strip(), autocommit=True) as conn:
            cur = conn.execute(statement.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []

    def create_v1(self) -> None:
        """An empty store of schema version 1 (raftsso 0.1), as a migration's start."""
        dialect = SQLITE if self.server is None else POSTGRESQL
        if self.server is None:
            Path(self.setting).touch(mode=0o600)
        for step in MIGRATIONS[1]:
            assert isinstance(step, str)
            self.sql(step.format(blob=dialect.blob, real=dialect.real, bool=dialect.bool))
        self.sql("UPDATE schema_version SET version = 1")


def make_target(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    if kind == "sqlite":
        return Target(kind, tmp_path / "sso.db", None)
    server: PostgresServer = request.getfixturevalue("pg_server")
    server.reset()  # every test starts with an empty database
    return Target(kind, server.uri, server.password_file, server)


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    return make_target(request.param, tmp_path, request)
