"""Stores known to the cluster, on real node processes and a real PostgreSQL server:
writing clients and rewrap report which versions each store uses, ``retire`` checks every
known store without ``--store``, the table survives a restart of every node, and a store
can be forgotten (issue 12, item 3)."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raftsso.errors import PermissionDenied
from tests.harness import Cluster, NodeOptions, cli, running_cluster
from tests.harness.cluster import cluster_client
from tests.integration.test_sso_cli import CREDENTIAL, _fails, _ok
from tests.pgserver import PostgresServer

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    # client_window 0: only the stores can hold a retirement back in these tests.
    with running_cluster(tmp_path / "deploy", options=NodeOptions(client_window=0.0)) as c:
        yield c


def _stores(cluster: Cluster) -> dict[str, dict[str, Any]]:
    listed = json.loads(_ok("-c", str(cluster.admin_toml), "stores", "--json"))
    assert isinstance(listed, list)
    return {s["id"]: s for s in listed}


def _store_id(toml: Path) -> str:
    return str(json.loads(_ok("-c", str(toml), "sso", "info", "--json"))["id"])


def test_retire_checks_every_known_store_without_store_and_stores_survive_a_restart(
        cluster: Cluster, pg_server: PostgresServer, tmp_path: Path) -> None:
    pg = pg_server
    pg.reset()
    admin = str(cluster.admin_toml)
    # Host A: a SQLite store (client.toml). Host B: the shared PostgreSQL store.
    sqlite_toml = cluster.client_toml
    _ok("-c", str(sqlite_toml), "sso", "--store", str(tmp_path / "sso.db"), "join")
    pg_toml = cluster.root / "client-host-b.toml"
    shutil.copy(cluster.client_toml, pg_toml)
    for toml in (pg_toml, cluster.admin_toml):
        _ok("-c", str(toml), "sso", "--store", pg.uri, "--store-password-file",
            str(pg.password_file), "join")
    sqlite_id, pg_id = _store_id(sqlite_toml), _store_id(pg_toml)
    assert _stores(cluster) == {}

    # Writing clients report the rows they wrote (an increment, on exit for the CLI).
    for toml in (sqlite_toml, pg_toml):
        _ok("-c", str(toml), "sso", "app", "add", "payroll")
        _ok("-c", str(toml), "sso", "cred", "set", "payroll", "alice", stdin=CREDENTIAL)
    known = _stores(cluster)
    assert {k: (s["kind"], s["versions_in_use"], s["counted_at"]) for k, s in known.items()} \
        == {sqlite_id: ("sqlite", {"1": 1}, None), pg_id: ("postgresql", {"1": 1}, None)}
    assert all(s["reported_at"] > 0 for s in known.values())

    # A client certificate may not send a full count (it could let a retirement through).
    with cluster_client(cluster.client_toml) as client, pytest.raises(PermissionDenied):
        client.call_leader("store_report", {
            "request_id": secrets.token_bytes(16), "store_id": sqlite_id, "kind": "sqlite",
            "counted_at": 1.0, "versions_in_use": {}, "full": True})

    assert cluster.rotate(now=True)["version"] == 2
    # No --store: refused, the store named (the first by id while both hold rows).
    err = _fails("-c", admin, "retire", "1")
    assert f"store {min(sqlite_id, pg_id)} reports 1 row(s) under version 1" in err
    _ok("-c", admin, "rewrap", "--store", str(tmp_path / "sso.db"))
    assert _stores(cluster)[sqlite_id]["versions_in_use"] == {"2": 1}
    err = _fails("-c", admin, "retire", "1")
    assert f"the postgresql store {pg_id} reports 1 row(s) under version 1" in err

    # Every node restarted: the table is in the replicated state (log and snapshots).
    cluster.stop()
    cluster.start()
    cluster.wait_healthy()
    assert _stores(cluster) == {**known, sqlite_id: _stores(cluster)[sqlite_id]}
    err = _fails("-c", admin, "retire", "1")
    assert f"the postgresql store {pg_id} reports 1 row(s) under version 1" in err

    _ok("-c", admin, "rewrap")  # the PostgreSQL store is admin.toml's own
    after = _stores(cluster)
    assert {k: s["versions_in_use"] for k, s in after.items()} == \
        {sqlite_id: {"2": 1}, pg_id: {"2": 1}}
    assert all(s["counted_at"] is not None for s in after.values())
    done = cli("-c", admin, "retire", "1")
    assert done.returncode == 0, done.stderr
    assert b"version 1 is retired" in done.stdout
    for toml in (sqlite_toml, pg_toml):
        assert _ok("-c", str(toml), "sso", "cred", "get", "payroll", "alice") == CREDENTIAL


def test_a_store_not_counted_since_the_version_was_demoted_blocks_retire_until_forgotten(
        cluster: Cluster, tmp_path: Path) -> None:
    admin = str(cluster.admin_toml)
    store = tmp_path / "gone.db"
    _ok("sso", "--store", str(store), "app", "add", "payroll")
    _ok("-c", admin, "rewrap", "--store", str(store))  # a full count: no row at all
    store_id = _store_id_of(store)
    assert _stores(cluster)[store_id]["versions_in_use"] == {}
    assert cluster.rotate(now=True)["version"] == 2
    # Counted before version 1 stopped being primary: a client still on the old keyring
    # may have written under 1 since. This host's store is gone, say.
    store.unlink()
    err = _fails("-c", admin, "retire", "1")
    assert f"store {store_id} has not counted its rows since version 1 stopped" in err

    refused = cli("-c", admin, "stores", "forget", store_id, stdin=b"n\n")
    assert refused.returncode == 1 and store_id in _stores(cluster)
    assert f"store {store_id} forgotten".encode() in _ok(
        "-c", admin, "stores", "forget", store_id, "--yes")
    assert _stores(cluster) == {}
    err = _fails("-c", admin, "stores", "forget", store_id, "--yes")
    assert f"no known store has id {store_id}" in err
    assert b"no store has reported" in _ok("-c", admin, "stores")
    done = cli("-c", admin, "retire", "1")
    assert done.returncode == 0, done.stderr


def _store_id_of(path: Path) -> str:
    return str(json.loads(_ok("sso", "--store", str(path), "info", "--json"))["id"])
