"""raftsso: a Raft-replicated master secret store.

The highly available successor of the ENTSSO Master Secret Server. The public API:

* :class:`SSOClient` (the SSO service side: a cached keyring, encrypt/decrypt straight
  through a failover) and its :class:`ClientState`;
* :class:`SSOStore` and ``open_store`` (the SSO database);
* :class:`AdminClient` (the operator's typed operations: status, rotate, retire, backup,
  restore, members, leadership transfer);
* the one exception tree rooted at :class:`RaftssoError` (drawn in :mod:`raftsso.errors`)
  and the protocol's :class:`ErrorCode`.

Everything else is internal and may change.
"""

from __future__ import annotations

# typing.TYPE_CHECKING without importing typing: ``raftsso --version`` imports this file
# alone, and typing is about 5 ms of it (mypy treats any TYPE_CHECKING name as true).
TYPE_CHECKING = False

__version__ = "0.1.0"

# The public names are imported on first use (PEP 562), so that ``import raftsso.errors``
# (the CLI's first import, every node's) does not load the client, the store and the TLS
# stack. ``from raftsso import SSOClient`` works as ever; mypy reads the imports below.
_LAZY: dict[str, str] = {
    "AdminClient": "raftsso.admin", "BackupWritten": "raftsso.admin",
    "ClientState": "raftsso.client", "SSOClient": "raftsso.client",
    "ErrorCode": "raftsso.protocol.codes",
    "SSOStore": "raftsso.store", "open_store": "raftsso.store",
    **{name: "raftsso.errors" for name in (
        "AlreadyExists", "BadRequest", "ClusterUnavailable", "ConfigError", "Conflict",
        "DecodeError", "FrameTooLarge", "InvalidToken", "NotFound", "NotLeader",
        "OutcomeUnknown", "PermissionDenied", "RaftssoError", "RemoteError", "StaleSecret",
        "StorageError", "StoreError", "Unavailable")},
}

if TYPE_CHECKING:
    from typing import Any

    from raftsso.admin import AdminClient, BackupWritten
    from raftsso.client import ClientState, SSOClient
    from raftsso.errors import (
        AlreadyExists,
        BadRequest,
        ClusterUnavailable,
        ConfigError,
        Conflict,
        DecodeError,
        FrameTooLarge,
        InvalidToken,
        NotFound,
        NotLeader,
        OutcomeUnknown,
        PermissionDenied,
        RaftssoError,
        RemoteError,
        StaleSecret,
        StorageError,
        StoreError,
        Unavailable,
    )
    from raftsso.protocol.codes import ErrorCode
    from raftsso.store import SSOStore, open_store


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'raftsso' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "AdminClient", "AlreadyExists", "BackupWritten", "BadRequest", "ClientState",
    "ClusterUnavailable", "ConfigError", "Conflict", "DecodeError", "ErrorCode",
    "FrameTooLarge", "InvalidToken", "NotFound", "NotLeader", "OutcomeUnknown",
    "PermissionDenied", "RaftssoError", "RemoteError", "SSOClient", "SSOStore", "StaleSecret",
    "StorageError", "StoreError", "Unavailable", "open_store",
]
