"""``agent.toml``: where the agent listens, which SSO client and store it uses, its limits.

::

    format = 1
    client = "client.toml"        # the SSO client configuration (nodes, certificate, store)
    socket = "agent.sock"         # the Unix socket (/run/raftsso/agent.sock on a host)
    socket_mode = "0660"          # octal, as a string
    socket_group = "sso-users"    # optional: the group that owns the socket
    admin_group = "sso-admins"    # optional: administers applications (root always does)
    audit_log = "agent-audit.jsonl"
    # optional: store = "..." (default: the client's), store_password_file, resync_interval,
    # max_staleness (default: the client's), and the limits below.

Relative paths are resolved against the file's directory, like every raftsso config.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from raftsso.config import CONFIG_FORMAT, RemoteConfig, load_remote_config
from raftsso.errors import ConfigError

_GROUP_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")


@dataclass(frozen=True)
class Limits:
    """What one caller can make the agent hold; each refusal is one clear HTTP error."""

    max_body: int = 1 << 20  # bytes of a request body (413 beyond)
    max_header: int = 16 << 10  # bytes of the request line and headers together (431)
    max_connections: int = 256  # open connections (503 BUSY beyond)
    max_connections_per_uid: int = 64  # so one local user cannot take every slot
    max_pipeline: int = 32  # requests read ahead of their answers on one connection
    request_timeout: float = 10.0  # first byte to last byte of one request (408)
    idle_timeout: float = 60.0  # a keep-alive connection with nothing to do is closed


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    client: Path
    socket: Path
    socket_mode: int = 0o660
    socket_group: str | None = None
    admin_group: str | None = None
    audit_log: Path | None = None
    store: str | None = None  # a path (resolved) or a postgresql:// URI
    store_password_file: Path | None = None
    resync_interval: float | None = None
    max_staleness: float | None = None
    app_cache_ttl: float = 1.0  # how long an application's definition is trusted (seconds)
    workers: int = 4  # threads for store calls (SQLite, PostgreSQL) and network resyncs
    start_timeout: float = 30.0  # wait this long for a first keyring at start
    limits: Limits = Limits()

    @property
    def audit_path(self) -> Path:
        return self.audit_log if self.audit_log is not None \
            else self.path.parent / "agent-audit.jsonl"

    def remote(self) -> RemoteConfig:
        """The SSO client configuration the agent runs on."""
        return load_remote_config(self.client)


def _check_group(path: Path, key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _GROUP_RE.fullmatch(value) or len(value) > 64:
        raise ConfigError(f"{path}: {key!r} must be a Unix group name")
    return value


def _number(path: Path, data: dict[str, Any], key: str, kind: type, default: Any,
            minimum: float) -> Any:
    if key not in data:
        return default
    value: Any = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value) and value >= minimum
    if not isinstance(value, kind) or not ok:
        raise ConfigError(f"{path}: {key!r} must be a {kind.__name__} of at least {minimum:g}")
    return value


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read and check ``agent.toml`` (:class:`ConfigError`, one line, on any problem)."""
    p = Path(path).resolve()
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {p} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    fmt = data.get("format", CONFIG_FORMAT)
    if fmt != CONFIG_FORMAT:
        raise ConfigError(f"{p} has configuration format {fmt!r}; this raftsso reads format "
                          f"{CONFIG_FORMAT}")
    base = p.parent

    def path_of(key: str, default: str | None = None) -> Path | None:
        value = data.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{p}: {key!r} must be a path")
        q = Path(value)
        return q if q.is_absolute() else base / q

    client = path_of("client", "client.toml")
    sock = path_of("socket")
    if sock is None:
        raise ConfigError(f"{p}: missing required key 'socket' (the agent's Unix socket)")
    if len(str(sock).encode()) > 107:
        raise ConfigError(f"{p}: the socket path {sock} is longer than a Unix socket "
                          "address allows (107 bytes); use a shorter path")
    mode_text = data.get("socket_mode", "0660")
    if not isinstance(mode_text, str) or not re.fullmatch(r"0?[0-7]{3}", mode_text):
        raise ConfigError(f"{p}: 'socket_mode' must be an octal mode as a string, e.g. "
                          "\"0660\"")
    mode = int(mode_text, 8)
    if mode & 0o007:
        raise ConfigError(f"{p}: 'socket_mode' {mode_text} lets every local user connect; "
                          "use 0660 with socket_group (or 0600)")
    store = data.get("store")
    if store is not None:
        if not isinstance(store, str) or not store:
            raise ConfigError(f"{p}: 'store' must be a path or a postgresql:// URI")
        if not store.startswith("postgresql://") and not Path(store).is_absolute():
            store = str(base / store)
    lim_raw = data.get("limits", {})
    if not isinstance(lim_raw, dict):
        raise ConfigError(f"{p}: [limits] must be a table")
    defaults = Limits()
    minimums = {"max_body": 1024, "max_header": 1024, "max_connections": 1,
                "max_connections_per_uid": 1, "max_pipeline": 1,
                "request_timeout": 0.01, "idle_timeout": 0.01}
    limits = Limits(**{
        f.name: _number(p, lim_raw, f.name, type(getattr(defaults, f.name)),
                        getattr(defaults, f.name), minimums[f.name])
        for f in fields(Limits)})
    unknown = set(lim_raw) - {f.name for f in fields(Limits)}
    if unknown:
        raise ConfigError(f"{p}: unknown [limits] keys: {', '.join(sorted(unknown))}")
    cfg = AgentConfig(
        path=p,
        client=client if client is not None else base / "client.toml",
        socket=sock,
        socket_mode=mode,
        socket_group=_check_group(p, "socket_group", data.get("socket_group")),
        admin_group=_check_group(p, "admin_group", data.get("admin_group")),
        audit_log=path_of("audit_log"),
        store=store,
        store_password_file=path_of("store_password_file"),
        resync_interval=_number(p, data, "resync_interval", float, None, 0.01),
        max_staleness=_number(p, data, "max_staleness", float, None, 0.01),
        app_cache_ttl=_number(p, data, "app_cache_ttl", float, 1.0, 0.0),
        workers=_number(p, data, "workers", int, 4, 1),
        start_timeout=_number(p, data, "start_timeout", float, 30.0, 0.0),
        limits=limits,
    )
    known = {f.name for f in fields(AgentConfig)} - {"path"} | {"format"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{p}: unknown keys: {', '.join(sorted(unknown))} (a typo? "
                          f"agent.toml knows {', '.join(sorted(known))})")
    return cfg
