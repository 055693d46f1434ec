"""Seal commands: ``unseal NODE --share-file F`` and ``rekey-seal``."""

from __future__ import annotations

from pathlib import Path

import click

from raftsso_cli.common import admin_client, print_json


@click.command()
@click.argument("node_id")
@click.option("--share-file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="One unseal share (a 0600 file written by init or rekey-seal).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def unseal(ctx: click.Context, node_id: str, share_file: Path, as_json: bool) -> None:
    """Give NODE_ID one unseal share (shamir seal); it serves once enough were given.

    The share travels over admin mTLS only; the node never logs it. Exit 0 when the share
    was taken (``--json`` says whether the node is still sealed), 1 if it was refused.
    """
    with admin_client(ctx, role="admin") as client:
        view = client.unseal(node_id, share_file)
    if as_json:
        print_json(view.to_wire())
    elif view.sealed:
        click.echo(f"{node_id} is still sealed: {view.supplied or 0} of "
                   f"{view.threshold or '?'} shares supplied")
    else:
        click.echo(f"{node_id} is unsealed (seal generation {view.seal_generation})")


@click.command("rekey-seal")
@click.option("--shares", type=click.IntRange(1, 255), default=None,
              help="shamir: how many new shares to write.")
@click.option("--threshold", type=click.IntRange(1, 255), default=None,
              help="shamir: how many of them unseal a node.")
@click.option("--shares-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="shamir: where to write the new shares (new or empty) "
                   "[default: seal-shares-gN beside admin.toml].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def rekey_seal(ctx: click.Context, shares: int | None, threshold: int | None,
               shares_dir: Path | None, as_json: bool) -> None:
    """Replace the seal key: a new key on every node (file, pkcs11) or new shares (shamir),
    every live version re-sealed through the log, the old key destroyed everywhere.

    Every node must be up and unsealed. Interrupted, run it again: it finishes a rekey
    that committed, or starts over one that did not.
    """
    with admin_client(ctx, role="admin") as client:
        done = client.rekey_seal(shares_dir=shares_dir, shares=shares, threshold=threshold,
                                 progress=lambda line: click.echo(line, err=True))
    if as_json:
        print_json({"generation": done.generation, "seal": done.kind,
                    "share_files": [str(p) for p in done.share_files]})
        return
    click.echo(f"the seal key is now generation {done.generation} ({done.kind}); sealed "
               "blobs of older generations no longer open")
    if done.share_files:
        click.echo(f"new unseal shares in {done.share_files[0].parent}: give each file to "
                   "its key holder and remove it; the old shares are useless now")
