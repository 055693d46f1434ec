"""The SSO store on SQLite, encrypting through a real SSOClient (injected keyring source)."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftsso import envelope
from raftsso.client import SSOClient
from raftsso.errors import (
    AlreadyExists,
    InvalidToken,
    NotFound,
    RaftssoError,
    StaleSecret,
    StoreError,
)
from raftsso.store import (
    SCHEMA_VERSION,
    RowKey,
    RowKind,
    SSOStore,
    associated_data,
)
from tests.fakes import KEYS, FakeClock, FakeSource, ring

PASSWORD = b"correct horse battery staple 7f3a"
CONFIG_VALUE = b"Server=db1;Password=Tr0ub4dor&3-config"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sso.db"


@pytest.fixture
def store(db_path: Path, client: SSOClient) -> Iterator[SSOStore]:
    with SSOStore(db_path, client) as s:
        s.add_app("payroll", "the payroll system")
        yield s


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())


# -- round trips -----------------------------------------------------------------------------


def test_credentials_round_trip(store: SSOStore) -> None:
    assert store.set_credential("payroll", "alice", PASSWORD) == 1
    store.set_credential("payroll", "bob", b"\x00\xffbinary")
    assert store.get_credential("payroll", "alice") == PASSWORD
    assert store.get_credential("payroll", "bob") == b"\x00\xffbinary"
    store.set_credential("payroll", "alice", b"changed")
    assert store.get_credential("payroll", "alice") == b"changed"
    assert [(e.name, e.key_version) for e in store.list_credentials("payroll")] == \
        [("alice", 1), ("bob", 1)]
    store.delete_credential("payroll", "bob")
    with pytest.raises(NotFound):
        store.get_credential("payroll", "bob")


def test_config_values_round_trip(store: SSOStore) -> None:
    store.set_config("payroll", "connection", CONFIG_VALUE)
    assert store.get_config("payroll", "connection") == CONFIG_VALUE
    assert [e.name for e in store.list_config("payroll")] == ["connection"]
    store.delete_config("payroll", "connection")
    assert store.list_config("payroll") == []


def test_applications(store: SSOStore) -> None:
    store.add_app("crm")
    with pytest.raises(AlreadyExists):
        store.add_app("crm")
    store.set_credential("crm", "alice", b"a")
    store.set_config("crm", "url", b"u")
    apps = {a.name: a for a in store.list_apps()}
    assert sorted(apps) == ["crm", "payroll"]
    assert (apps["crm"].credentials, apps["crm"].config_values) == (1, 1)
    assert apps["payroll"].description == "the payroll system"
    assert store.remove_app("crm") == (1, 1)
    assert [a.name for a in store.list_apps()] == ["payroll"]
    with pytest.raises(NotFound):
        store.remove_app("crm")


def test_unknown_application_or_user_is_a_clear_error(store: SSOStore) -> None:
    with pytest.raises(NotFound, match=r"no affiliate application 'nope'.*sso app add"):
        store.set_credential("nope", "alice", b"x")
    with pytest.raises(NotFound, match="no affiliate application 'nope'"):
        store.get_credential("nope", "alice")
    with pytest.raises(NotFound, match="no credential mapping for user 'carol' in application"):
        store.get_credential("payroll", "carol")
    with pytest.raises(NotFound, match="no setting 'x'"):
        store.get_config("payroll", "x")
    with pytest.raises(NotFound):
        store.list_credentials("nope")
    assert isinstance(NotFound("x"), RaftssoError)


@pytest.mark.parametrize("name", ["", "a\x00b", "x" * 257])
def test_bad_names_are_refused(store: SSOStore, name: str) -> None:
    with pytest.raises(StoreError):
        store.add_app(name)
    with pytest.raises(StoreError):
        store.set_credential("payroll", name, b"x")


def test_a_second_connection_sees_the_writes(store: SSOStore, db_path: Path,
                                             client: SSOClient) -> None:
    store.set_credential("payroll", "alice", PASSWORD)
    with SSOStore(db_path, client) as other:
        assert other.get_credential("payroll", "alice") == PASSWORD
        other.set_credential("payroll", "bob", b"from the other one")
    assert store.get_credential("payroll", "bob") == b"from the other one"


# -- associated data binds the row ----------------------------------------------------------------


def test_associated_data_format() -> None:
    assert associated_data(RowKind.CREDENTIAL, "payroll", "alice") == \
        b"raftsso/cred/v1\x00payroll\x00alice"
    assert associated_data(RowKind.CONFIG, "payroll", "url") == \
        b"raftsso/config/v1\x00payroll\x00url"


def _token(path: Path, table: str, column: str, app: str, name: str) -> bytes:
    with _raw(path) as db:
        row = db.execute(f"SELECT token FROM {table} WHERE app = ? AND {column} = ?",
                         (app, name)).fetchone()
    return bytes(row[0])


def _put_token(path: Path, table: str, column: str, app: str, name: str, token: bytes) -> None:
    db = _raw(path)
    try:
        db.execute(f"UPDATE {table} SET token = ? WHERE app = ? AND {column} = ?",
                   (token, app, name))
    finally:
        db.close()


def test_a_token_moved_to_another_row_does_not_decrypt(store: SSOStore, db_path: Path) -> None:
    store.add_app("crm")
    store.set_credential("payroll", "alice", PASSWORD)
    store.set_credential("payroll", "bob", b"bob's")
    store.set_credential("crm", "alice", b"crm alice")
    store.set_config("payroll", "alice", b"a config value named alice")
    alice = _token(db_path, "credentials", "user", "payroll", "alice")
    # another user, another application, a config value of the same name
    _put_token(db_path, "credentials", "user", "payroll", "bob", alice)
    _put_token(db_path, "credentials", "user", "crm", "alice", alice)
    _put_token(db_path, "config_values", "name", "payroll", "alice", alice)
    with pytest.raises(InvalidToken):
        store.get_credential("payroll", "bob")
    with pytest.raises(InvalidToken):
        store.get_credential("crm", "alice")
    with pytest.raises(InvalidToken):
        store.get_config("payroll", "alice")
    assert store.get_credential("payroll", "alice") == PASSWORD


def test_a_tampered_token_does_not_decrypt(store: SSOStore, db_path: Path) -> None:
    store.set_credential("payroll", "alice", PASSWORD)
    token = bytearray(_token(db_path, "credentials", "user", "payroll", "alice"))
    token[-5] ^= 0x40
    _put_token(db_path, "credentials", "user", "payroll", "alice", bytes(token))
    with pytest.raises(InvalidToken):
        store.get_credential("payroll", "alice")


# -- on disk ----------------------------------------------------------------------------------


def test_no_plaintext_on_disk(store: SSOStore, db_path: Path) -> None:
    store.set_credential("payroll", "alice", PASSWORD)
    store.set_config("payroll", "connection", CONFIG_VALUE)
    store.set_credential("payroll", "alice", b"second " + PASSWORD)
    # while open (the WAL holds the recent writes) ...
    data = _all_bytes(db_path.parent)
    assert b"payroll" in data  # sanity: we are reading the right files
    for secret in (PASSWORD, CONFIG_VALUE, b"Tr0ub4dor"):
        assert secret not in data
    store.close()
    # ... and after a checkpoint.
    data = _all_bytes(db_path.parent)
    for secret in (PASSWORD, CONFIG_VALUE, b"Tr0ub4dor"):
        assert secret not in data


def test_the_files_are_private_whatever_the_umask(tmp_path: Path, client: SSOClient) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "private.db"
        with SSOStore(path, client) as s:
            s.add_app("a")
            s.set_credential("a", "u", b"x")
            for p in tmp_path.iterdir():
                assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    finally:
        os.umask(old)


def test_a_store_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "open.db"
    SSOStore(path).close()
    path.chmod(0o644)
    with pytest.raises(StoreError, match="chmod 600"):
        SSOStore(path)


def test_schema_version_table(db_path: Path, store: SSOStore) -> None:
    with _raw(db_path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == \
            [(SCHEMA_VERSION,)]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_newer_schema_or_a_foreign_database_is_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    SSOStore(newer).close()
    db = _raw(newer)
    db.execute("UPDATE schema_version SET version = 99")
    db.close()
    with pytest.raises(StoreError, match=r"schema version 99.*upgrade"):
        SSOStore(newer)
    foreign = tmp_path / "foreign.db"
    db = _raw(foreign)
    db.execute("CREATE TABLE t (x)")
    db.close()
    foreign.chmod(0o600)
    with pytest.raises(StoreError, match="not an SSO store"):
        SSOStore(foreign)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    garbage.chmod(0o600)
    with pytest.raises(StoreError):
        SSOStore(garbage)
    with pytest.raises(StoreError, match="does not exist"):
        SSOStore(tmp_path / "missing" / "sso.db")


# -- transactions --------------------------------------------------------------------------------


def test_failed_writes_leave_nothing_behind(store: SSOStore, source: FakeSource,
                                           clock: FakeClock) -> None:
    store.set_credential("payroll", "alice", PASSWORD)
    with pytest.raises(NotFound):
        store.set_credential("ghost", "alice", b"x")
    source.set_all(None)
    clock.now += 3600
    with pytest.raises(StaleSecret):
        store.set_credential("payroll", "alice", b"never stored")
    assert store.get_credential("payroll", "alice") == PASSWORD  # decrypt still works
    assert [e.name for e in store.list_credentials("payroll")] == ["alice"]
    assert store.key_versions() == {1: 1}


def test_without_a_client_secrets_are_refused(db_path: Path) -> None:
    with SSOStore(db_path) as s:
        s.add_app("a")
        assert [a.name for a in s.list_apps()] == ["a"]
        with pytest.raises(StoreError, match="without an SSO client"):
            s.set_credential("a", "u", b"x")


# -- primitives for rewrap ---------------------------------------------------------------------


def test_rows_not_under_a_version_and_replace_tokens(
        store: SSOStore, client: SSOClient, source: FakeSource) -> None:
    store.add_app("crm")
    for app in ("crm", "payroll"):
        for user in ("alice", "bob", "carol"):
            store.set_credential(app, user, f"{app}/{user}".encode())
    store.set_config("payroll", "url", b"https://x")
    source.set_all(ring({1: "active", 2: "primary"}, index=9))
    client.sync()
    store.set_credential("crm", "bob", b"crm/bob")  # already under 2
    assert store.key_versions() == {1: 6, 2: 1}

    # Walk in batches of two, resuming after the last key, and rewrap each batch.
    seen: list[RowKey] = []
    after: RowKey | None = None
    while True:
        batch = store.rows_not_under(2, after=after, limit=2)
        if not batch:
            break
        assert all(r.key_version == 1 for r in batch)
        updates = [(r, client.encrypt(client.decrypt(r.token, r.associated_data),
                                      r.associated_data)) for r in batch]
        assert store.replace_tokens(updates) == len(batch)
        seen.extend(r.key for r in batch)
        after = batch[-1].key
    assert seen == sorted(seen) and len(seen) == 6
    assert RowKey(RowKind.CREDENTIAL, "crm", "bob") not in seen
    assert store.key_versions() == {2: 7}
    assert store.rows_not_under(2) == []
    assert store.get_credential("payroll", "carol") == b"payroll/carol"
    assert store.get_config("payroll", "url") == b"https://x"


def test_replace_tokens_loses_to_a_concurrent_write(store: SSOStore, client: SSOClient,
                                                    source: FakeSource) -> None:
    store.set_credential("payroll", "alice", b"old")
    [row] = store.rows_not_under(2)
    source.set_all(ring({1: "active", 2: "primary"}, index=9))
    client.sync()
    store.set_credential("payroll", "alice", b"newer, written meanwhile")
    stale_rewrap = client.encrypt(b"old", row.associated_data)
    assert store.replace_tokens([(row, stale_rewrap)]) == 0
    assert store.get_credential("payroll", "alice") == b"newer, written meanwhile"


def test_replace_tokens_is_all_or_nothing(store: SSOStore, client: SSOClient) -> None:
    store.set_credential("payroll", "alice", b"a")
    store.set_credential("payroll", "bob", b"b")
    alice, bob = store.rows_not_under(99)
    good = envelope.Envelope(1, KEYS[1]).encrypt(b"A", alice.associated_data)
    with pytest.raises(InvalidToken):
        store.replace_tokens([(alice, good), (bob, b"garbage")])
    assert store.get_credential("payroll", "alice") == b"a"
