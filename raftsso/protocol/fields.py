"""Typed reading of a decoded msgpack map: one checked getter per kind of field.

A :class:`Fields` wraps what :func:`raftsso.wire.unpack` returned and raises the error its
boundary wants (``BadRequest`` for a service request, ``DecodeError`` for a command, an
answer or a snapshot), with the field named. ``bool`` is never accepted as an integer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from raftsso.errors import DecodeError, RaftssoError
from raftsso.protocol.ids import (
    ClientId,
    NodeId,
    RequestId,
    VersionId,
    client_id,
    node_id,
    request_id,
    version_id,
)
from raftsso.wire import WireMap, WireValue

T = TypeVar("T")
ErrorFactory = Callable[[str], RaftssoError]


class Fields:
    """The fields of one decoded map (``what`` names it in error messages)."""

    __slots__ = ("_error", "_raw", "what")

    def __init__(self, raw: WireValue, what: str, error: ErrorFactory = DecodeError) -> None:
        if not isinstance(raw, Mapping):
            raise error(f"{what} must be a map")
        self._raw: WireMap = raw
        self._error = error
        self.what = what

    def fail(self, message: str) -> RaftssoError:
        return self._error(f"{self.what}: {message}")

    def has(self, name: str) -> bool:
        return self._raw.get(name) is not None

    def raw(self, name: str) -> WireValue:
        return self._raw.get(name)

    def _checked(self, name: str, check: Callable[[WireValue], T], what: str) -> T:
        try:
            return check(self._raw.get(name))
        except (ValueError, TypeError):
            raise self.fail(f"{name!r} must be {what}") from None

    # scalars -----------------------------------------------------------------------------

    def integer(self, name: str, minimum: int = 0) -> int:
        value = self._raw.get(name)
        if type(value) is not int or value < minimum:
            raise self.fail(f"{name!r} must be an integer of at least {minimum}")
        return value

    def number(self, name: str) -> float:
        """A finite, non-negative int or float (a time, an age)."""
        value = self._raw.get(name)
        if type(value) not in (int, float):
            raise self.fail(f"{name!r} must be a number")
        assert isinstance(value, int | float)
        number = float(value)
        if not math.isfinite(number) or number < 0:
            raise self.fail(f"{name!r} must be a finite number of at least 0")
        return number

    def optional_number(self, name: str) -> float | None:
        return None if self._raw.get(name) is None else self.number(name)

    def flag(self, name: str, default: bool | None = None) -> bool:
        value = self._raw.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(f"{name!r} must be true or false")
        return value

    def text(self, name: str, max_length: int | None = None,
             default: str | None = None) -> str:
        value = self._raw.get(name, default)
        if not isinstance(value, str) or (max_length is not None and len(value) > max_length):
            limit = "" if max_length is None else f" of at most {max_length} characters"
            raise self.fail(f"{name!r} must be a string{limit}")
        return value

    def optional_text(self, name: str) -> str | None:
        return None if self._raw.get(name) is None else self.text(name)

    def blob(self, name: str, size: int | None = None) -> bytes:
        value = self._raw.get(name)
        if not isinstance(value, bytes) or (size is not None and len(value) != size):
            raise self.fail(f"{name!r} must be {'' if size is None else f'{size} '}bytes")
        return value

    # ids -----------------------------------------------------------------------------------

    def version(self, name: str) -> VersionId:
        return self._checked(name, version_id, "a version id (1 to 2**32 - 1)")

    def optional_version(self, name: str) -> VersionId | None:
        return None if self._raw.get(name) is None else self.version(name)

    def request_id(self, name: str = "request_id") -> RequestId:
        return self._checked(name, request_id, "a request id (16 bytes)")

    def node_id(self, name: str = "node_id") -> NodeId:
        return self._checked(name, node_id, "a node id (1 to 64 characters)")

    def client_id(self, name: str = "client_id") -> ClientId:
        return self._checked(name, client_id, "a client id (1 to 64 characters)")

    # containers ------------------------------------------------------------------------------

    def items(self, name: str, default: Sequence[WireValue] | None = None
              ) -> Sequence[WireValue]:
        value = self._raw.get(name, default)
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise self.fail(f"{name!r} must be a list")
        return value

    def mapping(self, name: str) -> WireMap:
        value = self._raw.get(name)
        if not isinstance(value, Mapping):
            raise self.fail(f"{name!r} must be a map")
        return value

    def each(self, name: str, decode: Callable[[Fields], T]) -> tuple[T, ...]:
        """Decode every map of the list ``name`` with ``decode``."""
        return tuple(decode(Fields(item, f"{self.what}.{name}[{i}]", self._error))
                     for i, item in enumerate(self.items(name)))
