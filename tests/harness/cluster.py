"""A cluster of real node processes for integration and chaos tests.

Real TLS, real kills: every process is started here and ended by its pid (SIGKILL or
SIGTERM, then reaped); nothing is ever killed by name. Nodes live on 127.0.0.1
(:class:`~tests.harness.net.LoopbackNet`, the default) or each in its own network namespace
(:class:`~tests.harness.net.NamespaceNet`), on ports from a reserved block below the
ephemeral range (:mod:`tests.harness.ports`). Settings are typed
(:class:`~tests.harness.options.NodeOptions`), written before the nodes start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from raftsso import cluster_status
from raftsso.config import load_node_config, load_remote_config
from raftsso.deployment import PORTS_PER_NODE, init_deployment
from raftsso.errors import RaftssoError
from raftsso.remote import ClusterClient
from raftsso.seal.setup import SealPlan
from tests.harness.net import LoopbackNet, NamespaceNet, Net
from tests.harness.options import NodeOptions, configure_node
from tests.harness.ports import reserve_ports
from tests.harness.wait import DEFAULT_TIMEOUT, wait_for


def cluster_client(remote_toml: Path, timeout: float | None = None) -> ClusterClient:
    """A client for ``admin.toml``/``client.toml``; ``timeout`` replaces the file's (it is
    also the connect and handshake timeout, which matters against a stopped node)."""
    cfg = load_remote_config(remote_toml)
    if timeout is not None:
        cfg = dataclasses.replace(cfg, timeout=timeout)
    return ClusterClient.from_config(cfg)


class Cluster:
    """``nodes`` node processes of a new deployment in ``root`` (not started yet)."""

    def __init__(self, root: Path, nodes: int = 3, *, options: NodeOptions | None = None,
                 net: Net | None = None, client_timeout: float | None = None,
                 seal: SealPlan | None = None) -> None:
        self.root = root
        self.size = nodes
        self.net: Net = net if net is not None else LoopbackNet(nodes)
        hosts = self.net.hosts()
        # Each node on its own address (namespaces) uses the same ports everywhere.
        self._ports = reserve_ports(PORTS_PER_NODE * (nodes if hosts is None else 1))
        self.base_port = self._ports.base
        if hosts is None:
            self.cluster_id = init_deployment(root, nodes=nodes, base_port=self.base_port,
                                              seal=seal)
        else:
            self.cluster_id = init_deployment(root, nodes=None, hosts=hosts,
                                              base_port=self.base_port, seal=seal)
        self.ids = [f"node{i + 1}" for i in range(nodes)]
        self.admin_toml = root / "admin.toml"
        self.client_toml = root / "client.toml"
        self.client_timeout = client_timeout
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paused: set[str] = set()
        self._cut: set[str] = set()
        self._lock = threading.Lock()
        self._client: ClusterClient | None = None
        self.addresses: dict[str, str] = {}
        self.reload_client()
        if options is not None:
            self.configure(options)

    # files ---------------------------------------------------------------------------

    def node_toml(self, node_id: str) -> Path:
        return self.root / node_id / "node.toml"

    def data_dir(self, node_id: str) -> Path:
        return self.root / node_id / "data"

    def index(self, node_id: str) -> int:
        return self.ids.index(node_id)

    def configure(self, options: NodeOptions, *node_ids: str) -> None:
        """Write ``options`` into the node.toml of ``node_ids`` (all nodes by default);
        a node reads them at its next start."""
        for node_id in node_ids or self.ids:
            configure_node(self.node_toml(node_id), options)

    def adopt(self, node_id: str) -> None:
        """Take in a node prepared in ``root`` after the deployment was made (``raftsso init
        ROOT --join NODE``): it joins :attr:`ids` and the admin client learns its address."""
        if node_id not in self.ids:
            self.ids.append(node_id)
        self.reload_client()

    def log(self, node_id: str) -> str:
        try:
            return (self.root / node_id / "node.log").read_text(errors="replace")
        except OSError:
            return ""

    def metrics_url(self, node_id: str, path: str = "/metrics") -> str:
        address = load_node_config(self.node_toml(node_id)).metrics_address
        assert address is not None, f"{node_id} has no metrics_address"
        return f"http://{address}{path}"

    # processes -------------------------------------------------------------------------

    def start(self, *node_ids: str, wrapper: Sequence[str] = ()) -> None:
        """Start the nodes that are not running (all by default).

        ``wrapper`` goes before the Python command (e.g. ``fiu-run -x ...``); it must exec
        the node so that the pid stays the node's.
        """
        with self._lock:
            for node_id in node_ids or tuple(self.ids):
                proc = self.procs.get(node_id)
                if proc is not None and proc.poll() is None:
                    continue
                prefix = self.net.command_prefix(self.index(node_id))
                fd = os.open(self.root / node_id / "node.log",
                             os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    self.procs[node_id] = subprocess.Popen(
                        [*prefix, *wrapper, sys.executable, "-m", "raftsso_cli", "node", "run",
                         str(self.node_toml(node_id))],
                        stdin=subprocess.DEVNULL, stdout=fd, stderr=fd)
                finally:
                    os.close(fd)
                self.paused.discard(node_id)

    def alive(self, node_id: str) -> bool:
        proc = self.procs.get(node_id)
        return proc is not None and proc.poll() is None

    def pid(self, node_id: str) -> int:
        return self.procs[node_id].pid

    def wait(self, node_id: str, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for a node to exit by itself; its exit code."""
        return self.procs[node_id].wait(timeout=timeout)

    def exit_codes(self) -> dict[str, int | None]:
        return {n: p.poll() for n, p in self.procs.items()}

    def signal(self, node_id: str, sig: int) -> None:
        proc = self.procs[node_id]
        if proc.poll() is None:
            os.kill(proc.pid, sig)

    def kill(self, *node_ids: str) -> None:
        """SIGKILL and reap (all nodes by default): the process is gone on return."""
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
        """SIGSTOP: the node neither answers nor ticks until :meth:`resume`."""
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

    def cut(self, *node_ids: str) -> None:
        """Cut each node off from every other node: namespace rules with a
        :class:`NamespaceNet` (clients still reach it), else SIGSTOP (nobody does)."""
        if isinstance(self.net, NamespaceNet):
            self.net.cut([self.index(n) for n in node_ids])
        else:
            self.pause(*node_ids)
        self._cut.update(node_ids)

    def heal(self) -> None:
        """Undo every :meth:`cut`."""
        if isinstance(self.net, NamespaceNet):
            self.net.heal()
        else:
            self.resume(*sorted(self._cut))
        self._cut.clear()

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
        """Stop every node, close the client and release the ports (the net is the
        caller's to close)."""
        try:
            self.stop()
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None
            self._ports.release()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # views -------------------------------------------------------------------------------

    @property
    def client(self) -> ClusterClient:
        """An admin client (lazily made; :meth:`reload_client` after admin.toml changed)."""
        if self._client is None:
            self._client = cluster_client(self.admin_toml, self.client_timeout)
        return self._client

    def reload_client(self) -> None:
        """Read admin.toml again (after a node joined) on the next call."""
        if self._client is not None:
            self._client.close()
            self._client = None
        cfg = load_remote_config(self.admin_toml)
        self.addresses = {n.id: n.address for n in cfg.nodes}

    def address(self, node_id: str) -> str:
        """The node's service address."""
        return self.addresses[node_id]

    def call(self, node_id: str, op: str, args: dict[str, Any] | None = None,
             timeout: float = 2.0) -> Any:
        return self.client.call_node(self.address(node_id), op, args, timeout=timeout)

    def status(self) -> dict[str, Any]:
        return cluster_status.gather(self.client, timeout=1.0)

    def node_status(self, node_id: str) -> dict[str, Any]:
        result = self.call(node_id, "status")
        assert isinstance(result, dict)
        return result

    def keyring(self, node_id: str) -> dict[int, bytes]:
        """The version ids and keys a node serves."""
        ring = self.call(node_id, "keyring")
        return {v["id"]: v["key"] for v in ring["versions"]}

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
        """A rotation through whichever node leads (following NOT_LEADER)."""
        result = self.client.call_leader(
            "rotate", {"request_id": request_id or secrets.token_bytes(16), "now": now},
            deadline=DEFAULT_TIMEOUT)
        assert isinstance(result, dict)
        return result

    def rotate_on(self, node_id: str, request_id: bytes | None = None, now: bool = True,
                  timeout: float = 30.0) -> dict[str, Any]:
        """A rotation sent to one node only (whatever it answers is raised or returned)."""
        result = self.call(node_id, "rotate",
                           {"request_id": request_id or secrets.token_bytes(16), "now": now},
                           timeout=timeout)
        assert isinstance(result, dict)
        return result


    # the seal ------------------------------------------------------------------------------

    def share_files(self) -> list[Path]:
        """The unseal shares ``init --seal shamir`` wrote, in index order."""
        return sorted((self.root / "seal-shares").glob("share-*.txt"),
                      key=lambda p: int(p.stem.split("-")[1]))

    def unseal(self, node_id: str, shares: Sequence[Path]) -> dict[str, Any]:
        """Give ``node_id`` each share in turn (over admin mTLS); its last answer."""
        from raftsso.admin import AdminClient

        with AdminClient.from_config(self.admin_toml) as admin:
            view = None
            for share in shares:
                view = admin.unseal(node_id, share)
        assert view is not None
        return view.to_wire()


@contextlib.contextmanager
def running_cluster(root: Path, nodes: int = 3, *, options: NodeOptions | None = None,
                    net: Net | None = None, client_timeout: float | None = None,
                    seal: SealPlan | None = None) -> Iterator[Cluster]:
    """A :class:`Cluster`, started and healthy; closed on the way out."""
    with Cluster(root, nodes, options=options, net=net, client_timeout=client_timeout,
                 seal=seal) as c:
        c.start()
        c.wait_healthy()
        # Healthy needs only a quorum: under load a third node may still be opening its
        # service port, and tests that talk to one node directly would be refused.
        for node_id in c.ids:
            wait_for(lambda n=node_id: _serving(c, n), what=f"{node_id} to serve")
        yield c


def _serving(cluster: Cluster, node_id: str) -> bool:
    try:
        cluster.node_status(node_id)
        return True
    except (OSError, RaftssoError):
        return False
