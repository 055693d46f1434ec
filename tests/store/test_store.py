"""The SSO store on both backends (SQLite and a real PostgreSQL server), encrypting through a
real SSOClient (injected keyring source): one parametrised module, the same behaviour."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftsso import envelope, pki
from raftsso.client import SSOClient
from raftsso.errors import (
    AlreadyExists,
    ConfigError,
    InvalidToken,
    NotFound,
    RaftssoError,
    StaleSecret,
    StoreError,
)
from raftsso.store import (
    GROUP_USER,
    SCHEMA_VERSION,
    App,
    AppType,
    RowKey,
    RowKind,
    SSOStore,
    associated_data,
    open_store,
)
from raftsso.store.rewrap import Progress, rewrap
from tests.fakes import KEYS, FakeClock, FakeSource, ring
from tests.store.conftest import Target

PASSWORD = b"correct horse battery staple 7f3a"
CONFIG_VALUE = b"Server=db1;Password=Tr0ub4dor&3-config"


def _open(target: Target, cipher: SSOClient | None = None, **options: object) -> SSOStore:
    return open_store(target.setting, cipher, password_file=target.password_file,
                      **options)  # type: ignore[arg-type]


@pytest.fixture
def store(target: Target, client: SSOClient) -> Iterator[SSOStore]:
    with _open(target, client) as s:
        s.add_app("payroll", "the payroll system")
        yield s


def _rotate(source: FakeSource, client: SSOClient) -> None:
    source.set_all(ring({1: "active", 2: "primary"}, index=9))
    client.sync()


def _token(target: Target, kind: RowKind, app: str, name: str) -> bytes:
    table, column = ("credentials", '"user"') if kind is RowKind.CREDENTIAL else \
        ("config_values", "name")
    [(token,)] = target.sql(f"SELECT token FROM {table} WHERE app = ? AND {column} = ?",
                            (app, name))
    return bytes(token)


def _put_token(target: Target, kind: RowKind, app: str, name: str, token: object) -> None:
    table, column = ("credentials", '"user"') if kind is RowKind.CREDENTIAL else \
        ("config_values", "name")
    target.sql(f"UPDATE {table} SET token = ? WHERE app = ? AND {column} = ?",
               (token, app, name))


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
    with pytest.raises(NotFound, match="no credential mapping for user 'bob'"):
        store.delete_credential("payroll", "bob")


def test_config_values_round_trip(store: SSOStore) -> None:
    store.set_config("payroll", "connection", CONFIG_VALUE)
    assert store.get_config("payroll", "connection") == CONFIG_VALUE
    assert [e.name for e in store.list_config("payroll")] == ["connection"]
    store.delete_config("payroll", "connection")
    assert store.list_config("payroll") == []


def test_applications(store: SSOStore) -> None:
    crm = store.add_app("crm")
    assert crm == App("crm", "", crm.created, AppType.INDIVIDUAL, True, None, None)
    with pytest.raises(AlreadyExists):
        store.add_app("crm")
    store.set_credential("crm", "alice", b"a")
    store.set_config("crm", "url", b"u")
    apps = {a.name: a for a in store.list_apps()}
    assert sorted(apps) == ["crm", "payroll"]
    assert store.app_usage() == {"crm": (1, 1)}
    assert apps["payroll"].description == "the payroll system"
    assert store.app("crm") == crm
    assert store.remove_app("crm") == (1, 1)
    assert [a.name for a in store.list_apps()] == ["payroll"]
    with pytest.raises(NotFound):
        store.remove_app("crm")
    with pytest.raises(NotFound, match="no affiliate application 'crm'"):
        store.app("crm")


def test_application_model_and_updates(store: SSOStore) -> None:
    app = store.add_app("ledger", "books", type=AppType.GROUP, enabled=False,
                        users_group="ledger-users", admins_group="ledger_admins")
    assert store.app("ledger") == app
    assert (app.type, app.enabled, app.users_group, app.admins_group) == \
        (AppType.GROUP, False, "ledger-users", "ledger_admins")
    # Ellipsis leaves a group as it is, None clears it; the type never changes.
    changed = store.update_app("ledger", enabled=True, users_group="accounts")
    assert (changed.enabled, changed.users_group, changed.admins_group, changed.description) \
        == (True, "accounts", "ledger_admins", "books")
    cleared = store.update_app("ledger", description="", admins_group=None)
    assert (cleared.admins_group, cleared.users_group, cleared.description) == \
        (None, "accounts", "")
    assert store.app("ledger") == cleared
    with pytest.raises(NotFound):
        store.update_app("nope", enabled=False)
    for bad in ("two words", "-leading", "x" * 65, "a:b", ""):
        with pytest.raises(StoreError, match="group"):
            store.update_app("ledger", users_group=bad)
    with pytest.raises(StoreError, match="unknown application type 'shared'"):
        store.add_app("x", type="shared")  # type: ignore[arg-type]
    assert store.app("ledger") == cleared  # nothing half-written


def test_application_types_decide_what_may_be_stored(store: SSOStore) -> None:
    store.add_app("team", type=AppType.GROUP)
    store.add_app("settings", type=AppType.CONFIG)
    with pytest.raises(StoreError, match=f"group application.*{GROUP_USER!r}"):
        store.set_credential("team", "alice", b"x")
    store.set_credential("team", GROUP_USER, b"the shared account")
    assert store.get_credential("team", GROUP_USER) == b"the shared account"
    with pytest.raises(StoreError, match="configuration values, no credential mappings"):
        store.set_credential("settings", "alice", b"x")
    store.set_config("settings", "url", b"https://x")
    assert store.get_config("settings", "url") == b"https://x"
    with pytest.raises(StoreError, match="reserved for group applications"):
        store.set_credential("payroll", GROUP_USER, b"x")


def test_a_disabled_application_keeps_its_secrets_unreadable(store: SSOStore) -> None:
    store.set_credential("payroll", "alice", PASSWORD)
    store.set_config("payroll", "url", b"u")
    store.update_app("payroll", enabled=False)
    for read in (lambda: store.get_credential("payroll", "alice"),
                 lambda: store.get_config("payroll", "url")):
        with pytest.raises(StoreError, match=r"'payroll' is disabled.*--enable"):
            read()
    # Administration goes on: listing, writing (to prepare), deleting.
    assert [e.name for e in store.list_credentials("payroll")] == ["alice"]
    store.set_credential("payroll", "bob", b"b")
    store.update_app("payroll", enabled=True)
    assert store.get_credential("payroll", "alice") == PASSWORD


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
    with pytest.raises(NotFound):
        store.delete_config("nope", "x")
    assert isinstance(NotFound("x"), RaftssoError)


@pytest.mark.parametrize("name", ["", "a\x00b", "x" * 257, "\udcff"])
def test_bad_names_are_refused(store: SSOStore, name: str) -> None:
    with pytest.raises(StoreError):
        store.add_app(name)
    with pytest.raises(StoreError):
        store.set_credential("payroll", name, b"x")


def test_a_second_connection_sees_the_writes(store: SSOStore, target: Target,
                                             client: SSOClient) -> None:
    store.set_credential("payroll", "alice", PASSWORD)
    with _open(target, client) as other:
        assert other.store_id == store.store_id and other.kind == target.kind
        assert other.get_credential("payroll", "alice") == PASSWORD
        other.set_credential("payroll", "bob", b"from the other one")
    assert store.get_credential("payroll", "bob") == b"from the other one"


# -- export and import of application definitions ------------------------------------------


def test_export_then_import_into_another_store(store: SSOStore, tmp_path: Path,
                                               client: SSOClient) -> None:
    store.add_app("team", "shared", type=AppType.GROUP, users_group="team",
                  admins_group="ops", enabled=False)
    store.set_credential("payroll", "alice", PASSWORD)
    store.set_config("payroll", "url", CONFIG_VALUE)
    doc = store.export_apps()
    text = json.dumps(doc)
    assert PASSWORD.decode() not in text and "Tr0ub4dor" not in text
    assert doc == {"format": 1, "applications": [
        {"name": "payroll", "description": "the payroll system", "type": "individual",
         "enabled": True, "users_group": None, "admins_group": None},
        {"name": "team", "description": "shared", "type": "group", "enabled": False,
         "users_group": "team", "admins_group": "ops"}]}
    with SSOStore(tmp_path / "other.db", client) as other:
        assert other.import_apps(json.loads(text)) == ["payroll", "team"]
        assert other.export_apps() == doc
        assert other.import_apps(doc) == []  # the same again: nothing to do
        changed = json.loads(text)
        changed["applications"][1]["enabled"] = True
        with pytest.raises(AlreadyExists, match=r"'team' exists already.*--replace"):
            other.import_apps(changed)
        assert other.import_apps(changed, replace=True) == ["team"]
        assert other.app("team").enabled is True
        changed["applications"][1]["type"] = "config"
        with pytest.raises(StoreError, match="type group; an import cannot make it config"):
            other.import_apps(changed, replace=True)


@pytest.mark.parametrize(("doc", "message"), [
    ([], "JSON object"),
    ({"format": 2, "applications": []}, "format 2"),
    ({"format": 1}, "must be a list"),
    ({"format": 1, "applications": [], "secrets": 1}, "unknown key"),
    ({"format": 1, "applications": [{"name": "a", "password": "x"}]},
     r"applications\[1\].*unknown key\(s\) password"),
    ({"format": 1, "applications": [{"name": "a"}, {"name": "a"}]}, "appears twice"),
    ({"format": 1, "applications": [{"name": "a", "enabled": "yes"}]}, "true or false"),
    ({"format": 1, "applications": [{"name": "a", "type": "x"}]}, "unknown application type"),
    ({"format": 1, "applications": [{"description": "no name"}]}, "must not be empty"),
    ({"format": 1, "applications": ["a"]}, "JSON object"),
])
def test_bad_application_files_are_refused_whole(store: SSOStore, doc: object,
                                                 message: str) -> None:
    good = {"format": 1, "applications": [{"name": "first"}]}
    if isinstance(doc, dict) and isinstance(doc.get("applications"), list):
        doc = {**doc, "applications": [*good["applications"], *doc["applications"]]}
    with pytest.raises(StoreError, match=message):
        store.import_apps(doc)
    assert [a.name for a in store.list_apps()] == ["payroll"]  # all or nothing


# -- associated data binds the row ----------------------------------------------------------------


def test_associated_data_format() -> None:
    assert associated_data(RowKind.CREDENTIAL, "payroll", "alice") == \
        b"raftsso/cred/v1\x00payroll\x00alice"
    assert associated_data(RowKind.CONFIG, "payroll", "url") == \
        b"raftsso/config/v1\x00payroll\x00url"


def test_a_token_moved_to_another_row_does_not_decrypt(store: SSOStore, target: Target) -> None:
    store.add_app("crm")
    store.set_credential("payroll", "alice", PASSWORD)
    store.set_credential("payroll", "bob", b"bob's")
    store.set_credential("crm", "alice", b"crm alice")
    store.set_config("payroll", "alice", b"a config value named alice")
    alice = _token(target, RowKind.CREDENTIAL, "payroll", "alice")
    # another user, another application, a config value of the same name
    _put_token(target, RowKind.CREDENTIAL, "payroll", "bob", alice)
    _put_token(target, RowKind.CREDENTIAL, "crm", "alice", alice)
    _put_token(target, RowKind.CONFIG, "payroll", "alice", alice)
    with pytest.raises(InvalidToken):
        store.get_credential("payroll", "bob")
    with pytest.raises(InvalidToken):
        store.get_credential("crm", "alice")
    with pytest.raises(InvalidToken):
        store.get_config("payroll", "alice")
    assert store.get_credential("payroll", "alice") == PASSWORD


def test_a_tampered_token_does_not_decrypt(store: SSOStore, target: Target) -> None:
    store.set_credential("payroll", "alice", PASSWORD)
    token = bytearray(_token(target, RowKind.CREDENTIAL, "payroll", "alice"))
    token[-5] ^= 0x40
    _put_token(target, RowKind.CREDENTIAL, "payroll", "alice", bytes(token))
    with pytest.raises(InvalidToken):
        store.get_credential("payroll", "alice")


# -- damaged rows: one line naming the row ----------------------------------------------------


def _damage(target: Target) -> object:
    """What a hand-edited row can hold instead of a token on this engine (SQLite's columns
    take any type; PostgreSQL's bytea takes only bytes)."""
    return "not a token, text" if target.kind == "sqlite" else b"\x01\x00"


def test_a_damaged_row_is_one_line_naming_it(store: SSOStore, target: Target) -> None:
    store.set_credential("payroll", "alice", PASSWORD)
    store.set_credential("payroll", "bob", b"b")
    _put_token(target, RowKind.CREDENTIAL, "payroll", "bob", _damage(target))
    for call in (store.versions_in_use, lambda: store.list_credentials("payroll"),
                 lambda: store.get_credential("payroll", "bob")):
        with pytest.raises(StoreError) as info:
            call()
        message = str(info.value)
        assert "credential:payroll/bob is damaged" in message and "\n" not in message
    assert store.get_credential("payroll", "alice") == PASSWORD  # the others still work


def test_a_text_time_column_is_one_line(store: SSOStore, target: Target) -> None:
    if target.kind != "sqlite":
        pytest.skip("PostgreSQL's typed columns cannot hold text in a time column")
    store.set_credential("payroll", "alice", PASSWORD)
    target.sql("UPDATE credentials SET updated = 'yesterday'")
    with pytest.raises(StoreError, match=r"credential:payroll/alice is damaged \(a time column"):
        store.list_credentials("payroll")
    target.sql("UPDATE apps SET enabled = 'maybe' WHERE name = 'payroll'")
    with pytest.raises(StoreError, match="application row 'payroll' is damaged"):
        store.list_apps()


# -- at rest ----------------------------------------------------------------------------------


def _files(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*"))
                    if p.is_file() and not p.is_symlink())


def test_no_plaintext_at_rest(store: SSOStore, target: Target) -> None:
    store.set_credential("payroll", "alice", PASSWORD)
    store.set_config("payroll", "connection", CONFIG_VALUE)
    store.set_credential("payroll", "alice", b"second " + PASSWORD)
    if target.server is not None:
        target.server.psql("CHECKPOINT", superuser=True)
        directory = target.server.data_dir
    else:
        directory = Path(target.setting).parent
    # while open (SQLite's WAL, PostgreSQL's WAL and heap after a checkpoint) ...
    data = _files(directory)
    assert b"payroll" in data  # sanity: we are reading the right files
    for secret in (PASSWORD, CONFIG_VALUE, b"Tr0ub4dor"):
        assert secret not in data
    store.close()
    if target.server is None:  # ... and after SQLite's last checkpoint.
        data = _files(directory)
        for secret in (PASSWORD, CONFIG_VALUE, b"Tr0ub4dor"):
            assert secret not in data


def test_the_sqlite_files_are_private_whatever_the_umask(tmp_path: Path,
                                                        client: SSOClient) -> None:
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


def test_a_sqlite_store_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "open.db"
    SSOStore(path).close()
    path.chmod(0o644)
    with pytest.raises(StoreError, match="chmod 600"):
        SSOStore(path)


# -- schema, migrations, identity -----------------------------------------------------------


def test_schema_version_and_identity(target: Target) -> None:
    with _open(target) as s:
        assert (s.schema_found, s.schema_version) == (None, SCHEMA_VERSION)
        assert s.cluster_id is None and len(s.store_id) == 36
        first = s.store_id
    assert target.sql("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    with _open(target) as s:
        assert (s.schema_found, s.store_id) == (SCHEMA_VERSION, first)
    if target.kind == "sqlite":
        assert target.sql("PRAGMA journal_mode") == [("wal",)]


def test_a_store_is_bound_to_its_cluster(target: Target) -> None:
    with _open(target, cluster_id="cluster-a") as s:
        assert s.cluster_id == "cluster-a"
    with _open(target, cluster_id="cluster-a") as s:
        assert s.cluster_id == "cluster-a"
    with pytest.raises(StoreError) as info:
        _open(target, cluster_id="cluster-b")
    assert "belongs to cluster cluster-a, not to cluster cluster-b" in str(info.value)
    assert "\n" not in str(info.value)
    with _open(target) as s:  # no cluster named: administrative use, no check
        s.bind_cluster("cluster-b", adopt=True)
    with _open(target, cluster_id="cluster-b") as s:
        assert s.cluster_id == "cluster-b"


def test_a_version_1_store_migrates_with_its_rows(target: Target, client: SSOClient) -> None:
    target.create_v1()
    token = client.encrypt(PASSWORD, associated_data(RowKind.CREDENTIAL, "payroll", "alice"))
    target.sql("INSERT INTO apps (name, description, created) VALUES ('payroll', 'p', 1.0)")
    # key_version lies (raftsso 0.1 trusted it): version 2 in the column, 1 in the header.
    target.sql('INSERT INTO credentials (app, "user", token, key_version, updated) '
               "VALUES ('payroll', 'alice', ?, 2, 1.0)", (token,))
    with pytest.raises(StoreError, match=r"schema version 1.*raftsso sso migrate"):
        _open(target, migrate=False)
    with _open(target, client) as s:
        assert (s.schema_found, s.schema_version) == (1, SCHEMA_VERSION)
        assert s.app("payroll") == App("payroll", "p", 1.0)
        assert s.get_credential("payroll", "alice") == PASSWORD
        assert s.versions_in_use() == {1: 1}  # the header, not the lying column
        assert [r.key for r in s.rows_not_under(2)] == \
            [RowKey(RowKind.CREDENTIAL, "payroll", "alice")]
    with _open(target, migrate=False) as s:
        assert s.schema_found == SCHEMA_VERSION


def test_a_newer_schema_or_a_foreign_database_is_refused(target: Target,
                                                         tmp_path: Path) -> None:
    _open(target).close()
    target.sql("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match=r"schema version 99.*upgrade"):
        _open(target)
    target.sql("UPDATE schema_version SET version = 1")
    target.sql("INSERT INTO schema_version (version) VALUES (1)")
    with pytest.raises(StoreError, match=r"schema_version table .* is damaged"):
        _open(target)
    if target.kind == "postgresql":
        target.server.reset()  # type: ignore[union-attr]
        target.sql("CREATE TABLE apps (x INTEGER)")
        with pytest.raises(StoreError, match="not an SSO store"):
            _open(target)
        return
    foreign = tmp_path / "foreign.db"
    Target("sqlite", foreign, None).sql("CREATE TABLE t (x)")
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


def test_unknown_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unknown SSO store URI scheme 'mysql'"):
        open_store("mysql://db/sso", None)
    with pytest.raises(StoreError, match="must not hold a password"):
        open_store("postgresql://u:secret@127.0.0.1/sso", None)
    with pytest.raises(StoreError, match="must not hold a password"):
        open_store("postgresql://u@127.0.0.1/sso?password=secret", None)
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    pw.chmod(0o600)
    with pytest.raises(StoreError, match="only to a postgresql:// store"):
        open_store(tmp_path / "sso.db", None, password_file=pw)


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
    assert store.versions_in_use() == {1: 1}


def test_without_a_client_secrets_are_refused(target: Target) -> None:
    with _open(target) as s:
        s.add_app("a")
        assert [a.name for a in s.list_apps()] == ["a"]
        with pytest.raises(StoreError, match="without an SSO client"):
            s.set_credential("a", "u", b"x")


# -- primitives for rewrap, and rewrap -----------------------------------------------------------


def test_rows_not_under_a_version_and_replace_tokens(
        store: SSOStore, client: SSOClient, source: FakeSource) -> None:
    store.add_app("crm")
    for app in ("crm", "payroll"):
        for user in ("alice", "bob", "carol"):
            store.set_credential(app, user, f"{app}/{user}".encode())
    store.set_config("payroll", "url", b"https://x")
    _rotate(source, client)
    store.set_credential("crm", "bob", b"crm/bob")  # already under 2
    assert store.versions_in_use() == {1: 6, 2: 1}
    assert store.count_not_under(2) == 6

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
    assert store.versions_in_use() == {2: 7}
    assert store.rows_not_under(2) == []
    assert store.get_credential("payroll", "carol") == b"payroll/carol"
    assert store.get_config("payroll", "url") == b"https://x"


def test_replace_tokens_loses_to_a_concurrent_write(store: SSOStore, client: SSOClient,
                                                    source: FakeSource) -> None:
    store.set_credential("payroll", "alice", b"old")
    [row] = store.rows_not_under(2)
    _rotate(source, client)
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


def test_rewrap_reports_progress_skips_what_it_cannot_read_and_counts_headers(
        store: SSOStore, client: SSOClient, source: FakeSource, target: Target) -> None:
    for i in range(7):
        store.set_credential("payroll", f"user{i}", f"secret {i}".encode())
    store.set_config("payroll", "url", b"https://x")
    store.set_credential("payroll", "damaged", b"d")
    _put_token(target, RowKind.CREDENTIAL, "payroll", "damaged", _damage(target))
    store.set_credential("payroll", "altered", b"a")
    altered = bytearray(_token(target, RowKind.CREDENTIAL, "payroll", "altered"))
    altered[-1] ^= 1
    _put_token(target, RowKind.CREDENTIAL, "payroll", "altered", bytes(altered))
    _rotate(source, client)
    seen: list[Progress] = []
    result = rewrap(store, batch=3, progress=seen.append)
    assert (result.primary, result.todo, result.rewrapped, result.overtaken) == (2, 10, 8, 0)
    assert sorted(str(u.key) for u in result.unreadable) == \
        ["credential:payroll/altered", "credential:payroll/damaged"]
    assert seen[0] == Progress(0, 10) and seen[-1] == Progress(10, 10)
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert (result.report.store_id, result.report.kind) == (store.store_id, target.kind)
    assert (result.report.versions_in_use, result.report.damaged_rows) == ({2: 8, 1: 1}, 1)
    assert result.report.as_json() == {
        "id": store.store_id, "kind": target.kind, "reported_at": result.report.counted_at,
        "versions_in_use": {"1": 1, "2": 8}, "damaged_rows": 1}
    assert store.get_credential("payroll", "user3") == b"secret 3"
    again = rewrap(store)
    assert (again.todo, again.rewrapped, len(again.unreadable)) == (2, 0, 2)


def test_pg_dump_holds_no_credential_in_clear(request: pytest.FixtureRequest,
                                              tmp_path: Path, client: SSOClient) -> None:
    server = request.getfixturevalue("pg_server")
    server.reset()
    with open_store(server.uri, client, password_file=server.password_file) as s:
        s.add_app("payroll")
        s.set_credential("payroll", "alice", PASSWORD)
        s.set_config("payroll", "connection", CONFIG_VALUE)
    dump = subprocess.run([server.tool("pg_dump"), "--no-password"], env=server.env(),
                          capture_output=True, timeout=120, check=True).stdout
    assert b"payroll" in dump and b"alice" in dump and b"store_info" in dump
    for secret in (PASSWORD, CONFIG_VALUE, b"Tr0ub4dor", PASSWORD.hex().encode()):
        assert secret not in dump


def test_libpq_tls_options_pass_through(request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("pg_server")
    server.reset()
    uri = f"{server.uri}?sslmode=verify-full&sslrootcert={server.ca_file}"
    with open_store(uri, None, password_file=server.password_file) as s:
        s.add_app("payroll")
        assert s.where == uri
    # The server saw a TLS connection from raftsso (pg_stat_ssl, while one is open).
    with open_store(uri, None, password_file=server.password_file) as s:
        assert [a.name for a in s.list_apps()] == ["payroll"]
        used = server.psql("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a "
                           "USING (pid) WHERE a.application_name = 'raftsso' AND s.ssl",
                           superuser=True)
        assert int(used) >= 1


def test_postgresql_connection_errors_are_one_line(request: pytest.FixtureRequest,
                                                   tmp_path: Path) -> None:
    server = request.getfixturevalue("pg_server")
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    wrong.chmod(0o600)
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(pki.create_ca("another").cert_pem)
    loose = tmp_path / "loose"
    loose.write_text(server.password_file.read_text())
    loose.chmod(0o644)
    cases = [
        (server.uri, wrong, "password authentication failed"),
        (server.uri, loose, "chmod 600"),
        (server.uri + "?sslmode=verify-full&sslrootcert=" + str(other_ca),
         server.password_file, "certificate verify failed"),
        (server.uri.replace(f":{server.port}/", ":1/"), server.password_file,
         "Connection refused"),
    ]
    for uri, pw, message in cases:
        with pytest.raises((StoreError, ConfigError)) as info:
            open_store(uri, None, password_file=pw)
        text = str(info.value)
        assert message in text and "\n" not in text, text
        assert "not the password" not in text


def test_a_config_file_names_a_uri_store_without_its_password(tmp_path: Path) -> None:
    from raftsso.config import load_remote_config
    from raftsso.deployment import init_deployment

    init_deployment(tmp_path / "d", nodes=1, base_port=17100)
    toml = tmp_path / "d" / "client.toml"
    base = toml.read_text()
    assert load_remote_config(toml).store == tmp_path / "d" / "sso.db"
    uri = "postgresql://raftsso@db1:5432/sso?sslmode=verify-full"
    toml.write_text(base.replace('store = "sso.db"', f'store = "{uri}"\n'
                                 'store_password_file = "store.password"'))
    cfg = load_remote_config(toml)
    assert (cfg.store, cfg.store_password_file) == (uri, tmp_path / "d" / "store.password")
    for bad in ("postgresql://raftsso:hunter2@db1/sso", "postgresql://db1/sso?password=x"):
        toml.write_text(base.replace('store = "sso.db"', f'store = "{bad}"'))
        with pytest.raises(ConfigError, match=r"client.toml: store: .*must not hold a password"):
            load_remote_config(toml)
