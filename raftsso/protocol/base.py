"""The frame of every service message: the ops, the request and result bases, the error body.

:mod:`raftsso.protocol.messages` has one request and one result type per op (and imports
them all); this module and :mod:`raftsso.protocol.node_status` hold what every client call
and ``raftsso status`` need, so that those load a handful of message types instead of all
of them (each frozen dataclass costs its generated methods at import, about a millisecond
apiece on a small machine).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from typing import ClassVar, Generic, Self, TypeVar

from raftsso.errors import BadRequest, DecodeError
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.fields import Fields
from raftsso.protocol.record import record
from raftsso.wire import WireMap, WireValue


class Op(StrEnum):
    """Every operation of the node service (``docs/architecture.md`` lists each)."""

    PING = "ping"
    STATUS = "status"
    KEYRING = "keyring"
    ROTATE = "rotate"
    RETIRE = "retire"
    BACKED_UP = "backed_up"
    RESTORE = "restore"
    CLIENTS = "clients"
    TRANSFER_LEADER = "transfer_leader"
    MEMBERS = "members"
    MEMBER_ADD = "member_add"
    MEMBER_REMOVE = "member_remove"
    # the seal (raftsso.seal): unseal shares, and the steps of a seal rekey
    UNSEAL = "unseal"
    SEAL_INSTALL = "seal_install"
    RESEAL = "reseal"
    SEAL_FORGET = "seal_forget"
    # the stores known to the cluster
    STORE_REPORT = "store_report"
    STORES = "stores"
    STORE_FORGET = "store_forget"
    CERTS = "certs"
    CERT_REGISTER = "cert_register"
    CERT_REVOKE = "cert_revoke"
    ENCRYPTIONS = "encryptions"


# -- bases ----------------------------------------------------------------------------------


class Result(ABC):
    """What an operation answers."""

    @abstractmethod
    def to_wire(self) -> WireMap: ...

    @classmethod
    def from_wire(cls, raw: WireValue) -> Self:
        return cls.decode(Fields(raw, f"the {cls.__name__} answer", DecodeError))

    @classmethod
    @abstractmethod
    def decode(cls, f: Fields) -> Self: ...


R = TypeVar("R", bound=Result, covariant=True)


class Request(ABC, Generic[R]):
    """An operation's arguments; ``decode_result`` reads its answer."""

    op: ClassVar[Op]

    @abstractmethod
    def to_wire(self) -> WireMap: ...

    @classmethod
    def from_wire(cls, args: WireValue) -> Self:
        return cls.decode(Fields(args, str(cls.op), BadRequest))

    @classmethod
    @abstractmethod
    def decode(cls, f: Fields) -> Self: ...

    @abstractmethod
    def decode_result(self, raw: WireValue) -> R: ...


@record
class ErrorBody:
    """An error answer: ``{"code", "message"}``, plus ``leader`` for NOT_LEADER (the
    leader's service address or null) and ``request_id`` for OUTCOME_UNKNOWN."""

    code: ErrorCode
    message: str
    leader: str | None = None
    request_id: bytes | None = None

    def to_wire(self) -> WireMap:
        out: dict[str, WireValue] = {"code": self.code.value, "message": self.message}
        if self.code is ErrorCode.NOT_LEADER:
            out["leader"] = self.leader
        if self.request_id is not None:
            out["request_id"] = self.request_id
        return out

    @classmethod
    def from_wire(cls, raw: WireValue) -> ErrorBody:
        f = Fields(raw, "an error answer")
        leader, rid = f.raw("leader"), f.raw("request_id")
        return cls(ErrorCode.from_wire(f.raw("code")), str(f.raw("message") or ""),
                   leader if isinstance(leader, str) else None,
                   rid if isinstance(rid, bytes) else None)
