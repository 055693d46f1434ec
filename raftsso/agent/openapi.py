"""The OpenAPI 3.1 document of the agent's API, version 1.

The agent serves it at ``GET /v1/openapi.json``; the repository keeps the same document
in ``docs/agent-openapi.json`` (a test checks they are equal; regenerate with
``python -m raftsso.agent.openapi > docs/agent-openapi.json``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from raftsso.agent.errors import CODES

API_VERSION = "1"

_B64 = {"type": "string", "contentEncoding": "base64",
        "description": "base64, standard alphabet with padding"}
_NAME = {"type": "string", "minLength": 1, "maxLength": 256,
         "description": "UTF-8 text without NUL"}
_GROUP = {"type": ["string", "null"], "maxLength": 64,
          "pattern": r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$",
          "description": "a Unix group name, or null for none"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: list[str], *, closed: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if closed:
        out["additionalProperties"] = False
    return out


SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": {"type": "string", "enum": sorted(CODES)},
                   "message": {"type": "string"}}, ["error", "message"]),
    "Health": _obj({
        "status": {"type": "string", "enum": ["ok", "stale"],
                   "description": "stale: the last sync is older than max_staleness; "
                   "decrypt works, encrypt answers 503 STALE"},
        "primary_version": {"type": ["integer", "null"]},
        "sync_age": {"type": ["number", "null"], "description": "seconds since the last "
                     "successful sync with the cluster"},
        "max_staleness": {"type": "number"},
        "cluster_id": {"type": ["string", "null"]},
        "versions": {"type": "array", "items": {"type": "integer"}},
        "last_error": {"type": ["string", "null"]},
    }, ["status", "primary_version", "sync_age"]),
    "WhoAmI": _obj({
        "uid": {"type": "integer"}, "gid": {"type": "integer"}, "pid": {"type": "integer"},
        "user": {"type": ["string", "null"]},
        "groups": {"type": "array", "items": {"type": "string"}},
        "agent_admin": {"type": "boolean"},
    }, ["uid", "gid", "pid", "user", "groups", "agent_admin"]),
    "EncryptRequest": _obj({"app": _NAME, "plaintext": _B64, "associated_data": _B64},
                           ["app", "plaintext"]),
    "EncryptResponse": _obj({"ciphertext": _B64, "key_version": {"type": "integer"}},
                            ["ciphertext", "key_version"]),
    "DecryptRequest": _obj({"app": _NAME, "ciphertext": _B64, "associated_data": _B64},
                           ["app", "ciphertext"]),
    "DecryptResponse": _obj({"plaintext": _B64}, ["plaintext"]),
    "App": _obj({
        "name": _NAME, "description": {"type": "string", "maxLength": 1024},
        "created": {"type": "number", "description": "Unix time"},
        "type": {"type": "string", "enum": ["individual", "group", "config"]},
        "enabled": {"type": "boolean"}, "users_group": _GROUP, "admins_group": _GROUP,
    }, ["name", "description", "created", "type", "enabled", "users_group",
        "admins_group"]),
    "AppCreate": _obj({
        "name": _NAME, "description": {"type": "string", "maxLength": 1024},
        "type": {"type": "string", "enum": ["individual", "group", "config"],
                 "default": "individual"},
        "enabled": {"type": "boolean", "default": True},
        "users_group": _GROUP, "admins_group": _GROUP,
    }, ["name"]),
    "AppUpdate": _obj({
        "description": {"type": "string", "maxLength": 1024}, "enabled": {"type": "boolean"},
        "users_group": _GROUP, "admins_group": _GROUP,
    }, []),
    "AppList": _obj({"apps": {"type": "array", "items": _ref("App")}}, ["apps"]),
    "AppRemoved": _obj({"app": _NAME, "credentials": {"type": "integer"},
                        "config_values": {"type": "integer"}},
                       ["app", "credentials", "config_values"]),
    "AppFile": {
        "type": "object", "required": ["format", "applications"],
        "description": "the application-definition file (no secrets): what "
                       "`GET /v1/export` gives and `POST /v1/import` takes",
        "properties": {
            "format": {"type": "integer", "const": 1},
            "applications": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {
                    "name": _NAME, "description": {"type": "string"},
                    "type": {"type": "string", "enum": ["individual", "group", "config"]},
                    "enabled": {"type": "boolean"}, "users_group": _GROUP,
                    "admins_group": _GROUP}}},
        },
    },
    "Imported": _obj({"imported": {"type": "array", "items": _NAME}}, ["imported"]),
    "Credential": _obj({"credential": _B64}, ["credential"]),
    "ConfigValue": _obj({"value": _B64}, ["value"]),
    "Written": _obj({"key_version": {"type": "integer"}}, ["key_version"]),
    "Deleted": _obj({"deleted": {"type": "boolean", "const": True}}, ["deleted"]),
    "CredentialList": _obj({"credentials": {"type": "array", "items": _obj(
        {"user": _NAME, "key_version": {"type": "integer"}, "updated": {"type": "number"}},
        ["user", "key_version", "updated"])}}, ["credentials"]),
    "ConfigList": _obj({"config": {"type": "array", "items": _obj(
        {"name": _NAME, "key_version": {"type": "integer"}, "updated": {"type": "number"}},
        ["name", "key_version", "updated"])}}, ["config"]),
}

_ERRORS_BY_STATUS: dict[int, list[str]] = {}
for _code, _status in CODES.items():
    _ERRORS_BY_STATUS.setdefault(_status, []).append(_code)


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _op(summary: str, ok: str, *, body: str | None = None, status: int = 200,
        errors: tuple[int, ...] = (400, 403, 404), tag: str = "data",
        description: str = "") -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(status): {"description": "success", "content": _json(_ref(ok))}}
    for code in sorted({*errors, 400, 408, 413, 431, 503}):
        responses[str(code)] = {
            "description": "error: " + ", ".join(sorted(_ERRORS_BY_STATUS[code])),
            "content": _json(_ref("Error"))}
    out: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if description:
        out["description"] = description
    if body is not None:
        out["requestBody"] = {"required": True, "content": _json(_ref(body))}
    return out


def _param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


_APP = _param("app", "the application name (percent-encoded UTF-8)")
_USER = _param("user", "the user name of the mapping (`@group` in a group application)")
_SETTING = _param("name", "the configuration value's name")


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict)."""
    paths: dict[str, Any] = {
        "/v1/health": {"get": _op(
            "Health and cache state of the agent (anyone who can connect)", "Health",
            errors=(), tag="agent")},
        "/v1/whoami": {"get": _op(
            "The caller as the kernel reports it (uid, gid, groups) and whether it "
            "administers the agent", "WhoAmI", errors=(), tag="agent")},
        "/v1/openapi.json": {"get": {
            "summary": "This document", "tags": ["agent"],
            "responses": {"200": {"description": "the OpenAPI document",
                                  "content": _json({"type": "object"})}}}},
        "/v1/encrypt": {"post": _op(
            "Encrypt under the primary master secret, bound to the application",
            "EncryptResponse", body="EncryptRequest", errors=(400, 403, 404, 503),
            description="The application name and associated_data are authenticated: "
            "the ciphertext decrypts only with both. 503 STALE when the cached keyring is "
            "older than max_staleness (no node has answered since).")},
        "/v1/decrypt": {"post": _op(
            "Decrypt a ciphertext of the application (works while every node is down)",
            "DecryptResponse", body="DecryptRequest", errors=(400, 403, 404, 503))},
        "/v1/apps": {
            "get": _op("The applications the caller may use or administer", "AppList",
                       errors=(), tag="apps"),
            "post": _op("Create an application (agent administrators)", "App",
                        body="AppCreate", status=201, errors=(400, 403, 409), tag="apps"),
        },
        "/v1/apps/{app}": {
            "parameters": [_APP],
            "get": _op("An application's definition", "App", tag="apps"),
            "patch": _op("Change description, enabled flag or groups (agent administrators)",
                         "App", body="AppUpdate", tag="apps"),
            "delete": _op("Delete an application with its mappings and values (agent "
                          "administrators)", "AppRemoved", tag="apps"),
        },
        "/v1/apps/{app}/credentials": {
            "parameters": [_APP],
            "get": _op("The credential mappings (user names, never credentials); a user of "
                       "an individual application sees only their own",
                       "CredentialList", errors=(400, 403, 404, 409)),
        },
        "/v1/apps/{app}/credentials/{user}": {
            "parameters": [_APP, _USER],
            "get": _op("Read a credential (users; in an individual application only "
                       "their own, unless administrator)", "Credential",
                       errors=(400, 403, 404, 409)),
            "put": _op("Set a credential (administrators)", "Written", body="Credential",
                       errors=(400, 403, 404, 409)),
            "delete": _op("Delete a credential mapping (administrators)", "Deleted",
                          errors=(400, 403, 404, 409)),
        },
        "/v1/apps/{app}/config": {
            "parameters": [_APP],
            "get": _op("The configuration values' names (never values)", "ConfigList"),
        },
        "/v1/apps/{app}/config/{name}": {
            "parameters": [_APP, _SETTING],
            "get": _op("Read a configuration value (users)", "ConfigValue",
                       errors=(400, 403, 404, 409)),
            "put": _op("Set a configuration value (administrators)", "Written",
                       body="ConfigValue", errors=(400, 403, 404, 409)),
            "delete": _op("Delete a configuration value (administrators)", "Deleted",
                          errors=(400, 403, 404, 409)),
        },
        "/v1/export": {"get": _op("Export the application definitions (agent "
                                  "administrators)", "AppFile", errors=(403,), tag="apps")},
        "/v1/import": {"post": {
            **_op("Import application definitions (agent administrators)", "Imported",
                  body="AppFile", errors=(400, 403, 409), tag="apps"),
            "parameters": [{"name": "replace", "in": "query", "required": False,
                            "description": "change applications that exist with another "
                            "definition (never their type)",
                            "schema": {"type": "string", "enum": ["true", "false"],
                                       "default": "false"}}],
        }},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "raftsso agent",
            "version": API_VERSION,
            "description": (
                "The SSO service of one host: HTTP/1.1 + JSON on a Unix socket. The caller "
                "is identified by the kernel (SO_PEERCRED, SO_PEERGROUPS), never by "
                "anything it sends; see docs/agent.md for the authorization model. Binary "
                "fields are base64. Every error is {\"error\": CODE, \"message\": TEXT}."),
        },
        "servers": [{"url": "http://localhost",
                     "description": "over the agent's Unix socket (curl --unix-socket PATH)"}],
        "tags": [{"name": "agent"}, {"name": "data"}, {"name": "apps"}],
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


def document_bytes() -> bytes:
    """The document as the repository keeps it (sorted keys, two-space indent)."""
    return (json.dumps(document(), indent=2, sort_keys=True) + "\n").encode()


if __name__ == "__main__":
    sys.stdout.buffer.write(document_bytes())
