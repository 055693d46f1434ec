"""Helpers shared by the click commands."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from raftsso.admin import AdminClient
from raftsso.config import RemoteConfig, load_remote_config
from raftsso.errors import ConfigError
from raftsso.keyring import KeyState
from raftsso.protocol.node_status import VersionInfo


def remote_config(ctx: click.Context, role: str | None = None) -> RemoteConfig:
    path: Path | None = ctx.obj.get("config") if ctx.obj else None
    if path is None:
        raise click.UsageError("this command needs -c DIR/admin.toml (or client.toml)")
    cfg = load_remote_config(path)
    if role is not None and cfg.role != role:
        raise ConfigError(f"{path} is a {cfg.role!r} configuration; this command needs "
                          f"{role!r} (use admin.toml)")
    return cfg


def admin_client(ctx: click.Context, role: str | None = None) -> AdminClient:
    """The typed client of the deployment in ``-c FILE`` (``role``: the file must be one)."""
    return AdminClient(remote_config(ctx, role))


def print_json(obj: object) -> None:
    import json  # only the --json outputs need it

    click.echo(json.dumps(obj, indent=None, sort_keys=False, default=str))


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def warn_not_backed_up(versions: Sequence[VersionInfo]) -> None:
    missing = [str(v.id) for v in versions
               if not v.backed_up and v.state is not KeyState.RETIRED]
    if missing:
        click.echo(f"warning: version(s) {', '.join(missing)} were never backed up; run "
                   "`raftsso -c admin.toml backup --out FILE --password-file PF`", err=True)
