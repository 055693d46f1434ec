"""Operator commands: ``status``, ``rotate``, ``transfer-leader`` (``init``: raftsso_cli.deploy)."""

from __future__ import annotations

import sys

import click

from raftsso.admin import AdminClient
from raftsso.cluster_status import ClusterStatus
from raftsso.protocol.ids import MAX_VERSION_ID
from raftsso_cli.common import (
    admin_client,
    print_json,
    remote_config,
    warn_not_backed_up,
)
from raftsso_cli.status_view import UNHEALTHY, status_text


def print_status(status: ClusterStatus) -> None:
    click.echo(status_text(status))


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
            click.echo(UNHEALTHY, err=True)
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
