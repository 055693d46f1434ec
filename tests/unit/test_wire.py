"""raftsso.wire: versioned msgpack frames of the node service."""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftsso import wire
from raftsso.errors import DecodeError, FrameTooLarge, RaftssoError
from raftsso.wire import (
    MAX_FRAME,
    WIRE_FORMAT,
    decode_body,
    encode_frame,
    frame_length,
    parse_request,
)

# msgpack-able values, as they come back (lists, never tuples; str keys only).
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=50) | st.binary(max_size=50))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
messages = st.dictionaries(st.text(max_size=20), values, max_size=8)


def _body(obj: Any, fmt: int = WIRE_FORMAT) -> bytes:
    return bytes([fmt]) + bytes(msgpack.packb(obj, use_bin_type=True))


def _header(length: int) -> bytes:
    return struct.pack(">I", length)


def _assert_decode_error(fn: Any, *args: Any) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        fn(*args)
    assert isinstance(info.value, RaftssoError)
    assert str(info.value)
    return info.value


# -- round trips ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(message=messages)
def test_frame_round_trip(message: dict[str, Any]) -> None:
    frame = encode_frame(message)
    length = frame_length(frame[:4])
    assert length == len(frame) - 4
    body = frame[4:]
    assert body[0] == WIRE_FORMAT
    assert decode_body(body) == message


@settings(max_examples=100, deadline=None)
@given(rid=st.integers(0, 2**63 - 1), op=st.text(min_size=1, max_size=64),
       args=st.dictionaries(st.text(max_size=10), values, max_size=5))
def test_request_round_trip(rid: int, op: str, args: dict[str, Any]) -> None:
    frame = encode_frame({"id": rid, "op": op, "args": args})
    assert parse_request(decode_body(frame[4:])) == (rid, op, args)


def test_request_without_args_gets_an_empty_map() -> None:
    assert parse_request({"id": 0, "op": "status"}) == (0, "status", {})


def test_binary_and_text_stay_apart() -> None:
    message = {"text": "abc", "bin": b"abc"}
    decoded = decode_body(encode_frame(message)[4:])
    assert type(decoded["text"]) is str
    assert type(decoded["bin"]) is bytes


def test_answer_helpers_have_the_documented_shape() -> None:
    assert wire.ok(5, {"a": 1}) == {"id": 5, "ok": True, "result": {"a": 1}}
    assert wire.error(6, "NOT_LEADER", "go away", leader="h:1") == {
        "id": 6, "ok": False,
        "error": {"code": "NOT_LEADER", "message": "go away", "leader": "h:1"}}
    for answer in (wire.ok(5, None), wire.error(6, "X", "y")):
        assert decode_body(encode_frame(answer)[4:]) == answer


def test_read_frame_over_a_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(5)
        b.settimeout(5)
        first = {"id": 1, "op": "status", "args": {}}
        second = {"id": 2, "op": "x", "args": {"blob": b"\x00" * 100_000}}
        a.sendall(encode_frame(first) + encode_frame(second))
        assert wire.read_frame(b) == first
        assert wire.read_frame(b) == second
        a.close()
        with pytest.raises(ConnectionError):
            wire.read_frame(b)


# -- length checks ----------------------------------------------------------------------


def test_encode_refuses_an_oversize_frame() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame({"blob": b"\x00" * 200}, max_frame=100)
    frame = encode_frame({"blob": b"\x00" * 200}, max_frame=1000)
    assert frame_length(frame[:4], max_frame=1000) == len(frame) - 4


@pytest.mark.parametrize("length,limit", [(MAX_FRAME + 1, MAX_FRAME), (2**32 - 1, MAX_FRAME),
                                          (101, 100), (2**31, MAX_FRAME)])
def test_frame_length_refuses_an_oversize_announcement(length: int, limit: int) -> None:
    with pytest.raises(FrameTooLarge):
        frame_length(_header(length), limit)


def test_frame_length_accepts_exactly_the_limit() -> None:
    assert frame_length(_header(MAX_FRAME)) == MAX_FRAME
    assert frame_length(_header(1)) == 1


def test_zero_length_is_a_decode_error_not_too_large() -> None:
    err = _assert_decode_error(frame_length, _header(0))
    assert not isinstance(err, FrameTooLarge)


@pytest.mark.parametrize("header", [b"", b"\x00", b"\x00\x00\x01", b"\x00\x00\x00\x01\x00"])
def test_frame_length_needs_exactly_four_bytes(header: bytes) -> None:
    _assert_decode_error(frame_length, header)


class _RecordingSocket:
    """A socket stand-in that serves fixed bytes and records what was asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requested: list[int] = []

    def recv(self, n: int) -> bytes:
        self.requested.append(n)
        if not self.data:
            raise AssertionError("the body of an oversize frame must never be read")
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk


def test_oversize_frame_is_refused_before_the_body_is_read() -> None:
    sock = _RecordingSocket(_header(MAX_FRAME + 1))
    with pytest.raises(FrameTooLarge):
        wire.read_frame(sock, MAX_FRAME)  # type: ignore[arg-type]
    assert sock.requested == [4]


def test_oversize_frame_is_refused_with_a_custom_limit() -> None:
    frame = encode_frame({"blob": b"\x00" * 500})
    sock = _RecordingSocket(frame[:4])
    with pytest.raises(FrameTooLarge):
        wire.read_frame(sock, 100)  # type: ignore[arg-type]
    assert sock.requested == [4]


# -- bodies that must be refused --------------------------------------------------------


@pytest.mark.parametrize("fmt", [0, 2, 0x80, 0xFF])
def test_wrong_format_version_byte(fmt: int) -> None:
    err = _assert_decode_error(decode_body, _body({"id": 1}, fmt=fmt))
    assert "version" in str(err)


def test_empty_body() -> None:
    _assert_decode_error(decode_body, b"")


@pytest.mark.parametrize("obj", [[1, 2], [], 5, "a map?", b"bytes", None, True, 1.5])
def test_non_map_body(obj: Any) -> None:
    _assert_decode_error(decode_body, _body(obj))


@pytest.mark.parametrize("body", [
    b"\x01",                                    # version byte only
    b"\x01\xc1",                                # never-used msgpack byte
    b"\x01\x81",                                # map of one entry, truncated
    b"\x01\x81\xa1k",                           # value missing
    b"\x01\xdf\xff\xff\xff\xff",                # map32 announcing 4G entries
    b"\x01\xdb\xff\xff\xff\xff",                # str32 announcing 4 GiB
    _body({"a": 1}) + b"\x00",                  # trailing bytes
    _body({"a": 1}) + _body({"b": 2})[1:],      # two objects
    b"\x01\x81\xa1k\xa2\xff\xfe",               # invalid UTF-8 in a str
    b"\x01\x81\xa2\xc3\x28\x01",                # invalid UTF-8 in a key
    b"\x01" + b"\x91" * 5000 + b"\xc0",         # nesting deeper than the stack limit
    b"\xff\xff\xff\xff",
], ids=lambda b: b[:12].hex())
def test_garbage_bytes(body: bytes) -> None:
    _assert_decode_error(decode_body, body)


@pytest.mark.parametrize("obj", [
    {"a": msgpack.ExtType(5, b"payload")},
    {"a": [1, msgpack.ExtType(0, b"")]},
    {"a": {"b": msgpack.ExtType(127, b"x" * 20)}},
])
def test_msgpack_extension_types(obj: Any) -> None:
    err = _assert_decode_error(decode_body, _body(obj))
    assert "extension" in str(err)


def test_msgpack_negative_extension_type() -> None:
    # {"a": fixext1 of type -2}: reserved negative types are refused as well
    err = _assert_decode_error(decode_body, b"\x01\x81\xa1a\xd4\xfe\x78")
    assert "extension" in str(err)


@pytest.mark.parametrize("obj", [
    {"a": msgpack.Timestamp(1, 0)},
    {"a": [msgpack.Timestamp(0, 5)]},
])
def test_msgpack_timestamp_extension(obj: Any) -> None:
    _assert_decode_error(decode_body, _body(obj))


@pytest.mark.parametrize("obj", [
    {1: "int key"},
    {"a": {2: "nested int key"}},
    {None: 1},
    {1.5: 1},
    {True: 1},
], ids=repr)
def test_non_str_keys(obj: Any) -> None:
    body = bytes([WIRE_FORMAT]) + msgpack.packb(obj, use_bin_type=True, strict_types=False)
    _assert_decode_error(decode_body, body)


def test_map_as_key() -> None:
    # fixmap of 1: key is itself a fixmap {} -> unhashable, must be a DecodeError
    _assert_decode_error(decode_body, b"\x01\x81\x80\x01")
    _assert_decode_error(decode_body, b"\x01\x81\x90\x01")


@pytest.mark.parametrize("obj", [{b"id": 1}, {"id": 1, "op": "x", "args": {b"k": 1}}],
                         ids=["top-level", "nested"])
def test_bytes_keys(obj: Any) -> None:
    _assert_decode_error(decode_body, _body(obj))


@pytest.mark.parametrize("obj", [
    msgpack.Timestamp(1, 0),
    {"a": {"b": [[{"c": msgpack.Timestamp(2**40, 999)}]]}},
    {"a": [1, "x", b"y", msgpack.Timestamp(0, 0)]},
    [{"k": [b"v", {b"deep": 1}]}],
    {"a": [{"b": {"c": {b"k": None}}}]},
], ids=["top-level-timestamp", "deep-timestamp", "array-timestamp", "deep-bytes-key",
        "deep-bytes-key-2"])
def test_unpack_refuses_timestamps_and_bytes_keys_at_any_depth(obj: Any) -> None:
    err = _assert_decode_error(wire.unpack, msgpack.packb(obj, use_bin_type=True))
    assert "timestamp" in str(err) or "keys must be strings" in str(err)


@pytest.mark.parametrize("raw", [
    b"\xd6\xff\x00\x00\x00\x01",                      # timestamp 32
    b"\xd7\xff" + bytes(8),                               # timestamp 64
    b"\xc7\x0c\xff" + bytes(12),                         # timestamp 96
    b"\x81\xa1a\xd6\xff\x00\x00\x00\x01",               # as a map value
    b"\x81\xd6\xff\x00\x00\x00\x01\x01",               # as a map key
    b"\xd5\xff\x00\x00",                                # type -1 with a bad length
], ids=["ts32", "ts64", "ts96", "value", "key", "bad-length"])
def test_unpack_refuses_raw_timestamp_encodings(raw: bytes) -> None:
    _assert_decode_error(wire.unpack, raw)


def test_unpack_keeps_ordinary_values() -> None:
    obj = {"id": 1, "nested": {"list": [[1, 2], {"k": b"v"}], "none": None, "f": 1.5},
           "empty": {}, "empty_list": [], "s": "é"}
    assert wire.unpack(msgpack.packb(obj, use_bin_type=True)) == obj
    assert wire.unpack(msgpack.packb([], use_bin_type=True)) == []
    assert wire.unpack(msgpack.packb(7, use_bin_type=True)) == 7


@pytest.mark.parametrize("message", [
    {"op": "status"},
    {"id": None, "op": "status"},
    {"id": "1", "op": "status"},
    {"id": 1.0, "op": "status"},
    {"id": True, "op": "status"},
    {"id": -1, "op": "status"},
    {"id": 2**63, "op": "status"},
    {"id": [1], "op": "status"},
    {"id": 1},
    {"id": 1, "op": None},
    {"id": 1, "op": 5},
    {"id": 1, "op": b"status"},
    {"id": 1, "op": ""},
    {"id": 1, "op": "x" * 65},
    {"id": 1, "op": "status", "args": None},
    {"id": 1, "op": "status", "args": []},
    {"id": 1, "op": "status", "args": "k=v"},
    {"id": 1, "op": "status", "args": 5},
], ids=repr)
def test_bad_request_shapes(message: dict[str, Any]) -> None:
    _assert_decode_error(parse_request, message)
    # and the same through the full decoder
    _assert_decode_error(lambda: parse_request(decode_body(encode_frame(message)[4:])))


def test_request_boundaries_are_accepted() -> None:
    assert parse_request({"id": 2**63 - 1, "op": "x" * 64, "args": {}})[0] == 2**63 - 1
    assert parse_request({"id": 0, "op": "x", "args": {}})[1] == "x"


# -- fuzzing ----------------------------------------------------------------------------


def _decode_or_decode_error(body: bytes) -> None:
    try:
        message = decode_body(body)
    except DecodeError:
        return
    assert isinstance(message, dict)
    with contextlib.suppress(DecodeError):
        parse_request(message)


@settings(max_examples=1000, deadline=None)
@given(body=st.binary(max_size=200))
def test_fuzz_decode_body_raises_only_decode_error(body: bytes) -> None:
    _decode_or_decode_error(body)


@settings(max_examples=1000, deadline=None)
@given(body=st.binary(max_size=200))
def test_fuzz_decode_body_past_the_version_byte(body: bytes) -> None:
    _decode_or_decode_error(bytes([WIRE_FORMAT]) + body)


@settings(max_examples=150, deadline=None)
@given(message=messages, data=st.data())
def test_fuzz_mutated_frames(message: dict[str, Any], data: st.DataObject) -> None:
    body = bytearray(encode_frame(message)[4:])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    _decode_or_decode_error(bytes(body[:cut]))


@settings(max_examples=300, deadline=None)
@given(header=st.binary(max_size=8), limit=st.integers(1, 2**32))
def test_fuzz_frame_length(header: bytes, limit: int) -> None:
    try:
        length = frame_length(header, limit)
    except DecodeError:
        return
    assert len(header) == 4
    assert 0 < length <= limit
