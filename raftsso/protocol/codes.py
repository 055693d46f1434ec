"""Every error code a node answers with, in one enum.

A code travels in an error answer (``{"code", "message", ...}``, see
:mod:`raftsso.protocol.messages`) and in a state machine's
:class:`~raftsso.protocol.commands.Outcome`.
Server-side exceptions carry one (:class:`raftsso.errors.RemoteError`); the node service maps
them to the wire in one place and the client (:mod:`raftsso.remote`) maps them back to
exception classes in one table. ``docs/architecture.md`` lists every code (a unit test
checks that the table and this enum agree).

This module imports nothing of raftsso, so that :mod:`raftsso.errors` can use it.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # -- the frame and the request (the service) -------------------------------------------
    BAD_FRAME = "BAD_FRAME"
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    BAD_REQUEST = "BAD_REQUEST"
    UNKNOWN_OP = "UNKNOWN_OP"
    FORBIDDEN = "FORBIDDEN"
    # -- where and when a write can go ---------------------------------------------------------
    NOT_LEADER = "NOT_LEADER"
    UNAVAILABLE = "UNAVAILABLE"
    NO_QUORUM = "NO_QUORUM"
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
    # -- the keyring and its writes ---------------------------------------------------------
    SEAL_MISMATCH = "SEAL_MISMATCH"
    SEALED = "SEALED"
    CONFLICT = "CONFLICT"
    NOT_FOUND = "NOT_FOUND"
    NOT_READY = "NOT_READY"
    TOO_SOON = "TOO_SOON"
    TOO_MANY_VERSIONS = "TOO_MANY_VERSIONS"
    # -- the stores known to the cluster ------------------------------------------------------
    STORE_IN_USE = "STORE_IN_USE"
    TOO_MANY_STORES = "TOO_MANY_STORES"
    # -- membership and leadership -----------------------------------------------------------
    CHANGE_PENDING = "CHANGE_PENDING"
    WOULD_LOSE_QUORUM = "WOULD_LOSE_QUORUM"
    NOT_A_MEMBER = "NOT_A_MEMBER"
    IS_LEADER = "IS_LEADER"
    UNREACHABLE = "UNREACHABLE"
    LAGGING = "LAGGING"
    TRANSFER_TIMEOUT = "TRANSFER_TIMEOUT"
    # -- failures that are not the caller's ---------------------------------------------------
    BAD_COMMAND = "BAD_COMMAND"
    FAILED = "FAILED"
    INTERNAL = "INTERNAL"
    # -- client side only: a code this version does not know (a newer node's) -----------------
    ERROR = "ERROR"

    @classmethod
    def from_wire(cls, raw: object) -> ErrorCode:
        """The code of an answer; an unknown one (from a newer node) is :attr:`ERROR`."""
        try:
            return cls(raw) if isinstance(raw, str) else cls.ERROR
        except ValueError:
            return cls.ERROR


#: Codes that say "retry, maybe elsewhere": the write was certainly not applied
#: (NOT_LEADER, UNAVAILABLE, NO_QUORUM), or the same request id makes a retry safe.
RETRYABLE = frozenset({ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE, ErrorCode.NO_QUORUM,
                       ErrorCode.OUTCOME_UNKNOWN})
#: Codes that mean the cluster cannot serve now (CLI exit code 3).
CLUSTER_UNAVAILABLE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.NO_QUORUM})
#: Codes of a request refused before it reached the node's logic (audited one per line).
REFUSED = frozenset({ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_OP, ErrorCode.BAD_REQUEST})
