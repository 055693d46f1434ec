"""A real-process cluster for tests: nodes on 127.0.0.1, ephemeral ports, real TLS, real kills.

Every wait polls a condition with a deadline (:func:`wait_for`); nothing sleeps to
synchronise.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from raftsso import cluster_status
from raftsso.config import load_remote_config
from raftsso.deployment import PORTS_PER_NODE, init_deployment
from raftsso.errors import RaftssoError
from raftsso.remote import ClusterClient

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0


def wait_for(predicate: Callable[[], T | None], timeout: float = DEFAULT_TIMEOUT,
             interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (RaftssoError, OSError) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval)


def _ports_free(base: int, count: int) -> bool:
    for port in range(base, base + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_base_port(count: int) -> int:
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        if _ports_free(base, count):
            return base
    raise RuntimeError("no free port range found")


def cli(*args: str, stdin: bytes | None = None, timeout: float = 60.0,
        cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``raftsso`` command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "raftsso_cli", *args], input=stdin,
                          capture_output=True, timeout=timeout, cwd=cwd, check=False)


class LocalCluster:
    def __init__(self, root: Path, nodes: int = 3) -> None:
        self.root = root
        self.size = nodes
        self.base_port = free_base_port(nodes * PORTS_PER_NODE)
        self.cluster_id = init_deployment(root, nodes=nodes, base_port=self.base_port)
        self.ids = [f"node{i + 1}" for i in range(nodes)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.admin_toml = root / "admin.toml"
        self.client_toml = root / "client.toml"
        self._client: ClusterClient | None = None

    # processes -------------------------------------------------------------------

    def node_toml(self, node_id: str) -> Path:
        return self.root / node_id / "node.toml"

    def start(self, *node_ids: str) -> None:
        for node_id in node_ids or self.ids:
            proc = self.procs.get(node_id)
            if proc is not None and proc.poll() is None:
                continue
            fd = os.open(self.root / node_id / "node.log",
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                self.procs[node_id] = subprocess.Popen(
                    [sys.executable, "-m", "raftsso_cli", "node", "run",
                     str(self.node_toml(node_id))],
                    stdin=subprocess.DEVNULL, stdout=fd, stderr=fd)
            finally:
                os.close(fd)

    def signal(self, node_id: str, sig: int) -> None:
        proc = self.procs[node_id]
        if proc.poll() is None:
            os.kill(proc.pid, sig)

    def kill(self, *node_ids: str) -> None:
        """SIGKILL and reap (the process is gone when this returns)."""
        for node_id in node_ids or self.ids:
            proc = self.procs.get(node_id)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._client is not None:
            self._client.close()
            self._client = None

    def alive(self, node_id: str) -> bool:
        proc = self.procs.get(node_id)
        return proc is not None and proc.poll() is None

    def log(self, node_id: str) -> str:
        return (self.root / node_id / "node.log").read_text(errors="replace")

    # views ---------------------------------------------------------------------------

    @property
    def client(self) -> ClusterClient:
        if self._client is None:
            self._client = ClusterClient.from_config(load_remote_config(self.admin_toml))
        return self._client

    def address(self, node_id: str) -> str:
        return next(n.address for n in self.client.nodes if n.id == node_id)

    def status(self) -> dict[str, Any]:
        return cluster_status.gather(self.client, timeout=1.0)

    def node_status(self, node_id: str) -> dict[str, Any]:
        result = self.client.call_node(self.address(node_id), "status", timeout=2.0)
        assert isinstance(result, dict)
        return result

    def wait_healthy(self, timeout: float = DEFAULT_TIMEOUT,
                     exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """Wait for a leader with a quorum, serving a primary, outside ``exclude``."""

        def check() -> dict[str, Any] | None:
            st = self.status()
            if (cluster_status.healthy(st) and st["primary_version"] is not None
                    and st["leader"] not in exclude):
                return st
            return None

        return wait_for(check, timeout, what="a healthy cluster")

    def leader(self, exclude: tuple[str, ...] = ()) -> str:
        leader = self.wait_healthy(exclude=exclude)["leader"]
        assert isinstance(leader, str)
        return leader

    def rotate(self, now: bool = True, request_id: bytes | None = None) -> dict[str, Any]:
        result = self.client.call_leader(
            "rotate", {"request_id": request_id or secrets.token_bytes(16), "now": now},
            deadline=DEFAULT_TIMEOUT)
        assert isinstance(result, dict)
        return result
