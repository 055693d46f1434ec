"""Helpers shared by the click commands."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from raftsso.admin import AdminClient
from raftsso.config import RemoteConfig, load_remote_config
from raftsso.errors import ConfigError
from raftsso.protocol.node_status import VersionInfo
from raftsso_cli.status_view import not_backed_up_warning
from raftsso_cli.status_view import table as table  # shared by the commands


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


def warn_not_backed_up(versions: Sequence[VersionInfo]) -> None:
    warning = not_backed_up_warning(versions)
    if warning:
        click.echo(warning, err=True)
