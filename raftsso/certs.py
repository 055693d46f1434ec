"""Certificates issued after ``init``, one per SSO service or operator (``certs issue``).

The CA key stays offline: the operator brings it (``--ca-key KEY``) for the one command and
takes it away again. :func:`issue_files` writes, into a directory of its own::

    DIR/NAME.pem  NAME.key  ca.pem  NAME.toml     (0600; the directory 0700)

``NAME.toml`` is a ready client or operator configuration (the cluster's nodes copied from
the operator's own), so a service can start with ``raftsso -c DIR/NAME.toml``. Each
certificate has its own random serial and its name as common name; the role is in the
organizational unit, as for every raftsso certificate (:mod:`raftsso.pki`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from raftsso import pki
from raftsso.config import CONFIG_FORMAT, RemoteConfig, dump_toml
from raftsso.errors import ConfigError
from raftsso.fsutil import atomic_write

ISSUABLE_ROLES = ("client", "admin", "node")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    """A certificate name: 1-64 letters, digits, ``.``, ``_``, ``-`` (also a file name)."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{name!r} is not a certificate name: use 1 to 64 letters, digits, "
                          "'.', '_' or '-', starting with a letter or digit")
    return name


@dataclass(frozen=True)
class IssuedFiles:
    info: pki.CertInfo
    cert: Path
    key: Path
    config: Path | None


def issue_files(ca: pki.Issued, *, role: str, name: str, out: Path,
                remote: RemoteConfig | None = None, hosts: tuple[str, ...] = ()
                ) -> IssuedFiles:
    """Issue a ``role`` certificate named ``name`` into ``out`` (never over existing files).

    With ``remote`` (the operator's configuration), also write ``NAME.toml`` naming the same
    cluster and nodes (not for a node: its certificate replaces ``node.pem``/``node.key``,
    then SIGHUP). A node certificate names its ``hosts`` (the host of its addresses, and
    the node id, as ``init`` does).
    """
    if role not in ISSUABLE_ROLES:
        raise ConfigError(f"certs issue makes {', '.join(ISSUABLE_ROLES)} certificates, "
                          f"not {role!r}")
    check_name(name)
    if role == "node":
        if not hosts:
            raise ConfigError("a node certificate names the node's host: pass --host (the "
                              "host of its raft_address and service_address)")
        hosts = (*hosts, name) if name not in hosts else hosts
        remote = None
    elif hosts:
        raise ConfigError("--host is for node certificates only")
    cert_path, key_path, config_path = out / f"{name}.pem", out / f"{name}.key", \
        out / f"{name}.toml"
    for path in (cert_path, key_path, config_path):
        if path.exists():
            raise ConfigError(f"{path} exists; issue into another directory, or move the old "
                              "files away first (revoke the old certificate if it leaked)")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    issued = pki.issue(ca, name, role, hosts=hosts)
    pki.write_pair(issued, cert_path, key_path)
    atomic_write(out / "ca.pem", ca.cert_pem)
    written: Path | None = None
    if remote is not None:
        atomic_write(config_path, dump_toml({
            "format": CONFIG_FORMAT, "cluster_id": remote.cluster_id, "role": role,
            "ca_cert": "ca.pem", "cert": cert_path.name, "key": key_path.name,
            "timeout": remote.timeout,
            "nodes": [{"id": n.id, "address": n.address} for n in remote.nodes],
        }).encode())
        written = config_path
    return IssuedFiles(pki.describe(issued.cert_pem), cert_path, key_path, written)
