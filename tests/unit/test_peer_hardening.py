"""raftsso.raft.hardening: restricted unpickling, bounded frames, patched pysyncobj."""

from __future__ import annotations

import builtins
import os
import pickle
import socket
import struct
import subprocess
import sys
import types
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pysyncobj.encryptor as pso_encryptor
import pysyncobj.pickle as pso_pickle
import pysyncobj.syncobj as pso_syncobj
import pysyncobj.tcp_connection as pso_tcp
import pytest
from cryptography.fernet import InvalidToken
from pysyncobj.serializer import Serializer

from raftsso.errors import StorageError
from raftsso.raft import hardening as raft
from raftsso.raft.hardening import restricted_loads
from raftsso.raft.journal import DurableJournal

# -- what pysyncobj really sends ----------------------------------------------------------

ENTRIES = [(b"\x00" + b"\x01msgpack-command", 12, 3), (b"\x01", 13, 4),
           (os.urandom(300), 14, 4)]

REAL_MESSAGES: dict[str, Any] = {
    "append_entries": {"type": "append_entries", "term": 4, "commit_index": 11,
                       "entries": ENTRIES, "prevLogIdx": 11, "prevLogTerm": 3},
    "append_entries-empty": {"type": "append_entries", "term": 4, "commit_index": 11,
                             "entries": [], "prevLogIdx": 14, "prevLogTerm": 4},
    "large-entry-transmission": {"type": "append_entries", "transmission": "process",
                                 "data": os.urandom(5000), "term": 4, "commit_index": 11,
                                 "prevLogIdx": 11, "prevLogTerm": 3},
    "snapshot-chunk": {"type": "append_entries", "term": 4, "commit_index": 11,
                       "serialized": (os.urandom(1000), True, False)},
    "snapshot-none": {"type": "append_entries", "term": 4, "commit_index": 11,
                      "serialized": None},
    "next_node_idx": {"type": "next_node_idx", "next_node_idx": 15, "term": 4,
                      "success": True},
    "request_vote": {"type": "request_vote", "term": 5, "last_log_index": 14,
                     "last_log_term": 4},
    "response_vote": {"type": "response_vote", "term": 5},
    "apply_command": {"type": "apply_command", "command": b"\x00cmd", "request_id": 7},
    "apply_command_response": {"type": "apply_command_response", "request_id": 7,
                               "error": 2, "log_idx": 15, "log_term": 5},
    "hello": "127.0.0.1:7100",
    "rand-key-wrapped": (os.urandom(32), {"type": "response_vote", "term": 5}),
    "mixed": {"str": "é", "int": -(2**70), "float": 1.5, "bool": False, "none": None,
              "list": [1, [2, (3, b"\xff" * 3)]], "tuple": (), "bytes": b"\x00\x80\xff"},
}


@pytest.mark.parametrize("message", REAL_MESSAGES.values(), ids=REAL_MESSAGES.keys())
def test_restricted_loads_accepts_what_pysyncobj_sends(message: Any) -> None:
    data = pso_pickle.dumps(message)
    assert restricted_loads(data) == message
    assert restricted_loads(data) == pso_pickle.loads(data)
    # as it arrives on the wire, after zlib
    assert restricted_loads(zlib.decompress(zlib.compress(data, 3))) == message


def test_restricted_loads_accepts_a_replicated_call() -> None:
    # @replicated pickles (func id, args, kwargs); ours carries one bytes argument.
    call: tuple[int, tuple[bytes], dict[str, Any]] = (0, (b"\x01msgpack",), {})
    assert restricted_loads(pso_pickle.dumps(call)) == call


def test_restricted_loads_accepts_the_last_snapshot_chunk() -> None:
    message = {"type": "append_entries", "term": 4, "commit_index": 11,
               "serialized": (b"", False, True)}
    assert restricted_loads(pso_pickle.dumps(message)) == message


def test_a_whole_snapshot_transfer_through_the_restricted_unpickler(tmp_path: Path) -> None:
    # pysyncobj's own Serializer on both ends, every chunk pickled as the leader sends it
    # and unpickled as our follower does: the last chunk is the empty (b"", False, True).
    snapshot = os.urandom(10_000)
    sent, received = tmp_path / "leader.snapshot", tmp_path / "follower.snapshot"
    sent.write_bytes(snapshot)
    leader = Serializer(str(sent), 4096, False, lambda *a: None, lambda *a: None, None)
    follower = Serializer(str(received), 4096, False, lambda *a: None, lambda *a: None, None)
    chunks = []
    while True:
        data = leader.getTransmissionData("node2")
        message = {"type": "append_entries", "term": 4, "commit_index": 11, "serialized": data}
        chunk = restricted_loads(zlib.decompress(zlib.compress(pso_pickle.dumps(message))))
        assert chunk == message
        chunks.append(chunk["serialized"])
        if follower.setTransmissionData(chunk["serialized"]):
            break
        assert len(chunks) < 10
    assert chunks[-1] == (b"", False, True)
    assert [len(c[0]) for c in chunks] == [4096, 4096, 1808, 0]
    assert received.read_bytes() == snapshot


@pytest.mark.parametrize("payload", [
    # bytes(n) with an int: bytes(10**12) would ask for a terabyte of zeros
    b"\x80\x02c__builtin__\nbytes\nJ\x00\x10\xa5\x54\x85R.",
    b"\x80\x02cbuiltins\nbytes\n\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85R.",
    # bytes(iterable), bytes(str, encoding)
    b"\x80\x02c__builtin__\nbytes\n](K\x01K\x02e\x85R.",
    b"\x80\x02c__builtin__\nbytes\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf-8\x86R.",
    # two bytes arguments
    b"\x80\x02c__builtin__\nbytes\nC\x01aC\x01b\x86R.",
], ids=["int", "10**12", "iterable", "str-encoding", "two-args"])
def test_bytes_takes_no_argument_or_one_bytes_value(payload: bytes) -> None:
    with pytest.raises(pickle.UnpicklingError, match="bytes"):
        restricted_loads(payload)


def test_bytes_copies_bytes_and_cannot_be_changed_by_a_pickle() -> None:
    assert restricted_loads(b"\x80\x02c__builtin__\nbytes\nC\x03abc\x85R.") == b"abc"
    assert restricted_loads(b"\x80\x03cbuiltins\nbytes\n)R.") == b""
    # BUILD on the stand-in itself (set attributes from a dict) is refused ...
    with pytest.raises((pickle.UnpicklingError, AttributeError, TypeError)):
        restricted_loads(b"\x80\x02c__builtin__\nbytes\n}X\x01\x00\x00\x00xK\x01sb.")
    with pytest.raises((pickle.UnpicklingError, AttributeError, TypeError)):  # slot state
        restricted_loads(b"\x80\x02c__builtin__\nbytes\nN}X\x01\x00\x00\x00xK\x01s\x86b.")
    assert not hasattr(raft._SAFE_BYTES, "x")
    # ... and so is instantiating it as a class (NEWOBJ)
    with pytest.raises((pickle.UnpicklingError, AttributeError, TypeError)):
        restricted_loads(b"\x80\x02c__builtin__\nbytes\n)\x81.")
    assert restricted_loads(pso_pickle.dumps(b"")) == b""


# -- what an attacker sends --------------------------------------------------------------


class _Reduce:
    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, Any]:
    py = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": _Reduce(os.system, (f"touch {marker}",)),
        "builtins.eval": _Reduce(builtins.eval, (py,)),
        "builtins.exec": _Reduce(builtins.exec, (py,)),
        "subprocess.call": _Reduce(subprocess.call, (["touch", str(marker)],)),
        "subprocess.Popen": _Reduce(subprocess.Popen, (["touch", str(marker)],)),
    }


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "builtins.exec",
                                  "subprocess.call", "subprocess.Popen"])
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_restricted_loads_refuses_code_execution(tmp_path: Path, name: str,
                                                 protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"type": "append_entries", "x": _payloads(marker)[name]},
                           protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="forbidden"):
        restricted_loads(payload)
    assert not marker.exists()
    # control: the same bytes do run code through the plain unpickler pysyncobj uses
    result = pickle.loads(payload)
    if name == "subprocess.Popen":
        result["x"].wait()
    assert marker.exists()


@pytest.mark.parametrize("payload", [
    b"cos\nsystem\n(S'true'\ntR.",                       # protocol 0, hand written
    b"c__builtin__\neval\n(S'1'\ntR.",                   # python 2 name, mapped by fix_imports
    b"cbuiltins\ngetattr\n(cbuiltins\nobject\nS'x'\ntR.",
    b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93.",
    b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueq\x00\x85q\x01Rq\x02.",
    b"\x80\x02ccopyreg\n_reconstructor\nq\x00.",
    b"\x80\x02c_codecs\ndecode\nq\x00.",
], ids=["p0-os", "p0-builtin-eval", "getattr", "p4-stack-global", "posix", "copyreg",
        "codecs-decode"])
def test_restricted_loads_refuses_other_globals(payload: bytes) -> None:
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(payload)


def test_restricted_loads_accepts_a_membership_change_and_nothing_else_of_pysyncobj() -> None:
    # A membership change pickles ['add', id, TCPNode]: the one pysyncobj class allowed.
    from pysyncobj.node import Node, TCPNode
    command = restricted_loads(pso_pickle.dumps(["add", "127.0.0.1:7109",
                                                 TCPNode("127.0.0.1:7109")]))
    assert command[:2] == ["add", "127.0.0.1:7109"]
    assert isinstance(command[2], TCPNode) and command[2].address == "127.0.0.1:7109"
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(pso_pickle.dumps(Node("x")))
    from pysyncobj.config import SyncObjConf
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(pso_pickle.dumps(SyncObjConf()))


def test_restricted_loads_refuses_persistent_ids() -> None:
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(b"\x80\x02X\x01\x00\x00\x00xQ.")


def test_restricted_loads_accepts_str_input() -> None:
    assert restricted_loads("N.") is None


# -- harden_pysyncobj ---------------------------------------------------------------------


@pytest.fixture
def hardened(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Apply the patches for one test and put pysyncobj back as it was afterwards."""
    monkeypatch.setattr(raft, "_PATCHED", False)
    monkeypatch.setattr(pso_syncobj, "createJournal", pso_syncobj.createJournal)
    monkeypatch.setattr(pso_syncobj, "pickle", pso_syncobj.pickle)
    monkeypatch.setattr(pso_tcp, "pickle", pso_tcp.pickle)
    monkeypatch.setattr(pso_tcp.TcpConnection, "_TcpConnection__processRead",
                        pso_tcp.TcpConnection._TcpConnection__processRead)
    raft.harden_pysyncobj()
    yield


@pytest.mark.usefixtures("hardened")
def test_harden_replaces_the_peer_unpickler() -> None:
    assert pso_tcp.pickle.loads is restricted_loads
    assert pso_syncobj.pickle.loads is restricted_loads
    # pickling (what we send): pysyncobj's, with protocol 4 (test_commands_pickle_...)
    assert pso_tcp.pickle.dumps is raft._dumps
    assert pso_tcp.pickle.to_bytes is pso_pickle.to_bytes
    assert pso_tcp.TcpConnection._TcpConnection__processRead is raft._bounded_process_read
    raft.harden_pysyncobj()  # idempotent
    assert pso_tcp.pickle.loads is restricted_loads


@pytest.mark.usefixtures("hardened")
def test_harden_replaces_the_journal_factory(tmp_path: Path) -> None:
    journal = pso_syncobj.createJournal(str(tmp_path / "raft.journal"))
    try:
        assert isinstance(journal, DurableJournal)
        journal.add(b"\x01x", 1, 1)
        assert len(journal) == 1
    finally:
        journal._destroy()
    with pytest.raises(StorageError, match="in-memory"):
        pso_syncobj.createJournal(None)
    with pytest.raises(StorageError):
        pso_syncobj.createJournal()


def test_harden_checks_the_pysyncobj_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft, "_PATCHED", False)
    monkeypatch.setattr(raft, "PYSYNCOBJ_VERSION", "0.0.1")
    monkeypatch.setattr(pso_syncobj, "createJournal", pso_syncobj.createJournal)
    before = pso_syncobj.createJournal
    with pytest.raises(StorageError, match=r"0\.0\.1"):
        raft.harden_pysyncobj()
    assert pso_syncobj.createJournal is before


def test_raft_module_is_the_only_pysyncobj_user_in_the_pure_core() -> None:
    # keyring/fsm/wire/envelope/config stay free of pysyncobj (DESIGN.md section 6)
    code = ("import sys; import raftsso.fsm, raftsso.keyring, raftsso.wire, raftsso.envelope, "
            "raftsso.config; print(any(m.startswith('pysyncobj') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# -- bounded peer frames ----------------------------------------------------------------


class _Conn:
    """The attributes of a pysyncobj TcpConnection that the bounded reader touches."""

    def __init__(self, sock: socket.socket) -> None:
        self._TcpConnection__socket = sock
        self._TcpConnection__readBuffer = b""
        self._TcpConnection__recvBufferSize = 2**13
        self.disconnected = False

    def disconnect(self) -> None:
        self.disconnected = True


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_bounded_reader_buffers_a_normal_frame(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    frame = struct.pack("i", 100) + b"x" * 100
    a.sendall(frame)
    conn = _Conn(b)
    assert raft._bounded_process_read(conn) is True
    assert conn._TcpConnection__readBuffer == frame
    assert not conn.disconnected


@pytest.mark.parametrize("length", [raft.MAX_PEER_FRAME + 1, 2**31 - 1, -1, -(2**31)])
def test_bounded_reader_drops_an_oversize_announcement(
        pair: tuple[socket.socket, socket.socket], length: int) -> None:
    a, b = pair
    a.sendall(struct.pack("i", length) + b"y" * 1000)
    conn = _Conn(b)
    assert raft._bounded_process_read(conn) is False
    assert conn.disconnected
    assert conn._TcpConnection__readBuffer == b""


def test_bounded_reader_accepts_exactly_the_limit(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(struct.pack("i", raft.MAX_PEER_FRAME))
    conn = _Conn(b)
    assert raft._bounded_process_read(conn) is True
    assert not conn.disconnected


def test_bounded_reader_pauses_when_a_whole_frame_is_buffered(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(b"z" * 10)
    conn = _Conn(b)
    conn._TcpConnection__readBuffer = b"\x00" * (raft.MAX_PEER_FRAME + 4 + 2**13)
    assert raft._bounded_process_read(conn) is False
    assert not conn.disconnected
    assert b.recv(100) == b"z" * 10  # nothing was consumed


def test_bounded_reader_notices_a_closed_peer(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.close()
    conn = _Conn(b)
    assert raft._bounded_process_read(conn) is False
    assert conn.disconnected


def test_bounded_reader_waits_when_nothing_arrived(
        pair: tuple[socket.socket, socket.socket]) -> None:
    _, b = pair
    conn = _Conn(b)
    assert raft._bounded_process_read(conn) is False
    assert not conn.disconnected


def test_shim_is_a_namespace_not_the_pickle_module() -> None:
    assert isinstance(raft._PICKLE_SHIM, types.SimpleNamespace)
    assert not hasattr(raft._PICKLE_SHIM, "load")


# -- peer frames out: what an earlier node reads ------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 0xFFFE, 0xFFFF, 0x10000, 3 * 0xFFFF + 7])
def test_a_stored_zlib_stream_is_read_by_zlib(size: int) -> None:
    data = os.urandom(size)
    assert zlib.decompress(raft._zlib_stored(data)) == data


class _Capture:
    """A stand-in for pysyncobj's connection: what _send queues, nothing sent."""

    def __init__(self, rand_key: bytes | None = None, encryptor: Any = None) -> None:
        self.sendRandKey = rand_key
        self.encryptor = encryptor
        self._TcpConnection__writeBuffer = b""

    def _TcpConnection__trySendBuffer(self) -> None:
        pass


def _frames(conn: _Capture) -> list[bytes]:
    buf, out = conn._TcpConnection__writeBuffer, []
    while buf:
        (n,) = struct.unpack("i", buf[:4])
        out.append(buf[4:4 + n])
        buf = buf[4 + n:]
    return out


@pytest.mark.parametrize("name", sorted(REAL_MESSAGES))
def test_a_sent_frame_reads_as_before_with_and_without_fernet(name: str) -> None:
    # An earlier node parses a frame as pysyncobj does: Fernet, zlib, then (restricted)
    # pickle; with the connection's random key first. Every real message type round-trips.
    message = REAL_MESSAGES[name]
    encryptor = pso_syncobj.getEncryptor("0" * 64)
    key = os.urandom(32)
    for enc in (None, encryptor):
        conn = _Capture(key, enc)
        raft._send(conn, message)
        (frame,) = _frames(conn)
        if enc is not None:
            frame = enc.decrypt(frame)
        got_key, got = restricted_loads(zlib.decompress(frame))
        assert got_key == key and got == message
        assert pso_pickle.loads(zlib.decompress(frame)) == (key, message)


def test_large_messages_are_still_compressed() -> None:
    conn = _Capture()
    message = {"type": "append_entries", "entries": [(b"\x00" * 100_000, 1, 1)]}
    raft._send(conn, message)
    (frame,) = _frames(conn)
    assert len(frame) < 10_000
    assert restricted_loads(zlib.decompress(frame)) == message


def test_the_patched_connection_sends_through_send() -> None:
    raft.harden_pysyncobj()
    assert pso_tcp.TcpConnection.send is raft._send


def test_the_peer_encryptor_reads_pysyncobj_tokens_and_refuses_forgeries() -> None:
    raft.harden_pysyncobj()
    ours = pso_syncobj.getEncryptor("a" * 64)
    theirs = pso_encryptor.getEncryptor("a" * 64)  # an earlier node's Fernet, same secret
    for sender, receiver in ((theirs, ours), (ours, theirs), (ours, ours)):
        token = sender.encrypt_at_time(b"frame", 1234)
        # pysyncobj's order: the timestamp, then the plaintext, of one token object.
        assert receiver.extract_timestamp(token) == 1234
        assert receiver.decrypt(token) == b"frame"
    token = ours.encrypt_at_time(b"frame", 5)
    forged = token[:-8] + (b"A" * 8 if token[-8:] != b"A" * 8 else b"B" * 8)
    with pytest.raises(InvalidToken):
        ours.extract_timestamp(forged)
    with pytest.raises(InvalidToken):
        ours.decrypt(forged)
    # A plaintext kept for one token is never handed out for another.
    other = ours.encrypt_at_time(b"other", 6)
    assert ours.extract_timestamp(token) == 5
    assert ours.decrypt(other) == b"other"
    assert ours.decrypt(token) == b"frame"
    with pytest.raises(InvalidToken):
        pso_encryptor.getEncryptor("b" * 64).decrypt(token)


def test_commands_pickle_with_protocol_4_and_unpickle_restricted() -> None:
    raft.harden_pysyncobj()
    cmd: tuple[int, tuple[bytes], dict[str, int]] = (3, (b"\x01command",), {})
    blob = pso_syncobj.pickle.dumps(cmd)
    assert blob[:2] == b"\x80\x04"
    assert restricted_loads(blob) == cmd and pickle.loads(blob) == cmd
