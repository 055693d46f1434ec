"""``raftsso agent run|health``: the SSO service of one host (docs/agent.md)."""

from __future__ import annotations

from pathlib import Path

import click

from raftsso_cli.common import print_json


@click.group()
def agent() -> None:
    """The SSO agent: applications in any language call it on a Unix socket."""


@agent.command("run")
@click.option("--config", "config", required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="agent.toml (written by `raftsso init`).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def run(config: Path, log_level: str) -> None:
    """Serve the agent of CONFIG on its Unix socket until SIGTERM."""
    from raftsso.agent.service import run_agent
    from raftsso.runner import setup_logging

    setup_logging(log_level)
    raise SystemExit(run_agent(config))


@agent.command("health")
@click.option("--config", "config", required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="agent.toml of the agent to ask.")
def health(config: Path) -> None:
    """Ask a running agent for its health (JSON); exit 3 when its cache is stale."""
    from raftsso.agent.client import open_agent

    with open_agent(config) as client:
        state = client.health()
    print_json(state)
    if state.get("status") != "ok":
        raise SystemExit(3)
