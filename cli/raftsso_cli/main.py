"""Entry point: the ``raftsso`` group, its global options and the one error handler.

Exit codes (DESIGN.md section 5): 0 success, 1 failed operation, 2 usage, 3 cluster
unavailable. Expected failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

from raftsso.errors import RaftssoError, exit_code_for
from raftsso_cli import admin, agent, lifecycle, local, members, sso


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config", type=click.Path(dir_okay=False, path_type=Path),
              help="admin.toml (operators) or client.toml (SSO clients) of a deployment.")
@click.version_option(package_name="raftsso")
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """raftsso: a Raft-replicated master secret store.

    The highly available successor of the ENTSSO Master Secret Server: three or five
    replicas agree on a versioned master secret, and losing one elects a new primary
    within about a second, with no operator.

    \b
    Quick start:
      raftsso init ./cluster
      raftsso local up ./cluster
      raftsso -c ./cluster/admin.toml status
    """
    ctx.obj = {"config": config}


cli.add_command(admin.init)
cli.add_command(local.local)
cli.add_command(local.node)
cli.add_command(admin.status)
cli.add_command(admin.rotate)
cli.add_command(admin.transfer_leader)
cli.add_command(members.members)
cli.add_command(sso.sso)
cli.add_command(agent.agent)
for _command in (lifecycle.keys, lifecycle.backup, lifecycle.backup_info, lifecycle.restore,
                 lifecycle.retire, lifecycle.rewrap):
    cli.add_command(_command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except RaftssoError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_code_for(exc))
    except BrokenPipeError:
        # The reader went away (`... | head`): nothing left to say, and say it quietly.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stops the exit-time flush
        sys.exit(1)
    except OSError as exc:
        click.echo(f"error: {exc.strerror or exc}"
                   + (f": {exc.filename}" if getattr(exc, "filename", None) else ""), err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    else:
        sys.exit(0)
