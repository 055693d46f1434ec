"""Mutual TLS between Raft peers on real processes (raftsso.raft.peer_links; issue 7, item 4).

The attacker of these tests holds the cluster secret (pysyncobj's Fernet password) and
speaks pysyncobj's own protocol with it, but has no node certificate of the cluster CA.
With peer TLS on (the default) it receives nothing and changes nothing, and the node logs
the refusal. The password-only fallback (``peer_tls = false``) still runs a cluster; there
the same attacker gets pysyncobj's answer, which is why it is only a fallback.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import ssl
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pysyncobj.pickle as pso_pickle
import pytest
from cryptography.fernet import Fernet, InvalidToken
from pysyncobj.encryptor import getEncryptor

from raftsso import pki
from raftsso.config import NodeConfig, load_node_config, split_address
from raftsso.fsutil import read_private
from tests.harness import (
    Cluster,
    NodeOptions,
    cli,
    free_base_port,
    running_cluster,
    wait_for,
)

pytestmark = pytest.mark.integration

TIMEOUT = 10.0


def _cfg(cluster: Cluster, node_id: str) -> NodeConfig:
    return load_node_config(cluster.node_toml(node_id))


@pytest.fixture
def fallback_cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path / "deploy", options=NodeOptions(peer_tls=False)) as c:
        yield c


# -- pysyncobj's protocol, spoken with the real password -----------------------------------


def _frame(fernet: Fernet, message: Any, rand_key: bytes | None = None) -> bytes:
    """A pysyncobj TcpConnection frame (pysyncobj/tcp_connection.py, send)."""
    if rand_key is not None:
        message = (rand_key, message)
    data = zlib.compress(pso_pickle.dumps(message), 3)
    data = fernet.encrypt_at_time(data, int(time.monotonic()))
    return struct.pack("i", len(data)) + data


def _first_message(sock: socket.socket | ssl.SSLSocket, fernet: Fernet) -> Any:
    """The first pysyncobj message the node sends, or None if it closes without one."""
    buffered = b""
    try:
        while True:
            if len(buffered) >= 4:
                (length,) = struct.unpack("i", buffered[:4])
                if 0 <= length <= len(buffered) - 4:
                    try:
                        plain = fernet.decrypt(buffered[4:4 + length])
                    except InvalidToken:
                        return None  # not pysyncobj's (a TLS alert, say)
                    return pso_pickle.loads(zlib.decompress(plain))
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buffered += chunk
    except (ssl.SSLError, ConnectionError):
        return None


def _attack(sock: socket.socket | ssl.SSLSocket, password: str, claim: str) -> Any:
    """Open pysyncobj's key exchange as a dialing member would; return the node's answer.

    A member sends its random key, receives the node's key and then introduces itself
    with its Raft address and speaks Raft. The attacker cannot wait for the key (it never
    comes), so it sends its introduction and a command at once, with a guessed key.
    """
    fernet = getEncryptor(password)
    guess = os.urandom(32)
    with_guess = [
        claim,
        {"type": "request_vote", "term": ATTACK_TERM, "last_log_index": ATTACK_TERM,
         "last_log_term": ATTACK_TERM},
        {"type": "apply_command", "command": b"\x00" + b"\x01garbage", "request_id": 1},
    ]
    try:
        sock.sendall(_frame(fernet, os.urandom(32)))
        for message in with_guess:
            sock.sendall(_frame(fernet, message, rand_key=guess))
    except (ssl.SSLError, ConnectionError):
        pass  # closed already
    return _first_message(sock, fernet)


ATTACK_TERM = 10**6  # the term of the attacker's vote request


def _state(cluster: Cluster) -> list[tuple[str, Any, Any]]:
    """Every node's keyring, once they all agree (and no term the attacker asked for)."""

    def settled() -> list[tuple[str, Any, Any]] | None:
        status = [cluster.node_status(i) for i in cluster.ids]
        assert all(s["term"] < ATTACK_TERM for s in status), "an attacker's vote counted"
        rows = sorted((s["node_id"], s["primary_version"], [v["id"] for v in s["versions"]])
                      for s in status)
        return rows if len({repr(r[1:]) for r in rows}) == 1 and rows[0][1] else None

    return wait_for(settled, what="every node to hold the same keyring")


def _refusals(cluster: Cluster, node_id: str) -> list[str]:
    return [line for line in cluster.log(node_id).splitlines()
            if "refused a Raft peer connection" in line]


def _client_ctx(cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # an attacker does not care who answers
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def _listening(pid: int) -> tuple[set[tuple[str, int]], int]:
    """The TCP addresses a process listens on, and how many Unix sockets it listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    tcp: set[tuple[str, int]] = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            ip_hex, port_hex = local.split(":")
            raw = bytes.fromhex(ip_hex)  # 32-bit words in host order (little-endian)
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = str(ipaddress.ip_address(words))
            tcp.add((ip, int(port_hex, 16)))
    unix = 0
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[3], 16) & 0x10000 and fields[6] in inodes:  # __SO_ACCEPTCON
            unix += 1
    return tcp, unix


def _all_serving(cluster: Cluster) -> None:
    """Every node answers on its service address (so it has bound all of its ports)."""
    wait_for(lambda: all(cluster.node_status(i) for i in cluster.ids),
             what="every node to serve")


def _configured(cfg: NodeConfig) -> set[tuple[str, int]]:
    addresses = [cfg.raft_address, cfg.service_address]
    if cfg.metrics_address is not None:
        addresses.append(cfg.metrics_address)
    return {split_address(a) for a in addresses}


# -- the cluster with peer TLS --------------------------------------------------------------


def test_peer_tls_is_the_default_and_the_cluster_agrees_rotates_and_fails_over(
        cluster: Cluster) -> None:
    assert all(_cfg(cluster, i).peer_tls for i in cluster.ids)
    assert cluster.rotate(now=True)["version"] == 2
    wait_for(lambda: all(cluster.node_status(i)["primary_version"] == 2 for i in cluster.ids),
             what="every node to apply the rotation")
    for node_id in cluster.ids:
        assert "Raft peer links: mutual TLS on" in cluster.log(node_id)

    old = cluster.leader()
    cluster.kill(old)
    new = cluster.leader(exclude=(old,))
    assert new != old
    assert cluster.rotate(now=True)["version"] == 3
    cluster.start(old)
    wait_for(lambda: all(cluster.node_status(i)["primary_version"] == 3 for i in cluster.ids),
             what="the restarted node to catch up over peer TLS")
    assert not any(_refusals(cluster, i) for i in cluster.ids)


def test_pysyncobj_binds_nothing_but_the_configured_addresses_are_listened_on(
        cluster: Cluster) -> None:
    _all_serving(cluster)
    for node_id in cluster.ids:
        cfg = _cfg(cluster, node_id)
        pid = cluster.procs[node_id].pid
        # raft_address (the TLS front, bound by its own thread: poll), service_address and
        # metrics_address: no port of pysyncobj's own, on 127.0.0.1 or anywhere else.
        wait_for(lambda cfg=cfg, pid=pid: _listening(pid)[0] >= _configured(cfg),
                 what=f"{node_id} to listen on every configured address")
        tcp, unix = _listening(pid)
        assert tcp == _configured(cfg), node_id
        assert unix == 0


def test_an_attacker_with_the_password_but_no_certificate_gets_nothing(
        cluster: Cluster) -> None:
    before = _state(cluster)
    leader = cluster.leader()
    cfg = _cfg(cluster, leader)
    password = cfg.cluster_secret().hex()
    member = next(p.raft_address for p in cfg.peers)
    host, port = split_address(cfg.raft_address)
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        assert _attack(sock, password, claim=member) is None
    wait_for(lambda: any("TLS handshake failed" in line for line in _refusals(cluster, leader)),
             what="the leader to log the refusal")
    assert _state(cluster) == before  # no vote, no command, no new member
    assert cluster.rotate(now=True)["version"] == 2


@pytest.mark.parametrize(("who", "logged"), [
    ("admin", "role 'admin'"),
    ("client", "role 'client'"),
    ("other-ca", "certificate not accepted"),
    ("node-not-a-member", "node 'node9' is not a current member"),
    ("no-certificate", "TLS handshake failed"),
])
def test_tls_peers_without_a_member_node_certificate_are_refused(
        cluster: Cluster, tmp_path: Path, who: str, logged: str) -> None:
    root = cluster.root
    ca = pki.Issued((root / "ca.pem").read_bytes(), read_private(root / "ca.key"))
    if who in ("admin", "client"):
        cert, key = root / f"{who}.pem", root / f"{who}.key"
    elif who == "other-ca":
        pki.write_pair(pki.issue(pki.create_ca("c-other"), "node2", "node",
                                 hosts=("127.0.0.1", "node2")),
                       cert := tmp_path / "other.pem", key := tmp_path / "other.key")
    elif who == "node-not-a-member":
        pki.write_pair(pki.issue(ca, "node9", "node", hosts=("127.0.0.1", "node9")),
                       cert := tmp_path / "node9.pem", key := tmp_path / "node9.key")
    else:
        cert = key = None  # type: ignore[assignment]
    before = _state(cluster)
    leader = cluster.leader()
    cfg = _cfg(cluster, leader)
    host, port = split_address(cfg.raft_address)
    member = next(p.raft_address for p in cfg.peers)
    with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
        try:
            tls: socket.socket | ssl.SSLSocket = _client_ctx(cert, key).wrap_socket(raw)
        except (ssl.SSLError, ConnectionError):
            tls = raw  # refused during the handshake already
        assert _attack(tls, cfg.cluster_secret().hex(), claim=member) is None
    wait_for(lambda: any(logged in line for line in _refusals(cluster, leader)),
             what=f"the leader to log the refusal ({logged})")
    assert _state(cluster) == before


def test_a_member_cannot_speak_as_another_member(cluster: Cluster) -> None:
    # node1's own certificate and the password: node3 lets it in as node1 and nothing else.
    cfg1, cfg2, cfg3 = (_cfg(cluster, i) for i in ("node1", "node2", "node3"))
    fernet = getEncryptor(cfg1.cluster_secret().hex())
    host, port = split_address(cfg3.raft_address)
    ctx = _client_ctx(cfg1.cert, cfg1.key)
    before = _state(cluster)
    with socket.create_connection((host, port), timeout=TIMEOUT) as raw, \
            ctx.wrap_socket(raw) as tls:
        our_key = os.urandom(32)
        tls.sendall(_frame(fernet, our_key))
        answer = _first_message(tls, fernet)
        assert isinstance(answer, tuple) and answer[0] == our_key  # authenticated as node1
        tls.sendall(_frame(fernet, cfg2.raft_address, rand_key=answer[1]))
        assert _first_message(tls, fernet) is None  # closed: node1 is not node2
    wait_for(lambda: f"introduced itself as {cfg2.raft_address}" in cluster.log("node3"),
             what="node3 to log the impersonation")
    assert _state(cluster) == before


def test_a_second_member_joins_a_one_node_cluster_over_peer_tls(tmp_path: Path) -> None:
    # The new member is in Raft before its directory record can commit, and that commit
    # needs the new member itself: the leader admits it as the member it is adding.
    cluster = Cluster(tmp_path / "deploy", nodes=1)
    try:
        cluster.start()
        cluster.wait_healthy()
        # Ports of our own: the default (after node1's) may be taken by another test.
        r = cli("init", str(cluster.root), "--join", "node2",
                "--base-port", str(free_base_port(3)))
        assert r.returncode == 0, r.stderr
        cluster.adopt("node2")  # admin.toml now lists node2
        cluster.start("node2")
        # With one member, adding a second needs the second to answer (or no quorum).
        wait_for(lambda: cluster.node_status("node2"), what="node2 to serve")
        address = _cfg(cluster, "node2").raft_address
        r = cli("-c", str(cluster.admin_toml), "members", "add", "node2", address)
        assert r.returncode == 0, (r.stderr, cluster.log("node1"), cluster.log("node2"))
        assert cluster.rotate(now=True)["version"] == 2
        wait_for(lambda: cluster.node_status("node2")["primary_version"] == 2,
                 what="the new member to receive the rotation")
        r = cli("-c", str(cluster.admin_toml), "members", "--json")
        assert [m["id"] for m in json.loads(r.stdout)["members"]] == ["node1", "node2"]
    finally:
        cluster.close()


# -- the password-only fallback --------------------------------------------------------------


def test_the_password_only_fallback_still_runs_a_cluster(
        fallback_cluster: Cluster) -> None:
    cluster = fallback_cluster
    assert not any(_cfg(cluster, i).peer_tls for i in cluster.ids)
    _all_serving(cluster)
    for node_id in cluster.ids:
        assert "peer_tls is off" in cluster.log(node_id)
        tcp, _ = _listening(cluster.procs[node_id].pid)
        assert tcp == _configured(_cfg(cluster, node_id))  # pysyncobj on raft_address only
    assert cluster.rotate(now=True)["version"] == 2
    old = cluster.leader()
    cluster.kill(old)
    cluster.leader(exclude=(old,))
    assert cluster.rotate(now=True)["version"] == 3
    cluster.start(old)
    wait_for(lambda: all(cluster.node_status(i)["primary_version"] == 3 for i in cluster.ids),
             what="every node to apply the rotations")

    # Why it is only a fallback: the password alone gets pysyncobj's answer (the node's key
    # for the session), where peer TLS gives nothing.
    leader = cluster.leader()
    cfg = _cfg(cluster, leader)
    fernet = getEncryptor(cfg.cluster_secret().hex())
    with socket.create_connection(split_address(cfg.raft_address), timeout=TIMEOUT) as sock:
        our_key = os.urandom(32)
        sock.sendall(_frame(fernet, our_key))
        answer = _first_message(sock, fernet)
    assert isinstance(answer, tuple) and answer[0] == our_key  # (our key, the node's key)
    # pysyncobj's own frame cap still protects this mode.
    with socket.create_connection(split_address(cfg.raft_address), timeout=TIMEOUT) as sock:
        sock.sendall(struct.pack("i", 256 << 20))
        assert _first_message(sock, fernet) is None
    wait_for(lambda: "announced a 268435456-byte frame" in cluster.log(leader),
             what="the oversized peer frame to be refused and logged")
