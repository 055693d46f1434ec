"""``raftsso local up/down`` and ``raftsso node run``."""

from __future__ import annotations

from pathlib import Path

import click

from raftsso import local as local_cluster
from raftsso_cli.admin import print_status


@click.group()
def local() -> None:
    """Run every node of a deployment directory on this machine."""


@local.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for a leader.")
@click.option("--agent", "agent", is_flag=True,
              help="Also start the SSO agent of DIRECTORY/agent.toml (docs/agent.md).")
def up(directory: Path, timeout: float, agent: bool) -> None:
    """Start the nodes of DIRECTORY in the background and wait for a leader."""
    status = local_cluster.up(directory, timeout=timeout, agent=agent)
    click.echo(f"cluster {status['cluster_id']} is up: leader {status['leader']}, "
               f"primary version {status['primary_version']}")
    click.echo(f"status: raftsso -c {directory / 'admin.toml'} status")
    if agent:
        click.echo(f"agent: curl --unix-socket {directory / 'agent.sock'} "
                   "http://localhost/v1/health")


@local.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
def down(directory: Path) -> None:
    """Stop the nodes of DIRECTORY started by `local up`."""
    stopped = local_cluster.down(directory)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "no node was running")


@click.group()
def node() -> None:
    """Run a node in the foreground (for systemd or a terminal)."""


@node.command("run")
@click.argument("config", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def run(config: Path, log_level: str) -> None:
    """Run the node described by CONFIG (a node.toml) until SIGTERM."""
    from raftsso import memscrub

    if memscrub.wanted(config):
        memscrub.reexec_scrubbed()  # first, before the heavy imports (same pid)
    from raftsso.runner import run_node, setup_logging

    setup_logging(log_level)
    raise SystemExit(run_node(config))


__all__ = ["down", "local", "node", "print_status", "run", "up"]
