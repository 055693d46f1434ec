"""Entry point: the ``raftsso`` group, its global options and the one error handler.

Exit codes (DESIGN.md section 5): 0 success, 1 failed operation, 2 usage, 3 cluster
unavailable. Expected failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path

import click

from raftsso import __version__
from raftsso.errors import RaftssoError, exit_code_for

#: Every command: its name and where it lives ("module:attribute"). A command's module is
#: imported only when that command runs (or ``--help`` lists them all), so ``--version``
#: and ``status`` do not pay for certificates, Argon2id or the SSO store.
COMMANDS: dict[str, str] = {
    "init": "raftsso_cli.deploy:init",
    "local": "raftsso_cli.local:local",
    "node": "raftsso_cli.local:node",
    "status": "raftsso_cli.admin:status",
    "rotate": "raftsso_cli.admin:rotate",
    "transfer-leader": "raftsso_cli.admin:transfer_leader",
    "members": "raftsso_cli.members:members",
    "sso": "raftsso_cli.sso:sso",
    "keys": "raftsso_cli.lifecycle:keys",
    "backup": "raftsso_cli.backups:backup",  # the password backup, and backup keygen
    "backup-info": "raftsso_cli.lifecycle:backup_info",
    "restore": "raftsso_cli.lifecycle:restore",
    "retire": "raftsso_cli.lifecycle:retire",
    "rewrap": "raftsso_cli.lifecycle:rewrap",
    "stores": "raftsso_cli.stores:stores",
    "certs": "raftsso_cli.certs:certs",
    "agent": "raftsso_cli.agent:agent",
    "unseal": "raftsso_cli.seal:unseal",
    "rekey-seal": "raftsso_cli.seal:rekey_seal",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use (click's documented pattern)."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config", type=click.Path(dir_okay=False, path_type=Path),
              help="admin.toml (operators) or client.toml (SSO clients) of a deployment.")
# The version from raftsso itself: package metadata (importlib.metadata) costs a scan of
# every installed distribution at each start.
@click.version_option(__version__, package_name="raftsso")
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
