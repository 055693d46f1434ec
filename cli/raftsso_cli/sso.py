"""``raftsso sso …``: the SSO store (applications, credential mappings, config values).

Secrets are read from stdin (or a hidden prompt on a terminal), never from the command
line, where ``ps`` and shell history would show them. ``get`` writes the exact bytes to
stdout, with a newline added only when stdout is a terminal.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import click

from raftsso.client import SSOClient
from raftsso.errors import InvalidToken, RaftssoError
from raftsso.store import Entry, SSOStore
from raftsso_cli.common import print_json, remote_config, table

MAX_SECRET = 1 << 20


class InputError(click.ClickException):
    """Wrong use of the command: one line on stderr (no usage block), exit 2."""

    exit_code = 2


def _store_path(ctx: click.Context) -> Path:
    obj = ctx.obj or {}
    explicit = obj.get("store")
    if isinstance(explicit, Path):
        return explicit
    if obj.get("config") is None:
        raise InputError("this command needs -c DIR/client.toml or sso --store PATH")
    cfg = remote_config(ctx)
    if cfg.store is None:
        raise InputError(f"{cfg.path} sets no store = \"...\"; pass sso --store PATH")
    return cfg.store


@contextlib.contextmanager
def _open(ctx: click.Context, secrets: bool) -> Iterator[SSOStore]:
    """The store, with an SSO client (so a reachable cluster) only when secrets are used."""
    path = _store_path(ctx)
    if not secrets:
        with SSOStore(path) as store:
            yield store
        return
    cfg = remote_config(ctx)
    with SSOClient(cfg, background=False) as client, SSOStore(path, client) as store:
        yield store


def _read_secret(what: str, raw: bool) -> bytes:
    if sys.stdin.isatty():
        text = click.prompt(what.capitalize(), hide_input=True, confirmation_prompt=True,
                            err=True)
        return str(text).encode()
    data: bytes = sys.stdin.buffer.read(MAX_SECRET + 1)
    if len(data) > MAX_SECRET:
        raise InputError(f"the {what} on stdin is larger than {MAX_SECRET} bytes")
    if not raw:  # `echo secret | raftsso …` adds one newline; it is not part of the secret
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
    if not data:
        raise InputError(f"no {what} on stdin")
    return data


def _write_secret(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data)
    if sys.stdout.isatty():
        out.write(b"\n")
    out.flush()


def _undecryptable(what: str) -> RaftssoError:
    return RaftssoError(
        f"the stored {what} cannot be decrypted: its key version is unknown to the cluster "
        "(retired?) or the row was altered; set it again")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@click.group()
@click.option("--store", "store", type=click.Path(dir_okay=False, path_type=Path),
              help="SSO store (SQLite) to use instead of client.toml's store = \"…\".")
@click.pass_context
def sso(ctx: click.Context, store: Path | None) -> None:
    """The SSO store: affiliate applications, credential mappings, config values.

    \b
      raftsso -c DIR/client.toml sso app add APP
      printf %s "$PASSWORD" | raftsso -c DIR/client.toml sso cred set APP USER
      raftsso -c DIR/client.toml sso cred get APP USER
    """
    root = ctx.find_root().obj or {}
    ctx.obj = {**root, "store": store}


# -- applications -----------------------------------------------------------------------


@sso.group()
def app() -> None:
    """Affiliate applications."""


@app.command("add")
@click.argument("name")
@click.option("--description", default="", help="Free text shown by `app list`.")
@click.pass_context
def app_add(ctx: click.Context, name: str, description: str) -> None:
    """Create the affiliate application NAME."""
    with _open(ctx, secrets=False) as store:
        store.add_app(name, description)
    click.echo(f"created application {name}")


@app.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@click.pass_context
def app_list(ctx: click.Context, as_json: bool) -> None:
    """List the affiliate applications."""
    with _open(ctx, secrets=False) as store:
        apps = store.list_apps()
    if as_json:
        print_json([{"name": a.name, "description": a.description, "created": a.created,
                     "credentials": a.credentials, "config_values": a.config_values}
                    for a in apps])
        return
    click.echo(table(["application", "credentials", "config values", "created", "description"],
                     [[a.name, str(a.credentials), str(a.config_values), _when(a.created),
                       a.description] for a in apps]))


@app.command("remove")
@click.argument("name")
@click.pass_context
def app_remove(ctx: click.Context, name: str) -> None:
    """Remove the application NAME with all its credential mappings and config values."""
    with _open(ctx, secrets=False) as store:
        creds, values = store.remove_app(name)
    click.echo(f"removed application {name} ({creds} credential mapping(s), "
               f"{values} config value(s))")


# -- credential mappings -------------------------------------------------------------------


@sso.group()
def cred() -> None:
    """Credential mappings: (application, user) -> encrypted credential."""


@cred.command("set")
@click.argument("app_name", metavar="APP")
@click.argument("user")
@click.option("--raw", is_flag=True, help="Keep stdin byte for byte (no newline stripped).")
@click.pass_context
def cred_set(ctx: click.Context, app_name: str, user: str, raw: bool) -> None:
    """Store USER's credential for APP, read from stdin (one trailing newline dropped)."""
    secret = _read_secret("credential", raw)
    with _open(ctx, secrets=True) as store:
        version = store.set_credential(app_name, user, secret)
    click.echo(f"stored the credential of {user} in {app_name} (key version {version})",
               err=True)


@cred.command("get")
@click.argument("app_name", metavar="APP")
@click.argument("user")
@click.pass_context
def cred_get(ctx: click.Context, app_name: str, user: str) -> None:
    """Write USER's credential for APP to stdout."""
    with _open(ctx, secrets=True) as store:
        try:
            secret = store.get_credential(app_name, user)
        except InvalidToken:
            raise _undecryptable(f"credential of {user} in {app_name}") from None
    _write_secret(secret)


@cred.command("list")
@click.argument("app_name", metavar="APP")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@click.pass_context
def cred_list(ctx: click.Context, app_name: str, as_json: bool) -> None:
    """List the users mapped in APP (never their credentials)."""
    with _open(ctx, secrets=False) as store:
        _print_entries(store.list_credentials(app_name), "user", as_json)


@cred.command("delete")
@click.argument("app_name", metavar="APP")
@click.argument("user")
@click.pass_context
def cred_delete(ctx: click.Context, app_name: str, user: str) -> None:
    """Delete USER's credential mapping in APP."""
    with _open(ctx, secrets=False) as store:
        store.delete_credential(app_name, user)
    click.echo(f"deleted the credential of {user} in {app_name}")


# -- configuration values -------------------------------------------------------------------


@sso.group("config")
def config_group() -> None:
    """Encrypted configuration values of an application (ENTSSO's port configuration)."""


@config_group.command("set")
@click.argument("app_name", metavar="APP")
@click.argument("name")
@click.option("--raw", is_flag=True, help="Keep stdin byte for byte (no newline stripped).")
@click.pass_context
def config_set(ctx: click.Context, app_name: str, name: str, raw: bool) -> None:
    """Store the value of setting NAME of APP, read from stdin."""
    value = _read_secret("value", raw)
    with _open(ctx, secrets=True) as store:
        version = store.set_config(app_name, name, value)
    click.echo(f"stored {name} in {app_name} (key version {version})", err=True)


@config_group.command("get")
@click.argument("app_name", metavar="APP")
@click.argument("name")
@click.pass_context
def config_get(ctx: click.Context, app_name: str, name: str) -> None:
    """Write the value of setting NAME of APP to stdout."""
    with _open(ctx, secrets=True) as store:
        try:
            value = store.get_config(app_name, name)
        except InvalidToken:
            raise _undecryptable(f"value of {name} in {app_name}") from None
    _write_secret(value)


@config_group.command("list")
@click.argument("app_name", metavar="APP")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@click.pass_context
def config_list(ctx: click.Context, app_name: str, as_json: bool) -> None:
    """List the settings of APP (never their values)."""
    with _open(ctx, secrets=False) as store:
        _print_entries(store.list_config(app_name), "name", as_json)


def _print_entries(entries: list[Entry], column: str, as_json: bool) -> None:
    """A listing of credential or setting names (never their secrets)."""
    if as_json:
        print_json([{column: e.name, "key_version": e.key_version, "updated": e.updated}
                    for e in entries])
        return
    click.echo(table([column, "key version", "updated"],
                     [[e.name, str(e.key_version), _when(e.updated)] for e in entries]))
