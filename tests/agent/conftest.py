"""Fixtures for the agent: an in-process agent (fake keyring source, real AES-GCM, real
SQLite store, real socket) and a real agent process beside real node processes; Unix
users and groups made with useradd/groupadd (removed after); callers run under them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from raftsso import envelope
from raftsso.agent.audit import AgentAudit
from raftsso.agent.client import AgentClient
from raftsso.agent.config import load_agent_config
from raftsso.agent.service import Agent
from raftsso.client import SSOClient
from raftsso.config import Endpoint
from raftsso.store import open_store
from tests.harness import Cluster, wait_for

CLUSTER = "c-agenttest"
KEY = os.urandom(32)


class OneNodeSource:
    """A keyring source answering one fixed keyring (the client's documented seam)."""

    endpoints = [Endpoint("node1", "127.0.0.1:1")]

    def __init__(self) -> None:
        self.up = True

    def fetch(self, endpoint: Endpoint) -> Any:
        if not self.up:
            raise ConnectionRefusedError(111, "Connection refused")
        return {"cluster_id": CLUSTER, "node_id": "node1", "term": 1, "commit_index": 5,
                "primary": 1, "versions": [{"id": 1, "state": "primary", "key": KEY,
                                            "fingerprint": envelope.fingerprint(KEY)}]}

    def close(self) -> None:
        pass


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (Unix socket paths are limited to 107 bytes) that
    other users may traverse (the socket's own mode decides who connects)."""
    d = Path(tempfile.mkdtemp(prefix="rsa-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def write_agent_toml(path: Path, **values: Any) -> Path:
    lines = ["format = 1"]
    for key, value in values.items():
        if isinstance(value, dict):
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    for key, value in values.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in value.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


@dataclass
class InProcessAgent:
    agent: Agent
    socket: Path
    source: OneNodeSource
    audit_path: Path
    loop: asyncio.AbstractEventLoop = field(repr=False)
    thread: threading.Thread = field(repr=False)

    def client(self) -> AgentClient:
        return AgentClient(self.socket, timeout=10)


@contextlib.contextmanager
def in_process_agent(directory: Path, **config: Any) -> Iterator[InProcessAgent]:
    """An agent served from a thread of this process (fake keyring, real everything else)."""
    toml = write_agent_toml(directory / "agent.toml", client="unused.toml", socket="a.sock",
                            audit_log="audit.jsonl", **config)
    cfg = load_agent_config(toml)
    source = OneNodeSource()
    client = SSOClient(source, cluster_id=CLUSTER, resync_interval=config.get(
        "resync_interval", 60.0), background=False)
    store = open_store(directory / "sso.db", client)
    audit = AgentAudit(cfg.audit_path, "agent@test")
    agent = Agent(cfg, client, store, audit)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(agent.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield InProcessAgent(agent, cfg.socket, source, cfg.audit_path, loop, thread)
    finally:
        asyncio.run_coroutine_threadsafe(agent.stop(1.0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        agent.close()


# -- raw HTTP ---------------------------------------------------------------------------------


def raw_exchange(path: Path, data: bytes, timeout: float = 5.0, shut: bool = True) -> bytes:
    """Send bytes, read until the agent closes (or ``timeout``); everything it sent."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every complete response in ``data`` (status, headers, body)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"incomplete response: {data[:200]!r}")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if status == 100:
            data = rest
            continue
        length = int(headers["content-length"])
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out


def request_bytes(method: str, path: str, body: Any = None, *, headers: str = "") -> bytes:
    data = b"" if body is None else (body if isinstance(body, bytes) else
                                     json.dumps(body).encode())
    return (f"{method} {path} HTTP/1.1\r\nHost: a\r\n{headers}Content-Length: {len(data)}"
            "\r\n\r\n").encode() + data


# -- curl, as any uid ------------------------------------------------------------------------------


@dataclass(frozen=True)
class As:
    """Run a caller under this uid, primary gid and supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def curl(sock: Path, method: str, path: str, body: Any = None,
         who: As | None = None) -> tuple[int, Any]:
    """curl --unix-socket (a real client, not ours); returns (status, decoded JSON)."""
    if shutil.which("curl") is None:
        pytest.skip("no curl (apt: curl)")
    argv = ["curl", "-sS", "--unix-socket", str(sock), "-X", method, "-o", "-",
            "-w", "\n%{http_code}", f"http://localhost{path}"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    kwargs: dict[str, Any] = {}
    if who is not None:
        kwargs = {"user": who.uid, "group": who.gid, "extra_groups": list(who.groups)}
    result = subprocess.run(argv, input=json.dumps(body).encode() if body is not None else b"",
                            capture_output=True, timeout=30, check=False, **kwargs)
    assert result.returncode == 0, result.stderr.decode()
    text, _, code = result.stdout.decode().rpartition("\n")
    return int(code), json.loads(text) if text else None


def b64(data: bytes) -> str:
    import base64
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    import base64
    return base64.b64decode(text)


# -- Unix users and groups -----------------------------------------------------------------------


@dataclass
class UnixUsers:
    suffix: str
    users: dict[str, int] = field(default_factory=dict)  # name -> uid
    groups: dict[str, int] = field(default_factory=dict)  # name -> gid

    def name(self, short: str) -> str:
        return f"rsa{short}{self.suffix}"

    def who(self, user: str, *groups: str) -> As:
        uid = self.users[self.name(user)]
        return As(uid, self.groups.get(self.name(user), uid),
                  tuple(self.groups[self.name(g)] for g in groups))


@pytest.fixture(scope="module")
def unix_users() -> Iterator[UnixUsers]:
    """Users alice, bob, eve and groups users, admins, sock (random suffix; removed after)."""
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("curl") is None:
        pytest.skip("needs root, useradd and curl")
    made = UnixUsers(secrets.token_hex(3))
    try:
        for g in ("users", "admins", "sock"):
            name = made.name(g)
            subprocess.run(["groupadd", name], check=True, capture_output=True)
            made.groups[name] = int(subprocess.run(["getent", "group", name], check=True,
                                                   capture_output=True,
                                                   text=True).stdout.split(":")[2])
        for u in ("alice", "bob", "eve"):
            name = made.name(u)
            subprocess.run(["useradd", "--no-create-home", "-M", "-U", "-s", "/usr/sbin/nologin",
                            name], check=True, capture_output=True)
            made.users[name] = int(subprocess.run(["id", "-u", name], check=True,
                                                  capture_output=True, text=True).stdout)
            made.groups[name] = int(subprocess.run(["id", "-g", name], check=True,
                                                   capture_output=True, text=True).stdout)
        yield made
    finally:
        for name in made.users:
            subprocess.run(["userdel", name], capture_output=True, check=False)
        for name in made.groups:
            subprocess.run(["groupdel", name], capture_output=True, check=False)


# -- a real agent process beside real nodes ----------------------------------------------------


@dataclass
class AgentProcess:
    cluster: Cluster
    config: Path
    socket: Path
    audit_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = os.open(self.config.parent / f"{self.config.stem}.log",
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "raftsso_cli", "agent", "run", "--config",
                 str(self.config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            os.close(log)

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            with AgentClient(self.socket, timeout=2) as c:
                return c.health()["status"] == "ok"

        wait_for(ready, what="the agent to serve")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return (self.config.parent / f"{self.config.stem}.log").read_text(errors="replace")

    def client(self) -> AgentClient:
        return AgentClient(self.socket, timeout=10)


@contextlib.contextmanager
def agent_beside(cluster: Cluster, sock_dir: Path, *, config_name: str = "agent-test.toml",
                 audit_log: str = "agent-audit.jsonl",
                 **config: Any) -> Iterator[AgentProcess]:
    toml = write_agent_toml(cluster.root / config_name, client="client.toml",
                            socket=str(sock_dir / "agent.sock"), audit_log=audit_log,
                            **config)
    proc = AgentProcess(cluster, toml, sock_dir / "agent.sock", cluster.root / audit_log)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def audit_lines(path: Path) -> list[dict[str, Any]]:
    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines() if line]
    return read()
