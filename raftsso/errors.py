"""The one exception tree of raftsso.

::

    RaftssoError
    ├── ConfigError            a configuration or deployment file is missing or wrong
    ├── DecodeError            malformed bytes from the wire or a file (length, version, types)
    │   └── FrameTooLarge      a frame announced more bytes than the limit
    ├── InvalidToken           a sealed value or ciphertext failed authentication (one opaque error)
    ├── StorageError           a durable write (fsync, rename) failed
    ├── RemoteError            an error code (``code``, an ErrorCode) answered by a node
    │   ├── NotLeader          the node is not the leader (``leader`` carries the leader's address)
    │   ├── PermissionDenied   the certificate's role may not do this
    │   ├── Conflict           a compare-and-set lost (e.g. a concurrent rotation won)
    │   ├── OutcomeUnknown     the write may or may not have been applied
    │   ├── BadRequest         the request (or its frame) is malformed
    │   └── Unavailable        no leader ready with a quorum right now (retry)
    ├── ClusterUnavailable     no node, or no leader with a quorum, could be reached
    ├── StaleSecret            the client's cached keyring is older than ``max_staleness``
    ├── SealError              the seal cannot wrap or unwrap as asked (raftsso.seal.base)
    │   ├── Sealed             no seal key yet: a shamir node waits for unseal shares
    │   └── InvalidShare       an unseal share is malformed, altered or of another set
    └── StoreError             the SSO store cannot be used (schema, permissions, state)
        ├── NotFound           no such application, user or configuration value
        └── AlreadyExists      the application (or row) exists already

A :class:`RemoteError` is raised on both sides: inside a node it is the error to answer
with (``raftsso.server.Service`` maps it to the wire in one place); in a client,
:mod:`raftsso.remote` turns an error answer back into the class of its code (one table).
Codes are :class:`raftsso.protocol.codes.ErrorCode` members.

Exit codes of the CLI follow :func:`exit_code_for`: 3 for an unavailable cluster, 1 otherwise.
"""

from __future__ import annotations

from raftsso.protocol.codes import CLUSTER_UNAVAILABLE, ErrorCode


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
    """An error with a protocol code: answered by a node, or to be answered by one.

    ``leader`` (NOT_LEADER: the leader's service address, if known), ``request_id``
    (OUTCOME_UNKNOWN: retry with it) and ``node`` (client side: which node answered) are
    the only details an answer carries.
    """

    code: ErrorCode = ErrorCode.ERROR

    def __init__(self, message: str, *, code: ErrorCode | None = None,
                 leader: str | None = None, request_id: bytes | None = None,
                 node: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.leader = leader
        self.request_id = request_id
        self.node = node


class NotLeader(RemoteError):
    code = ErrorCode.NOT_LEADER


class PermissionDenied(RemoteError):
    code = ErrorCode.FORBIDDEN


class Conflict(RemoteError):
    code = ErrorCode.CONFLICT


class OutcomeUnknown(RemoteError):
    code = ErrorCode.OUTCOME_UNKNOWN


class BadRequest(RemoteError):
    code = ErrorCode.BAD_REQUEST


class Unavailable(RemoteError):
    code = ErrorCode.UNAVAILABLE


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


def exit_code_for(error: BaseException) -> int:
    """The CLI exit code for an error (see DESIGN.md section 5)."""
    if isinstance(error, ClusterUnavailable):
        return 3
    if isinstance(error, RemoteError) and error.code in CLUSTER_UNAVAILABLE:
        return 3
    return 1
