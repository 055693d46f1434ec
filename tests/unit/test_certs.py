"""Certificates per service: issuing with an offline CA key (real x509, real TLS contexts),
and the replicated registry of issued and revoked certificates (pure)."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import threading
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftsso import pki
from raftsso.certs import check_name, issue_files
from raftsso.config import load_remote_config
from raftsso.deployment import init_deployment
from raftsso.errors import ConfigError
from raftsso.revocation import (
    EXPIRED_KEEP,
    MAX_RECORDS,
    CertRecord,
    CertRegistry,
    RegistryError,
    canonical_serial,
)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("deploy") / "d"
    init_deployment(d, nodes=1, base_port=7100)
    return d


def ca_of(d: Path) -> pki.Issued:
    return pki.load_ca(d / "ca.pem", d / "ca.key")


# -- issuing ------------------------------------------------------------------------------


def test_issue_writes_a_working_pair_and_config(deployment: Path, tmp_path: Path) -> None:
    remote = load_remote_config(deployment / "admin.toml")
    out = tmp_path / "svc-a"
    files = issue_files(ca_of(deployment), role="client", name="svc-a", out=out, remote=remote)
    info = files.info
    assert (info.name, info.role) == ("svc-a", "client")
    assert info.not_after > info.not_before
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("svc-a.pem", "svc-a.key", "ca.pem", "svc-a.toml"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    cfg = load_remote_config(files.config)  # type: ignore[arg-type]
    assert (cfg.role, cfg.cluster_id, cfg.nodes) == ("client", remote.cluster_id, remote.nodes)
    # The pair loads into a TLS client context that trusts the cluster CA.
    pki.client_context(cfg.ca_cert, cfg.cert, cfg.key)
    assert pki.describe((out / "svc-a.pem").read_bytes()) == info
    # openssl agrees on the serial (the spelling an operator pastes into certs revoke).
    text = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(files.cert)],
                          capture_output=True, text=True, check=True).stdout
    assert canonical_serial(text) == info.serial


def test_every_certificate_has_its_own_serial(deployment: Path, tmp_path: Path) -> None:
    ca = ca_of(deployment)
    serials = {issue_files(ca, role="admin", name=f"op-{i}", out=tmp_path / str(i)).info.serial
               for i in range(5)}
    assert len(serials) == 5


def test_issue_refuses_to_overwrite(deployment: Path, tmp_path: Path) -> None:
    ca = ca_of(deployment)
    issue_files(ca, role="client", name="svc-b", out=tmp_path)
    before = (tmp_path / "svc-b.key").read_bytes()
    with pytest.raises(ConfigError, match="exists"):
        issue_files(ca, role="client", name="svc-b", out=tmp_path)
    assert (tmp_path / "svc-b.key").read_bytes() == before


@pytest.mark.parametrize("role", ["root", ""])
def test_issue_only_known_roles(deployment: Path, tmp_path: Path, role: str) -> None:
    with pytest.raises(ConfigError, match="client, admin, node"):
        issue_files(ca_of(deployment), role=role, name="x", out=tmp_path)


def test_a_node_certificate_names_its_host_and_id(deployment: Path, tmp_path: Path) -> None:
    ca = ca_of(deployment)
    with pytest.raises(ConfigError, match="--host"):
        issue_files(ca, role="node", name="node1", out=tmp_path)
    with pytest.raises(ConfigError, match="node certificates only"):
        issue_files(ca, role="client", name="c", out=tmp_path, hosts=("h",))
    remote = load_remote_config(deployment / "admin.toml")
    files = issue_files(ca, role="node", name="node1", out=tmp_path, remote=remote,
                        hosts=("127.0.0.1",))
    assert files.config is None and files.info.role == "node"
    # It serves: a client checking the node's name (127.0.0.1) accepts it.
    node = deployment / "node1"
    server = pki.server_context(node / "ca.pem", files.cert, files.key)
    client = pki.client_context(deployment / "ca.pem", deployment / "client.pem",
                                deployment / "client.key")
    a, b = socket.socketpair()
    t = threading.Thread(target=lambda: server.wrap_socket(a, server_side=True).close())
    t.start()
    with client.wrap_socket(b, server_hostname="127.0.0.1") as tls:
        assert pki.peer_serial(tls.getpeercert()) == files.info.serial
    t.join(5)


@pytest.mark.parametrize("name", ["", "-a", "a/b", "../x", "a b", "x" * 65, "é"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ConfigError, match="not a certificate name"):
        check_name(name)


def test_a_ca_key_others_can_read_is_refused(deployment: Path, tmp_path: Path) -> None:
    key = tmp_path / "ca.key"
    key.write_bytes((deployment / "ca.key").read_bytes())
    os.chmod(key, 0o640)
    with pytest.raises(ConfigError, match="accessible by other users"):
        pki.load_ca(deployment / "ca.pem", key)


def test_the_ca_key_must_match_the_ca(deployment: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not the key of the CA"):
        pki.load_ca(deployment / "ca.pem", deployment / "admin.key")
    with pytest.raises(ConfigError, match="not a CA certificate"):
        pki.load_ca(deployment / "admin.pem", deployment / "admin.key")
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"not a key")
    junk.chmod(0o600)
    with pytest.raises(ConfigError, match="unencrypted PEM key"):
        pki.load_ca(deployment / "ca.pem", junk)


def test_peer_serial_matches_describe(deployment: Path) -> None:
    """The serial a node reads from a live TLS peer is the one describe() records."""
    node = deployment / "node1"
    server = pki.server_context(node / "ca.pem", node / "node.pem", node / "node.key")
    client = pki.client_context(deployment / "ca.pem", deployment / "client.pem",
                                deployment / "client.key")
    a, b = socket.socketpair()
    seen: list[str | None] = []

    def serve() -> None:
        with server.wrap_socket(a, server_side=True) as s:
            seen.append(pki.peer_serial(s.getpeercert()))

    t = threading.Thread(target=serve)
    t.start()
    with client.wrap_socket(b, server_hostname="node1"):
        pass
    t.join(5)
    assert seen == [pki.describe((deployment / "client.pem").read_bytes()).serial]
    assert pki.peer_serial(None) is None and pki.peer_serial({"serialNumber": "zz"}) is None
    assert isinstance(server, ssl.SSLContext)


def test_config_written_is_valid_toml(deployment: Path, tmp_path: Path) -> None:
    remote = load_remote_config(deployment / "admin.toml")
    files = issue_files(ca_of(deployment), role="admin", name="op", out=tmp_path, remote=remote)
    assert tomllib.loads(files.config.read_text())["role"] == "admin"  # type: ignore[union-attr]


# -- serials ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "canonical"), [
    ("serial=0A1B", "a1b"), ("0a:1b", "a1b"), ("0x0A1B", "a1b"), (" a1b\n", "a1b"),
    (2587, "a1b"),
])
def test_serial_spellings(text: str | int, canonical: str) -> None:
    assert canonical_serial(text) == canonical


@pytest.mark.parametrize("text", ["", "0", "xyz", "0x", "1" * 65, -1, 0, True, "svc-a"])
def test_bad_serials(text: str | int) -> None:
    with pytest.raises(ValueError):
        canonical_serial(text)


@given(st.integers(1, (1 << 159) - 1))
def test_serial_round_trip(value: int) -> None:
    s = canonical_serial(value)
    assert canonical_serial(s) == s == canonical_serial(s.upper()) == canonical_serial(
        ":".join(s.zfill(len(s) + len(s) % 2)[i:i + 2] for i in range(0, len(s) + len(s) % 2, 2)))


# -- the registry -------------------------------------------------------------------------


def rec(serial: str, name: str, at: float = 100.0, not_after: float | None = 1e9) -> CertRecord:
    return CertRecord(serial, name, "client", at, not_after)


def test_register_and_revoke_by_name() -> None:
    reg = CertRegistry().register(rec("a1", "svc-a"), 100).register(rec("a2", "svc-a"), 101)
    reg = reg.register(rec("b1", "svc-b"), 102)
    assert reg.resolve("svc-a") == ["a1", "a2"]
    reg2, newly = reg.revoke(reg.resolve("svc-a"), at=200, by="admin-1")
    assert newly == ["a1", "a2"] and reg2.revoked == {"a1", "a2"}
    assert reg.revoked == frozenset()  # immutable
    record = reg2.get("a1")
    assert record is not None and (record.revoked, record.revoked_by) == (200, "admin-1")
    # Revoking again changes nothing and keeps the first time.
    reg3, newly = reg2.revoke(["a1"], at=300, by="other")
    assert newly == [] and reg3.get("a1") == record


def test_revoke_an_unregistered_serial_then_register_it() -> None:
    reg, newly = CertRegistry().revoke(["ff"], at=10, by="op", names={"ff": "client-1"})
    assert newly == ["ff"] and reg.revoked == {"ff"}
    assert reg.get("ff") == CertRecord("ff", "client-1", "", 0.0, None, 10, "op")
    reg = reg.register(rec("ff", "client-1"), 20)  # a late registration keeps the revocation
    assert reg.revoked == {"ff"}


def test_resolve_falls_back_to_a_serial_and_refuses_unknown_names() -> None:
    reg = CertRegistry().register(rec("abc", "svc"), 1)
    assert reg.resolve("svc") == ["abc"]
    assert reg.resolve("0A:BC") == ["abc"]
    with pytest.raises(RegistryError, match="no certificate named 'nobody'"):
        reg.resolve("nobody")


def test_a_serial_cannot_be_registered_under_two_names() -> None:
    reg = CertRegistry().register(rec("a1", "svc-a"), 1)
    with pytest.raises(RegistryError, match="registered already"):
        reg.register(rec("a1", "svc-b"), 2)
    assert reg.register(rec("a1", "svc-a"), 3).get("a1") is not None  # idempotent


def test_expired_records_are_pruned_by_later_commands() -> None:
    reg = CertRegistry().register(rec("a1", "old", not_after=1000.0), 1)
    reg, _ = reg.revoke(["a1"], at=2, by="op")
    assert len(reg) == 1
    reg = reg.register(rec("b1", "new"), 1000.0 + EXPIRED_KEEP + 1)
    assert reg.get("a1") is None and reg.get("b1") is not None


def test_the_registry_is_bounded() -> None:
    reg = CertRegistry([rec(format(i + 1, "x"), "n") for i in range(MAX_RECORDS)])
    with pytest.raises(RegistryError, match="already knows"):
        reg.register(rec("f" * 40, "x"), 1)
    with pytest.raises(RegistryError, match="already knows"):
        reg.revoke(["e" * 40], at=1, by="op")


def test_wire_round_trip_and_malformed_input() -> None:
    reg = CertRegistry().register(rec("a1", "svc-a"), 1)
    reg, _ = reg.revoke(["b2"], at=5, by="op")
    assert CertRegistry.from_wire(reg.to_wire()).records() == reg.records()
    good = reg.to_wire()[0]
    for bad in ({**good, "serial": "0A1"}, {**good, "serial": 5}, {**good, "name": 1},
                {**good, "registered": float("nan")}, {**good, "revoked": "x"},
                {**good, "name": "n" * 65}):
        with pytest.raises((ValueError, TypeError, KeyError)):
            CertRegistry.from_wire([bad])
    with pytest.raises(ValueError, match="repeats"):
        CertRegistry.from_wire([good, good])
    with pytest.raises(TypeError):
        CertRegistry.from_wire({"a": 1})
    with pytest.raises(KeyError):
        CertRegistry.from_wire([{"serial": "a"}])
