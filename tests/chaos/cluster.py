"""The cluster under test: real node processes, started in their namespaces, and their faults.

Every process here is started by this module and ended by its pid (SIGKILL or SIGTERM,
then reaped); nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from raftsso import cluster_status
from raftsso.config import load_remote_config
from raftsso.deployment import PORTS_PER_NODE, init_deployment
from raftsso.remote import ClusterClient
from tests.chaos.net import NamespaceNet, PauseNet
from tests.harness import free_base_port


class ChaosCluster:
    def __init__(self, root: Path, net: NamespaceNet | PauseNet, nodes: int = 3,
                 raft: dict[str, Any] | None = None) -> None:
        self.root = root
        self.net = net
        self.size = nodes
        hosts = net.hosts()
        if hosts is None:
            self.base_port = free_base_port(nodes * PORTS_PER_NODE)
            self.cluster_id = init_deployment(root, nodes=nodes, base_port=self.base_port)
        else:
            # Each node on its own address: the same ports everywhere, free in every namespace.
            self.base_port = free_base_port(PORTS_PER_NODE)
            self.cluster_id = init_deployment(root, nodes=None, hosts=hosts,
                                              base_port=self.base_port)
        self.ids = [f"node{i + 1}" for i in range(nodes)]
        if raft:
            for node_id in self.ids:
                self._set_raft_options(node_id, raft)
        self.admin_toml = root / "admin.toml"
        self.client_toml = root / "client.toml"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paused: set[str] = set()
        self._lock = threading.Lock()
        cfg = load_remote_config(self.admin_toml)
        self.addresses = {n.id: n.address for n in cfg.nodes}
        self._client = ClusterClient.from_config(cfg)
        self._client.timeout = 1.0
        for conn in self._client._conns.values():
            conn._timeout = 1.0

    def _set_raft_options(self, node_id: str, options: dict[str, Any]) -> None:
        path = self.node_toml(node_id)
        lines = path.read_text().splitlines()
        at = lines.index("[raft]") + 1
        for key, value in options.items():
            lines.insert(at, f"{key} = {value!r}")
        path.write_text("\n".join(lines) + "\n")

    def node_toml(self, node_id: str) -> Path:
        return self.root / node_id / "node.toml"

    def data_dir(self, node_id: str) -> Path:
        return self.root / node_id / "data"

    def index(self, node_id: str) -> int:
        return self.ids.index(node_id)

    # processes -------------------------------------------------------------------------

    def start(self, *node_ids: str) -> None:
        with self._lock:
            for node_id in node_ids or tuple(self.ids):
                proc = self.procs.get(node_id)
                if proc is not None and proc.poll() is None:
                    continue
                fd = os.open(self.root / node_id / "node.log",
                             os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    self.procs[node_id] = subprocess.Popen(
                        [*self.net.command_prefix(self.index(node_id)), sys.executable, "-m",
                         "raftsso_cli", "node", "run", str(self.node_toml(node_id))],
                        stdin=subprocess.DEVNULL, stdout=fd, stderr=fd)
                finally:
                    os.close(fd)
                self.paused.discard(node_id)

    def alive(self, node_id: str) -> bool:
        proc = self.procs.get(node_id)
        return proc is not None and proc.poll() is None

    def kill(self, *node_ids: str) -> None:
        """SIGKILL and reap."""
        with self._lock:
            for node_id in node_ids or tuple(self.ids):
                proc = self.procs.get(node_id)
                if proc is None:
                    continue
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                self.paused.discard(node_id)

    def pause(self, *node_ids: str) -> None:
        with self._lock:
            for node_id in node_ids:
                proc = self.procs.get(node_id)
                if proc is not None and proc.poll() is None:
                    os.kill(proc.pid, signal.SIGSTOP)
                    self.paused.add(node_id)

    def resume(self, *node_ids: str) -> None:
        with self._lock:
            for node_id in node_ids or tuple(self.ids):
                proc = self.procs.get(node_id)
                if proc is not None and proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGCONT)
                self.paused.discard(node_id)

    def exit_codes(self) -> dict[str, int | None]:
        return {n: (p.poll() if p is not None else None) for n, p in self.procs.items()}

    def stop(self) -> None:
        """SIGCONT then SIGTERM every node, wait, SIGKILL what did not stop; reap all."""
        with self._lock:
            procs = list(self.procs.values())
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.paused.clear()

    def close(self) -> None:
        self.stop()
        self._client.close()

    # views -------------------------------------------------------------------------------

    def call(self, node_id: str, op: str, args: dict[str, Any] | None = None,
             timeout: float = 1.0) -> Any:
        return self._client.call_node(self.addresses[node_id], op, args, timeout=timeout)

    def status(self) -> dict[str, Any]:
        return cluster_status.gather(self._client, timeout=1.0)

    def log(self, node_id: str) -> str:
        try:
            return (self.root / node_id / "node.log").read_text(errors="replace")
        except OSError:
            return ""
