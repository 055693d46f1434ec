"""Bad input is refused with a clear error or a closed connection; the node stays up and
keeps its data."""

from __future__ import annotations

import os
import pickle
import socket
import ssl
import struct
from pathlib import Path

import pytest

from raftsso import pki
from raftsso.config import split_address
from raftsso.errors import PermissionDenied
from raftsso.remote import Connection
from raftsso.wire import encode_frame, read_frame
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.integration


def _ctx(cluster: Cluster, role: str) -> ssl.SSLContext:
    r = cluster.root
    if role == "node":
        return pki.client_context(r / "ca.pem", r / "node1" / "node.pem", r / "node1" / "node.key")
    return pki.client_context(r / "ca.pem", r / f"{role}.pem", r / f"{role}.key")


def _tls(cluster: Cluster, node_id: str, role: str = "admin") -> ssl.SSLSocket:
    host, port = split_address(cluster.address(node_id))
    raw = socket.create_connection((host, port), timeout=10)
    return _ctx(cluster, role).wrap_socket(raw, server_hostname=host)


def _request(sock: ssl.SSLSocket, payload: bytes) -> dict[str, object] | None:
    """Send raw bytes; return the answer frame, or None if the node closed the connection."""
    sock.sendall(payload)
    try:
        return read_frame(sock)
    except (ConnectionError, OSError):
        return None


def _assert_still_serving(cluster: Cluster, node_id: str, primary: int = 1) -> None:
    # A follower may apply the first secret a moment after the leader reports it.
    wait_for(lambda: cluster.node_status(node_id)["primary_version"] == primary,
             what=f"{node_id} to serve primary version {primary}")
    assert cluster.alive(node_id)


def _error_code(answer: dict[str, object] | None) -> str | None:
    if answer is None:
        return None
    assert answer["ok"] is False
    err = answer["error"]
    assert isinstance(err, dict)
    assert err["message"]  # says what is wrong
    return str(err["code"])


def test_garbage_bytes_get_an_error_and_the_node_keeps_serving(cluster: Cluster) -> None:
    with _tls(cluster, "node1") as s:
        answer = _request(s, struct.pack(">I", 16) + os.urandom(16))
    assert _error_code(answer) in ("BAD_FRAME", None)
    _assert_still_serving(cluster, "node1")


def test_an_oversized_frame_is_refused_before_it_is_read(cluster: Cluster) -> None:
    with _tls(cluster, "node1") as s:
        # Announce 512 MiB and send nothing more: the node must not wait for or buffer it.
        answer = _request(s, struct.pack(">I", 512 << 20))
    assert _error_code(answer) == "FRAME_TOO_LARGE"
    _assert_still_serving(cluster, "node1")


def test_wrong_format_version_is_refused(cluster: Cluster) -> None:
    frame = bytearray(encode_frame({"id": 1, "op": "status", "args": {}}))
    frame[4] = 99
    with _tls(cluster, "node1") as s:
        assert _error_code(_request(s, bytes(frame))) == "BAD_FRAME"
    _assert_still_serving(cluster, "node1")


@pytest.mark.parametrize("message", [
    {"id": "one", "op": "status", "args": {}},
    {"id": 1, "op": 7, "args": {}},
    {"id": 1, "op": "status", "args": [1, 2]},
    {"id": 1, "op": "rotate", "args": {"request_id": "not-bytes", "now": "yes"}},
])
def test_well_formed_frames_with_wrong_types_are_refused(
        cluster: Cluster, message: dict[str, object]) -> None:
    with _tls(cluster, "node1") as s:
        assert _error_code(_request(s, encode_frame(message))) == "BAD_REQUEST"
    _assert_still_serving(cluster, "node1")


def test_unknown_operation(cluster: Cluster) -> None:
    with _tls(cluster, "node1") as s:
        answer = _request(s, encode_frame({"id": 5, "op": "drop_tables", "args": {}}))
    assert _error_code(answer) == "UNKNOWN_OP"


def _keyring_over(ctx: ssl.SSLContext, address: str) -> None:
    """Ask for the keyring; raise if the node refuses (TLS 1.3 reports a refused client
    certificate on the first read, not in the handshake)."""
    host, port = split_address(address)
    with socket.create_connection((host, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as s:
        s.sendall(encode_frame({"id": 1, "op": "keyring", "args": {}}))
        if not s.recv(1):
            raise ConnectionError("closed")


def test_a_tls_client_without_a_certificate_is_refused(cluster: Cluster) -> None:
    ctx = ssl.create_default_context(cafile=str(cluster.root / "ca.pem"))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _keyring_over(ctx, cluster.address("node1"))
    _assert_still_serving(cluster, "node1")


def test_a_certificate_from_another_ca_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    other = Cluster(tmp_path / "other")  # a second deployment, never started
    ctx = pki.client_context(cluster.root / "ca.pem", other.root / "admin.pem",
                             other.root / "admin.key")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _keyring_over(ctx, cluster.address("node1"))
    _assert_still_serving(cluster, "node1")


@pytest.mark.parametrize("role", ["client", "node"])
def test_a_non_admin_certificate_may_not_rotate(cluster: Cluster, role: str) -> None:
    leader = cluster.leader()
    endpoint = next(n for n in cluster.client.nodes if n.id == leader)
    conn = Connection(endpoint, _ctx(cluster, role), 10)
    try:
        with pytest.raises(PermissionDenied, match="may not call rotate"):
            conn.call("rotate", {"request_id": b"x" * 16, "now": True})
        if role == "client":
            assert conn.call("keyring")["primary"] == 1  # reading is its right
    finally:
        conn.close()
    _assert_still_serving(cluster, leader)


def test_plain_tcp_to_the_service_port_is_dropped(cluster: Cluster) -> None:
    host, port = split_address(cluster.address("node1"))
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(64))
        s.settimeout(10)
        try:
            data = s.recv(4096)
        except (ConnectionError, OSError):
            data = b""
        assert b"HTTP" not in data
    _assert_still_serving(cluster, "node1")


def _raft_port(cluster: Cluster, node_id: str) -> tuple[str, int]:
    from raftsso.config import load_node_config

    return split_address(load_node_config(cluster.node_toml(node_id)).raft_address)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["pickle", "garbage", "huge"])
def test_raw_bytes_to_the_raft_port_are_refused(cluster: Cluster, tmp_path: Path,
                                                kind: str) -> None:
    marker = tmp_path / "pwned"
    payloads = {
        "pickle": pickle.dumps(_Exploit(marker), protocol=2),
        "garbage": os.urandom(4096),
        "huge": b"",
    }
    body = payloads[kind]
    frame = struct.pack("i", 256 << 20) + body if kind == "huge" else \
        struct.pack("i", len(body)) + body
    leader = cluster.leader()
    host, port = _raft_port(cluster, leader)
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(frame)
        if kind != "huge":
            # Also the unencrypted form pysyncobj would accept without a password.
            s.sendall(struct.pack("i", len(body)) + body)
        s.settimeout(10)
        try:
            while s.recv(65536):
                pass  # the node closes the connection
        except (ConnectionError, OSError):
            pass
    assert not marker.exists(), "a pickle sent to the Raft port was executed"
    if kind == "huge":
        # With peer TLS (the default) the bytes never reach pysyncobj: the TLS front refuses
        # them (pysyncobj's own frame cap is tested in test_peer_tls's fallback test).
        wait_for(lambda: "refused a Raft peer connection" in cluster.log(leader),
                 what="the non-TLS bytes on the Raft port to be refused and logged")
    _assert_still_serving(cluster, leader)
    assert cluster.rotate(now=True)["version"] == 2  # Raft still works
    wait_for(lambda: all(cluster.node_status(i)["primary_version"] == 2 for i in cluster.ids),
             what="the rotation on every node")
