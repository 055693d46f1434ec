"""``raftsso certs``: certificates per service or operator, issued with the offline CA key."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import click

from raftsso import pki
from raftsso.admin import AdminClient
from raftsso.certs import ISSUABLE_ROLES, issue_files
from raftsso.config import RemoteConfig, load_remote_config
from raftsso.errors import ClusterUnavailable
from raftsso_cli.common import admin_client, print_json, table


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@click.group()
def certs() -> None:
    """Issue, list and revoke client and admin certificates."""


def _register(remote: RemoteConfig, info: pki.CertInfo) -> tuple[bool, str]:
    """Register with the cluster if it answers (a short deadline: issuing works offline)."""
    if remote.role != "admin":
        return False, f"{remote.path} is not an admin configuration"
    try:
        with AdminClient(dataclasses.replace(remote, timeout=min(remote.timeout, 3.0))) as c:
            c.cert_register(info)
    except ClusterUnavailable as exc:
        return False, str(exc)
    return True, ""


def _operator_config(ctx: click.Context) -> RemoteConfig | None:
    path: Path | None = ctx.obj.get("config") if ctx.obj else None
    return load_remote_config(path) if path is not None else None


@certs.command()
@click.option("--role", required=True, type=click.Choice(ISSUABLE_ROLES),
              help="client: may fetch the keyring; admin: may also rotate, back up, revoke; "
                   "node: a replacement node certificate (then SIGHUP the node).")
@click.option("--host", "hosts", multiple=True,
              help="A node certificate's host (address or DNS name); repeatable.")
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
def issue(ctx: click.Context, role: str, hosts: tuple[str, ...], name: str, ca_key: Path,
          ca_cert: Path | None, out: Path, no_register: bool, as_json: bool) -> None:
    """Issue a ROLE certificate named NAME into OUT."""
    remote = _operator_config(ctx)
    if ca_cert is None:
        if remote is None:
            raise click.UsageError("pass -c admin.toml (for the CA certificate and the nodes) "
                                   "or --ca-cert CA.pem")
        ca_cert = remote.ca_cert
    files = issue_files(pki.load_ca(ca_cert, ca_key), role=role, name=name, out=out,
                        remote=remote, hosts=hosts)
    info = files.info
    registered, problem = False, ""
    if remote is not None and not no_register:
        registered, problem = _register(remote, info)
    if as_json:
        print_json({"serial": info.serial, "name": info.name, "role": info.role,
                    "not_after": info.not_after, "cert": str(files.cert),
                    "key": str(files.key),
                    "config": str(files.config) if files.config else None,
                    "registered": registered})
    else:
        click.echo(f"issued {info.role} certificate {info.name!r} (serial {info.serial}, "
                   f"valid until {_when(info.not_after)}) into {out}")
    if problem:
        click.echo(f"warning: not registered with the cluster ({problem}); it works all the "
                   f"same. Register it later to list it: raftsso -c ADMIN.toml certs register "
                   f"{files.cert}", err=True)
    if as_json:
        return
    if files.config is not None:
        click.echo(f"the service uses it with: raftsso -c {files.config} ...")
    click.echo("put the CA key back offline", err=True)


@certs.command()
@click.argument("cert", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.pass_context
def register(ctx: click.Context, cert: Path) -> None:
    """Register CERT (a PEM file made by `certs issue` while the cluster was down)."""
    info = pki.describe(cert.read_bytes())
    with admin_client(ctx, role="admin") as client:
        client.cert_register(info)
    click.echo(f"registered {info.role} certificate {info.name!r} (serial {info.serial})")


@certs.command()
@click.argument("target", required=False)
@click.option("--cert", "cert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Revoke the certificate in this PEM file (its serial and name).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def revoke(ctx: click.Context, target: str | None, cert: Path | None, as_json: bool) -> None:
    """Revoke TARGET: every registered certificate of that name, or one serial.

    Every node refuses the certificate from then on and closes its open connections
    within a second; a revoked node certificate cannot rejoin the Raft mesh.
    """
    name = ""
    if cert is not None:
        if target is not None:
            raise click.UsageError("pass TARGET or --cert FILE, not both")
        info = pki.describe(cert.read_bytes())
        target, name = info.serial, info.name
    if target is None:
        raise click.UsageError("pass the certificate's NAME or SERIAL (or --cert FILE)")
    with admin_client(ctx, role="admin") as client:
        result = client.cert_revoke(target, name=name)
    if as_json:
        print_json(result.to_wire())
        return
    already = [s for s in result.serials if s not in result.revoked]
    if result.revoked:
        click.echo(f"revoked {', '.join(result.revoked)}")
    if already:
        click.echo(f"already revoked: {', '.join(already)}")


@certs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Certificates registered with the cluster (certs issue) and every revocation."""
    with admin_client(ctx, role="admin") as client:
        result = client.certs()
    if as_json:
        print_json(result.to_wire())
        return
    click.echo(table(["name", "role", "serial", "registered", "expires", "revoked", "by"],
                     [[c.name or "-", c.role or "-", c.serial, _when(c.registered),
                       _when(c.not_after), _when(c.revoked), c.revoked_by or "-"]
                      for c in result.certificates]))
