"""The service port's connection handling (raftsso.connection): frames however the bytes
arrive, pipelined requests answered in order across a write that waits for Raft, and the
idle and read time limits, on a real one-node cluster over real TLS."""

from __future__ import annotations

import secrets
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftsso import pki
from raftsso.config import split_address
from raftsso.wire import encode_frame, read_frame
from tests.harness import Cluster, NodeOptions, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root: Path = tmp_path_factory.mktemp("conn") / "deploy"
    with Cluster(root, nodes=1, options=NodeOptions(idle_timeout=2.0, read_timeout=1.0)) as c:
        c.start()
        c.wait_healthy()
        yield c


def _tls(cluster: Cluster, role: str = "admin") -> ssl.SSLSocket:
    host, port = split_address(cluster.address("node1"))
    raw = socket.create_connection((host, port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    r = cluster.root
    ctx = pki.client_context(r / "ca.pem", r / f"{role}.pem", r / f"{role}.key")
    return ctx.wrap_socket(raw, server_hostname=host)


def _closed_by_node(sock: ssl.SSLSocket) -> bool:
    """True once the node closed the connection (EOF or reset); False while it is open."""
    sock.settimeout(0.2)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except (ssl.SSLError, OSError):
        return True


def test_pipelined_requests_are_answered_in_order(single: Cluster) -> None:
    frames = b"".join(encode_frame({"id": i, "op": op, "args": {}})
                      for i, op in enumerate(["ping", "status", "keyring", "ping"], 1))
    with _tls(single) as sock:
        sock.sendall(frames)  # one write: the node reads them in one go
        answers = [read_frame(sock) for _ in range(4)]
    assert [a["id"] for a in answers] == [1, 2, 3, 4]
    assert all(a["ok"] is True for a in answers), answers


def test_a_frame_sent_byte_by_byte_is_answered(single: Cluster) -> None:
    frame = encode_frame({"id": 7, "op": "ping", "args": {}})
    with _tls(single) as sock:
        for i in range(len(frame)):
            sock.sendall(frame[i:i + 1])  # one TLS record per byte
        answer = read_frame(sock)
    assert answer["id"] == 7 and answer["ok"] is True


def test_a_write_then_pipelined_reads_keep_their_order(single: Cluster) -> None:
    rotate = encode_frame({"id": 1, "op": "rotate",
                           "args": {"request_id": secrets.token_bytes(16), "now": True}})
    after = b"".join(encode_frame({"id": i, "op": "keyring", "args": {}}) for i in (2, 3))
    with _tls(single) as sock:
        sock.sendall(rotate + after)  # the rotate waits for Raft; the reads wait behind it
        first, second, third = (read_frame(sock) for _ in range(3))
    assert first["id"] == 1 and first["ok"] is True, first
    version = first["result"]["version"]
    for answer, rid in ((second, 2), (third, 3)):
        assert answer["id"] == rid and answer["ok"] is True, answer
        assert answer["result"]["primary"] == version  # read after the write it follows


def test_a_stalled_frame_body_is_closed_after_read_timeout(single: Cluster) -> None:
    frame = encode_frame({"id": 1, "op": "ping", "args": {}})
    with _tls(single) as sock:
        sock.sendall(frame[:-3])  # the length and part of the body: then nothing
        wait_for(lambda: _closed_by_node(sock), 15, interval=0.1,
                 what="the node to close a connection stalled mid-frame")
    with _tls(single) as sock:  # the node serves on
        sock.sendall(frame)
        assert read_frame(sock)["ok"] is True


def test_an_idle_connection_is_closed_and_a_busy_one_is_not(single: Cluster) -> None:
    ping = encode_frame({"id": 1, "op": "ping", "args": {}})
    with _tls(single) as idle, _tls(single) as busy:
        # The busy one asks something every 0.2 s, far inside idle_timeout (2 s), until the
        # idle one is closed: each request moves its deadline.
        def idle_closed() -> bool:
            busy.settimeout(10)
            busy.sendall(ping)
            assert read_frame(busy)["ok"] is True
            return _closed_by_node(idle)

        wait_for(idle_closed, 20, interval=0.2, what="the node to close an idle connection")
        busy.settimeout(10)
        busy.sendall(ping)
        assert read_frame(busy)["ok"] is True
