"""Versioned msgpack encoding and the length-prefixed frames of the node service.

A frame on the TLS service is::

    length (u32, big endian, of what follows) | format version (1 byte) | msgpack map

Requests are ``{"id": int, "op": str, "args": map}``; answers are ``{"id": int, "ok": true,
"result": ...}`` or ``{"id": int, "ok": false, "error": {"code": str, "message": str, ...}}``.
The length is checked against the limit *before* a byte of the body is buffered.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import msgpack

from raftsso.errors import DecodeError, FrameTooLarge

#: What msgpack carries on our wire: the typed form of a decoded frame, a command or a
#: snapshot. Decoders (:mod:`raftsso.protocol`) narrow it to typed messages.
WireValue: TypeAlias = (
    "bool | int | float | str | bytes | Sequence[WireValue] | Mapping[str, WireValue] | None")
WireMap: TypeAlias = Mapping[str, WireValue]

WIRE_FORMAT = 1
MAX_FRAME = 1 << 20
_LEN = struct.Struct(">I")


def _no_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not allowed")


# msgpack decodes extension type -1 (Timestamp) itself and never calls ext_hook, and
# strict_map_key lets bytes keys through. The hooks below run once per map and per array,
# as each is built, and check only that container's own keys and items; together with a
# check of the top-level value they see every decoded object once, so the cost is linear
# in the (already size-limited) input.

def _check_map(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    for key, value in pairs:
        if type(key) is not str:
            raise DecodeError(f"map keys must be strings, not {type(key).__name__}")
        if isinstance(value, msgpack.Timestamp):
            raise DecodeError("msgpack extension type -1 (timestamp) is not allowed")
    return dict(pairs)


def _check_array(items: list[Any]) -> list[Any]:
    for item in items:
        if isinstance(item, msgpack.Timestamp):
            raise DecodeError("msgpack extension type -1 (timestamp) is not allowed")
    return items


_PACK_BUFFER = 1024


def pack(obj: WireValue) -> bytes:
    """msgpack with binary and text kept apart (``use_bin_type``)."""
    # A small first buffer (msgpack grows it as needed): packb's default is 256 KiB, which
    # the node's scrubbing allocator fills on malloc and on free, 9 us per call instead
    # of 0.8 (measured, PYTHONMALLOC=malloc with MALLOC_PERTURB_).
    return msgpack.Packer(use_bin_type=True, buf_size=_PACK_BUFFER).pack(obj)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    """Strict msgpack decoding: UTF-8 text, string map keys, no extension types.

    The value is a :data:`WireValue`; typed as ``Any`` so that format readers narrow it
    their own way (:class:`raftsso.protocol.fields.Fields` does for the protocol)."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext,
                              timestamp=0, object_pairs_hook=_check_map,
                              list_hook=_check_array)
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError) as exc:
        raise DecodeError(f"malformed msgpack: {exc}") from None
    if isinstance(obj, msgpack.Timestamp):
        raise DecodeError("msgpack extension type -1 (timestamp) is not allowed")
    return obj


def versioned(fmt: int, obj: WireValue) -> bytes:
    """A blob that starts with its format version byte."""
    return bytes([fmt]) + pack(obj)


def unversioned(blob: bytes, fmt: int, what: str) -> Any:
    """Check the leading version byte of a blob and decode the rest."""
    if not blob:
        raise DecodeError(f"empty {what}")
    if blob[0] != fmt:
        raise DecodeError(f"unsupported {what} format version {blob[0]} (expected {fmt})")
    return unpack(blob[1:])


def encode_frame(message: WireMap, max_frame: int = MAX_FRAME) -> bytes:
    body = versioned(WIRE_FORMAT, dict(message))
    if len(body) > max_frame:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds the limit of {max_frame}")
    return _LEN.pack(len(body)) + body


# {"id": <rid>, "ok": true, "result": <packed>}: a map of three, around the request id.
_OK_START = bytes([WIRE_FORMAT, 0x83]) + msgpack.packb("id")
_OK_MIDDLE = msgpack.packb("ok") + msgpack.packb(True) + msgpack.packb("result")


def encode_ok_frame(rid: int, packed_result: bytes, max_frame: int = MAX_FRAME) -> bytes:
    """The frame of ``ok(rid, result)`` around a result already packed (:func:`pack`):
    byte for byte what :func:`encode_frame` makes, without packing the result again."""
    body = b"".join((_OK_START, pack(rid), _OK_MIDDLE, packed_result))
    if len(body) > max_frame:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds the limit of {max_frame}")
    return _LEN.pack(len(body)) + body


def frame_length(header: bytes, max_frame: int = MAX_FRAME) -> int:
    """Validate a 4-byte length prefix; raise before anything is buffered."""
    if len(header) != _LEN.size:
        raise DecodeError("truncated frame header")
    (length,) = _LEN.unpack(header)
    if length == 0:
        raise DecodeError("empty frame")
    if length > max_frame:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {max_frame}")
    return int(length)


def decode_body(body: bytes) -> WireMap:
    message = unversioned(body, WIRE_FORMAT, "frame")
    if not isinstance(message, Mapping):
        raise DecodeError("a frame must hold a map")
    return message


def parse_request(message: WireMap) -> tuple[int, str, WireMap]:
    """Check the shape of a request; return ``(id, op, args)``."""
    rid = message.get("id")
    op = message.get("op")
    args = message.get("args", {})
    if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid < 2**63:
        raise DecodeError("request 'id' must be a non-negative integer")
    if not isinstance(op, str) or not 0 < len(op) <= 64:
        raise DecodeError("request 'op' must be a short string")
    if not isinstance(args, Mapping):
        raise DecodeError("request 'args' must be a map")
    return rid, op, args


def ok(rid: int, result: WireValue) -> WireMap:
    return {"id": rid, "ok": True, "result": result}


def error(rid: int, code: str, message: str, **details: WireValue) -> WireMap:
    """An error answer (its body: :class:`raftsso.protocol.messages.ErrorBody`)."""
    return {"id": rid, "ok": False, "error": {"code": code, "message": message, **details}}


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    remaining = n
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 16))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket, max_frame: int = MAX_FRAME) -> WireMap:
    """Blocking read of one frame (the socket's own timeout applies)."""
    length = frame_length(_recv_exact(sock, _LEN.size), max_frame)
    return decode_body(_recv_exact(sock, length))
