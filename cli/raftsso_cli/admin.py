"""Operator commands: ``init``, ``status``, ``rotate``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from raftsso.admin import AdminClient
from raftsso.cluster_status import ClusterStatus
from raftsso.protocol.ids import MAX_VERSION_ID
from raftsso.seal.base import KINDS
from raftsso_cli.common import admin_client, print_json, remote_config, table
from raftsso_cli.lifecycle import warn_not_backed_up


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--nodes", default=None, type=int, help="Number of replicas (odd). [default: 3]")
@click.option("--hosts", default=None, metavar="H1,H2,H3",
              help="One node per host (addresses or names); the same ports on each.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address every node listens on (one machine).")
@click.option("--base-port", default=None, type=int,
              help="First port; each node uses three (raft, service, metrics). "
                   "[default: 7100, or after the last node with --join]")
@click.option("--join", "join", metavar="NODE_ID", default=None,
              help="Add NODE_ID's directory to the existing deployment DIRECTORY instead.")
@click.option("--seal", "seal_kind", type=click.Choice(KINDS), default="file",
              show_default=True, help="Where the seal key lives (docs/security.md, Seal).")
@click.option("--shares", type=click.IntRange(1, 255), default=5, show_default=True,
              help="shamir: unseal shares to write.")
@click.option("--threshold", type=click.IntRange(1, 255), default=3, show_default=True,
              help="shamir: shares that unseal a node.")
@click.option("--pkcs11-module", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="pkcs11: the PKCS#11 library [default: SoftHSM2's].")
@click.option("--pkcs11-token-label", default=None,
              help="pkcs11: an existing token's label [default: a SoftHSM token per node].")
@click.option("--pkcs11-pin-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="pkcs11: a 0600 file with that token's user PIN.")
def init(directory: Path, nodes: int | None, host: str, base_port: int | None,
         join: str | None, hosts: str | None, seal_kind: str, shares: int, threshold: int,
         pkcs11_module: Path | None, pkcs11_token_label: str | None,
         pkcs11_pin_file: Path | None) -> None:
    """Create a new deployment in DIRECTORY: CA, certificates, seal key, configs.

    With --join NODE_ID, prepare one more node for the existing deployment in DIRECTORY;
    start it, then run `raftsso -c DIRECTORY/admin.toml members add NODE_ID ADDRESS`.
    """
    # Certificates (cryptography) only for the command that makes them.
    from raftsso.deployment import init_deployment, join_node

    if join is not None:
        plan = join_node(directory, join, host=None if host == "127.0.0.1" else host,
                         base_port=base_port)
        click.echo(f"prepared {directory / join} (raft {plan.raft_address}, service "
                   f"{plan.service_address}); admin.toml and client.toml list it now")
        click.echo(f"next: start it, then: raftsso -c {directory / 'admin.toml'} members add "
                   f"{join} {plan.raft_address}")
        return
    base_port = 7100 if base_port is None else base_port
    host_list = [h.strip() for h in hosts.split(",") if h.strip()] if hosts else None
    if host_list and nodes is not None and nodes != len(host_list):
        raise click.BadParameter(f"--nodes {nodes} disagrees with {len(host_list)} --hosts",
                                 param_hint="--nodes")
    nodes = len(host_list) if host_list else (nodes or 3)
    from raftsso.seal.setup import SealPlan

    notes: list[str] = []
    seal_plan = SealPlan(seal_kind, shares, threshold, pkcs11_module, pkcs11_token_label,
                         pkcs11_pin_file)
    cluster_id = init_deployment(directory, nodes=nodes, host=host, base_port=base_port,
                                 hosts=host_list, seal=seal_plan, notes=notes)
    click.echo(f"created cluster {cluster_id} with {nodes} node(s) in {directory}")
    if host_list:
        click.echo("copy each nodeN directory to its host and run it there with the "
                   "raftsso@ systemd unit (see deploy/README.md)")
    else:
        click.echo(f"start it:  raftsso local up {directory}")
    if seal_kind == "file":
        click.echo(f"keep {directory / 'ca.key'} offline; every seal.key copy is as "
                   "sensitive as the master secret itself.")
    else:
        click.echo(f"keep {directory / 'ca.key'} offline.")
    for note in notes:
        click.echo(note)
    click.echo(f"once it is up, back up the master secret at once: raftsso -c "
               f"{directory / 'admin.toml'} backup --out FILE --password-file PF")


def _fmt(value: object, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}{suffix}"
    return f"{value}{suffix}"


def print_status(status: ClusterStatus) -> None:
    rows = [[n.id, n.address, _fmt(n.reachable), _fmt(n.role), _fmt(n.term),
             _fmt(n.commit_index), _fmt(n.primary_version), _fmt(n.last_contact, "s"),
             _fmt(n.lag), _fmt(n.healthy),
             _fmt(n.sealed)]
            for n in status.nodes]
    click.echo(f"cluster {status.cluster_id or '?'}  leader {status.leader or 'NONE'}  "
               f"quorum {_fmt(status.has_quorum)}  "
               f"primary version {_fmt(status.primary_version)}  "
               f"failure tolerance {status.failure_tolerance}")
    click.echo(table(["node", "address", "reachable", "role", "term", "commit index",
                      "primary version", "last contact", "lag", "healthy",
                      "sealed"], rows))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show every node's view; exit 0 with a leader and a quorum, 3 without."""
    with admin_client(ctx) as client:
        result = client.status()
    if as_json:
        view = result.to_dict()
        print_json({k: view[k] for k in ("cluster_id", "leader", "has_quorum",
                                         "primary_version", "failure_tolerance", "nodes")})
    else:
        print_status(result)
        warn_not_backed_up(result.versions)
        if not result.healthy:
            click.echo("no leader with a quorum: writes (rotation) are unavailable; "
                       "SSO clients keep decrypting with their cached secrets", err=True)
    sys.exit(0 if result.healthy else 3)


@click.command()
@click.option("--now", is_flag=True,
              help="Make the new version primary at once instead of staging it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--timeout", default=15.0, show_default=True,
              help="Seconds to keep looking for a leader with a quorum.")
@click.option("--expect-primary", type=click.IntRange(1, MAX_VERSION_ID), default=None,
              help="Only rotate if the primary is still this version (compare-and-set).")
@click.pass_context
def rotate(ctx: click.Context, now: bool, as_json: bool, timeout: float,
           expect_primary: int | None) -> None:
    """Generate a new master secret version (staged unless --now)."""
    with admin_client(ctx, role="admin") as client:
        # One request id for every retry: the rotation is applied once.
        result = client.rotate(now=now, expect_primary=expect_primary, deadline=timeout)
    if as_json:
        print_json(result.to_wire())
    else:
        click.echo(f"version {result.version} is {result.state}; primary version is "
                   f"{result.primary_version}")
        click.echo("back up the new secret now: raftsso -c admin.toml backup --out FILE "
                   "--password-file PF", err=True)


@click.command("transfer-leader")
@click.argument("node_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def transfer_leader(ctx: click.Context, node_id: str, as_json: bool) -> None:
    """Make NODE_ID the leader (the primary), and wait until it is.

    The seed's "designate a new master secret server manually", without the restore.
    """
    cfg = remote_config(ctx, role="admin")
    if node_id not in {n.id for n in cfg.nodes}:
        raise click.BadParameter(f"{node_id} is not in {cfg.path} "
                                 f"({', '.join(n.id for n in cfg.nodes)})",
                                 param_hint="NODE_ID")
    with AdminClient(cfg) as client:
        result = client.transfer_leader(node_id)
    if as_json:
        print_json(result.to_wire())
    elif result.changed:
        click.echo(f"{node_id} is now the leader (term {result.term})")
    else:
        click.echo(f"{node_id} is already the leader (term {result.term})")
