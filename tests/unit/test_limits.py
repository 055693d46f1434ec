"""Connection limits (raftsso.limits), [limits] in node.toml, and private key files."""

from __future__ import annotations

import asyncio
import math
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest

from raftsso import limits, pki
from raftsso.config import load_node_config, load_remote_config
from raftsso.deployment import init_deployment
from raftsso.errors import ConfigError
from raftsso.limits import (
    RESERVED_FDS,
    Gate,
    Limits,
    LimitsError,
    MemoryTrimmer,
    PortLimits,
    resolve_limits,
    source_of,
)

# -- the gate -----------------------------------------------------------------------------


def test_a_source_gets_at_most_max_per_source() -> None:
    gate = Gate("t", PortLimits(max_connections=10, max_pending=10, max_per_source=3))
    tickets = [gate.admit("10.0.0.1") for _ in range(3)]
    assert all(tickets)
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.2") is not None  # another source is not affected
    ticket = tickets[0]
    assert ticket is not None
    gate.release(ticket)
    assert gate.admit("10.0.0.1") is not None


def test_connections_beyond_the_total_are_refused_once_none_is_pending() -> None:
    gate = Gate("t", PortLimits(max_connections=4, max_pending=4, max_per_source=4))
    for source in ("a", "b", "c", "d"):
        ticket = gate.admit(source)
        assert ticket is not None
        gate.settled(ticket)
    assert gate.admit("e") is None
    assert gate.open == 4


def test_a_full_gate_drops_the_oldest_pending_of_the_busiest_source() -> None:
    gate = Gate("t", PortLimits(max_connections=100, max_pending=4, max_per_source=100))
    evicted: list[str] = []

    def admit(source: str, name: str) -> limits.Ticket:
        ticket = gate.admit(source)
        assert ticket is not None
        ticket.on_evict = lambda: evicted.append(name)
        return ticket

    admit("flood", "f1")
    admit("flood", "f2")
    real = admit("client", "c1")
    admit("flood", "f3")
    admit("client", "c2")  # pending slots full: the flood's oldest goes, not the client's
    assert evicted == ["f1"]
    admit("flood", "f4")
    assert evicted == ["f1", "f2"]
    gate.settled(real)  # handshake done: never evicted
    for i in range(5):
        admit("flood", f"g{i}")
    assert "c1" not in evicted
    assert gate.pending == 4


def test_eviction_makes_room_under_the_total_too() -> None:
    gate = Gate("t", PortLimits(max_connections=3, max_pending=3, max_per_source=3))
    done = gate.admit("a")
    assert done is not None
    gate.settled(done)
    stale = gate.admit("b")
    assert stale is not None
    gate.admit("b")
    assert gate.admit("c") is not None  # full: b's oldest pending one makes room
    assert stale.evicted and stale.released
    assert gate.open == 3
    gate.release(stale)  # its handler's own release later is a no-op
    assert gate.open == 3


def test_release_is_idempotent_and_counts_stay_exact() -> None:
    gate = Gate("t", PortLimits(5, 5, 5))
    tickets = [gate.admit("s") for _ in range(5)]
    for ticket in tickets:
        assert ticket is not None
        gate.release(ticket)
        gate.release(ticket)
        gate.settled(ticket)
    assert (gate.open, gate.pending) == (0, 0)
    assert all(gate.admit("s") for _ in range(5))


def test_refusals_are_reported_to_the_hook_and_as_rate_limited_events(
        caplog: pytest.LogCaptureFixture) -> None:
    reasons: list[str] = []
    gate = Gate("service", PortLimits(1, 1, 1), on_refused=reasons.append)
    with caplog.at_level("WARNING", logger="raftsso.events"):
        gate.admit("x")
        for _ in range(50):
            assert gate.admit("x") is None
    assert reasons == ["max_per_source"] * 50
    lines = [r.getMessage() for r in caplog.records if '"event_id":1510' in r.getMessage()]
    assert len(lines) == 1  # one line a minute per port and reason
    assert '"port":"service"' in lines[0] and '"reason":"max_per_source"' in lines[0]


def test_memory_trimmer_is_due_after_enough_connections_closed() -> None:
    gate = Gate("t", PortLimits(100, 100, 100))
    trimmer = MemoryTrimmer([gate], threshold=10)
    tickets = [gate.admit("s") for _ in range(20)]
    assert not trimmer.due()
    for ticket in tickets[:9]:
        assert ticket is not None
        gate.release(ticket)
    assert not trimmer.due()
    assert tickets[9] is not None
    gate.release(tickets[9])
    assert trimmer.due()
    assert not trimmer.due()  # measured again from here


def test_release_memory_runs() -> None:
    assert limits.release_memory() in (True, False)  # glibc: True; elsewhere a no-op


@pytest.mark.parametrize("address,source", [
    (("192.0.2.7", 5000), "192.0.2.7"),
    (("::ffff:192.0.2.7", 5000, 0, 0), "192.0.2.7"),
    (("2001:db8:1:2:aaaa::1", 5000, 0, 0), "2001:db8:1:2::/64"),
    (("2001:db8:1:2:bbbb::9", 6000, 0, 0), "2001:db8:1:2::/64"),
    (("fe80::1%eth0", 1, 0, 2), "fe80::/64"),
    ("", ""),
])
def test_source_of(address: Any, source: str) -> None:
    assert source_of(address) == source


# -- accept loop on a real socket --------------------------------------------------------


def test_accept_loop_closes_refused_connections_at_once() -> None:
    async def run() -> tuple[int, int]:
        gate = Gate("t", PortLimits(max_connections=2, max_pending=2, max_per_source=2))
        served: list[socket.socket] = []
        hold = asyncio.Event()

        async def serve(sock: socket.socket, address: Any, ticket: limits.Ticket) -> None:
            ticket.started = True
            served.append(sock)
            gate.settled(ticket)
            await hold.wait()
            sock.close()

        listener = limits.listen("127.0.0.1", 0)[0]
        port = listener.getsockname()[1]
        tasks: set[asyncio.Task[None]] = set()
        loop_task = asyncio.create_task(limits.accept_loop(listener, gate, serve, tasks))
        clients = []
        for _ in range(5):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            clients.append(c)
        closed = 0
        deadline = asyncio.get_running_loop().time() + 10
        while closed < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
            closed = 0
            for c in clients:
                try:
                    if c.recv(1) == b"":
                        closed += 1
                except BlockingIOError:
                    pass
                except OSError:
                    closed += 1
        hold.set()
        loop_task.cancel()
        await asyncio.gather(loop_task, *tasks, return_exceptions=True)
        listener.close()
        for c in clients:
            c.close()
        return len(served), closed

    served, closed = asyncio.run(run())
    assert (served, closed) == (2, 3)


# -- [limits] and the descriptor limit ----------------------------------------------------


def test_unset_caps_derive_from_the_descriptor_limit() -> None:
    low = resolve_limits({}, nofile=1024)
    assert low.max_connections == 1024 - RESERVED_FDS - low.peer_max_connections - \
        low.metrics_max_connections
    assert low.max_per_source == low.max_connections // 8
    assert low.max_handshakes <= low.max_connections
    assert not low.notes
    total = (low.max_connections + low.metrics_max_connections + low.peer_max_connections)
    assert total + RESERVED_FDS <= 1024
    high = resolve_limits({}, nofile=65536)
    assert high.max_connections == limits.DEFAULT_MAX_CONNECTIONS
    assert high.max_per_source == limits.MAX_DERIVED_PER_SOURCE
    assert high.nofile == 65536


def test_a_configured_cap_that_does_not_fit_is_lowered_with_a_note() -> None:
    got = resolve_limits({"max_connections": 5000}, nofile=1024)
    assert got.max_connections < 1024
    assert len(got.notes) == 1 and "max_connections 5000" in got.notes[0]
    assert "LimitNOFILE" in got.notes[0]


def test_a_tiny_descriptor_limit_still_leaves_a_working_port_and_says_so() -> None:
    got = resolve_limits({}, nofile=200)
    assert got.max_connections == limits.MIN_CONNECTIONS
    assert any("too low" in n for n in got.notes)


def test_caps_within_caps_and_send_timeout_within_idle_timeout() -> None:
    got = resolve_limits({"max_connections": 50, "max_handshakes": 500, "max_per_source": 80,
                          "metrics_max_connections": 4, "metrics_max_per_source": 9,
                          "send_timeout": 60.0}, nofile=65536, idle_timeout=20.0)
    assert (got.max_handshakes, got.max_per_source) == (50, 50)
    assert got.metrics_max_per_source == 4
    assert got.send_timeout == 20.0


@pytest.mark.parametrize("raw,message", [
    ({"max_connections": 0}, "at least 1"),
    ({"peer_max_per_source": -3}, "at least 1"),
    ({"send_timeout": 0.0}, "positive"),
    ({"metrics_request_timeout": math.nan}, "positive"),
    ({"max_conections": 5}, "unknown \\[limits\\] keys: max_conections"),
])
def test_bad_limits_are_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(LimitsError, match=message):
        resolve_limits(raw, nofile=4096)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("limits") / "d"
    init_deployment(root, nodes=1, base_port=27100)
    return root


def _with_limits(deployment: Path, tmp_path: Path, table: str) -> Path:
    node_dir = deployment / "node1"
    text = (node_dir / "node.toml").read_text()
    data = tomllib.loads(text)
    for key in ("data_dir", "ca_cert", "cert", "key", "seal_key_file", "cluster_secret_file"):
        text = text.replace(f'{key} = "{data[key]}"', f'{key} = "{node_dir / data[key]}"')
    path = tmp_path / "node.toml"
    path.write_text(text + "\n[limits]\n" + table)
    return path


def test_node_toml_limits_section(deployment: Path, tmp_path: Path) -> None:
    path = _with_limits(deployment, tmp_path, "max_per_source = 7\nsend_timeout = 3\n"
                                              "peer_max_connections = 12\n")
    cfg = load_node_config(path)
    assert isinstance(cfg.limits, Limits)
    assert cfg.limits.max_per_source == 7
    assert cfg.limits.send_timeout == 3.0
    assert cfg.limits.peer_max_connections == 12
    assert cfg.limits.nofile == limits.nofile_limit()


@pytest.mark.parametrize("table,message", [
    ("max_connections = \"many\"\n", "'max_connections' must be of type int"),
    ("max_connections = 0\n", "max_connections must be at least 1"),
    ("handshake_timeout = -1\n", "handshake_timeout must be positive"),
    ("bogus = 1\n", "unknown \\[limits\\] keys: bogus"),
])
def test_node_toml_bad_limits_name_the_file(deployment: Path, tmp_path: Path, table: str,
                                            message: str) -> None:
    path = _with_limits(deployment, tmp_path, table)
    with pytest.raises(ConfigError, match=message) as info:
        load_node_config(path)
    assert str(path) in str(info.value)


# -- private key files (issue 11, item 3) ------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o666, 0o660])
@pytest.mark.parametrize("name", ["admin", "client", "node"])
def test_a_private_key_readable_by_others_is_refused(tmp_path: Path, name: str,
                                                     mode: int) -> None:
    root = tmp_path / "d"
    init_deployment(root, nodes=1, base_port=27200)
    key = root / "node1" / "node.key" if name == "node" else root / f"{name}.key"
    key.chmod(mode)
    expected = rf"{key} is accessible by other users \(mode {mode:o}\); run: chmod 600 {key}"
    with pytest.raises(ConfigError, match=expected):
        if name == "node":
            load_node_config(root / "node1" / "node.toml")
        else:
            load_remote_config(root / f"{name}.toml")
    cert = key.with_suffix(".pem")
    ca = root / "ca.pem"
    for build in (pki.server_context, pki.client_context):
        with pytest.raises(ConfigError, match=expected):
            build(ca, cert, key)
    key.chmod(0o600)
    pki.client_context(ca, cert, key)


# -- the metrics server ------------------------------------------------------------------


@pytest.fixture
def health() -> Any:
    from raftsso.metrics import HealthServer, NodeMetrics
    from tests.harness import free_base_port

    server = HealthServer(f"127.0.0.1:{free_base_port(1)}", NodeMetrics(), None,
                          limits=Limits(metrics_max_connections=4, metrics_max_per_source=2,
                                        metrics_request_timeout=1.0))
    server.start()
    yield server
    server.close()


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_metrics_server_answers_and_refuses_cleanly(health: Any) -> None:
    ok = _exchange(health.port, b"GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert ok.startswith(b"HTTP/1.0 200 OK\r\n") and ok.endswith(b"\r\n\r\nok\n")
    head = _exchange(health.port, b"HEAD /healthz HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert _exchange(health.port, b"GET /readyz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 503")
    assert _exchange(health.port, b"GET /nope HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 404")
    assert _exchange(health.port, b"POST /metrics HTTP/1.0\r\n\r\n").startswith(
        b"HTTP/1.0 405")
    assert _exchange(health.port, b"hello\r\n\r\n").startswith(b"HTTP/1.0 400")
    assert _exchange(health.port, b"GET / HTTP/1.0\r\n" + b"X: y\r\n" * 100 + b"\r\n"
                     ).startswith(b"HTTP/1.0 431")
    metrics = _exchange(health.port, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert b"# TYPE raftsso_connections_refused_total counter" in metrics


def test_metrics_server_delivers_a_large_answer_whole(health: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    monkeypatch.setattr(health, "route", lambda path: (200, "application/octet-stream", body))
    answer = _exchange(health.port, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert answer.split(b"\r\n\r\n", 1)[1] == body


def test_metrics_server_ends_a_slow_request_and_caps_a_source(health: Any) -> None:
    slow = [socket.create_connection(("127.0.0.1", health.port), timeout=10) for _ in range(2)]
    third = socket.create_connection(("127.0.0.1", health.port), timeout=10)
    try:
        assert third.recv(1) == b""  # over metrics_max_per_source: closed at once
        for s in slow:
            s.sendall(b"GET /healthz HTTP/1.0\r\n")  # and never the end of the head
        for s in slow:  # the whole-request deadline ends them, data or not
            assert s.recv(1) == b""
    finally:
        for s in (*slow, third):
            s.close()
    assert _exchange(health.port, b"GET /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200")
    assert 'connections_refused_total{port="metrics",reason="max_per_source"} 1.0' in \
        health.metrics.render().decode()
