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

__version__ = "0.1.0"

__all__ = [
    "AdminClient", "AlreadyExists", "BackupWritten", "BadRequest", "ClientState",
    "ClusterUnavailable", "ConfigError", "Conflict", "DecodeError", "ErrorCode",
    "FrameTooLarge", "InvalidToken", "NotFound", "NotLeader", "OutcomeUnknown",
    "PermissionDenied", "RaftssoError", "RemoteError", "SSOClient", "SSOStore", "StaleSecret",
    "StorageError", "StoreError", "Unavailable", "open_store",
]

