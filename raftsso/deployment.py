"""``raftsso init``: a complete deployment directory for a new cluster.

Layout (every file 0600, every directory 0700)::

    DIR/ca.pem  ca.key                  the cluster CA (keep ca.key offline once done)
    DIR/admin.toml  admin.pem  admin.key      operator configuration
    DIR/client.toml client.pem client.key     SSO client configuration (store = sso.db)
    DIR/nodeN/node.toml node.pem node.key ca.pem seal.key cluster.secret data/

Each node directory is self-contained so it can be copied to its own host.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from raftsso import envelope, pki
from raftsso.config import CONFIG_FORMAT, dump_toml, format_secret_file
from raftsso.errors import ConfigError
from raftsso.fsutil import atomic_write

PORTS_PER_NODE = 3  # raft, service, metrics (reserved)


@dataclass(frozen=True)
class NodePlan:
    id: str
    host: str
    raft_port: int
    service_port: int
    http_port: int

    @property
    def raft_address(self) -> str:
        return f"{self.host}:{self.raft_port}"

    @property
    def service_address(self) -> str:
        return f"{self.host}:{self.service_port}"


def plan_nodes(count: int, host: str, base_port: int) -> list[NodePlan]:
    if count < 1:
        raise ConfigError("a cluster needs at least one node")
    if count % 2 == 0:
        raise ConfigError(f"{count} nodes tolerate no more failures than {count - 1}; "
                          "use an odd number (3 or 5)")
    last = base_port + PORTS_PER_NODE * count - 1
    if not base_port >= 1024 or last > 65535:
        raise ConfigError(f"ports {base_port}..{last} are out of range (1024..65535)")
    return [
        NodePlan(f"node{i + 1}", host, base_port + PORTS_PER_NODE * i,
                 base_port + PORTS_PER_NODE * i + 1, base_port + PORTS_PER_NODE * i + 2)
        for i in range(count)
    ]


def _mkdir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def init_deployment(directory: Path, nodes: int = 3, host: str = "127.0.0.1",
                    base_port: int = 7100) -> str:
    """Write a new deployment into ``directory`` (which must be empty); return the cluster id."""
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty; refusing to overwrite a deployment "
                          "(its secrets would be lost)")
    plans = plan_nodes(nodes, host, base_port)
    cluster_id = "c-" + secrets.token_hex(6)
    _mkdir(directory)
    ca = pki.create_ca(cluster_id)
    pki.write_pair(ca, directory / "ca.pem", directory / "ca.key")
    seal_key = envelope.new_key()
    cluster_secret = envelope.new_key()
    members = [{"id": p.id, "raft_address": p.raft_address,
                "service_address": p.service_address} for p in plans]
    for plan in plans:
        ndir = directory / plan.id
        _mkdir(ndir)
        _mkdir(ndir / "data")
        pki.write_pair(pki.issue(ca, plan.id, "node", hosts=(plan.host, plan.id)),
                       ndir / "node.pem", ndir / "node.key")
        atomic_write(ndir / "ca.pem", ca.cert_pem)
        atomic_write(ndir / "seal.key", format_secret_file(seal_key, "seal"))
        atomic_write(ndir / "cluster.secret", format_secret_file(cluster_secret, "cluster"))
        atomic_write(ndir / "node.toml", dump_toml({
            "format": CONFIG_FORMAT,
            "node_id": plan.id,
            "cluster_id": cluster_id,
            "raft_address": plan.raft_address,
            "service_address": plan.service_address,
            "metrics_address": f"{plan.host}:{plan.http_port}",
            "data_dir": "data",
            "ca_cert": "ca.pem",
            "cert": "node.pem",
            "key": "node.key",
            "seal_key_file": "seal.key",
            "cluster_secret_file": "cluster.secret",
            "rotation_grace": 120.0,
            "raft": {},
            "peers": [m for m in members if m["id"] != plan.id],
        }).encode())
    endpoints = [{"id": p.id, "address": p.service_address} for p in plans]
    for role, extra in (("admin", {}), ("client", {"store": "sso.db",
                                                  "resync_interval": 60.0})):
        pki.write_pair(pki.issue(ca, f"{role}-1", role), directory / f"{role}.pem",
                       directory / f"{role}.key")
        atomic_write(directory / f"{role}.toml", dump_toml({
            "format": CONFIG_FORMAT, "cluster_id": cluster_id, "role": role,
            "ca_cert": "ca.pem", "cert": f"{role}.pem", "key": f"{role}.key",
            "timeout": 5.0, **extra, "nodes": endpoints,
        }).encode())
    return cluster_id
