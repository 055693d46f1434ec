"""The one exception tree of raftsso.

::

    RaftssoError
    ├── ConfigError            a configuration or deployment file is missing or wrong
    ├── DecodeError            malformed bytes from the wire or a file (length, version, types)
    │   └── FrameTooLarge      a frame announced more bytes than the limit
    ├── InvalidToken           a sealed value or ciphertext failed authentication (one opaque error)
    ├── StorageError           a durable write (fsync, rename) failed
    ├── RemoteError            a node answered with an error code (``code``, ``message``)
    │   ├── NotLeader          the node is not the leader (``leader`` carries the leader's address)
    │   ├── PermissionDenied   the certificate's role may not do this
    │   ├── Conflict           a compare-and-set lost (e.g. a concurrent rotation won)
    │   └── OutcomeUnknown     the write may or may not have been applied
    ├── ClusterUnavailable     no node, or no leader with a quorum, could be reached
    ├── StaleSecret            the client's cached keyring is older than ``max_staleness``
    └── StoreError             the SSO store cannot be used (schema, permissions, state)
        ├── NotFound           no such application, user or configuration value
        └── AlreadyExists      the application (or row) exists already

Exit codes of the CLI follow :func:`exit_code_for`: 3 for an unavailable cluster, 1 otherwise.
"""

from __future__ import annotations

from typing import Any


class RaftssoError(Exception):
    """Root of every error raftsso raises on purpose."""


class ConfigError(RaftssoError):
    """A configuration or deployment file is missing, unreadable or inconsistent."""


class DecodeError(RaftssoError):
    """Bytes from the wire or from a file do not have the expected shape."""


class FrameTooLarge(DecodeError):
    """A frame announced more bytes than the configured limit."""


class InvalidToken(RaftssoError):
    """Authentication of a sealed value or ciphertext failed.

    Deliberately carries no detail: tampered, truncated, wrong key, wrong associated data
    and unknown version all look the same to the caller (Fernet's lesson).
    """

    def __init__(self) -> None:
        super().__init__("invalid token")


class StorageError(RaftssoError):
    """A durable write failed; nothing was acknowledged."""


class RemoteError(RaftssoError):
    """A node answered a request with an error code."""

    code = "ERROR"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.details = details


class NotLeader(RemoteError):
    code = "NOT_LEADER"

    @property
    def leader(self) -> str | None:
        value = self.details.get("leader")
        return value if isinstance(value, str) else None


class PermissionDenied(RemoteError):
    code = "FORBIDDEN"


class Conflict(RemoteError):
    code = "CONFLICT"


class OutcomeUnknown(RemoteError):
    code = "OUTCOME_UNKNOWN"


class ClusterUnavailable(RaftssoError):
    """No node, or no leader with a quorum, answered in time."""


class StaleSecret(RaftssoError):
    """The cached keyring is too old to encrypt with; decryption still works."""


class StoreError(RaftssoError):
    """The SSO store (the SSO database) cannot be opened or used as asked."""


class NotFound(StoreError):
    """No such application, user mapping or configuration value in the SSO store."""


class AlreadyExists(StoreError):
    """The application (or row) exists already in the SSO store."""


_REMOTE_BY_CODE: dict[str, type[RemoteError]] = {
    cls.code: cls for cls in (NotLeader, PermissionDenied, Conflict, OutcomeUnknown)
}


def remote_error(code: str, message: str, **details: Any) -> RemoteError:
    """Build the exception that matches an error code received from a node."""
    cls = _REMOTE_BY_CODE.get(code, RemoteError)
    return cls(message, code=code, **details)


def exit_code_for(error: BaseException) -> int:
    """The CLI exit code for an error (see DESIGN.md section 5)."""
    if isinstance(error, ClusterUnavailable):
        return 3
    if isinstance(error, RemoteError) and error.code in ("UNAVAILABLE", "NO_QUORUM"):
        return 3
    return 1
