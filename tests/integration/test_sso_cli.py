"""``raftsso sso …`` in real subprocesses, against real nodes where secrets are involved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raftsso.client import SSOClient
from raftsso.store import SSOStore
from tests.harness import Cluster, cli

CREDENTIAL = b"Pa55-w0rd for alice / 9c1e"
CONFIG_VALUE = b"Server=db1;User=svc;Password=Qz8-config"


def _ok(*args: str, stdin: bytes | None = None) -> bytes:
    result = cli(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def _fails(*args: str, stdin: bytes | None = None, code: int = 1) -> str:
    result = cli(*args, stdin=stdin)
    assert result.returncode == code, (result.stdout, result.stderr)
    err = result.stderr.decode()
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    return err


def _on_disk(store: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(store.parent.iterdir())
                    if p.name.startswith(store.name))


@pytest.mark.integration
def test_cred_set_then_get_from_another_process(cluster: Cluster) -> None:
    c = str(cluster.client_toml)
    store = cluster.root / "sso.db"  # client.toml: store = "sso.db"
    _ok("-c", c, "sso", "app", "add", "payroll", "--description", "payroll system")
    _ok("-c", c, "sso", "cred", "set", "payroll", "alice", stdin=CREDENTIAL + b"\n")
    assert _ok("-c", c, "sso", "cred", "get", "payroll", "alice") == CREDENTIAL
    _ok("-c", c, "sso", "config", "set", "payroll", "connection", stdin=CONFIG_VALUE)
    assert _ok("-c", c, "sso", "config", "get", "payroll", "connection") == CONFIG_VALUE

    listing = json.loads(_ok("-c", c, "sso", "cred", "list", "payroll", "--json"))
    assert [e["user"] for e in listing] == ["alice"] and listing[0]["key_version"] == 1
    apps = json.loads(_ok("-c", c, "sso", "app", "list", "--json"))
    assert apps[0]["name"] == "payroll" and apps[0]["credentials"] == 1
    assert b"payroll" in _ok("-c", c, "sso", "app", "list")

    # Nothing in plaintext in the database, its WAL or anywhere else in the store's files.
    assert store.stat().st_mode & 0o777 == 0o600
    data = _on_disk(store)
    assert b"payroll" in data and b"alice" in data
    assert CREDENTIAL not in data and CONFIG_VALUE not in data and b"Pa55-w0rd" not in data

    # A client in this process reads what the other processes wrote, and the other way.
    with SSOClient.from_config(cluster.client_toml) as client, \
            SSOStore(store, client) as sso:
        assert sso.get_credential("payroll", "alice") == CREDENTIAL
        sso.set_credential("payroll", "bob", b"bob's secret")
    assert _ok("-c", c, "sso", "cred", "get", "payroll", "bob") == b"bob's secret"

    # After a rotation, new writes use the new version and old rows still read.
    new = cluster.rotate(now=True)["version"]
    _ok("-c", c, "sso", "cred", "set", "payroll", "carol", stdin=b"carol's")
    versions = {e["user"]: e["key_version"]
                for e in json.loads(_ok("-c", c, "sso", "cred", "list", "payroll", "--json"))}
    assert versions == {"alice": 1, "bob": 1, "carol": new}
    assert _ok("-c", c, "sso", "cred", "get", "payroll", "alice") == CREDENTIAL


@pytest.mark.integration
def test_unknown_application_or_user_is_one_line_and_exit_1(cluster: Cluster) -> None:
    c = str(cluster.client_toml)
    _ok("-c", c, "sso", "app", "add", "crm")
    err = _fails("-c", c, "sso", "cred", "get", "nope", "alice")
    assert err.startswith("error: no affiliate application 'nope'")
    err = _fails("-c", c, "sso", "cred", "get", "crm", "mallory")
    assert err.startswith("error: no credential mapping for user 'mallory'")
    err = _fails("-c", c, "sso", "cred", "set", "nope", "alice", stdin=b"x")
    assert "sso app add nope" in err
    _fails("-c", c, "sso", "config", "get", "crm", "missing")
    _fails("-c", c, "sso", "app", "add", "crm")  # exists already
    err = _fails("-c", c, "sso", "cred", "set", "crm", "alice", stdin=b"", code=2)
    assert "no credential on stdin" in err


@pytest.mark.integration
def test_secrets_need_a_reachable_cluster(tmp_path: Path) -> None:
    deploy = Cluster(tmp_path / "deploy")  # never started
    c = str(deploy.client_toml)
    _ok("-c", c, "sso", "app", "add", "payroll")  # no secret involved: no cluster needed
    err = _fails("-c", c, "sso", "cred", "set", "payroll", "alice", stdin=b"x", code=3)
    assert err.startswith("error: no node gave a usable keyring")


def test_store_only_commands_with_store_option(tmp_path: Path) -> None:
    store = tmp_path / "explicit.db"
    _ok("sso", "--store", str(store), "app", "add", "one")
    _ok("sso", "--store", str(store), "app", "add", "two")
    assert [a["name"] for a in json.loads(_ok("sso", "--store", str(store), "app", "list",
                                               "--json"))] == ["one", "two"]
    assert b"removed application one" in _ok("sso", "--store", str(store), "app", "remove",
                                             "one")
    err = _fails("sso", "--store", str(store), "app", "remove", "one")
    assert err.startswith("error: no affiliate application 'one'")
    assert store.stat().st_mode & 0o777 == 0o600
    # Without a config file and without --store there is no store to use: a usage error.
    err = _fails("sso", "app", "list", code=2)
    assert "needs -c DIR/client.toml or sso --store PATH" in err
