"""Secret lifecycle commands: ``keys``, ``backup``, ``backup-info``, ``restore``,
``retire``, ``rewrap``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from raftsso.admin import AdminClient
from raftsso.errors import RaftssoError
from raftsso.fsutil import read_private
from raftsso.protocol.node_status import NodeStatus
from raftsso_cli.common import admin_client, print_json, remote_config, table, warn_not_backed_up


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _password(path: Path) -> bytes:
    from raftsso import backup as backups  # Argon2id: loaded by the commands that use it

    raw = read_private(path, limit=4096)
    password = raw[:-1] if raw.endswith(b"\n") else raw
    password = password[:-1] if password.endswith(b"\r") else password
    backups.check_password(password)
    return password


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def keys(ctx: click.Context, as_json: bool) -> None:
    """List every master secret version: state, creation, fingerprint, backed up."""
    with admin_client(ctx) as client:
        status = client.status()
    if status.leader is None:
        raise RaftssoError("no leader answered; the version list may be stale, so none "
                           "is shown (see `raftsso status`)")
    versions = status.versions
    leader = status.leader_status
    counts = dict(leader.encryptions) if leader is not None else {}
    if as_json:
        print_json({"primary_version": status.primary_version,
                    "versions": [{**v.to_wire(), "encryptions": counts.get(v.id, 0)}
                                 for v in versions],
                    **policy_json(leader)})
        return
    rows = [[str(v.id), v.state.value, _when(v.created), v.fingerprint,
             "yes" if v.backed_up else "NO", str(counts.get(v.id, 0))] for v in versions]
    click.echo(table(["version", "state", "created", "fingerprint", "backed up",
                      "encryptions"], rows))
    print_policy(leader)
    warn_not_backed_up(versions)


def policy_json(leader: NodeStatus | None) -> dict[str, object]:
    """``keys --json``'s rotation policy and scheduled backup fields (the leader's)."""
    if leader is None:
        return {"policy": None, "last_backup": None}
    return {"policy": leader.policy.to_wire(), "last_backup": leader.last_backup}


def print_policy(leader: NodeStatus | None) -> None:
    """The rotation policy under ``keys``' table."""
    if leader is None:
        return
    p = leader.policy
    period = f"every {p.rotation_period:g} s" if p.rotation_period else "off"
    limit = (f"{p.max_encryptions} per version (rotates at {p.rotate_at})"
             if p.max_encryptions else "off")
    click.echo(f"rotation policy: period {period}; max encryptions {limit}")
    if p.next_rotation is not None:
        when = dt.datetime.fromtimestamp(p.next_rotation, dt.UTC)
        click.echo(f"next rotation by period: {when:%Y-%m-%d %H:%M:%SZ}")


@click.command()
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The backup file to write (0600).")
@click.option("--password-file", required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A 0600 file holding the backup password (12+ characters).")
@click.option("--reminder", default="", help="A password reminder, stored readable in the file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file at --out.")
@click.pass_context
def backup(ctx: click.Context, out: Path, password_file: Path, reminder: str,
           overwrite: bool) -> None:
    """Write every non-retired version to a password-protected backup file."""
    cfg = remote_config(ctx, role="admin")
    password = _password(password_file)
    with AdminClient(cfg) as client:
        written = client.backup(out, password, reminder=reminder, overwrite=overwrite)
    click.echo(f"backed up version(s) {', '.join(str(v) for v in written.versions)} of "
               f"cluster {written.cluster_id} to {out}")
    if reminder:
        click.echo("note: the reminder is stored readable; it must not reveal the password",
                   err=True)


@click.command("backup-info")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def backup_info(file: Path, as_json: bool) -> None:
    """Show a backup's cluster, versions and password reminder (no password needed)."""
    from raftsso.backup_recipient import read_any_info

    info = read_any_info(file.read_bytes())  # a password or a public-key backup
    if as_json:
        print_json({"cluster_id": info.cluster_id, "created": info.created,
                    "reminder": info.reminder, "primary_version": info.primary,
                    "versions": [{"id": v.id, "state": v.state, "fingerprint": v.fingerprint,
                                  "created": v.created} for v in info.versions],
                    "kdf": info.kdf})
        return
    click.echo(f"cluster   {info.cluster_id}")
    click.echo(f"written   {_when(info.created)}")
    click.echo(f"reminder  {info.reminder or '(none)'}")
    if "key_id" in info.kdf:
        click.echo(f"recipient {info.kdf['name']} key {info.kdf['key_id']} (restore it with "
                   "--identity KEY)")
    else:
        click.echo(f"kdf       {info.kdf['name']} {info.kdf['memory_kib']} KiB, "
                   f"{info.kdf['iterations']} passes, {info.kdf['lanes']} lanes")
    click.echo(table(["version", "state", "created", "fingerprint"],
                     [[str(v.id), v.state, _when(v.created), v.fingerprint]
                      for v in info.versions]))
    click.echo("(the header is verified only when the backup is opened with its password)")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--password-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The password file of a password backup.")
@click.option("--identity", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The identity (from `backup keygen`) of a backup made to its public key.")
@click.option("--force", is_flag=True,
              help="Restore a backup of another cluster (disaster recovery into a new one): "
                   "replaces the target's first secret if the target is brand new.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation with --force.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def restore(ctx: click.Context, file: Path, password_file: Path | None,
            identity: Path | None, force: bool, yes: bool, as_json: bool) -> None:
    """Load a backup into the cluster: merges, never drops or overwrites a newer version."""
    cfg = remote_config(ctx, role="admin")
    from raftsso_cli.backups import open_backup_file

    info = open_backup_file(file, _password(password_file) if password_file else None,
                            identity)
    if force and not yes:
        click.confirm(f"Restore cluster {info.cluster_id}'s backup with --force? If the target "
                      "has only its first secret, never backed up, that secret is replaced, "
                      "and data encrypted under it becomes unreadable", abort=True)
    with AdminClient(cfg) as client:
        result = client.restore(info, force=force)
    if as_json:
        print_json(result.to_wire())
        return
    click.echo(f"restored from {file}: added {list(result.added) or 'none'}, "
               f"revived {list(result.revived) or 'none'}, "
               f"replaced {list(result.replaced) or 'none'}"
               f"; primary version is {result.primary_version}")


@click.command()
@click.argument("version", type=int)
@click.option("--store", metavar="PATH|URI",
              help="Count this SSO store now and report it to the cluster first.")
@click.option("--force", is_flag=True,
              help="Retire even if a store or a recent client may still use VERSION.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation with --force.")
@click.pass_context
def retire(ctx: click.Context, version: int, store: str | None, force: bool,
           yes: bool) -> None:
    """Destroy VERSION's key material.

    Refused, with the store named, while any SSO store known to the cluster (see
    `raftsso stores`) reports rows under VERSION or has not been counted since VERSION
    stopped being primary: rewrap each store first.
    """
    from raftsso_cli.sso import count_store, report_store

    cfg = remote_config(ctx, role="admin")
    if store is not None:
        where, report = count_store(ctx, store, cfg)
        report_store(cfg, report)
        click.echo(f"store {report.store_id} ({where}): "
                   f"{report.versions_in_use.get(version, 0)} row(s) under version {version}, "
                   "reported to the cluster")
    if force and not yes:
        click.confirm(f"Destroy version {version} for good? Data still under it becomes "
                      "unreadable", abort=True)
    with AdminClient(cfg) as client:
        result = client.retire(version, force=force)
    click.echo(f"version {result.version} is {result.state}")


@click.command()
@click.option("--store", metavar="PATH|URI",
              help="The SSO store (default: store = ... in the config).")
@click.option("--batch", default=2000, show_default=True, help="Rows per transaction.")
@click.pass_context
def rewrap(ctx: click.Context, store: str | None, batch: int) -> None:
    """Re-encrypt every store row that is not under the primary version.

    Batches are single transactions; the command is idempotent and can be stopped and
    run again at any moment.
    """
    from raftsso_cli.sso import run_rewrap

    run_rewrap(ctx, store, batch)
