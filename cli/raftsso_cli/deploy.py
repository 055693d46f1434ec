"""``raftsso init``: a new deployment (CA, certificates, seal, configs), or one more node.

Apart from the operator commands of :mod:`raftsso_cli.admin` so that ``status`` and the
other everyday commands do not load the seal kinds and this command's options.
"""

from __future__ import annotations

from pathlib import Path

import click

from raftsso.seal.base import KINDS


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--nodes", default=None, type=int, help="Number of replicas (odd). [default: 3]")
@click.option("--hosts", default=None, metavar="H1,H2,H3",
              help="One node per host (addresses or names); the same ports on each.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address every node listens on (one machine).")
@click.option("--base-port", default=None, type=int,
              help="First port; each node uses three (raft, service, metrics). "
                   "[default: 7100, or after the last node with --join]")
@click.option("--join", "join", metavar="NODE_ID", default=None,
              help="Add NODE_ID's directory to the existing deployment DIRECTORY instead.")
@click.option("--seal", "seal_kind", type=click.Choice(KINDS), default="file",
              show_default=True, help="Where the seal key lives (docs/security.md, Seal).")
@click.option("--shares", type=click.IntRange(1, 255), default=5, show_default=True,
              help="shamir: unseal shares to write.")
@click.option("--threshold", type=click.IntRange(1, 255), default=3, show_default=True,
              help="shamir: shares that unseal a node.")
@click.option("--pkcs11-module", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="pkcs11: the PKCS#11 library [default: SoftHSM2's].")
@click.option("--pkcs11-token-label", default=None,
              help="pkcs11: an existing token's label [default: a SoftHSM token per node].")
@click.option("--pkcs11-pin-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="pkcs11: a 0600 file with that token's user PIN.")
def init(directory: Path, nodes: int | None, host: str, base_port: int | None,
         join: str | None, hosts: str | None, seal_kind: str, shares: int, threshold: int,
         pkcs11_module: Path | None, pkcs11_token_label: str | None,
         pkcs11_pin_file: Path | None) -> None:
    """Create a new deployment in DIRECTORY: CA, certificates, seal key, configs.

    With --join NODE_ID, prepare one more node for the existing deployment in DIRECTORY;
    start it, then run `raftsso -c DIRECTORY/admin.toml members add NODE_ID ADDRESS`.
    """
    # Certificates (cryptography) only for the command that makes them.
    from raftsso.deployment import init_deployment, join_node

    if join is not None:
        plan = join_node(directory, join, host=None if host == "127.0.0.1" else host,
                         base_port=base_port)
        click.echo(f"prepared {directory / join} (raft {plan.raft_address}, service "
                   f"{plan.service_address}); admin.toml and client.toml list it now")
        click.echo(f"next: start it, then: raftsso -c {directory / 'admin.toml'} members add "
                   f"{join} {plan.raft_address}")
        return
    base_port = 7100 if base_port is None else base_port
    host_list = [h.strip() for h in hosts.split(",") if h.strip()] if hosts else None
    if host_list and nodes is not None and nodes != len(host_list):
        raise click.BadParameter(f"--nodes {nodes} disagrees with {len(host_list)} --hosts",
                                 param_hint="--nodes")
    nodes = len(host_list) if host_list else (nodes or 3)
    from raftsso.seal.setup import SealPlan

    notes: list[str] = []
    seal_plan = SealPlan(seal_kind, shares, threshold, pkcs11_module, pkcs11_token_label,
                         pkcs11_pin_file)
    cluster_id = init_deployment(directory, nodes=nodes, host=host, base_port=base_port,
                                 hosts=host_list, seal=seal_plan, notes=notes)
    click.echo(f"created cluster {cluster_id} with {nodes} node(s) in {directory}")
    if host_list:
        click.echo("copy each nodeN directory to its host and run it there with the "
                   "raftsso@ systemd unit (see deploy/README.md)")
    else:
        click.echo(f"start it:  raftsso local up {directory}")
    if seal_kind == "file":
        click.echo(f"keep {directory / 'ca.key'} offline; every seal.key copy is as "
                   "sensitive as the master secret itself.")
    else:
        click.echo(f"keep {directory / 'ca.key'} offline.")
    for note in notes:
        click.echo(note)
    click.echo(f"once it is up, back up the master secret at once: raftsso -c "
               f"{directory / 'admin.toml'} backup --out FILE --password-file PF")
