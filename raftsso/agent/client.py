"""A Python client of the agent: the SSO store's operations over the agent's socket.

:class:`AgentClient` has the methods of :class:`raftsso.store.SSOStore` that a caller
needs (applications, credential mappings, configuration values, import and export) plus
``encrypt``, ``decrypt``, ``health`` and ``whoami``, so the CLI's ``sso`` group can use
either. Errors are translated back into the raftsso tree: ``NOT_FOUND`` ->
:class:`~raftsso.errors.NotFound`, ``ALREADY_EXISTS`` ->
:class:`~raftsso.errors.AlreadyExists`, ``STALE`` -> :class:`~raftsso.errors.StaleSecret`,
``UNAVAILABLE``/``BUSY`` -> :class:`~raftsso.errors.ClusterUnavailable`, ``INVALID_TOKEN``
-> :class:`~raftsso.errors.InvalidToken`, anything else (``FORBIDDEN``, ``APP_DISABLED``,
``CONFLICT``, ...) :class:`~raftsso.agent.errors.ApiError` with the agent's code and
status (the node protocol's :class:`~raftsso.errors.RemoteError` codes are another
vocabulary). No raftsso process-side secret is involved: the agent holds the keyring.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import tomllib
import urllib.parse
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any

from raftsso.agent.errors import ApiError
from raftsso.errors import (
    AlreadyExists,
    ClusterUnavailable,
    ConfigError,
    InvalidToken,
    NotFound,
    RaftssoError,
    StaleSecret,
)
from raftsso.store import App, AppType, Entry, RowKind


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="@")


def _error(status: int, code: str, message: str) -> RaftssoError:
    if code == "NOT_FOUND":
        return NotFound(message)
    if code == "ALREADY_EXISTS":
        return AlreadyExists(message)
    if code == "STALE":
        return StaleSecret(message)
    if code in ("UNAVAILABLE", "BUSY"):
        return ClusterUnavailable(message)
    if code == "INVALID_TOKEN":
        return InvalidToken()
    return ApiError(code, message, status)


def _app(raw: dict[str, Any]) -> App:
    return App(raw["name"], raw["description"], float(raw["created"]), AppType(raw["type"]),
               bool(raw["enabled"]), raw["users_group"], raw["admins_group"])


def agent_socket_for(config: Path) -> Path | None:
    """The agent socket a configuration file names, if any.

    An ``agent.toml`` (it has ``socket = ...``) names its own socket; a ``client.toml``
    may name one with ``agent_socket = ...``. Relative paths are against the file.
    """
    try:
        with config.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None  # the caller's own loading reports what is wrong with the file
    value = data.get("agent_socket", data.get("socket") if "nodes" not in data else None)
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else config.resolve().parent / path


class AgentClient:
    """Blocking client over the agent's Unix socket (one keep-alive connection)."""

    def __init__(self, socket_path: str | Path, timeout: float = 30.0) -> None:
        self.socket_path = Path(socket_path)
        self._conn = _UnixConnection(str(socket_path), timeout)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AgentClient({str(self.socket_path)!r})"

    def close(self) -> None:
        self._conn.close()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call; the decoded JSON answer, or the matching raftsso error."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        # A keep-alive connection the agent closed meanwhile (idle timeout) fails at once:
        # one retry on a fresh connection, except for creations (never made twice).
        attempts = (1, 2) if method != "POST" or path in ("/v1/encrypt", "/v1/decrypt") \
            else (2,)
        for attempt in attempts:
            try:
                self._conn.request(method, path, body=data, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                # The agent closed an idle keep-alive connection: one fresh try.
                self._conn.close()
                if attempt == 2:
                    raise ClusterUnavailable(f"the agent at {self.socket_path} closed the "
                                             "connection") from None
            except (FileNotFoundError, ConnectionRefusedError):
                self._conn.close()
                raise ClusterUnavailable(f"no agent is listening on {self.socket_path}; "
                                         "start it (raftsso agent run)") from None
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            raise ApiError("BAD_ANSWER", f"the agent answered {resp.status} without JSON",
                           resp.status) from None
        if resp.status >= 300:
            if not isinstance(answer, dict):
                raise ApiError("BAD_ANSWER", f"the agent answered {resp.status}",
                               resp.status)
            raise _error(resp.status, str(answer.get("error")), str(answer.get("message")))
        return answer

    # agent ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/health")
        return result

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/whoami")
        return result

    def encrypt(self, app: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        body = {"app": app, "plaintext": base64.b64encode(plaintext).decode()}
        if associated_data:
            body["associated_data"] = base64.b64encode(associated_data).decode()
        return base64.b64decode(self.request("POST", "/v1/encrypt", body)["ciphertext"])

    def decrypt(self, app: str, ciphertext: bytes, associated_data: bytes = b"") -> bytes:
        body = {"app": app, "ciphertext": base64.b64encode(ciphertext).decode()}
        if associated_data:
            body["associated_data"] = base64.b64encode(associated_data).decode()
        return base64.b64decode(self.request("POST", "/v1/decrypt", body)["plaintext"])

    # applications -------------------------------------------------------------------------------

    def add_app(self, name: str, description: str = "", *, type: AppType = AppType.INDIVIDUAL,
                enabled: bool = True, users_group: str | None = None,
                admins_group: str | None = None) -> App:
        return _app(self.request("POST", "/v1/apps", {
            "name": name, "description": description, "type": AppType(type).value,
            "enabled": enabled, "users_group": users_group, "admins_group": admins_group}))

    def app(self, name: str) -> App:
        return _app(self.request("GET", f"/v1/apps/{_q(name)}"))

    def update_app(self, name: str, *, description: str | None = None,
                   enabled: bool | None = None,
                   users_group: str | EllipsisType | None = ...,
                   admins_group: str | EllipsisType | None = ...) -> App:
        body: dict[str, Any] = {}
        if description is not None:
            body["description"] = description
        if enabled is not None:
            body["enabled"] = enabled
        if users_group is not ...:
            body["users_group"] = users_group
        if admins_group is not ...:
            body["admins_group"] = admins_group
        return _app(self.request("PATCH", f"/v1/apps/{_q(name)}", body))

    def list_apps(self) -> list[App]:
        return [_app(a) for a in self.request("GET", "/v1/apps")["apps"]]

    def remove_app(self, name: str) -> tuple[int, int]:
        r = self.request("DELETE", f"/v1/apps/{_q(name)}")
        return int(r["credentials"]), int(r["config_values"])

    def export_apps(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.request("GET", "/v1/export")
        return doc

    def import_apps(self, doc: dict[str, Any], *, replace: bool = False) -> list[str]:
        path = "/v1/import?replace=" + ("true" if replace else "false")
        return list(self.request("POST", path, doc)["imported"])

    # credential mappings and configuration values ---------------------------------------------

    def _set(self, kind: str, field: str, app: str, name: str, secret: bytes) -> int:
        return int(self.request("PUT", f"/v1/apps/{_q(app)}/{kind}/{_q(name)}",
                                {field: base64.b64encode(secret).decode()})["key_version"])

    def _get(self, kind: str, field: str, app: str, name: str) -> bytes:
        return base64.b64decode(self.request("GET", f"/v1/apps/{_q(app)}/{kind}/{_q(name)}")
                                [field])

    def _list(self, kind: str, column: str, app: str) -> list[Entry]:
        rows = self.request("GET", f"/v1/apps/{_q(app)}/{kind}")[kind]
        return [Entry(app, r[column], int(r["key_version"]), float(r["updated"]))
                for r in rows]

    def set_credential(self, app: str, user: str, credential: bytes) -> int:
        return self._set("credentials", "credential", app, user, credential)

    def get_credential(self, app: str, user: str) -> bytes:
        return self._get("credentials", "credential", app, user)

    def delete_credential(self, app: str, user: str) -> None:
        self.request("DELETE", f"/v1/apps/{_q(app)}/credentials/{_q(user)}")

    def list_credentials(self, app: str) -> list[Entry]:
        return self._list("credentials", "user", app)

    def set_config(self, app: str, name: str, value: bytes) -> int:
        return self._set("config", "value", app, name, value)

    def get_config(self, app: str, name: str) -> bytes:
        return self._get("config", "value", app, name)

    def delete_config(self, app: str, name: str) -> None:
        self.request("DELETE", f"/v1/apps/{_q(app)}/config/{_q(name)}")

    def list_config(self, app: str) -> list[Entry]:
        return self._list("config", "name", app)

    # the store's generic row methods (what the CLI's sso group calls) ---------------------------

    def put(self, kind: RowKind, app: str, name: str, secret: bytes) -> int:
        if kind is RowKind.CREDENTIAL:
            return self.set_credential(app, name, secret)
        return self.set_config(app, name, secret)

    def get(self, kind: RowKind, app: str, name: str) -> bytes:
        if kind is RowKind.CREDENTIAL:
            return self.get_credential(app, name)
        return self.get_config(app, name)

    def delete(self, kind: RowKind, app: str, name: str) -> None:
        if kind is RowKind.CREDENTIAL:
            self.delete_credential(app, name)
        else:
            self.delete_config(app, name)

    def entries(self, kind: RowKind, app: str) -> list[Entry]:
        if kind is RowKind.CREDENTIAL:
            return self.list_credentials(app)
        return self.list_config(app)

    def app_usage(self) -> dict[str, tuple[int, int]]:
        """(credential mappings, config values) per application, as far as the caller may
        list them (0 where it may not, or the type has none)."""
        usage: dict[str, tuple[int, int]] = {}
        for app in self.list_apps():
            counts = []
            for kind in (RowKind.CREDENTIAL, RowKind.CONFIG):
                try:
                    counts.append(len(self.entries(kind, app.name)))
                except ApiError:
                    counts.append(0)
            usage[app.name] = (counts[0], counts[1])
        return usage


def open_agent(config: Path) -> AgentClient:
    sock = agent_socket_for(config)
    if sock is None:
        raise ConfigError(f"{config} names no agent socket")
    return AgentClient(sock)
