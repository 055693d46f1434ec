"""``raftsso stores``: the SSO stores known to the cluster, and forgetting one.

Stores become known when ``rewrap`` (a full count) or a writing SSO client (the rows it
wrote) reports on them; ``retire`` consults every one (see docs/operations.md, *Stores
known to the cluster*).
"""

from __future__ import annotations

import datetime as dt

import click

from raftsso_cli.common import admin_client, print_json, table


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array: one object per known store.")
@click.pass_context
def stores(ctx: click.Context, as_json: bool) -> None:
    """List the SSO stores known to the cluster and the key versions each still uses."""
    if ctx.invoked_subcommand is not None:
        return
    with admin_client(ctx) as client:
        known = client.stores()
    if as_json:
        print_json([s.to_wire() for s in known])
        return
    if not known:
        click.echo("no store has reported yet (rewrap reports its store; so do SSO clients "
                   "after writing)")
        return
    click.echo(table(
        ["id", "kind", "reported", "full count", "versions in use (rows)"],
        [[s.id, s.kind, _when(s.reported_at), _when(s.counted_at),
          ", ".join(f"{v}: {n}" for v, n in sorted(s.versions_in_use.items()) if n) or "none"]
         for s in known]))


@stores.command("forget")
@click.argument("store_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def forget(ctx: click.Context, store_id: str, yes: bool) -> None:
    """Drop STORE_ID from the known stores (it no longer exists).

    retire stops checking it: data still in that store under a retired version becomes
    unreadable. A store that is still used reappears at its next report.
    """
    if not yes:
        click.confirm(f"Forget store {store_id}? retire will no longer check it; rows it "
                      "still holds under a retired version become unreadable", abort=True)
    with admin_client(ctx) as client:
        result = client.store_forget(store_id)
    click.echo(f"store {result.store_id} forgotten")
