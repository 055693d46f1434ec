"""``raftsso init``: a complete deployment directory for a new cluster.

Layout (every file 0600, every directory 0700)::

    DIR/ca.pem  ca.key                  the cluster CA (keep ca.key offline once done)
    DIR/admin.toml  admin.pem  admin.key      operator configuration
    DIR/client.toml client.pem client.key     SSO client configuration (store = sso.db)
    DIR/agent.toml                      the SSO agent of this host (socket DIR/agent.sock)
    DIR/nodeN/node.toml node.pem node.key ca.pem seal.key cluster.secret data/

Each node directory is self-contained so it can be copied to its own host.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raftsso import envelope, pki
from raftsso.config import CONFIG_FORMAT, dump_toml, format_secret_file, update_toml
from raftsso.errors import ConfigError
from raftsso.fsutil import atomic_write, read_private
from raftsso.seal.setup import SealPlan, setup_seal

if TYPE_CHECKING:
    from raftsso.config import NodeConfig

PORTS_PER_NODE = 3  # raft, service, metrics (/metrics, /healthz, /readyz)


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


def plan_hosts(hosts: Sequence[str], base_port: int) -> list[NodePlan]:
    """One node per host (``--hosts``): every node uses the same three ports on its host."""
    hosts = [h.strip() for h in hosts]
    if not hosts:
        raise ConfigError("--hosts needs at least one host")
    if any(not h or any(c in h for c in " /,") for h in hosts):
        raise ConfigError("--hosts takes host names or IP addresses separated by commas")
    if len(set(hosts)) != len(hosts):
        raise ConfigError("--hosts names the same host twice; one node per host")
    plans = plan_nodes(len(hosts), hosts[0], base_port)  # validates the count and ports
    return [NodePlan(f"node{i + 1}", h, base_port, base_port + 1, base_port + 2)
            for i, (h, _) in enumerate(zip(hosts, plans, strict=True))]


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


def init_deployment(directory: Path, nodes: int | None = 3, host: str = "127.0.0.1",
                    base_port: int = 7100, hosts: Sequence[str] | None = None, *,
                    seal: SealPlan | None = None, notes: list[str] | None = None) -> str:
    """Write a new deployment into ``directory`` (which must be empty); return the cluster id.

    With ``hosts``, node *i* runs on ``hosts[i-1]`` (its certificate names that address)
    and ``nodes`` must be None or ``len(hosts)``; without, every node runs on ``host``.
    ``seal`` says where the seal key goes (:mod:`raftsso.seal.setup`; the file seal by
    default); what the operator must do next about it is appended to ``notes``.
    """
    seal = seal or SealPlan()
    seal.validate()
    if hosts is not None and nodes is not None and nodes != len(hosts):
        raise ConfigError(f"--nodes {nodes} does not match the {len(hosts)} host(s) given")
    plans = (plan_hosts(hosts, base_port) if hosts is not None
             else plan_nodes(3 if nodes is None else nodes, host, base_port))
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty; refusing to overwrite a deployment "
                          "(its secrets would be lost)")
    cluster_id = "c-" + secrets.token_hex(6)
    _mkdir(directory)
    ca = pki.create_ca(cluster_id)
    pki.write_pair(ca, directory / "ca.pem", directory / "ca.key")
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
        atomic_write(ndir / "cluster.secret", format_secret_file(cluster_secret, "cluster"))
    sealing = setup_seal(seal, directory=directory, cluster_id=cluster_id,
                         node_dirs={p.id: directory / p.id for p in plans})
    if notes is not None:
        notes.extend(sealing.notes)
    for plan in plans:
        ndir = directory / plan.id
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
            **sealing.node_settings[plan.id],
            "cluster_secret_file": "cluster.secret",
            "rotation_grace": 120.0,
            "peer_tls": True,  # Raft peers authenticate by node certificate
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
    # The SSO agent (docs/agent.md): runs on client.toml's certificate and store.
    atomic_write(directory / "agent.toml", dump_toml({
        "format": CONFIG_FORMAT, "client": "client.toml", "socket": "agent.sock",
        "socket_mode": "0660", "audit_log": "agent-audit.jsonl"}).encode())
    return cluster_id


def _join_seal(source: NodeConfig, ndir: Path) -> dict[str, Any]:
    """The joining node's seal: the file seal's key file copied (every generation); a
    shamir node needs nothing (it is unsealed with the cluster's shares)."""
    seal = source.seal
    if seal.kind == "file" and source.seal_key_file is not None:
        atomic_write(ndir / "seal.key", read_private(source.seal_key_file))
        return {"seal": "file", "seal_key_file": "seal.key"}
    if seal.kind == "shamir":
        table = {k: v for k, v in (("threshold", seal.threshold), ("shares", seal.shares))
                 if v is not None}
        return {"seal": "shamir", "shamir": table}
    raise ConfigError(_PKCS11_JOIN)


_PKCS11_JOIN = ("a node joining a cluster with the pkcs11 seal needs the seal key in a "
                "token of its own, which only a key ceremony puts there (the key never "
                "leaves the other nodes' tokens): see docs/operations.md, Seal")


def join_node(directory: Path, node_id: str, host: str | None = None,
              base_port: int | None = None) -> NodePlan:
    """Prepare ``DIR/node_id`` for a node joining the existing deployment in ``directory``.

    Copies the cluster's seal key and cluster secret from an existing node directory,
    issues a node certificate from ``DIR/ca.key``, lists every current member as a peer
    and adds the node to ``admin.toml`` and ``client.toml``. The cluster itself learns of
    the node only through ``raftsso members add`` (after the node has started).
    """
    from raftsso.config import load_node_config, load_remote_config, read_secret_file

    if not (directory / "ca.key").exists():
        raise ConfigError(f"{directory} has no ca.key: it is not a deployment made by "
                          "`raftsso init` (or the CA key was moved offline; bring it back)")
    existing = sorted(directory.glob("*/node.toml"))
    if not existing:
        raise ConfigError(f"{directory} holds no node to copy the cluster's secrets from")
    if (directory / node_id).exists():
        raise ConfigError(f"{directory / node_id} exists already; pick a new node id")
    configs = [load_node_config(p) for p in existing]
    members: dict[str, dict[str, str]] = {}
    for cfg in configs:
        for m in cfg.members:
            members[m.id] = {"id": m.id, "raft_address": m.raft_address,
                             "service_address": m.service_address}
    if node_id in members:
        raise ConfigError(f"{node_id} is already a member of this deployment")
    source = configs[0]
    if source.seal.kind == "pkcs11":
        raise ConfigError(_PKCS11_JOIN)
    used = [int(a.rsplit(":", 1)[1]) for m in members.values()
            for a in (m["raft_address"], m["service_address"])]
    if base_port is None:
        base_port = max(used) + 2  # past the last node's metrics port
    host = host or source.raft_address.rsplit(":", 1)[0]
    plan = NodePlan(node_id, host, base_port, base_port + 1, base_port + 2)
    ca = pki.Issued((directory / "ca.pem").read_bytes(),
                    read_private(directory / "ca.key"))
    ndir = directory / node_id
    _mkdir(ndir)
    _mkdir(ndir / "data")
    pki.write_pair(pki.issue(ca, node_id, "node", hosts=(host, node_id)),
                   ndir / "node.pem", ndir / "node.key")
    atomic_write(ndir / "ca.pem", ca.cert_pem)
    seal = _join_seal(source, ndir)
    atomic_write(ndir / "cluster.secret", format_secret_file(
        read_secret_file(source.cluster_secret_file, "cluster"), "cluster"))
    atomic_write(ndir / "node.toml", dump_toml({
        "format": CONFIG_FORMAT, "node_id": node_id, "cluster_id": source.cluster_id,
        "raft_address": plan.raft_address, "service_address": plan.service_address,
        "metrics_address": f"{host}:{plan.http_port}", "data_dir": "data",
        "ca_cert": "ca.pem", "cert": "node.pem", "key": "node.key",
        **seal, "cluster_secret_file": "cluster.secret",
        "rotation_grace": source.rotation_grace,
        "peer_tls": source.peer_tls,  # every member must use the same peer link mode
        "raft": {},
        "peers": sorted(members.values(), key=lambda m: m["id"]),
    }).encode())
    for role in ("admin", "client"):
        path = directory / f"{role}.toml"
        if not path.exists():
            continue
        remote = load_remote_config(path)
        update_toml(path, {"nodes": [{"id": n.id, "address": n.address} for n in remote.nodes]
                           + [{"id": node_id, "address": plan.service_address}]})
    return plan
