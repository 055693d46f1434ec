"""Fuzzing the node's request handling: ``Service.handle`` and the TLS frame loop, in-process.

One real node (a single-member cluster, so it leads and every write path runs: Raft,
fsync, the state machine) serves on a real mutual-TLS port, in this process. Hypothesis
sends it

* ``Service.handle(caller, message)`` directly, with every role and messages shaped like
  requests (every op, its argument names with wild values, and arbitrary maps), each
  message first round-tripped through the wire codec so that it is something a client can
  really send;
* raw frames over live TLS connections (client and admin certificates): valid requests,
  arbitrary bodies, bad version bytes, bad lengths.

Every answer must be a well-formed frame: ``{"id", "ok": true, "result"}`` or
``{"id", "ok": false, "error": {"code", "message"}}`` with a code from
:data:`ANSWER_CODES`; a role that may not call an op gets ``FORBIDDEN``; nothing a client
sends may come back as ``FAILED``/``INTERNAL`` (an unexpected error) or ``BAD_COMMAND``
(input that got past the service's checks into the replicated log). After the run the
node still answers and its keyring keeps its invariants.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftsso import envelope, pki, wire
from raftsso.config import load_node_config, load_remote_config
from raftsso.deployment import init_deployment
from raftsso.errors import DecodeError
from raftsso.keyring import KeyState
from raftsso.node import Node
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.messages import RotateRequest
from raftsso.runner import build_node
from raftsso.server import ADMIN_ROLES, NODE_ROLES, READ_ROLES, Caller, Server, Service
from tests.harness import free_base_port

SCALE = float(os.environ.get("RAFTSSO_FUZZ_SCALE", "1"))

# Every code the service may answer a client's input with: the protocol's ErrorCode, but
# for an unexpected error (FAILED/INTERNAL), input that got past the service's checks into
# the replicated log (BAD_COMMAND) and ERROR (the client's name for a code it does not know).
NEVER_FOR_CLIENT_INPUT = frozenset({"FAILED", "INTERNAL", "BAD_COMMAND"})
ANSWER_CODES = frozenset(ErrorCode) - NEVER_FOR_CLIENT_INPUT - {ErrorCode.ERROR}
ROLES_OF = {"ping": READ_ROLES, "status": READ_ROLES, "keyring": READ_ROLES,
            "rotate": ADMIN_ROLES, "retire": ADMIN_ROLES, "backed_up": ADMIN_ROLES,
            "restore": ADMIN_ROLES, "clients": NODE_ROLES, "transfer_leader": ADMIN_ROLES,
            "members": READ_ROLES, "member_add": ADMIN_ROLES, "member_remove": ADMIN_ROLES}


def examples(n: int) -> Any:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


class Running:
    def __init__(self, root: Path) -> None:
        base = free_base_port(3)
        init_deployment(root, nodes=1, base_port=base)
        self.root = root
        self.cfg = load_node_config(root / "node1" / "node.toml")
        self.node = build_node(self.cfg)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = Server(self.node)
        self.service: Service = self.server.service

    def start(self) -> None:
        self.node.start()
        self.thread.start()
        self.run(self.server.start())
        deadline = time.monotonic() + 30
        while not (self.node.ready_for_writes and self.node.fsm.keyring.bootstrapped):
            assert time.monotonic() < deadline, "the single node did not become ready"
            time.sleep(0.02)

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.server.close(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.node.stop()

    def context(self, role: str) -> ssl.SSLContext:
        cfg = load_remote_config(self.root / f"{role}.toml")
        return pki.client_context(cfg.ca_cert, cfg.cert, cfg.key)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = Running(tmp_path_factory.mktemp("fuzz-node"))
    r.start()
    try:
        yield r
    finally:
        r.stop()


# -- strategies ------------------------------------------------------------------------------

ints = st.one_of(st.integers(-(2**63), 2**64 - 1),
                 st.sampled_from([0, 1, 2, -1, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1]))
scalars = st.one_of(st.none(), st.booleans(), ints,
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=16),
                    st.binary(max_size=40), st.binary(min_size=16, max_size=16))
wild = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                 st.dictionaries(st.text(max_size=8), c,
                                                                 max_size=3)),
                    max_leaves=8)
KEY = os.urandom(32)
restore_versions = st.lists(st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.integers(0, 5), ints, scalars),
    "key": st.one_of(st.just(KEY), scalars),
    "fingerprint": st.one_of(st.just(envelope.fingerprint(KEY)), scalars),
    "created": st.one_of(st.floats(allow_nan=True, allow_infinity=True), ints, scalars)}),
    max_size=3)
# Addresses that fail fast (no DNS lookups, no connection that hangs).
addresses = st.one_of(st.sampled_from(["127.0.0.1:1", "127.0.0.1:0", "[::1]:1", "bad", "",
                                       ":1", "127.0.0.1:99999", "0.0.0.0:1"]),
                      st.from_regex(r"127\.0\.0\.1:[0-9]{1,5}", fullmatch=True))
ARG_VALUES: dict[str, Any] = {
    "request_id": st.one_of(st.binary(min_size=16, max_size=16), scalars),
    "now": st.one_of(st.booleans(), scalars),
    "expect_primary": st.one_of(st.integers(0, 6), ints, scalars),
    "version": st.one_of(st.integers(0, 6), ints, scalars),
    "client_id": st.one_of(st.text(max_size=70), scalars),
    "require_leader": st.one_of(st.booleans(), scalars),
    "fingerprints": st.one_of(st.dictionaries(
        st.one_of(st.sampled_from(["1", "2", "3", "0", "99999999999999999999", "-1", "1.5"]),
                  st.text(max_size=4)), st.one_of(st.text(max_size=16), scalars), max_size=3),
        wild),
    "cluster_id": st.one_of(st.text(max_size=20), scalars),
    "versions": st.one_of(restore_versions, wild),
    "primary": st.one_of(st.integers(0, 6), ints, scalars),
    "force": st.one_of(st.booleans(), scalars),
    "node_id": st.one_of(st.sampled_from(["node1", "node2", "node9", ""]),
                         st.text(max_size=70), scalars),
    "raft_address": st.one_of(addresses, scalars),
    "service_address": st.one_of(addresses, scalars),
}
request_messages = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(0, 2**63 - 1), ints, scalars),
     "op": st.one_of(st.sampled_from(sorted(ROLES_OF)), st.text(max_size=70), scalars),
     "args": st.one_of(st.fixed_dictionaries({}, optional=ARG_VALUES), wild)},
    optional={"extra": wild})
messages = st.one_of(request_messages, st.dictionaries(st.text(max_size=8), wild, max_size=4))
roles = st.sampled_from(["client", "admin", "node", "", "operator"])


def _through_the_wire(message: Any) -> dict[str, Any] | None:
    try:
        return wire.decode_body(wire.versioned(wire.WIRE_FORMAT, message))
    except (DecodeError, TypeError, ValueError, OverflowError):
        return None


def _check_answer(message: dict[str, Any], role: str, answer: Any) -> None:
    assert isinstance(answer, dict) and isinstance(answer.get("ok"), bool), answer
    wire.encode_frame(answer, max_frame=1 << 24)  # the server must be able to send it
    rid = message.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < 2**63:
        assert answer["id"] == rid
    if answer["ok"]:
        assert "result" in answer
        op = message.get("op")
        assert role in ROLES_OF.get(op, frozenset()), f"{role} was allowed to call {op}"
        return
    err = answer["error"]
    assert isinstance(err, dict) and isinstance(err.get("message"), str), answer
    code = err.get("code")
    op = message.get("op")
    assert code not in NEVER_FOR_CLIENT_INPUT, (message, answer)
    assert code in ANSWER_CODES, (message, answer)
    if code not in ("BAD_REQUEST", "UNKNOWN_OP") and op in ROLES_OF and role not in ROLES_OF[op]:
        assert code == "FORBIDDEN", (message, answer)


def _invariants(node: Node) -> None:
    ring = node.fsm.keyring
    ids = [v.id for v in ring.versions]
    assert ids == sorted(set(ids))
    assert sum(v.state is KeyState.PRIMARY for v in ring.versions) == 1


# -- Service.handle -----------------------------------------------------------------------------


@examples(1200)
@given(message=messages, role=roles)
def test_service_handle_answers_every_message(running: Running, message: Any,
                                              role: str) -> None:
    decoded = _through_the_wire(message)
    if decoded is None:
        return
    caller = Caller(role, f"fuzz-{role}", "127.0.0.1:9")
    answer = running.run(running.service.handle(caller, decoded))
    _check_answer(decoded, role, answer)
    _invariants(running.node)


# -- frames over live TLS ------------------------------------------------------------------------


class _Conn:
    def __init__(self, running: Running, role: str) -> None:
        self.ctx = running.context(role)
        host, port = running.cfg.service_address.rsplit(":", 1)
        self.address = (host, int(port))
        self.sock: ssl.SSLSocket | None = None

    def send(self, raw: bytes) -> dict[str, Any] | None:
        """Send raw bytes; return the answer frame, or None if the node closed the link."""
        if self.sock is None:
            raw_sock = socket.create_connection(self.address, timeout=10)
            self.sock = self.ctx.wrap_socket(raw_sock, server_hostname=self.address[0])
        try:
            self.sock.sendall(raw)
            answer = wire.read_frame(self.sock, 1 << 24)
        except (ConnectionError, ssl.SSLError, OSError, DecodeError):
            self.close()
            return None
        if not answer.get("ok") and answer.get("error", {}).get("code") in (
                "BAD_FRAME", "FRAME_TOO_LARGE", "BAD_REQUEST"):
            self.close()  # the server closes the connection after these
        return answer

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


@pytest.fixture(scope="module")
def connections(running: Running) -> Iterator[dict[str, _Conn]]:
    conns = {role: _Conn(running, role) for role in ("client", "admin")}
    yield conns
    for conn in conns.values():
        conn.close()


frames = st.one_of(
    request_messages.map(lambda m: ("message", m)),
    st.binary(max_size=60).map(lambda b: ("body", b)),
    st.tuples(st.integers(0, 255), st.binary(max_size=40)).map(lambda t: ("version", t)),
    st.integers(0, 2**32 - 1).map(lambda n: ("length", n)))


@examples(300)
@given(frame=frames, role=st.sampled_from(["client", "admin"]))
def test_tls_frames(running: Running, connections: dict[str, _Conn], frame: tuple[str, Any],
                    role: str) -> None:
    kind, value = frame
    conn = connections[role]
    message: dict[str, Any] | None = None
    if kind == "message":
        message = _through_the_wire(value)
        if message is None:
            return
        raw = wire.encode_frame(message, max_frame=1 << 24)
    elif kind == "body":
        raw = struct.pack(">I", len(value)) + value if value else struct.pack(">I", 0)
    elif kind == "version":
        body = bytes([value[0]]) + value[1]
        raw = struct.pack(">I", len(body)) + body
    else:
        if 0 < value <= running.cfg.max_frame:
            return  # a valid length with no body would only wait for read_timeout
        raw = struct.pack(">I", value)
    answer = conn.send(raw)
    if answer is None:
        # Only a malformed frame may end the connection without an answer... and even then
        # the server answers first; a closed link must leave the node serving.
        assert kind != "message", f"no answer to a well-formed frame {message!r}"
    elif message is not None:
        _check_answer(message, role, answer)
    else:
        assert answer["ok"] is False
        assert answer["error"]["code"] in ("BAD_FRAME", "FRAME_TOO_LARGE", "BAD_REQUEST",
                                           "UNKNOWN_OP", "FORBIDDEN"), answer
    # The node still serves a fresh connection.
    ping = wire.encode_frame({"id": 1, "op": "ping", "args": {}})
    pong = conn.send(ping) or conn.send(ping)  # the second on a new connection
    assert pong is not None and pong["ok"], pong


def _restore_args(running: Running, **overrides: Any) -> dict[str, Any]:
    version = {"id": 7, "key": KEY, "fingerprint": envelope.fingerprint(KEY), "created": 1.0}
    args = {"request_id": secrets.token_bytes(16), "cluster_id": running.cfg.cluster_id,
            "primary": None, "force": False, "versions": [version]}
    for key, value in overrides.items():
        if key.startswith("version_"):
            version[key[len("version_"):]] = value
        else:
            args[key] = value
    return args


@pytest.mark.parametrize("case", [
    "retire-version-2**32", "rotate-expect_primary-2**32", "rotate-expect_primary--1",
    "restore-primary-2**40", "restore-duplicate-ids", "restore-created-nan",
])
def test_out_of_range_fields_are_bad_requests(running: Running, case: str) -> None:
    rid = secrets.token_bytes(16)
    op, args = {
        "retire-version-2**32": ("retire", {"request_id": rid, "version": 2**32}),
        "rotate-expect_primary-2**32": ("rotate", {"request_id": rid, "now": True,
                                                   "expect_primary": 2**32}),
        "rotate-expect_primary--1": ("rotate", {"request_id": rid, "now": True,
                                                "expect_primary": -1}),
        "restore-primary-2**40": ("restore", _restore_args(running, primary=2**40)),
        "restore-duplicate-ids": ("restore", {**_restore_args(running), "versions": [
            {"id": 7, "key": KEY, "fingerprint": envelope.fingerprint(KEY), "created": 1.0}] * 2}),
        "restore-created-nan": ("restore", _restore_args(running, version_created=float("nan"))),
    }[case]
    before = running.node.raft.last_log_index
    answer = running.run(running.service.handle(Caller("admin", "fuzz", "127.0.0.1:9"),
                                                {"id": 5, "op": op, "args": args}))
    assert answer["ok"] is False
    assert answer["error"]["code"] == "BAD_REQUEST", answer
    assert running.node.raft.last_log_index == before, "a malformed request was replicated"


def test_node_is_healthy_after_the_fuzzing(running: Running) -> None:
    _invariants(running.node)
    assert running.node.raft.is_leader
    result = running.node.rotate(RotateRequest(now=True))
    assert result.state is KeyState.PRIMARY
