"""The SSO store with real node processes: the `sso` CLI against PostgreSQL, two client
configurations sharing one store, writers racing a SIGKILLed rewrap, and the store findings
of issue 11 (versions from token headers, damaged rows in one line)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from raftsso.client import SSOClient
from raftsso.store import RowKind, associated_data, open_store
from tests.harness import Cluster, cli, wait_for
from tests.integration.test_sso_cli import CONFIG_VALUE, CREDENTIAL, _fails, _ok
from tests.pgserver import PostgresServer
from tests.store.conftest import Target

pytestmark = pytest.mark.integration


def _join(toml: Path, pg: PostgresServer, *extra: str) -> bytes:
    return _ok("-c", str(toml), "sso", "--store", pg.uri, "--store-password-file",
               str(pg.password_file), "join", *extra)


def _pg_store(cluster: Cluster, pg: PostgresServer) -> None:
    """A fresh PostgreSQL store that client.toml and admin.toml both use."""
    pg.reset()
    for toml in (cluster.client_toml, cluster.admin_toml):
        assert b"now uses SSO store" in _join(toml, pg)


def test_the_sso_cli_against_postgresql_shared_by_two_client_configurations(
        cluster: Cluster, pg_server: PostgresServer, tmp_path: Path) -> None:
    pg = pg_server
    pg.reset()
    a = cluster.client_toml
    b = cluster.root / "client-host-b.toml"  # another host's configuration, same cluster
    shutil.copy(a, b)
    _join(a, pg)
    _join(b, pg)
    password = pg.password_file.read_text().strip()
    for toml in (a, b):
        text = toml.read_text()
        assert f'store = "{pg.uri}"' in text and password not in text
    info = json.loads(_ok("-c", str(b), "sso", "info", "--json"))
    assert (info["kind"], info["cluster_id"], info["schema_version"]) == \
        ("postgresql", cluster.cluster_id, 2)

    _ok("-c", str(a), "sso", "app", "add", "payroll", "--description", "payroll system",
        "--users-group", "payroll", "--admins-group", "payroll-admins")
    _ok("-c", str(a), "sso", "app", "add", "team", "--type", "group")
    _ok("-c", str(a), "sso", "cred", "set", "payroll", "alice", stdin=CREDENTIAL + b"\n")
    _ok("-c", str(a), "sso", "config", "set", "payroll", "connection", stdin=CONFIG_VALUE)
    _ok("-c", str(a), "sso", "cred", "set", "team", "@group", stdin=b"team secret")
    # ... read by another process with another configuration.
    assert _ok("-c", str(b), "sso", "cred", "get", "payroll", "alice") == CREDENTIAL
    assert _ok("-c", str(b), "sso", "config", "get", "payroll", "connection") == CONFIG_VALUE
    assert _ok("-c", str(b), "sso", "cred", "get", "team", "@group") == b"team secret"
    listing = json.loads(_ok("-c", str(b), "sso", "cred", "list", "payroll", "--json"))
    assert [(e["user"], e["key_version"]) for e in listing] == [("alice", 1)]
    apps = {x["name"]: x for x in json.loads(_ok("-c", str(b), "sso", "app", "list", "--json"))}
    assert apps["payroll"]["credentials"] == 1 and apps["payroll"]["config_values"] == 1
    assert (apps["payroll"]["users_group"], apps["team"]["type"]) == ("payroll", "group")
    err = _fails("-c", str(b), "sso", "cred", "set", "team", "bob", stdin=b"x")
    assert "group application" in err

    _ok("-c", str(a), "sso", "app", "set", "payroll", "--disable", "--no-admins-group")
    err = _fails("-c", str(b), "sso", "cred", "get", "payroll", "alice")
    assert "'payroll' is disabled" in err
    _ok("-c", str(b), "sso", "app", "set", "payroll", "--enable")
    shown = json.loads(_ok("-c", str(a), "sso", "app", "show", "payroll", "--json"))
    assert (shown["enabled"], shown["admins_group"]) == (True, None)

    # Export from PostgreSQL, import into a SQLite store: the same definitions, no secret.
    exported = _ok("-c", str(a), "sso", "app", "export")
    assert CREDENTIAL not in exported and b"Qz8" not in exported
    app_file = tmp_path / "apps.json"
    app_file.write_bytes(exported)
    local = tmp_path / "local.db"
    _ok("sso", "--store", str(local), "app", "import", str(app_file))
    assert _ok("sso", "--store", str(local), "app", "export") == exported

    _ok("-c", str(b), "sso", "cred", "delete", "payroll", "alice")
    err = _fails("-c", str(a), "sso", "cred", "get", "payroll", "alice")
    assert err.startswith("error: no credential mapping for user 'alice'")
    assert b"nothing to do" in _ok("-c", str(a), "sso", "migrate")

    # A configuration of another cluster cannot use (or join) this store.
    other = cluster.root / "client-other.toml"
    other.write_text(a.read_text().replace(cluster.cluster_id, "another-cluster"))
    other.chmod(0o600)
    err = _fails("-c", str(other), "sso", "app", "list")
    assert f"belongs to cluster {cluster.cluster_id}, not to cluster another-cluster" in err
    err = _fails("-c", str(other), "sso", "--store", pg.uri, "--store-password-file",
                 str(pg.password_file), "join")
    assert "belongs to cluster" in err


def test_1000_writes_during_a_sigkilled_then_rerun_rewrap_all_survive_under_the_primary(
        cluster: Cluster, pg_server: PostgresServer, tmp_path: Path) -> None:
    _pg_store(cluster, pg_server)
    rows = 20_000
    users = [f"user{i:06d}" for i in range(rows)]
    with SSOClient.from_config(cluster.client_toml, background=False) as client, \
            open_store(pg_server.uri, client, password_file=pg_server.password_file) as db:
        db.add_app("payroll")
        db.put_many(RowKind.CREDENTIAL, "payroll", [(u, f"v1:{u}".encode()) for u in users])
    assert cluster.rotate(now=True)["version"] == 2

    # Two writers, 500 users each, spread over the whole key range (rows rewrap has passed
    # and rows it has yet to reach), 50 of them new.
    plan = {"a": [users[i] for i in range(0, rows, 40)][:450] + [f"new-a-{i}" for i in range(50)],
            "b": [users[i] for i in range(20, rows, 40)][:450] + [f"new-b-{i}" for i in range(50)]}
    go = tmp_path / "go"
    progress = {name: tmp_path / f"{name}.progress" for name in plan}
    writers = {name: subprocess.Popen(
        [sys.executable, "-m", "tests.store.writer", str(cluster.client_toml), name,
         ",".join(plan[name]), str(go), str(progress[name])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in plan}

    def under(version: int) -> int:
        with open_store(pg_server.uri, None, password_file=pg_server.password_file) as s:
            return s.report().versions_in_use.get(version, 0)

    def written() -> int:
        return sum(len(p.read_text().splitlines()) for p in progress.values() if p.exists())

    rewrap_cmd = [sys.executable, "-m", "raftsso_cli", "-c", str(cluster.admin_toml),
                  "rewrap", "--batch", "20"]
    first = subprocess.Popen(rewrap_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: under(2) > 0, interval=0.01, what="rewrap to commit a first batch")
        go.touch()
        wait_for(lambda: written() >= 100, what="the writers to get going")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert under(1) > 0, "rewrap finished before it could be killed"
        again = subprocess.run(rewrap_cmd, capture_output=True, timeout=600, check=False)
        assert again.returncode == 0, again.stderr.decode()
        assert b"re-encrypted under version 2" in again.stdout
    finally:
        go.touch()
        if first.poll() is None:
            first.kill()
        results = {name: w.communicate(timeout=120) for name, w in writers.items()}
    for name, (out, err) in results.items():
        assert writers[name].returncode == 0, err.decode()
        assert json.loads(out) == {"written": 500, "failures": []}
    assert written() == 1000

    with SSOClient.from_config(cluster.client_toml, background=False) as client, \
            open_store(pg_server.uri, client, password_file=pg_server.password_file) as db:
        assert db.versions_in_use() == {2: rows + 100}
        for name, names in plan.items():
            for user in names:
                assert db.get_credential("payroll", user) == f"{name}:{user}:final".encode()
        rewritten = set(plan["a"]) | set(plan["b"])
        for user in users[::97]:
            if user not in rewritten:
                assert db.get_credential("payroll", user) == f"v1:{user}".encode()


def test_retire_is_refused_while_the_postgresql_store_uses_the_version(
        cluster: Cluster, pg_server: PostgresServer) -> None:
    _pg_store(cluster, pg_server)
    c = str(cluster.client_toml)
    _ok("-c", c, "sso", "app", "add", "payroll")
    _ok("-c", c, "sso", "cred", "set", "payroll", "alice", stdin=CREDENTIAL)
    cluster.rotate(now=True)
    # The client's write made the store known (an increment): no --store needed.
    err = _fails("-c", str(cluster.admin_toml), "retire", "1")
    assert "the postgresql store" in err and "reports 1 row(s) under version 1" in err
    _ok("-c", str(cluster.admin_toml), "rewrap")
    err = _fails("-c", str(cluster.admin_toml), "retire", "1")
    assert "became primary" in err  # no rows left; only the client window holds it now
    assert _ok("-c", c, "sso", "cred", "get", "payroll", "alice") == CREDENTIAL


# -- issue 11: versions from token headers, damaged rows in one line ------------------------------


def _v1_store(cluster: Cluster, path: Path, key_version: object) -> None:
    """A raftsso 0.1 (schema 1) SQLite store: 5 rows under version 1 whose key_version
    column says ``key_version``."""
    target = Target("sqlite", path, None)
    target.create_v1()
    target.sql("INSERT INTO apps (name, description, created) VALUES ('payroll', '', 1.0)")
    with SSOClient.from_config(cluster.client_toml, background=False) as client:
        for i in range(5):
            user = f"user{i}"
            token = client.encrypt(f"secret {i}".encode(),
                                   associated_data(RowKind.CREDENTIAL, "payroll", user))
            target.sql("INSERT INTO credentials (app, user, token, key_version, updated) "
                       "VALUES ('payroll', ?, ?, ?, 1.0)", (user, token, key_version))


def test_rewrap_and_retire_read_the_version_from_the_token_header_not_the_column(
        cluster: Cluster, tmp_path: Path) -> None:
    store = tmp_path / "old.db"
    _v1_store(cluster, store, key_version=2)  # the column lies: the rows are under 1
    assert cluster.rotate(now=True)["version"] == 2
    admin = str(cluster.admin_toml)
    err = _fails("-c", admin, "retire", "1", "--store", str(store))
    assert "reports 5 row(s) under version 1" in err
    done = cli("-c", admin, "rewrap", "--store", str(store))
    assert done.returncode == 0, done.stderr
    assert b"5 of 5 row(s) re-encrypted under version 2" in done.stdout
    with SSOClient.from_config(cluster.client_toml, background=False) as client, \
            open_store(store, client) as db:
        assert db.versions_in_use() == {2: 5}
        assert db.get_credential("payroll", "user3") == b"secret 3"


def test_a_text_token_or_a_text_version_column_is_one_line_and_exit_1(
        cluster: Cluster, tmp_path: Path) -> None:
    admin = str(cluster.admin_toml)
    # A non-numeric key_version column (raftsso 0.1's schema): no longer read at all.
    text_column = tmp_path / "text-column.db"
    _v1_store(cluster, text_column, key_version="two")
    counted = cli("-c", admin, "retire", "1", "--store", str(text_column))
    assert counted.returncode == 1  # version 1 is still the primary here
    assert b"5 row(s) under version 1, reported to the cluster" in counted.stdout
    # A token stored as TEXT: retire and rewrap name the row in one line, exit 1.
    text_token = tmp_path / "text-token.db"
    _v1_store(cluster, text_token, key_version=1)
    cluster.rotate(now=True)
    Target("sqlite", text_token, None).sql(
        "UPDATE credentials SET token = 'a token pasted as text' WHERE user = 'user2'")
    err = _fails("-c", admin, "retire", "1", "--store", str(text_token))
    assert "credential:payroll/user2 is damaged (its token is str, not bytes)" in err
    err = _fails("-c", admin, "rewrap", "--store", str(text_token))
    assert "1 row(s) could not be re-encrypted" in err and "credential:payroll/user2" in err
    with open_store(text_token, None) as db:
        report = db.report()
    assert (report.versions_in_use, report.damaged_rows) == ({2: 4}, 1)


def test_sso_migrate_brings_a_version_1_store_forward(tmp_path: Path) -> None:
    store = tmp_path / "old.db"
    Target("sqlite", store, None).create_v1()
    out = _ok("sso", "--store", str(store), "migrate")
    assert b"from schema version 1 to 2" in out
    assert b"nothing to do" in _ok("sso", "--store", str(store), "migrate")
    info = json.loads(_ok("sso", "--store", str(store), "info", "--json"))
    assert (info["kind"], info["schema_version"], info["cluster_id"]) == ("sqlite", 2, None)
