"""Attacks on the rotate's event-loop path (raftsso.connection with
raftsso.node.write_path ``rotate_async``): the connection's socket stays watched while the
rotate waits for Raft, so a client can pipeline behind it, close under it, send garbage
after it, or never read. On a real one-node cluster over real TLS: answers keep their ids
and order, a rotate is applied at most once, the write lock is never left held, a non-admin
certificate is refused whatever its request claims, and the node stays up."""

from __future__ import annotations

import json
import os
import secrets
import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raftsso import pki
from raftsso.config import split_address
from raftsso.wire import MAX_FRAME, encode_frame, read_frame
from tests.harness import Cluster, NodeOptions, sent_until_dropped, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root: Path = tmp_path_factory.mktemp("rotattack") / "deploy"
    with Cluster(root, nodes=1, options=NodeOptions(idle_timeout=2.0, read_timeout=1.0)) as c:
        c.start()
        c.wait_healthy()
        yield c


def _tls(cluster: Cluster, role: str = "admin", small: bool = False) -> ssl.SSLSocket:
    host, port = split_address(cluster.address("node1"))
    raw = socket.socket()
    if small:  # a slow reader: small buffers fill at once
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    raw.settimeout(10)
    raw.connect((host, port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    r = cluster.root
    ctx = pki.client_context(r / "ca.pem", r / f"{role}.pem", r / f"{role}.key")
    return ctx.wrap_socket(raw, server_hostname=host)


def _rotate(rid: int, request_id: bytes, **extra: Any) -> bytes:
    return encode_frame({"id": rid, "op": "rotate",
                         "args": {"request_id": request_id, "now": True, **extra}})


def _primary(cluster: Cluster) -> int:
    # The harness client may reuse a connection the node has since closed (idle_timeout
    # is 2 s here): wait_for takes that ConnectionError as "not yet".
    status = wait_for(lambda: cluster.node_status("node1"), 10, what="node1's status")
    return int(status["primary_version"])


def _rotate_on(cluster: Cluster, request_id: bytes | None = None) -> int:
    """A rotation on node1, retried over a fresh connection (same request id: once)."""
    rid = request_id or secrets.token_bytes(16)
    result = wait_for(lambda: cluster.rotate_on("node1", request_id=rid, timeout=30), 30,
                      what="a rotation on node1")
    return int(result["version"])


def _read(sock: ssl.SSLSocket) -> Any:
    """One answer frame (typed loosely: the tests index into it)."""
    return read_frame(sock)


def _read_until_closed(sock: ssl.SSLSocket, limit: int = 10) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    for _ in range(limit):
        try:
            answers.append(_read(sock))
        except (ConnectionError, OSError, EOFError):
            return answers
    raise AssertionError(f"the node kept the connection open: {answers}")


def test_rotate_then_many_pipelined_frames_and_a_retry_keep_order_and_apply_once(
        single: Cluster) -> None:
    before = _primary(single)
    request_id = secrets.token_bytes(16)
    pings = b"".join(encode_frame({"id": i, "op": "ping", "args": {}}) for i in range(2, 302))
    with _tls(single) as sock:
        # One write: rotate, 300 pings, the same rotate again (a retry), a keyring read.
        sock.sendall(_rotate(1, request_id) + pings + _rotate(302, request_id)
                     + encode_frame({"id": 303, "op": "keyring", "args": {}}))
        answers = [_read(sock) for _ in range(303)]
    assert [a["id"] for a in answers] == list(range(1, 304))
    assert all(a["ok"] is True for a in answers), [a for a in answers if not a["ok"]][:3]
    version = answers[0]["result"]["version"]
    assert version == before + 1
    assert answers[301]["result"]["version"] == version  # the retry: remembered, not applied
    assert answers[302]["result"]["primary"] == version
    assert _primary(single) == version


def test_closing_right_after_a_rotate_leaves_no_write_lock_held_and_no_double_apply(
        single: Cluster) -> None:
    before = _primary(single)
    ids = [secrets.token_bytes(16) for _ in range(5)]
    for request_id in ids:
        sock = _tls(single)
        sock.sendall(_rotate(1, request_id) + encode_frame({"id": 2, "op": "ping", "args": {}}))
        sock.close()  # before any answer: the node may cancel the waiting coroutine
    # A rotate on another connection gets through (the lock is not held for good) ...
    last = _rotate_on(single)
    # ... and every abandoned rotate, retried, was applied exactly once or now is.
    versions = {_rotate_on(single, r) for r in ids}
    assert len(versions) == len(ids)  # each request id its own version
    assert last not in versions
    assert _primary(single) == before + len(ids) + 1
    assert single.alive("node1")


@pytest.mark.parametrize("tail", ["garbage", "oversized", "empty"])
def test_a_bad_frame_right_after_a_rotate_gets_the_rotate_answered_then_an_error(
        single: Cluster, tail: str) -> None:
    before = _primary(single)
    bad = {"garbage": struct.pack(">I", 16) + os.urandom(16),
           "oversized": struct.pack(">I", MAX_FRAME * 4) + b"x" * 64,
           "empty": struct.pack(">I", 0)}[tail]
    with _tls(single) as sock:
        sock.sendall(_rotate(9, secrets.token_bytes(16)) + bad)
        answers = _read_until_closed(sock)
    assert answers and answers[0]["id"] == 9 and answers[0]["ok"] is True, answers
    assert answers[0]["result"]["version"] == before + 1
    assert len(answers) == 2, answers  # then exactly one error, then the connection ends
    assert answers[1]["ok"] is False
    assert answers[1]["error"]["code"] in ("BAD_FRAME", "FRAME_TOO_LARGE"), answers[1]
    assert _primary(single) == before + 1  # durable: what the answer said
    assert single.alive("node1")


@pytest.mark.parametrize("op", ["rotate", "retire"])
def test_a_client_certificate_claiming_to_be_the_admin_is_forbidden(
        single: Cluster, op: str) -> None:
    before = _primary(single)
    claims: dict[str, Any] = {"client_id": "admin", "node_id": "node1", "role": "admin",
                              "name": "admin"}
    args: dict[str, Any] = ({"request_id": secrets.token_bytes(16), "now": True} if op == "rotate"
            else {"request_id": secrets.token_bytes(16), "version": 1})
    frames = (encode_frame({"id": 5, "op": op, "args": {**args, **claims}, **claims})
              + encode_frame({"id": 6, "op": "ping", "args": {}}))
    with _tls(single, role="client") as sock:
        sock.sendall(frames)
        refused, ping = _read(sock), _read(sock)
    assert refused["id"] == 5 and refused["ok"] is False
    assert refused["error"]["code"] == "FORBIDDEN", refused
    assert ping["id"] == 6 and ping["ok"] is True  # the connection serves on
    assert _primary(single) == before
    # version 1 not retired by a client
    assert 1 in wait_for(lambda: single.keyring("node1"), 10, what="the keyring")


def test_a_slow_reader_pipelining_behind_a_rotate_is_dropped_not_buffered(
        single: Cluster) -> None:
    before = _primary(single)
    with _tls(single, small=True) as sock:
        sock.settimeout(0.5)
        # keyring answers are the largest a client can ask for; status pads the requests.
        frame = encode_frame({"id": 2, "op": "keyring", "args": {"pad": "x" * 4000}})
        sock.sendall(_rotate(1, secrets.token_bytes(16)))
        wait_for(lambda: sent_until_dropped(sock, frame), 60, interval=0.5,
                 what="the node to drop a client that never reads")
    assert single.alive("node1")
    wait_for(lambda: _primary(single) == before + 1, 30, what="the rotate applied once")
    assert _rotate_on(single) == before + 2


def test_a_rotate_whose_outcome_is_unknown_while_other_rotates_wait_does_not_deadlock(
        tmp_path: Path) -> None:
    """Found by this attack: a rotate on the loop path whose commit is not heard (the
    leader lost its followers) is resolved in a worker thread while it holds the write
    lock. Rotates from other connections wait for that lock in workers of the same pool
    (asyncio.to_thread); with as many of them as the pool has workers, the resolution never
    got a worker, the lock was never released, and every connection hung for good."""
    with Cluster(tmp_path / "deploy", nodes=3) as cluster:
        cluster.start()
        leader = cluster.leader()
        cluster.rotate()  # the leader is past its barrier, the write path warm
        followers = [n for n in ("node1", "node2", "node3") if n != leader]
        r = cluster.root
        host, port = split_address(cluster.address(leader))
        ctx = pki.client_context(r / "ca.pem", r / "admin.pem", r / "admin.key")
        conns = []
        for _ in range(12):  # more than the default pool's workers (min(32, cpus + 4))
            raw = socket.create_connection((host, port), timeout=10)
            conns.append(ctx.wrap_socket(raw, server_hostname=host))
        try:
            for sock in conns:  # handshakes done, connections live
                sock.sendall(encode_frame({"id": 1, "op": "ping", "args": {}}))
                assert _read(sock)["ok"] is True
            ids = [secrets.token_bytes(16) for _ in conns]
            cluster.pause(*followers)
            for sock, request_id in zip(conns, ids, strict=True):
                sock.sendall(_rotate(2, request_id))
            answers = []
            for sock in conns:  # each answered (whatever the answer), none hangs
                sock.settimeout(60)
                answers.append(_read(sock))
            assert [a["id"] for a in answers] == [2] * len(conns)
        finally:
            cluster.resume(*followers)
            for sock in conns:
                sock.close()
        cluster.wait_healthy()
        # Retried, each request id is applied at most once: its own version.
        versions = [cluster.rotate(request_id=rid)["version"] for rid in ids]
        assert len(set(versions)) == len(ids), versions
        assert cluster.rotate()["version"] == max(versions) + 1


def _audited_rotations(cluster: Cluster) -> list[dict[str, Any]]:
    path = cluster.root / "node1" / "data" / "audit.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [a for a in lines if a.get("kind") == "request" and a.get("op") == "rotate"]


def test_a_rotate_whose_client_hangs_up_is_still_audited(single: Cluster) -> None:
    """Closing the connection right after sending a rotate must not cancel its handler:
    the rotation is applied (a new primary) and must then be on record. (It is: a busy
    connection stops watching its socket, so the hang-up is seen only after the answer.)"""
    before = _primary(single)
    audited = len(_audited_rotations(single))
    sock = _tls(single)
    sock.sendall(_rotate(1, secrets.token_bytes(16)))
    sock.close()  # no answer read: the node finds the connection closed
    wait_for(lambda: _primary(single) == before + 1, 30, what="the rotation applied")
    wait_for(lambda: len(_audited_rotations(single)) == audited + 1, 30,
             what="the applied rotation's audit line")
