"""The ids of the protocol, each validated in exactly one place.

============  =========  ==============================================================
type          wire       valid
============  =========  ==============================================================
VersionId     int        1 .. 2**32 - 1 (a client token holds it as a u32)
RequestId     bytes      exactly 16 bytes (random; makes a retried write idempotent)
NodeId        str        1 .. 64 characters
ClientId      str        1 .. 64 characters (an SSO client process's random id)
============  =========  ==============================================================

The constructors raise ``ValueError``; each boundary turns that into its own error
(``BAD_REQUEST`` at the service, ``BAD_COMMAND`` in the state machine, a damaged backup).
This module imports nothing of raftsso.
"""

from __future__ import annotations

import os
from typing import NewType, TypeGuard

MAX_VERSION_ID = 2**32 - 1
REQUEST_ID_SIZE = 16
MAX_NODE_ID = 64
MAX_CLIENT_ID = 64

VersionId = NewType("VersionId", int)
RequestId = NewType("RequestId", bytes)
NodeId = NewType("NodeId", str)
ClientId = NewType("ClientId", str)


def is_version_id(value: object) -> TypeGuard[VersionId]:
    # bool is an int subclass: True is not version 1.
    return type(value) is int and 0 < value <= MAX_VERSION_ID


def version_id(value: object) -> VersionId:
    if not is_version_id(value):
        raise ValueError(f"a version id is an integer from 1 to {MAX_VERSION_ID}")
    return value


def request_id(value: object) -> RequestId:
    if not isinstance(value, bytes) or len(value) != REQUEST_ID_SIZE:
        raise ValueError(f"a request id is {REQUEST_ID_SIZE} bytes")
    return RequestId(value)


def new_request_id() -> RequestId:
    """A fresh random request id; reuse it on every retry of the same write."""
    # os.urandom is what secrets.token_bytes returns; importing secrets would load random,
    # hmac and hashlib into every process that imports the error tree (the CLI's start).
    return RequestId(os.urandom(REQUEST_ID_SIZE))


def _short_text(value: object, limit: int, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise ValueError(f"a {what} is a string of 1 to {limit} characters")
    return value


def node_id(value: object) -> NodeId:
    return NodeId(_short_text(value, MAX_NODE_ID, "node id"))


def client_id(value: object) -> ClientId:
    return ClientId(_short_text(value, MAX_CLIENT_ID, "client id"))
