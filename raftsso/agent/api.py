"""The agent's HTTP API, version 1: routes, JSON checking, authorization, the operations.

Every route is in :data:`ROUTES` (the OpenAPI document in :mod:`raftsso.agent.openapi`
describes the same ones; a test keeps them in step). Each answer is JSON; each failure
is an :class:`~raftsso.agent.errors.ApiError` (``{"error": CODE, "message": ...}``).

Fast paths stay on the event loop and answer inline: ``health``, ``encrypt`` and
``decrypt`` (AES-GCM in memory, the application's definition from a short-lived cache).
Everything that touches the store, and a decrypt that needs a resync from the cluster,
runs on a small thread pool so the loop never waits for a disk or the network.

Binding: encrypt and decrypt use the associated data
``b"raftsso/app/v1\\x00" + app (UTF-8) + b"\\x00" + associated_data``, so a ciphertext made
for one application does not open under another (nor as a stored credential, whose
prefix differs).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

from raftsso import envelope
from raftsso.agent.audit import AgentAudit
from raftsso.agent.errors import ApiError, bad_request, not_found
from raftsso.agent.http import Request, Response, error_response, json_response
from raftsso.agent.peer import Caller, Names
from raftsso.agent.policy import Action, Policy
from raftsso.client import ClientState
from raftsso.errors import (
    AlreadyExists,
    ClusterUnavailable,
    InvalidToken,
    NotFound,
    RaftssoError,
    StaleSecret,
    StoreError,
)
from raftsso.store import GROUP_USER, App, AppType, Entry

log = logging.getLogger(__name__)

APP_AD_PREFIX = b"raftsso/app/v1\x00"
MAX_NAME = 256
MAX_DESCRIPTION = 1024
MAX_GROUP = 64
# A Unix group name as groupadd accepts it (and the store checks), never starting with '-'.
_GROUP_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")
T = TypeVar("T")


def app_associated_data(app: str, associated_data: bytes = b"") -> bytes:
    """What binds an encrypt/decrypt ciphertext to its application."""
    return APP_AD_PREFIX + app.encode() + b"\x00" + associated_data


class Cipher(Protocol):
    def encrypt(self, data: bytes, associated_data: bytes = b"") -> bytes: ...

    def decrypt(self, token: bytes, associated_data: bytes = b"") -> bytes: ...

    def state(self) -> ClientState: ...


class Store(Protocol):
    def app(self, name: str) -> App: ...

    def add_app(self, name: str, description: str = "", *, type: AppType = ...,
                enabled: bool = ..., users_group: str | None = ...,
                admins_group: str | None = ...) -> App: ...

    def update_app(self, name: str, *, description: str | None = ...,
                   enabled: bool | None = ..., users_group: Any = ...,
                   admins_group: Any = ...) -> App: ...

    def list_apps(self) -> list[App]: ...

    def remove_app(self, name: str) -> tuple[int, int]: ...

    def set_credential(self, app: str, user: str, credential: bytes) -> int: ...

    def get_credential(self, app: str, user: str) -> bytes: ...

    def delete_credential(self, app: str, user: str) -> None: ...

    def list_credentials(self, app: str) -> list[Entry]: ...

    def set_config(self, app: str, name: str, value: bytes) -> int: ...

    def get_config(self, app: str, name: str) -> bytes: ...

    def delete_config(self, app: str, name: str) -> None: ...

    def list_config(self, app: str) -> list[Entry]: ...

    def export_apps(self) -> dict[str, Any]: ...

    def import_apps(self, doc: dict[str, Any], *, replace: bool = False) -> list[str]: ...


# -- input checking -------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise bad_request(f"the JSON body has the key {key!r} twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise bad_request(f"the JSON body holds {name}, which is not a number")


# Built once: json.loads() with hooks would build a decoder for every request.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def parse_json(body: bytes) -> Any:
    if not body:
        raise bad_request("the request needs a JSON body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("the request body is not UTF-8") from None
    try:
        return _DECODER.decode(text)
    except ApiError:
        raise
    except RecursionError:
        raise bad_request("the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int() of a 5,000-digit number
        raise bad_request(f"the request body is not valid JSON: {str(exc)[:120]}") from None


def json_object(body: bytes, required: set[str],
                optional: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    obj = parse_json(body)
    if not isinstance(obj, dict):
        raise bad_request("the JSON body must be an object")
    missing = sorted(required - obj.keys())
    if missing:
        raise bad_request(f"the JSON body lacks {', '.join(repr(m) for m in missing)}")
    unknown = sorted(obj.keys() - required - optional)
    if unknown:
        raise bad_request(f"unknown field(s) {', '.join(repr(u[:64]) for u in unknown[:5])}")
    return obj


def check_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise bad_request(f"the {what} name must be a non-empty string")
    if len(value) > MAX_NAME:
        raise bad_request(f"the {what} name is longer than {MAX_NAME} characters")
    if "\x00" in value:
        raise bad_request(f"the {what} name must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise bad_request(f"the {what} name is not valid Unicode text") from None
    return value


def check_text(what: str, value: Any, limit: int = MAX_DESCRIPTION) -> str:
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise bad_request(f"{what} must be a string of at most {limit} characters "
                          "without NUL")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise bad_request(f"{what} is not valid Unicode text") from None
    return value


def check_group(what: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_GROUP or not _GROUP_RE.fullmatch(value):
        raise bad_request(f"{what} must be a Unix group name (letters, digits, '_', '.', "
                          f"'-', at most {MAX_GROUP}) or null")
    return value


def check_bool(what: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"{what} must be true or false")
    return value


def check_type(value: Any) -> AppType:
    try:
        return AppType(value)
    except ValueError:
        raise bad_request(f"type must be one of {', '.join(t.value for t in AppType)}") \
            from None


def b64(what: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise bad_request(f"{what} must be a base64 string")
    try:
        # strict_mode: the standard alphabet only, correct padding, nothing after it.
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{what} is not valid base64 (standard alphabet, with padding)") \
            from None


def encode_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def app_json(app: App) -> dict[str, Any]:
    return {"name": app.name, "description": app.description, "created": app.created,
            "type": app.type.value, "enabled": app.enabled, "users_group": app.users_group,
            "admins_group": app.admins_group}


def entry_json(entry: Entry, column: str) -> dict[str, Any]:
    return {column: entry.name, "key_version": entry.key_version, "updated": entry.updated}


def split_target(target: str) -> tuple[list[str], dict[str, str]]:
    """Path segments after ``/v1/`` (percent-decoded, UTF-8) and the query parameters."""
    path, _, query = target.partition("?")
    if not path.startswith("/v1/"):
        raise not_found("no such route; the API lives under /v1/ (GET /v1/openapi.json)")
    if not query and "%" not in path:
        return path[4:].split("/"), {}  # the common case: nothing to decode
    segments = []
    for raw in path[4:].split("/"):
        try:
            segments.append(urllib.parse.unquote_to_bytes(raw).decode("utf-8"))
        except UnicodeError:
            raise bad_request("the request path is not UTF-8 once percent-decoded") from None
    params: dict[str, str] = {}
    if query:
        try:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True,
                                           errors="strict", max_num_fields=8)
        except (ValueError, UnicodeError):
            raise bad_request("the query string is malformed") from None
        for key, value in pairs:
            if key in params:
                raise bad_request(f"the query parameter {key[:32]!r} appears twice")
            params[key] = value
    return segments, params


# -- the application cache -------------------------------------------------------------------


class AppCache:
    """Definitions for the fast paths, trusted for ``ttl`` seconds (0: always re-read).

    Changes made through this agent invalidate at once; changes made elsewhere (another
    host's agent on a shared PostgreSQL store, the CLI on the store file) are seen
    within ``ttl``. When the store cannot be read (a shared PostgreSQL store down),
    encrypt and decrypt go on with the last definition read (:meth:`last`): a change made
    meanwhile could not be read anyway, and the outage must not stop the applications.
    """

    MAX = 10_000

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._apps: dict[str, tuple[float, App | None]] = {}

    def get(self, name: str) -> tuple[bool, App | None]:
        """(hit, app); app None on a hit means "no such application"."""
        hit = self._apps.get(name)
        if hit is None or self._clock() - hit[0] >= self.ttl:
            return False, None
        return True, hit[1]

    def last(self, name: str) -> App | None:
        """The last definition read, however old (None if never read, or unknown)."""
        hit = self._apps.get(name)
        return hit[1] if hit is not None else None

    def put(self, name: str, app: App | None) -> None:
        if len(self._apps) >= self.MAX:
            self._apps.clear()
        self._apps[name] = (self._clock(), app)

    def expire(self) -> None:
        """Re-read every definition on next use (the last ones stay for :meth:`last`)."""
        self._apps = {name: (float("-inf"), app) for name, (_, app) in self._apps.items()}


# -- the API ------------------------------------------------------------------------------------

Route = Callable[[Request, list[str], dict[str, str]], "Response | Awaitable[Response]"]


class AgentApi:
    """The request handler of the agent (see the module docstring)."""

    def __init__(self, cipher: Cipher, store: Store, policy: Policy, audit: AgentAudit,
                 names: Names, executor: Executor, *, app_cache_ttl: float = 1.0,
                 openapi: bytes = b"{}", clock: Callable[[], float] = time.monotonic) -> None:
        self.cipher = cipher
        self.store = store
        self.policy = policy
        self.audit = audit
        self.names = names
        self.executor = executor
        self.apps = AppCache(app_cache_ttl, clock)
        self._openapi = openapi
        self._clock = clock
        self._known_max = 0
        self._known_at = float("-inf")

    # dispatch -------------------------------------------------------------------------------

    def __call__(self, req: Request) -> Response | Awaitable[Response]:
        segments, params = split_target(req.target)
        methods = _route_table(segments)
        if methods is None:
            raise not_found("no such route (GET /v1/openapi.json lists them)")
        handler_name = methods.get(req.method)
        if handler_name is None:
            allow = ", ".join(sorted(methods))
            return error_response(ApiError("METHOD_NOT_ALLOWED",
                                           f"{req.method[:16]} is not allowed here; use "
                                           f"{allow}"), headers=(("Allow", allow),))
        allowed_params = _QUERY.get(handler_name, set())
        if set(params) - allowed_params:
            raise bad_request("unknown query parameter(s) "
                              f"{', '.join(sorted(p[:32] for p in set(params) - allowed_params))}")
        handler: Route = getattr(self, "_" + handler_name)
        return handler(req, segments, params)

    def _offload(self, fn: Callable[[], T]) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def _refuse(self, caller: Caller, op: str, err: ApiError, app: str | None = None,
                name: str | None = None) -> ApiError:
        self.audit.event(caller, op, app=app, name=name, code=err.code, status=err.status)
        return err

    def _check(self, caller: Caller, op: str, action: Action, app: App | None,
               app_name: str | None = None, name: str | None = None,
               user: str | None = None) -> None:
        try:
            self.policy.check(caller, action, app, user=user)
        except ApiError as err:
            raise self._refuse(caller, op, err, app_name or (app.name if app else None),
                               name) from None

    def _written(self, caller: Caller, op: str, app: str | None, name: str | None,
                 fn: Callable[[], T]) -> T:
        """Run a write and audit it, whatever its outcome."""
        try:
            result = fn()
        except Exception as exc:
            err = _translate(exc)
            self.audit.event(caller, op, app=app, name=name, code=err.code,
                             status=err.status)
            raise err from None
        self.audit.event(caller, op, app=app, name=name)
        return result

    def _load_app(self, name: str) -> App:
        """The current definition from the store (thread pool), refreshing the cache."""
        try:
            app = self.store.app(name)
        except NotFound:
            self.apps.put(name, None)
            raise not_found(f"no application {name!r}") from None
        except RaftssoError as exc:
            raise _translate(exc) from None
        self.apps.put(name, app)
        return app

    # health, identity, document ---------------------------------------------------------------

    def _health(self, req: Request, seg: list[str], params: dict[str, str]) -> Response:
        st = self.cipher.state()
        age = st.last_sync_age
        return json_response(200, {
            "status": "stale" if st.stale else "ok",
            "primary_version": st.primary,
            "sync_age": round(age, 3) if age is not None else None,
            "max_staleness": st.max_staleness,
            "cluster_id": st.cluster_id,
            "versions": [v.id for v in st.versions],
            "last_error": st.last_error if st.consecutive_failures else None,
        })

    def _whoami(self, req: Request, seg: list[str], params: dict[str, str]) -> Response:
        c = req.caller
        return json_response(200, {
            "uid": c.uid, "gid": c.gid, "pid": c.pid, "user": c.user,
            "groups": sorted(filter(None, (self.names.group_name(g) for g in c.gids))),
            "agent_admin": self.policy.is_agent_admin(c)})

    def _openapi_doc(self, req: Request, seg: list[str], params: dict[str, str]) -> Response:
        return Response(200, self._openapi)

    # encrypt / decrypt -------------------------------------------------------------------------

    def _with_app(self, req: Request, op: str, name: str,
                  then: Callable[[App], Response]) -> Response | Awaitable[Response]:
        """Authorize ``use`` of ``name`` and run ``then``; inline when the definition is
        cached, else after reading it on the thread pool."""
        hit, app = self.apps.get(name)
        if hit:
            return self._use(req, op, name, app, then)

        async def slow() -> Response:
            try:
                app = await self._offload(lambda: self._load_app(name))
            except ApiError as err:
                if err.code == "NOT_FOUND":
                    app = None
                elif err.code == "UNAVAILABLE" and (last := self.apps.last(name)):
                    # The store is down: the last definition read, trusted for one more
                    # ttl (so requests do not each wait for the store to fail).
                    log.warning("the SSO store cannot be read (%s); using the last known "
                                "definition of %r", err.message, name)
                    self.apps.put(name, last)
                    app = last
                else:
                    raise
            return self._use(req, op, name, app, then)

        return slow()

    def _use(self, req: Request, op: str, name: str, app: App | None,
             then: Callable[[App], Response]) -> Response:
        if app is None:
            # Refused like a forbidden application unless the caller administers the agent:
            # a user must not learn which application names exist.
            if self.policy.is_agent_admin(req.caller):
                raise not_found(f"no application {name!r}")
            raise self._refuse(req.caller, op, ApiError(
                "FORBIDDEN", f"no application {name!r} that uid {req.caller.uid} may use"),
                name)
        self._check(req.caller, op, Action.USE, app)
        return then(app)

    def _encrypt(self, req: Request, seg: list[str],
                 params: dict[str, str]) -> Response | Awaitable[Response]:
        body = json_object(req.body, {"app", "plaintext"}, {"associated_data"})
        name = check_name("application", body["app"])
        plaintext = b64("plaintext", body["plaintext"])
        ad = b64("associated_data", body.get("associated_data", ""))

        def run(app: App) -> Response:
            try:
                token = self.cipher.encrypt(plaintext, app_associated_data(name, ad))
            except RaftssoError as exc:
                raise _translate(exc) from None
            # Built by hand (the hot path): base64 and an int need no JSON escaping.
            return Response(200, b'{"ciphertext":"%s","key_version":%d}' % (
                binascii.b2a_base64(token, newline=False),
                envelope.token_key_version(token)))

        return self._with_app(req, "encrypt", name, run)

    def _decrypt(self, req: Request, seg: list[str],
                 params: dict[str, str]) -> Response | Awaitable[Response]:
        body = json_object(req.body, {"app", "ciphertext"}, {"associated_data"})
        name = check_name("application", body["app"])
        token = b64("ciphertext", body["ciphertext"])
        ad = b64("associated_data", body.get("associated_data", ""))
        try:
            version = envelope.token_key_version(token)
        except InvalidToken:
            version = -1  # refused below, after authorization, as any bad token

        def decrypt() -> Response:
            try:
                plain = self.cipher.decrypt(token, app_associated_data(name, ad))
            except RaftssoError as exc:
                raise _translate(exc) from None
            return Response(200, b'{"plaintext":"%s"}' % binascii.b2a_base64(
                plain, newline=False))

        def run(app: App) -> Response:
            if version < 0:
                raise _translate(InvalidToken())
            return decrypt()

        if version > self._known_max_version():
            # A version newer than the cache: the client resyncs from the cluster (network),
            # so this one leaves the event loop.
            async def slow() -> Response:
                result = self._with_app(req, "decrypt", name, lambda app: Response(200, b""))
                if not isinstance(result, Response):
                    await result
                return await self._offload(decrypt)

            return slow()
        return self._with_app(req, "decrypt", name, run)

    def _known_max_version(self) -> int:
        now = self._clock()
        if now - self._known_at > 0.5:
            versions = [v.id for v in self.cipher.state().versions]
            self._known_max = max(versions, default=0)
            self._known_at = now
        return self._known_max

    # applications --------------------------------------------------------------------------------

    async def _apps_list(self, req: Request, seg: list[str],
                         params: dict[str, str]) -> Response:
        apps = await self._offload(self.store.list_apps)
        return json_response(200, {"apps": [app_json(a) for a in apps
                                            if self.policy.may_see(req.caller, a)]})

    async def _app_create(self, req: Request, seg: list[str],
                          params: dict[str, str]) -> Response:
        caller = req.caller
        self._check(caller, "app.create", Action.ADMINISTER, None)
        body = json_object(req.body, {"name"}, {"description", "type", "enabled",
                                                "users_group", "admins_group"})
        name = check_name("application", body["name"])
        description = check_text("description", body.get("description", ""))
        kind = check_type(body.get("type", "individual"))
        enabled = check_bool("enabled", body.get("enabled", True))
        users = check_group("users_group", body.get("users_group"))
        admins = check_group("admins_group", body.get("admins_group"))

        def create() -> App:
            app = self._written(caller, "app.create", name, None, lambda: self.store.add_app(
                name, description, type=kind, enabled=enabled, users_group=users,
                admins_group=admins))
            self.apps.put(name, app)
            return app

        return json_response(201, app_json(await self._offload(create)))

    async def _app_get(self, req: Request, seg: list[str], params: dict[str, str]) -> Response:
        name = check_name("application", seg[1])
        caller = req.caller
        try:
            app = await self._offload(lambda: self._load_app(name))
        except ApiError as err:
            if err.code == "NOT_FOUND" and not self.policy.is_agent_admin(caller):
                raise self._refuse(caller, "app.get", ApiError(
                    "FORBIDDEN", f"no application {name!r} that uid {caller.uid} may see"),
                    name) from None
            raise
        if not self.policy.is_agent_admin(caller):
            self._check(caller, "app.get", Action.READ, app)
        return json_response(200, app_json(app))

    async def _app_update(self, req: Request, seg: list[str],
                          params: dict[str, str]) -> Response:
        caller = req.caller
        name = check_name("application", seg[1])
        self._check(caller, "app.update", Action.ADMINISTER, None, name)
        body = json_object(req.body, set(), {"description", "enabled", "users_group",
                                             "admins_group"})
        changes: dict[str, Any] = {}
        if "description" in body:
            changes["description"] = check_text("description", body["description"])
        if "enabled" in body:
            changes["enabled"] = check_bool("enabled", body["enabled"])
        for key in ("users_group", "admins_group"):
            if key in body:
                changes[key] = check_group(key, body[key])

        def update() -> App:
            app = self._written(caller, "app.update", name, None,
                                lambda: self.store.update_app(name, **changes))
            self.apps.put(name, app)  # in force at once on this agent
            return app

        return json_response(200, app_json(await self._offload(update)))

    async def _app_delete(self, req: Request, seg: list[str],
                          params: dict[str, str]) -> Response:
        caller = req.caller
        name = check_name("application", seg[1])
        self._check(caller, "app.delete", Action.ADMINISTER, None, name)

        def remove() -> tuple[int, int]:
            counts = self._written(caller, "app.delete", name, None,
                                   lambda: self.store.remove_app(name))
            self.apps.put(name, None)
            return counts

        creds, values = await self._offload(remove)
        return json_response(200, {"app": name, "credentials": creds, "config_values": values})

    async def _export(self, req: Request, seg: list[str], params: dict[str, str]) -> Response:
        self._check(req.caller, "apps.export", Action.ADMINISTER, None)
        doc = await self._offload(lambda: self._written(req.caller, "apps.export", None, None,
                                                        self.store.export_apps))
        return json_response(200, doc)

    async def _import(self, req: Request, seg: list[str], params: dict[str, str]) -> Response:
        caller = req.caller
        self._check(caller, "apps.import", Action.ADMINISTER, None)
        replace = params.get("replace", "false")
        if replace not in ("true", "false"):
            raise bad_request("replace must be true or false")
        doc = parse_json(req.body)
        if not isinstance(doc, dict):
            raise bad_request("the application file must be a JSON object")

        def run() -> list[str]:
            try:
                names = self.store.import_apps(doc, replace=replace == "true")
            except Exception as exc:
                # A plain StoreError here is about the document, not the store.
                err = (bad_request(str(exc)) if isinstance(exc, StoreError)
                       and not isinstance(exc, NotFound | AlreadyExists) else _translate(exc))
                self.audit.event(caller, "apps.import", code=err.code, status=err.status)
                raise err from None
            self.audit.event(caller, "apps.import", extra={"count": len(names)})
            self.apps.expire()
            return names

        imported = await self._offload(run)
        return json_response(200, {"imported": imported})

    # credential mappings and configuration values -----------------------------------------------

    def _row_access(self, req: Request, kind: str, op: str, action: Action, app_name: str,
                    name: str | None) -> App:
        """Thread pool: the fresh definition, authorization, then the type rules."""
        caller = req.caller
        try:
            app = self._load_app(app_name)
        except ApiError as err:
            if err.code == "NOT_FOUND" and not self.policy.is_agent_admin(caller):
                raise self._refuse(caller, op, ApiError(
                    "FORBIDDEN", f"no application {app_name!r} that uid {caller.uid} may "
                    "use"), app_name, name) from None
            raise
        user = name if kind == "credential" and action is Action.READ else None
        self._check(caller, op, action, app, name=name, user=user)
        if kind == "credential":
            if app.type is AppType.CONFIG:
                raise ApiError("CONFLICT", f"the application {app_name!r} is a configuration "
                               "store (type config): it holds configuration values, no "
                               "credential mappings")
            if name is not None and app.type is AppType.GROUP and name != GROUP_USER:
                raise ApiError("CONFLICT", f"the application {app_name!r} is a group "
                               f"application: its one credential mapping is under "
                               f"{GROUP_USER!r}")
            if name is not None and app.type is AppType.INDIVIDUAL and name == GROUP_USER:
                raise ApiError("CONFLICT", f"the user name {GROUP_USER!r} is reserved for "
                               "group applications")
        return app

    async def _row(self, req: Request, seg: list[str], params: dict[str, str]) -> Response:
        kind = "credential" if seg[2] == "credentials" else "config"
        field = "credential" if kind == "credential" else "value"
        app_name = check_name("application", seg[1])
        name = check_name("user" if kind == "credential" else "setting", seg[3])
        op = f"{kind}.{_VERBS[req.method]}"
        caller = req.caller
        if req.method == "GET":
            def get() -> bytes:
                self._row_access(req, kind, op, Action.READ, app_name, name)
                try:
                    if kind == "credential":
                        return self.store.get_credential(app_name, name)
                    return self.store.get_config(app_name, name)
                except InvalidToken:
                    # The caller sent nothing wrong: the stored row does not decrypt.
                    raise ApiError("UNDECRYPTABLE", f"the stored {kind} {name!r} of "
                                   f"{app_name!r} cannot be decrypted: its key version is "
                                   "unknown to the cluster (retired?) or the row was "
                                   "altered; set it again") from None
                except RaftssoError as exc:
                    raise _translate(exc) from None

            secret = await self._offload(get)
            return json_response(200, {field: encode_b64(secret)})
        if req.method == "PUT":
            body = json_object(req.body, {field})
            secret = b64(field, body[field])

            def put() -> int:
                self._row_access(req, kind, op, Action.WRITE, app_name, name)
                setter = (self.store.set_credential if kind == "credential"
                          else self.store.set_config)
                return self._written(caller, op, app_name, name,
                                     lambda: setter(app_name, name, secret))

            version = await self._offload(put)
            return json_response(200, {"key_version": version})

        def delete() -> None:
            self._row_access(req, kind, op, Action.WRITE, app_name, name)
            remover = (self.store.delete_credential if kind == "credential"
                       else self.store.delete_config)
            self._written(caller, op, app_name, name, lambda: remover(app_name, name))

        await self._offload(delete)
        return json_response(200, {"deleted": True})

    async def _rows(self, req: Request, seg: list[str], params: dict[str, str]) -> Response:
        kind = "credential" if seg[2] == "credentials" else "config"
        app_name = check_name("application", seg[1])
        op = f"{kind}.list"
        caller = req.caller

        def listing() -> list[Entry]:
            app = self._row_access(req, kind, op, Action.READ, app_name, None)
            try:
                entries = (self.store.list_credentials(app_name) if kind == "credential"
                           else self.store.list_config(app_name))
            except RaftssoError as exc:
                raise _translate(exc) from None
            if (kind == "credential" and app.type is AppType.INDIVIDUAL
                    and not self.policy.is_admin(caller, app)):
                entries = [e for e in entries if e.name == caller.user]
            return entries

        entries = await self._offload(listing)
        if kind == "credential":
            return json_response(200, {"credentials": [entry_json(e, "user") for e in entries]})
        return json_response(200, {"config": [entry_json(e, "name") for e in entries]})


def _translate(exc: BaseException) -> ApiError:
    """One place where library errors become API errors."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, StaleSecret):
        return ApiError("STALE", str(exc))
    if isinstance(exc, ClusterUnavailable):
        return ApiError("UNAVAILABLE", str(exc))
    if isinstance(exc, InvalidToken):
        return ApiError("INVALID_TOKEN", "the ciphertext does not decrypt for this "
                        "application and associated data (altered, made for another "
                        "application, or under a retired key version)")
    if isinstance(exc, NotFound):
        return ApiError("NOT_FOUND", str(exc))
    if isinstance(exc, AlreadyExists):
        return ApiError("ALREADY_EXISTS", str(exc))
    if isinstance(exc, StoreError):
        return ApiError("UNAVAILABLE", f"the SSO store cannot be used: {exc}")
    if isinstance(exc, RaftssoError):
        return ApiError("UNAVAILABLE", str(exc))
    log.error("unexpected error: %r", exc, exc_info=exc)
    return ApiError("INTERNAL", "internal error; see the agent's log")


# -- the route table (the OpenAPI document describes the same) -------------------------------------

_QUERY = {"import": {"replace"}}
_VERBS = {"GET": "get", "PUT": "set", "DELETE": "delete"}


def _route_table(seg: list[str]) -> dict[str, str] | None:
    """Method -> handler name for a path, or None for no such route."""
    n = len(seg)
    if any(not s for s in seg):
        return None
    if n == 1:
        return {"health": {"GET": "health"}, "whoami": {"GET": "whoami"},
                "openapi.json": {"GET": "openapi_doc"}, "encrypt": {"POST": "encrypt"},
                "decrypt": {"POST": "decrypt"}, "apps": {"GET": "apps_list",
                                                         "POST": "app_create"},
                "export": {"GET": "export"}, "import": {"POST": "import"}}.get(seg[0])
    if seg[0] != "apps":
        return None
    if n == 2:
        return {"GET": "app_get", "PATCH": "app_update", "DELETE": "app_delete"}
    if seg[2] not in ("credentials", "config"):
        return None
    if n == 3:
        return {"GET": "rows"}
    if n == 4:
        return {"GET": "row", "PUT": "row", "DELETE": "row"}
    return None


#: (method, path template) of every operation, for the OpenAPI check.
ROUTES = [
    ("GET", "/v1/health"), ("GET", "/v1/whoami"), ("GET", "/v1/openapi.json"),
    ("POST", "/v1/encrypt"), ("POST", "/v1/decrypt"),
    ("GET", "/v1/apps"), ("POST", "/v1/apps"),
    ("GET", "/v1/apps/{app}"), ("PATCH", "/v1/apps/{app}"), ("DELETE", "/v1/apps/{app}"),
    ("GET", "/v1/apps/{app}/credentials"),
    ("GET", "/v1/apps/{app}/credentials/{user}"), ("PUT", "/v1/apps/{app}/credentials/{user}"),
    ("DELETE", "/v1/apps/{app}/credentials/{user}"),
    ("GET", "/v1/apps/{app}/config"),
    ("GET", "/v1/apps/{app}/config/{name}"), ("PUT", "/v1/apps/{app}/config/{name}"),
    ("DELETE", "/v1/apps/{app}/config/{name}"),
    ("GET", "/v1/export"), ("POST", "/v1/import"),
]
