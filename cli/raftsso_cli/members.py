"""``raftsso members``: list, add and remove cluster members."""

from __future__ import annotations

import secrets
from typing import Any

import click

from raftsso.config import split_address
from raftsso.remote import ClusterClient
from raftsso_cli.common import print_json, remote_config, table


def _fmt(value: Any) -> str:
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
    cfg = remote_config(ctx)
    with ClusterClient.from_config(cfg) as client:
        # The leader's view has match indexes and contact times for everyone.
        view = client.call_leader("members", {"require_leader": True})
    rows = view["members"]
    if as_json:
        print_json({"leader": view["leader"], "members": rows})
        return
    click.echo(table(
        ["id", "address", "raft address", "role", "reachable", "match index", "lag",
         "last contact"],
        [[r["id"], r["address"] or "-", r["raft_address"], _fmt(r["role"]),
          _fmt(r["reachable"]), _fmt(r["match_index"]), _fmt(r["lag"]),
          _fmt(r["last_contact"])] for r in rows]))


@members.command("add")
@click.argument("node_id")
@click.argument("address")
@click.option("--service-address", default=None,
              help="The node's service address (default: ADDRESS's port + 1, as init lays out).")
@click.pass_context
def add(ctx: click.Context, node_id: str, address: str, service_address: str | None) -> None:
    """Add NODE_ID, whose Raft address is ADDRESS (start the node first)."""
    cfg = remote_config(ctx, role="admin")
    host, port = split_address(address)
    service = service_address or f"{host}:{port + 1}"
    with ClusterClient.from_config(cfg) as client:
        result = client.call_leader("member_add", {
            "request_id": secrets.token_bytes(16), "node_id": node_id,
            "raft_address": address, "service_address": service}, deadline=30.0)
    verb = "added" if result.get("changed", True) else "was already a member"
    click.echo(f"{node_id} {verb}; members: {', '.join(result['members'])}")


@members.command("remove")
@click.argument("node_id")
@click.pass_context
def remove(ctx: click.Context, node_id: str) -> None:
    """Remove NODE_ID for good (it can never rejoin with its old data)."""
    cfg = remote_config(ctx, role="admin")
    with ClusterClient.from_config(cfg) as client:
        result = client.call_leader("member_remove", {
            "request_id": secrets.token_bytes(16), "node_id": node_id}, deadline=30.0)
    click.echo(f"{node_id} removed; members: {', '.join(result['members'])}")
