"""Secret lifecycle on real processes: staged rotation with live clients, rewrap killed
midway, retire, backup/restore and disaster recovery."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftsso.client import SSOClient
from raftsso.envelope import token_key_version
from raftsso.errors import Conflict
from raftsso.store import RowKind, SSOStore
from tests.harness import Cluster, NodeOptions, cli, running_cluster, wait_for

pytestmark = pytest.mark.integration
PASSWORD = b"correct horse battery staple\n"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "sso.db"


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_bytes(PASSWORD)
    path.chmod(0o600)
    return path


def _admin(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[bytes]:
    return cli("-c", str(cluster.admin_toml), *args)


def _fill(cluster: Cluster, store: Path, rows: int) -> dict[tuple[str, str], bytes]:
    """Write ``rows`` credentials in one transaction (a bulk load for the test)."""
    with SSOClient.from_config(cluster.client_toml, background=False) as client, \
            SSOStore(store, cipher=client) as db:
        db.add_app("payroll")
        expected = {("payroll", f"user{i:06d}"): f"secret-{i}".encode() for i in range(rows)}
        db.put_many(RowKind.CREDENTIAL, "payroll",
                    [(user, secret) for (_, user), secret in expected.items()])
    return expected


def _check_store(cluster: Cluster, store: Path, expected: dict[tuple[str, str], bytes],
                 toml: Path | None = None) -> dict[int, int]:
    with SSOClient.from_config(toml or cluster.client_toml, background=False) as client, \
            SSOStore(store, cipher=client) as db:
        for (app, user), secret in expected.items():
            assert db.get_credential(app, user) == secret
        return db.key_versions()


# -- staged rotation with live clients -----------------------------------------------------


@pytest.fixture
def staged_cluster(tmp_path: Path) -> Iterator[Cluster]:
    # A grace period far beyond the test: only "every recent client has synced it" can
    # promote the staged version in time.
    options = NodeOptions(client_window=2.0, rotation_grace=3600.0)
    with running_cluster(tmp_path / "deploy", options=options) as c:
        yield c


def test_staged_rotation_with_two_client_processes_loses_no_operation(
        staged_cluster: Cluster, tmp_path: Path) -> None:
    cluster = staged_cluster
    a, b, stop = tmp_path / "a.tokens", tmp_path / "b.tokens", tmp_path / "stop"
    workers = [
        subprocess.Popen([sys.executable, "-m", "tests.integration.client_worker",
                          str(cluster.client_toml), name, str(out), str(peer), str(stop)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, out, peer in (("a", a, b), ("b", b, a))
    ]
    try:
        for path in (a, b):
            wait_for(lambda p=path: p.exists() and p.read_text().count("\n") >= 5,
                     what=f"{path.name} to fill")
        staged = cluster.rotate(now=False)
        assert staged == {"version": 2, "state": "staged", "primary_version": 1}
        wait_for(lambda: cluster.status()["primary_version"] == 2, timeout=60,
                 what="the staged version to be promoted once both clients synced it")

        def last_version(path: Path) -> int:
            lines = path.read_text().splitlines()
            return token_key_version(bytes.fromhex(lines[-1])) if lines else 0

        wait_for(lambda: last_version(a) == 2 and last_version(b) == 2,
                 what="both clients to encrypt under version 2")
    finally:
        stop.touch()
        results = []
        for w in workers:
            out, err = w.communicate(timeout=60)
            assert w.returncode == 0, err.decode()
            results.append(json.loads(out))
    for result in results:
        assert result["failures"] == []
        assert result["ops"] > 0
        assert result["versions"] == [1, 2]


def test_a_retried_rotation_creates_one_version_and_cas_admits_one_winner(
        cluster: Cluster) -> None:
    request_id = secrets.token_bytes(16)
    first = cluster.rotate(now=True, request_id=request_id)
    again = cluster.rotate(now=True, request_id=request_id)
    assert first == again == {"version": 2, "state": "primary", "primary_version": 2}
    assert [v["id"] for v in cluster.status()["versions"]] == [1, 2]

    # Two rotations that both saw primary 2: exactly one wins.
    winners, losers = [], []
    for _ in range(2):
        try:
            winners.append(cluster.client.call_leader(
                "rotate", {"request_id": secrets.token_bytes(16), "now": True,
                           "expect_primary": 2}))
        except Conflict as exc:
            losers.append(exc)
    assert len(winners) == 1 and len(losers) == 1
    assert "another rotation won" in str(losers[0])


# -- rewrap, retire -------------------------------------------------------------------------


def test_rewrap_killed_midway_and_run_again_leaves_every_row_readable_under_the_primary(
        cluster: Cluster, store: Path) -> None:
    expected = _fill(cluster, store, 3000)
    assert cluster.rotate(now=True)["version"] == 2
    proc = subprocess.Popen([sys.executable, "-m", "raftsso_cli", "-c", str(cluster.admin_toml),
                             "rewrap", "--store", str(store), "--batch", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def progressed() -> bool:
        with SSOStore(store) as db:
            return db.key_versions().get(2, 0) > 0

    wait_for(progressed, interval=0.005, what="rewrap to commit a first batch")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    with SSOStore(store) as db:
        midway = db.key_versions()
    assert midway.get(1, 0) > 0, "rewrap finished before it could be killed"
    assert sum(midway.values()) == 3000

    again = cli("-c", str(cluster.admin_toml), "rewrap", "--store", str(store))
    assert again.returncode == 0, again.stderr
    assert b"re-encrypted under version 2" in again.stdout
    assert _check_store(cluster, store, expected) == {2: 3000}


def test_retire_is_refused_while_rows_use_the_version_and_allowed_after_rewrap(
        cluster: Cluster, store: Path) -> None:
    expected = _fill(cluster, store, 20)
    assert cluster.rotate(now=True)["version"] == 2
    refused = _admin(cluster, "retire", "1", "--store", str(store))
    assert refused.returncode == 1
    assert b"reports 20 row(s) under version 1" in refused.stderr
    # The store is known to the cluster now: retire checks it without --store.
    unchecked = _admin(cluster, "retire", "1")
    assert unchecked.returncode == 1 and b"reports 20 row(s) under version 1" in \
        unchecked.stderr
    primary = _admin(cluster, "retire", "2", "--force", "--yes")
    assert primary.returncode == 1 and b"primary" in primary.stderr
    assert _admin(cluster, "rewrap", "--store", str(store)).returncode == 0
    # No row uses it now, but version 2 became primary moments ago: a client that has not
    # resynced may still encrypt under 1, so the node refuses until the window has passed.
    early = _admin(cluster, "retire", "1", "--store", str(store))
    assert early.returncode == 1 and b"became primary" in early.stderr
    done = _admin(cluster, "retire", "1", "--store", str(store), "--force", "--yes")
    assert done.returncode == 0, done.stderr
    assert b"version 1 is retired" in done.stdout
    keys = json.loads(_admin(cluster, "keys", "--json").stdout)
    assert {v["id"]: v["state"] for v in keys["versions"]} == {1: "retired", 2: "primary"}
    _, ring = cluster.client.call_any("keyring")
    assert [v["id"] for v in ring["versions"]] == [2]  # no key material for 1 any more
    assert _check_store(cluster, store, expected) == {2: 20}


# -- backup and restore ---------------------------------------------------------------------


def test_backup_marks_versions_and_backup_info_needs_no_password(
        cluster: Cluster, tmp_path: Path, password_file: Path) -> None:
    cluster.rotate(now=True)
    out = tmp_path / "secret.bak"
    status = _admin(cluster, "status")
    assert b"never backed up" in status.stderr
    made = _admin(cluster, "backup", "--out", str(out), "--password-file", str(password_file),
                  "--reminder", "the usual, with a horse")
    assert made.returncode == 0, made.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    info = cli("backup-info", str(out), "--json")
    assert info.returncode == 0
    data = json.loads(info.stdout)
    assert data["reminder"] == "the usual, with a horse"
    assert data["cluster_id"] == cluster.cluster_id
    assert [v["id"] for v in data["versions"]] == [1, 2]
    keys = json.loads(_admin(cluster, "keys", "--json").stdout)
    assert all(v["backed_up"] for v in keys["versions"])
    assert b"never backed up" not in _admin(cluster, "status").stderr
    # No key material in the file in the clear.
    _, ring = cluster.client.call_any("keyring")
    blob = out.read_bytes()
    assert not any(v["key"] in blob for v in ring["versions"])
    again = _admin(cluster, "backup", "--out", str(out), "--password-file", str(password_file))
    assert again.returncode == 1 and b"exists" in again.stderr


def test_bad_backups_are_refused_and_change_nothing(
        cluster: Cluster, tmp_path: Path, password_file: Path) -> None:
    cluster.rotate(now=True)
    out = tmp_path / "secret.bak"
    assert _admin(cluster, "backup", "--out", str(out), "--password-file",
                  str(password_file)).returncode == 0
    before = json.loads(_admin(cluster, "keys", "--json").stdout)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"this is not the password\n")
    wrong.chmod(0o600)
    blob = out.read_bytes()
    truncated = tmp_path / "truncated.bak"
    truncated.write_bytes(blob[: len(blob) // 2])
    flipped = tmp_path / "flipped.bak"
    flipped.write_bytes(blob[:-10] + bytes([blob[-10] ^ 1]) + blob[-9:])
    cases = [(out, wrong, b"wrong password"), (truncated, password_file, b"truncated"),
             (flipped, password_file, b"wrong password, or the backup file was changed")]
    for path, pw, message in cases:
        r = _admin(cluster, "restore", str(path), "--password-file", str(pw))
        assert r.returncode == 1, (path, r.stderr)
        assert message in r.stderr
        assert b"Traceback" not in r.stderr
    assert json.loads(_admin(cluster, "keys", "--json").stdout) == before


def test_restore_merges_into_the_running_cluster(
        cluster: Cluster, tmp_path: Path, password_file: Path) -> None:
    out = tmp_path / "secret.bak"
    assert _admin(cluster, "backup", "--out", str(out), "--password-file",
                  str(password_file)).returncode == 0
    cluster.rotate(now=True)  # version 2, newer than the backup
    r = _admin(cluster, "restore", str(out), "--password-file", str(password_file), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["added"] == [] and result["replaced"] == []
    assert result["primary_version"] == 2  # never goes back to the backup's primary


def test_disaster_recovery_into_a_new_cluster(
        tmp_path: Path, store: Path, password_file: Path) -> None:
    old = Cluster(tmp_path / "old")
    old.start()
    try:
        old.wait_healthy()
        expected = _fill(old, store, 50)
        old.rotate(now=True)
        with SSOClient.from_config(old.client_toml, background=False) as client, \
                SSOStore(store, cipher=client) as db:
            db.set_credential("payroll", "late", b"written under version 2")
        expected[("payroll", "late")] = b"written under version 2"
        backup = tmp_path / "keep" / "secret.bak"
        backup.parent.mkdir()
        assert cli("-c", str(old.admin_toml), "backup", "--out", str(backup),
                   "--password-file", str(password_file)).returncode == 0
    finally:
        old.close()
    shutil.rmtree(old.root)  # every node, every key: only the backup and the store remain

    new = Cluster(tmp_path / "new")
    new.start()
    try:
        new.wait_healthy()
        refused = cli("-c", str(new.admin_toml), "restore", str(backup), "--password-file",
                      str(password_file))
        assert refused.returncode == 1
        assert b"--force" in refused.stderr
        unconfirmed = cli("-c", str(new.admin_toml), "restore", str(backup),
                          "--password-file", str(password_file), "--force")
        assert unconfirmed.returncode == 1  # asks first; no terminal here, so it aborts
        r = cli("-c", str(new.admin_toml), "restore", str(backup), "--password-file",
                str(password_file), "--force", "--yes", "--json")
        assert r.returncode == 0, r.stderr
        result = json.loads(r.stdout)
        assert result["added"] == [1, 2] and result["replaced"] == [1]
        assert result["primary_version"] == 2
        wait_for(lambda: all(new.node_status(i)["primary_version"] == 2 for i in new.ids),
                 what="the restored keyring on every node")
        assert _check_store(new, store, expected, toml=new.client_toml) == {1: 50, 2: 1}
        # The restored cluster survives a full restart too.
        new.kill()
        new.start()
        new.wait_healthy()
        # A follower replaying its journal briefly serves the pre-restore keyring, whose
        # version 1 is the replaced one; a client that has never synced would take it.
        wait_for(lambda: all(new.node_status(i)["primary_version"] == 2 for i in new.ids),
                 what="every restarted node to replay the restore")
        assert _check_store(new, store, expected, toml=new.client_toml) == {1: 50, 2: 1}
    finally:
        new.close()
    assert os.path.exists(store)
