"""Day-two commands that need no running cluster, through the real command line:
``backup keygen``, ``certs issue`` (offline CA key), ``backup-info`` of a key backup."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from raftsso import backup_recipient, envelope, pki
from raftsso.backup import BackupVersion
from raftsso.deployment import init_deployment
from tests.harness import cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli") / "d"
    init_deployment(d, nodes=1, base_port=7100)
    return d


def test_backup_keygen(tmp_path: Path) -> None:
    key = tmp_path / "backup.key"
    r = cli("backup", "keygen", "--out", str(key), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert out["key_id"] == backup_recipient.load_recipient(Path(out["recipient"])).key_id
    again = cli("backup", "keygen", "--out", str(key))
    assert again.returncode == 1 and b"never overwritten" in again.stderr
    assert again.stderr.count(b"\n") == 1 and b"Traceback" not in again.stderr


def test_backup_without_subcommand_still_needs_its_options(tmp_path: Path) -> None:
    r = cli("backup", "--out", str(tmp_path / "f"))
    assert r.returncode == 2 and b"--password-file" in r.stderr


def test_backup_info_of_a_key_backup(tmp_path: Path) -> None:
    identity = backup_recipient.keygen(tmp_path / "k")
    key = envelope.new_key()
    blob = backup_recipient.write_backup(
        identity.recipient, cluster_id="c-x", primary=1,
        versions=[BackupVersion(1, "primary", envelope.fingerprint(key), 1.0, key)])
    path = tmp_path / "b.rsso"
    path.write_bytes(blob)
    r = cli("backup-info", str(path), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["cluster_id"] == "c-x" and info["kdf"]["key_id"] == identity.recipient.key_id
    text = cli("backup-info", str(path))
    assert text.returncode == 0 and identity.recipient.key_id.encode() in text.stdout


def test_certs_issue(deployment: Path, tmp_path: Path) -> None:
    out = tmp_path / "svc-a"
    r = cli("-c", str(deployment / "admin.toml"), "certs", "issue", "--role", "client",
            "--name", "svc-a", "--ca-key", str(deployment / "ca.key"), "--out", str(out),
            "--no-register", "--json")
    assert r.returncode == 0, r.stderr
    issued = json.loads(r.stdout)
    info = pki.describe((out / "svc-a.pem").read_bytes())
    assert (issued["serial"], issued["name"], issued["role"]) == (info.serial, "svc-a",
                                                                  "client")
    assert (out / "svc-a.toml").exists()


def test_certs_issue_refuses_a_ca_key_others_can_read(deployment: Path, tmp_path: Path) -> None:
    key = tmp_path / "ca.key"
    key.write_bytes((deployment / "ca.key").read_bytes())
    os.chmod(key, 0o644)
    r = cli("-c", str(deployment / "admin.toml"), "certs", "issue", "--role", "admin",
            "--name", "op", "--ca-key", str(key), "--out", str(tmp_path / "o"),
            "--no-register")
    assert r.returncode == 1 and b"accessible by other users" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--role", "root", "--name", "n"], b"Invalid value for '--role'"),
    (["--role", "node", "--name", "n"], b"--host"),
    (["--role", "client", "--name", "../x"], b"not a certificate name"),
])
def test_certs_issue_bad_input(deployment: Path, tmp_path: Path, args: list[str],
                               message: bytes) -> None:
    r = cli("-c", str(deployment / "admin.toml"), "certs", "issue", *args, "--ca-key",
            str(deployment / "ca.key"), "--out", str(tmp_path / "o"), "--no-register")
    assert r.returncode in (1, 2) and message in r.stderr
    assert b"Traceback" not in r.stderr


def test_restore_needs_the_right_identity(deployment: Path, tmp_path: Path) -> None:
    """Refused before any node is asked: the file names its key, and says which flag."""
    mine, other = backup_recipient.keygen(tmp_path / "k"), backup_recipient.keygen(tmp_path / "o")
    key = envelope.new_key()
    blob = backup_recipient.write_backup(
        mine.recipient, cluster_id="c-x", primary=1,
        versions=[BackupVersion(1, "primary", envelope.fingerprint(key), 1.0, key)])
    path = tmp_path / "b.rsso"
    path.write_bytes(blob)
    admin = str(deployment / "admin.toml")
    r = cli("-c", admin, "restore", str(path), "--identity", str(tmp_path / "o"))
    assert r.returncode == 1 and b"encrypted to key " + mine.recipient.key_id.encode() in r.stderr
    assert other.recipient.key_id.encode() in r.stderr
    r = cli("-c", admin, "restore", str(path), "--password-file", str(tmp_path / "k"))
    assert r.returncode == 2 and b"--identity KEY" in r.stderr
