"""Backups to a public key: ``backup keygen``, and opening either kind of backup file.

``backup`` stays the password backup it was (:mod:`raftsso_cli.lifecycle`); this module
makes it a group too, so that ``raftsso backup keygen --out KEY`` sits beside it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import click

from raftsso import backup as backups
from raftsso import backup_recipient as recipients
from raftsso_cli import lifecycle
from raftsso_cli.common import print_json


def open_backup_file(file: Path, password: bytes | None, identity: Path | None
                     ) -> backups.BackupInfo:
    """Open a backup with whichever secret its format needs (one clear error otherwise)."""
    blob = file.read_bytes()
    if recipients.is_recipient_backup(blob):
        if identity is None:
            key_id = recipients.read_recipient_info(blob).kdf["key_id"]
            raise click.UsageError(f"{file} is encrypted to a public key (key {key_id}): "
                                   "pass --identity KEY (made by `raftsso backup keygen`)")
        return recipients.open_backup(blob, recipients.load_identity(identity))
    if password is None:
        raise click.UsageError(f"{file} is a password backup: pass --password-file PF")
    return backups.open_backup(blob, password)


@click.command()
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The identity file to write (0600); the recipient goes to OUT.pub.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def keygen(out: Path, as_json: bool) -> None:
    """Make a key pair for unattended backups: OUT (the identity: keep it offline; it opens
    every backup) and OUT.pub (the recipient: `recipient = ...` in node.toml's [backup])."""
    identity = recipients.keygen(out)
    pub = recipients.public_path(out)
    if as_json:
        print_json({"identity": str(out), "recipient": str(pub),
                    "key_id": identity.recipient.key_id})
        return
    click.echo(f"wrote {out} (identity, 0600) and {pub} (recipient); key id "
               f"{identity.recipient.key_id}")
    click.echo(f"give {pub} to the nodes ([backup] recipient = ...); keep {out} offline: "
               "`raftsso -c admin.toml restore FILE --identity KEY` needs it", err=True)


def with_subcommands(command: click.Command, *subcommands: click.Command) -> click.Group:
    """``command`` as a group that also has ``subcommands``: ``backup --out F ...`` runs
    the command as before, ``backup keygen ...`` the subcommand.

    Options the command requires are checked only when no subcommand runs (a group parses
    its own options before it sees the subcommand's name).
    """
    params = [copy.copy(p) for p in command.params]
    required = [p for p in params if p.required]
    for p in required:
        p.required = False

    @click.pass_context
    def callback(ctx: click.Context, /, **kwargs: Any) -> None:
        if ctx.invoked_subcommand is not None:
            return
        for p in required:
            if kwargs.get(p.name or "") is None:
                raise click.MissingParameter(ctx=ctx, param=p)
        ctx.invoke(command, **kwargs)

    group = click.Group(command.name, commands=subcommands, callback=callback, params=params,
                        help=command.help, invoke_without_command=True,
                        short_help=command.short_help,
                        subcommand_metavar="[keygen] ...")
    return group



#: ``backup`` (the password backup of raftsso_cli.lifecycle) with ``backup keygen``.
backup = with_subcommands(lifecycle.backup, keygen)
