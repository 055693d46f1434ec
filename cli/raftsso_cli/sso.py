"""``raftsso sso …``: the SSO store (applications, credential mappings, config values).

The store is ``client.toml``'s ``store = "…"`` (with ``store_password_file`` for
PostgreSQL) or ``sso --store PATH|URI``: a path is a SQLite file, a ``postgresql://`` URI a
shared PostgreSQL database. Secrets are read from stdin (or a hidden prompt on a terminal),
never from the command line, where ``ps`` and shell history would show them. ``get``
writes the exact bytes to stdout, with a newline added only when stdout is a terminal.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from raftsso.agent.client import AgentClient, agent_socket_for
from raftsso.client import SSOClient
from raftsso.config import RemoteConfig, load_remote_config, update_toml
from raftsso.errors import InvalidToken, RaftssoError
from raftsso.fsutil import atomic_write
from raftsso.store import App, AppType, Entry, RowKind, SSOStore, StoreReport, open_store
from raftsso.store.backend import store_location
from raftsso.store.rewrap import Progress, rewrap
from raftsso_cli.common import print_json, remote_config, table

MAX_SECRET = 1 << 20
MAX_APP_FILE = 16 << 20


class InputError(click.ClickException):
    """Wrong use of the command: one line on stderr (no usage block), exit 2."""

    exit_code = 2


# -- which store -------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreSetting:
    where: Path | str  # a SQLite path or a postgresql:// URI
    password_file: Path | None
    cluster_id: str | None  # the configuration's cluster: a store of another is refused


def store_setting(ctx: click.Context, explicit: str | None = None,
                  cfg: RemoteConfig | None = None) -> StoreSetting:
    """The store of this command: ``--store`` (of the ``sso`` group or of the command),
    else the configuration's ``store = "…"``."""
    obj = ctx.obj or {}
    explicit = explicit if explicit is not None else obj.get("store")
    password_file: Path | None = obj.get("store_password_file")
    if cfg is None and obj.get("config") is not None:
        cfg = remote_config(ctx)
    if explicit is not None:
        where = store_location(explicit)
    elif cfg is None:
        raise InputError("this command needs -c DIR/client.toml or sso --store PATH|URI")
    elif cfg.store is None:
        raise InputError(f"{cfg.path} sets no store = \"...\"; pass sso --store PATH|URI")
    else:
        where = cfg.store
    if password_file is None and cfg is not None and (explicit is None or where == cfg.store):
        password_file = cfg.store_password_file
    return StoreSetting(where, password_file, cfg.cluster_id if cfg is not None else None)


def open_setting(setting: StoreSetting, client: SSOClient | None = None) -> SSOStore:
    return open_store(setting.where, client, password_file=setting.password_file,
                      cluster_id=setting.cluster_id)


@contextlib.contextmanager
def _open(ctx: click.Context, secrets: bool) -> Iterator[SSOStore]:
    """The store, with an SSO client (so a reachable cluster) only when secrets are used."""
    obj = ctx.obj or {}
    sock = agent_socket_for(obj["config"]) if obj.get("config") and not obj.get("store") \
        else None
    if sock is not None:  # agent.toml, or client.toml with agent_socket: through the agent
        with AgentClient(sock) as agent:
            yield agent  # type: ignore[misc]  # the same methods as SSOStore
        return
    setting = store_setting(ctx)
    if not secrets:
        with open_setting(setting) as store:
            yield store
        return
    cfg = remote_config(ctx)
    with SSOClient(cfg, background=False) as client, open_setting(setting, client) as store:
        yield store


# -- reusable by the admin commands (rewrap, retire) ----------------------------------------


def run_rewrap(ctx: click.Context, store: str | None, batch: int) -> None:
    """``raftsso -c admin.toml rewrap``: the library's rewrap with a progress bar."""
    cfg = remote_config(ctx)
    setting = store_setting(ctx, store, cfg)
    if batch < 1:
        raise click.UsageError("--batch must be positive")
    with SSOClient(cfg, background=False) as client, open_setting(setting, client) as db:
        if sys.stderr.isatty():
            with click.progressbar(length=0, label="rewrap", file=sys.stderr,
                                   show_pos=True) as bar:

                def progress(p: Progress) -> None:
                    bar.length = p.todo
                    bar.update(p.done - bar.pos)

                result = rewrap(db, batch=batch, progress=progress)
        else:  # no bar (nor its label line) in logs and pipes
            result = rewrap(db, batch=batch)
    click.echo(f"rewrap: {result.rewrapped} of {result.todo} row(s) re-encrypted under "
               f"version {result.primary}"
               + (f" ({result.overtaken} changed meanwhile by writers)"
                  if result.overtaken else ""))
    report_store(cfg, result.report)
    if result.unreadable:
        shown = ", ".join(str(u) for u in result.unreadable[:5])
        raise RaftssoError(f"{len(result.unreadable)} row(s) could not be re-encrypted and "
                           f"were left as they are: {shown}")


def report_store(cfg: RemoteConfig, report: StoreReport) -> None:
    """Send a full count to the cluster (``rewrap``, ``retire --store``): what lets
    ``retire`` through. Needs an admin certificate."""
    from raftsso.admin import AdminClient

    try:
        with AdminClient(cfg) as admin:
            admin.store_report(report, full=True)
    except RaftssoError as exc:
        raise RaftssoError(f"could not report the count of store {report.store_id} to the "
                           f"cluster ({exc}); retire keeps refusing until it is reported: "
                           "run this with an admin.toml") from None


def count_store(ctx: click.Context, store: str, cfg: RemoteConfig) -> tuple[str, StoreReport]:
    """For ``retire --store``: the store's versions in use, counted now from token
    headers (no key needed)."""
    with open_setting(store_setting(ctx, store, cfg)) as db:
        report = db.report()
        if report.damaged_rows:
            db.versions_in_use()  # raises the error that names the first damaged row
        return db.where, report


# -- helpers ----------------------------------------------------------------------------------


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


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _print_record(data: dict[str, Any], as_json: bool) -> None:
    """One object: JSON, or a line per key (times readable) for people."""
    if as_json:
        print_json(data)
        return
    width = max(map(len, data)) + 2
    for key, value in data.items():
        shown = _when(value) if key in ("created", "reported_at") else \
            "-" if value is None else value
        click.echo(f"{key:<{width}}{shown}")


def _app_json(a: App, usage: tuple[int, int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": a.name, "description": a.description, "created": a.created,
                           "type": a.type.value, "enabled": a.enabled,
                           "users_group": a.users_group, "admins_group": a.admins_group}
    if usage is not None:
        out["credentials"], out["config_values"] = usage
    return out


# -- the group ------------------------------------------------------------------------------


@click.group()
@click.option("--store", "store", metavar="PATH|URI",
              help="SSO store to use instead of the config's store = \"…\": a SQLite path "
                   "or a postgresql:// URI (no password in it).")
@click.option("--store-password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="0600 file holding the PostgreSQL store's password.")
@click.pass_context
def sso(ctx: click.Context, store: str | None, store_password_file: Path | None) -> None:
    """The SSO store: affiliate applications, credential mappings, config values.

    \b
      raftsso -c DIR/client.toml sso app add APP
      printf %s "$PASSWORD" | raftsso -c DIR/client.toml sso cred set APP USER
      raftsso -c DIR/client.toml sso cred get APP USER
      raftsso -c DIR/client.toml sso --store postgresql://raftsso@db/sso join
    """
    root = ctx.find_root().obj or {}
    ctx.obj = {**root, "store": store, "store_password_file": store_password_file}


@sso.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def info(ctx: click.Context, as_json: bool) -> None:
    """The store's id, kind, cluster, schema and key versions in use (no cluster needed)."""
    with _open(ctx, secrets=False) as store:
        data = {**store.report().as_json(), "store": store.where,
                "cluster_id": store.cluster_id, "schema_version": store.schema_version}
    _print_record(data, as_json)


@sso.command("migrate")
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create the store's schema, or migrate it to this raftsso's version.

    Every command migrates on first use too; run this where the clients' database role may
    not change the schema.
    """
    with _open(ctx, secrets=False) as store:
        found, now = store.schema_found, store.schema_version
    if found is None:
        click.echo(f"created SSO store {store.store_id} ({store.kind}) at schema version {now}")
    elif found == now:
        click.echo(f"SSO store {store.store_id} is at schema version {now}; nothing to do")
    else:
        click.echo(f"migrated SSO store {store.store_id} from schema version {found} to {now}")


@sso.command("join")
@click.option("--adopt", is_flag=True,
              help="Re-bind a store of another cluster to this one (after that cluster's "
                   "keys were restored here with restore --force).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation with --adopt.")
@click.pass_context
def join(ctx: click.Context, adopt: bool, yes: bool) -> None:
    """Point the -c configuration at the store of sso --store (ENTSSO's "join an existing
    SSO database"): checks it belongs to this cluster, then sets store = "…" (and
    store_password_file) in the configuration file."""
    obj = ctx.obj or {}
    if obj.get("store") is None or obj.get("config") is None:
        raise InputError("join needs -c DIR/client.toml (the file to change) and "
                         "sso --store PATH|URI (the store to join)")
    cfg = remote_config(ctx)
    setting = store_setting(ctx, cfg=cfg)
    if adopt and not yes:
        click.confirm(f"Bind the store at {setting.where} to cluster {cfg.cluster_id}, whatever "
                      "cluster it belonged to? Only do this when this cluster holds that "
                      "cluster's keys (restored from its backup)", abort=True)
    with open_store(setting.where, None, password_file=setting.password_file) as store:
        store.bind_cluster(cfg.cluster_id, adopt=adopt)
        store_id, kind = store.store_id, store.kind
    where = setting.where if isinstance(setting.where, str) else setting.where.resolve()
    update_toml(cfg.path, {
        "store": str(where),
        "store_password_file": str(setting.password_file.resolve())
        if setting.password_file is not None else None})
    load_remote_config(cfg.path)  # still a valid configuration
    click.echo(f"{cfg.path} now uses SSO store {store_id} ({kind}, cluster {cfg.cluster_id})")


# -- applications -----------------------------------------------------------------------


@sso.group()
def app() -> None:
    """Affiliate applications: type, enabled flag, users and administrators groups."""


_TYPES = click.Choice([t.value for t in AppType])


@app.command("add")
@click.argument("name")
@click.option("--description", default="", help="Free text shown by `app list`.")
@click.option("--type", "app_type", type=_TYPES, default=AppType.INDIVIDUAL.value,
              show_default=True,
              help="individual: one mapping per user; group: one mapping (user @group) for "
                   "the users group; config: configuration values only.")
@click.option("--users-group", metavar="GROUP", help="Unix group whose members use it.")
@click.option("--admins-group", metavar="GROUP", help="Unix group whose members administer it.")
@click.option("--disabled", is_flag=True, help="Create it disabled (secrets not readable).")
@click.pass_context
def app_add(ctx: click.Context, name: str, description: str, app_type: str,
            users_group: str | None, admins_group: str | None, disabled: bool) -> None:
    """Create the affiliate application NAME."""
    with _open(ctx, secrets=False) as store:
        store.add_app(name, description, type=AppType(app_type), enabled=not disabled,
                      users_group=users_group, admins_group=admins_group)
    click.echo(f"created application {name}")


@app.command("set")
@click.argument("name")
@click.option("--description", help="New description.")
@click.option("--enable/--disable", "enabled", default=None, help="Enable or disable it.")
@click.option("--users-group", metavar="GROUP", help="New users group.")
@click.option("--no-users-group", is_flag=True, help="Clear the users group.")
@click.option("--admins-group", metavar="GROUP", help="New administrators group.")
@click.option("--no-admins-group", is_flag=True, help="Clear the administrators group.")
@click.pass_context
def app_set(ctx: click.Context, name: str, description: str | None, enabled: bool | None,
            users_group: str | None, no_users_group: bool, admins_group: str | None,
            no_admins_group: bool) -> None:
    """Change the definition of application NAME (its type never changes)."""

    def group(value: str | None, clear: bool, option: str) -> Any:
        if value is not None and clear:
            raise InputError(f"--{option} and --no-{option} exclude each other")
        return None if clear else (... if value is None else value)

    users = group(users_group, no_users_group, "users-group")
    admins = group(admins_group, no_admins_group, "admins-group")
    with _open(ctx, secrets=False) as store:
        store.update_app(name, description=description, enabled=enabled, users_group=users,
                         admins_group=admins)
    click.echo(f"changed application {name}")


@app.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def app_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show the definition of application NAME."""
    with _open(ctx, secrets=False) as store:
        data = _app_json(store.app(name), store.app_usage().get(name, (0, 0)))
    _print_record(data, as_json)


@app.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@click.pass_context
def app_list(ctx: click.Context, as_json: bool) -> None:
    """List the affiliate applications."""
    with _open(ctx, secrets=False) as store:
        apps, usage = store.list_apps(), store.app_usage()
    if as_json:
        print_json([_app_json(a, usage.get(a.name, (0, 0))) for a in apps])
        return
    rows = []
    for a in apps:
        creds, values = usage.get(a.name, (0, 0))
        rows.append([a.name, a.type.value, "yes" if a.enabled else "no",
                     a.users_group or "-", a.admins_group or "-", str(creds), str(values),
                     _when(a.created), a.description])
    click.echo(table(["application", "type", "enabled", "users", "admins", "credentials",
                      "config values", "created", "description"], rows))


@app.command("remove")
@click.argument("name")
@click.pass_context
def app_remove(ctx: click.Context, name: str) -> None:
    """Remove the application NAME with all its credential mappings and config values."""
    with _open(ctx, secrets=False) as store:
        creds, values = store.remove_app(name)
    click.echo(f"removed application {name} ({creds} credential mapping(s), "
               f"{values} config value(s))")


@app.command("export")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (default: stdout).")
@click.pass_context
def app_export(ctx: click.Context, out: Path | None) -> None:
    """Write every application definition as JSON (no secrets; see docs/operations.md)."""
    with _open(ctx, secrets=False) as store:
        doc = store.export_apps()
    text = json.dumps(doc, indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    atomic_write(out, text.encode(), mode=0o644)
    click.echo(f"exported {len(doc['applications'])} application(s) to {out}", err=True)


@app.command("import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--replace", is_flag=True,
              help="Change applications that exist with another definition.")
@click.pass_context
def app_import(ctx: click.Context, file: Path, replace: bool) -> None:
    """Create the applications of an exported FILE (all or none)."""
    raw = file.read_bytes()
    if len(raw) > MAX_APP_FILE:
        raise RaftssoError(f"{file} is larger than {MAX_APP_FILE} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RaftssoError(f"{file} is not a JSON application file: {exc}") from None
    with _open(ctx, secrets=False) as store:
        done = store.import_apps(doc, replace=replace)
    click.echo(f"imported {len(done)} application(s)" + (f": {', '.join(done)}" if done
                                                          else " (all were up to date)"))


# -- credential mappings and configuration values: one set of commands, two kinds ------------


@dataclass(frozen=True)
class _Kind:
    kind: RowKind
    item: str  # the argument's name: USER or NAME
    column: str  # the listing's column
    what: str  # "credential" / "value"
    phrase: Callable[[str, str], str]  # (app, name) -> "the credential of alice in payroll"


_KINDS = (
    _Kind(RowKind.CREDENTIAL, "user", "user", "credential",
          lambda app, name: f"the credential of {name} in {app}"),
    _Kind(RowKind.CONFIG, "name", "name", "value",
          lambda app, name: f"the value of {name} in {app}"),
)


def _row_commands(group: click.Group, k: _Kind) -> None:
    item = k.item.upper()
    app_arg = click.argument("app_name", metavar="APP")
    name_arg = click.argument("name", metavar=item)

    @group.command("set", help=f"Store {item}'s {k.what} for APP, read from stdin "
                               "(one trailing newline dropped).")
    @app_arg
    @name_arg
    @click.option("--raw", is_flag=True, help="Keep stdin byte for byte (no newline stripped).")
    @click.pass_context
    def set_(ctx: click.Context, app_name: str, name: str, raw: bool) -> None:
        secret = _read_secret(k.what, raw)
        with _open(ctx, secrets=True) as store:
            version = store.put(k.kind, app_name, name, secret)
        click.echo(f"stored {k.phrase(app_name, name)} (key version {version})", err=True)

    @group.command("get", help=f"Write {item}'s {k.what} for APP to stdout.")
    @app_arg
    @name_arg
    @click.pass_context
    def get(ctx: click.Context, app_name: str, name: str) -> None:
        with _open(ctx, secrets=True) as store:
            try:
                secret = store.get(k.kind, app_name, name)
            except InvalidToken:
                raise RaftssoError(
                    f"the stored {k.phrase(app_name, name).removeprefix('the ')} cannot be "
                    "decrypted: its key version is unknown to the cluster (retired?) or the "
                    "row was altered; set it again") from None
        _write_secret(secret)

    @group.command("list", help=f"List the {k.item}s of APP (never their {k.what}s).")
    @app_arg
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
    @click.pass_context
    def list_(ctx: click.Context, app_name: str, as_json: bool) -> None:
        with _open(ctx, secrets=False) as store:
            _print_entries(store.entries(k.kind, app_name), k.column, as_json)

    @group.command("delete", help=f"Delete {item}'s {k.what} in APP.")
    @app_arg
    @name_arg
    @click.pass_context
    def delete(ctx: click.Context, app_name: str, name: str) -> None:
        with _open(ctx, secrets=False) as store:
            store.delete(k.kind, app_name, name)
        click.echo(f"deleted {k.phrase(app_name, name)}")


@sso.group()
def cred() -> None:
    """Credential mappings: (application, user) -> encrypted credential."""


@sso.group("config")
def config_group() -> None:
    """Encrypted configuration values of an application (ENTSSO's port configuration)."""


_row_commands(cred, _KINDS[0])
_row_commands(config_group, _KINDS[1])


def _print_entries(entries: list[Entry], column: str, as_json: bool) -> None:
    """A listing of credential or setting names (never their secrets)."""
    if as_json:
        print_json([{column: e.name, "key_version": e.key_version, "updated": e.updated}
                    for e in entries])
        return
    click.echo(table([column, "key version", "updated"],
                     [[e.name, str(e.key_version), _when(e.updated)] for e in entries]))
