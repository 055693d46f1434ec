"""``raftsso members``: list, add and remove cluster members."""

from __future__ import annotations

import click

from raftsso_cli.common import admin_client, print_json, table


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}s"
    return str(value)


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def members(ctx: click.Context, as_json: bool) -> None:
    """List the members as the leader sees them (or add/remove one)."""
    if ctx.invoked_subcommand is not None:
        return
    with admin_client(ctx) as client:
        # The leader's view has match indexes and contact times for everyone.
        view = client.members()
    if as_json:
        print_json({"leader": view.leader, "members": [m.to_wire() for m in view.members]})
        return
    click.echo(table(
        ["id", "address", "raft address", "role", "reachable", "match index", "lag",
         "last contact"],
        [[m.id, m.address or "-", m.raft_address, _fmt(m.role), _fmt(m.reachable),
          _fmt(m.match_index), _fmt(m.lag), _fmt(m.last_contact)] for m in view.members]))


@members.command("add")
@click.argument("node_id")
@click.argument("address")
@click.option("--service-address", default=None,
              help="The node's service address (default: ADDRESS's port + 1, as init lays out).")
@click.pass_context
def add(ctx: click.Context, node_id: str, address: str, service_address: str | None) -> None:
    """Add NODE_ID, whose Raft address is ADDRESS (start the node first)."""
    with admin_client(ctx, role="admin") as client:
        result = client.member_add(node_id, address, service_address)
    verb = "added" if result.changed else "was already a member"
    click.echo(f"{node_id} {verb}; members: {', '.join(result.members)}")


@members.command("remove")
@click.argument("node_id")
@click.pass_context
def remove(ctx: click.Context, node_id: str) -> None:
    """Remove NODE_ID for good (it can never rejoin with its old data)."""
    with admin_client(ctx, role="admin") as client:
        result = client.member_remove(node_id)
    click.echo(f"{node_id} removed; members: {', '.join(result.members)}")
