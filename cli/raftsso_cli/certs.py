"""``raftsso certs``: certificates per service or operator, issued with the offline CA key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from raftsso import pki
from raftsso.certs import ISSUABLE_ROLES, issue_files
from raftsso.config import RemoteConfig, load_remote_config
from raftsso_cli.common import print_json


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@click.group()
def certs() -> None:
    """Issue, list and revoke client and admin certificates."""


def _operator_config(ctx: click.Context) -> RemoteConfig | None:
    path: Path | None = ctx.obj.get("config") if ctx.obj else None
    return load_remote_config(path) if path is not None else None


@certs.command()
@click.option("--role", required=True, type=click.Choice(ISSUABLE_ROLES),
              help="client: may fetch the keyring; admin: may also rotate, back up, revoke.")
@click.option("--name", required=True, help="The certificate's name (one per service).")
@click.option("--ca-key", required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The cluster CA's private key (0600; bring it from offline storage).")
@click.option("--ca-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The CA certificate [default: ca_cert of the -c configuration].")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for NAME.pem, NAME.key, ca.pem and NAME.toml.")
@click.option("--no-register", is_flag=True,
              help="Do not register the certificate with the cluster (offline issuing).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def issue(ctx: click.Context, role: str, name: str, ca_key: Path, ca_cert: Path | None,
          out: Path, no_register: bool, as_json: bool) -> None:
    """Issue a ROLE certificate named NAME into OUT."""
    remote = _operator_config(ctx)
    if ca_cert is None:
        if remote is None:
            raise click.UsageError("pass -c admin.toml (for the CA certificate and the nodes) "
                                   "or --ca-cert CA.pem")
        ca_cert = remote.ca_cert
    files = issue_files(pki.load_ca(ca_cert, ca_key), role=role, name=name, out=out,
                        remote=remote)
    info = files.info
    if as_json:
        print_json({"serial": info.serial, "name": info.name, "role": info.role,
                    "not_after": info.not_after, "cert": str(files.cert),
                    "key": str(files.key),
                    "config": str(files.config) if files.config else None})
        return
    click.echo(f"issued {info.role} certificate {info.name!r} (serial {info.serial}, valid "
               f"until {_when(info.not_after)}) into {out}")
    if files.config is not None:
        click.echo(f"the service uses it with: raftsso -c {files.config} ...")
    click.echo("put the CA key back offline", err=True)
