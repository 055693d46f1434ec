"""Patches that close pysyncobj's holes: restricted unpickling, bounded frames, our journal.

* Peer bytes are unpickled by a restricted unpickler that knows no global but
  ``_codecs.encode``, pysyncobj's ``TCPNode`` (in membership commands) and an
  argument-checking stand-in for ``bytes`` (``b""`` needs it).
* A peer frame longer than :data:`MAX_PEER_FRAME` drops the connection before it is
  buffered (pysyncobj buffers without bound before it checks the HMAC).
* pysyncobj's connections read and write TLS sockets too (peer TLS): a TLS socket's
  "try again" is an SSLWantReadError/SSLWantWriteError, not EAGAIN.
* Peer frames keep pysyncobj's format but cost less (:func:`_send`): a protocol 4
  pickle (commands in the journal too), a stored (uncompressed) zlib stream for small
  messages, and each received Fernet token authenticated once (:class:`_PeerFernet`).
* pysyncobj's journal factory builds :class:`~raftsso.raft.journal.DurableJournal`, and its
  snapshot files go through :class:`~raftsso.raft.snapshot.DurableSerializer`.

The patches touch pysyncobj internals, so :func:`harden_pysyncobj` checks the version.
"""

from __future__ import annotations

import base64
import io
import logging
import pickle
import socket
import ssl
import struct
import types
import zlib
from typing import Any

import pysyncobj
import pysyncobj.pickle as _pso_pickle
import pysyncobj.syncobj as _pso_syncobj
import pysyncobj.tcp_connection as _pso_tcp
from pysyncobj.encryptor import getEncryptor as _pso_get_encryptor
from pysyncobj.monotonic import monotonic as _pso_monotonic

from raftsso.errors import StorageError
from raftsso.raft.journal import create_journal
from raftsso.raft.snapshot import DurableSerializer

log = logging.getLogger(__name__)

PYSYNCOBJ_VERSION = "0.3.17"
MAX_PEER_FRAME = 4 << 20
TLS_SEND_CHUNK = 1 << 16
_PICKLE_PROTOCOL = 4  # what this node pickles for its peers (any Python 3 reads it)


# -- restricted unpickling of peer bytes --------------------------------------------------

# _codecs.encode rebuilds bytes (protocol 2); pysyncobj.node.TCPNode is the node object
# inside a membership change command (class only: NEWOBJ + BUILD, no constructor call).
_ALLOWED_GLOBALS = frozenset({("_codecs", "encode"), ("pysyncobj.node", "TCPNode")})
_BYTES_GLOBALS = frozenset({("__builtin__", "bytes"), ("builtins", "bytes")})


class _SafeBytes:
    """Stands in for ``bytes`` in peer pickles: ``bytes()`` or a copy of bytes, nothing else.

    Protocol 2 pickles ``b""`` as a call of the global ``__builtin__.bytes`` with no
    arguments (pysyncobj ends every snapshot transfer with an empty chunk). The real
    ``bytes`` would also accept ``bytes(10**12)`` or an iterable from a peer; this one
    accepts zero arguments or a single bytes/bytearray. It has no ``__dict__`` (empty
    ``__slots__``), so a pickle's BUILD opcode cannot set attributes on it either.
    """

    __slots__ = ()

    def __call__(self, *args: Any) -> bytes:
        if not args:
            return b""
        if len(args) == 1 and isinstance(args[0], bytes | bytearray):
            return bytes(args[0])
        raise pickle.UnpicklingError(
            "bytes() in a peer message takes no argument or one bytes value")


_SAFE_BYTES = _SafeBytes()


class _RestrictedUnpickler(pickle.Unpickler):
    # pysyncobj's messages are dicts, lists, tuples, str, int, bool and bytes; with pickle
    # protocol 2, bytes need _codecs.encode and (for b"") bytes() and nothing else. Any other
    # global (os.system, builtins.eval, a class with __reduce__) is refused before it can be
    # called; bytes itself is replaced by the argument-checking _SafeBytes.
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if (module, name) in _BYTES_GLOBALS:
            return _SAFE_BYTES
        raise pickle.UnpicklingError(f"global {module}.{name} is forbidden in a peer message")


def restricted_loads(data: bytes | str) -> Any:
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    return _RestrictedUnpickler(io.BytesIO(raw)).load()


def _dumps(obj: Any, protocol: int | None = None) -> bytes:
    # pysyncobj pickles with protocol 2 (Python 2 compatible): every bytes value then
    # becomes a _codecs.encode call, which each node's restricted unpickler resolves in
    # Python when it applies the entry. Protocol 4 writes bytes as bytes; every Python 3
    # unpickler (a node of an earlier version too) reads it.
    return pickle.dumps(obj, _PICKLE_PROTOCOL)


_PICKLE_SHIM = types.SimpleNamespace(
    dumps=_dumps, loads=restricted_loads, to_bytes=_pso_pickle.to_bytes)


class _PeerFernet:
    """pysyncobj's Fernet (the cluster secret's layer inside peer TLS), each received
    token authenticated once instead of twice.

    pysyncobj reads a frame as ``extract_timestamp(token)`` then ``decrypt(token)``, and
    Fernet base64-decodes the token and checks its HMAC in both. Here
    :meth:`extract_timestamp` decrypts (which checks the HMAC; a forged token raises
    exactly as before) and keeps the plaintext for the ``decrypt`` of that very token
    object that follows. Same key, same tokens, same checks: only the repeated work goes.
    """

    def __init__(self, fernet: Any) -> None:
        self._fernet = fernet
        self._last: tuple[bytes, bytes] | None = None

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        return self._fernet.encrypt_at_time(data, current_time)  # type: ignore[no-any-return]

    def extract_timestamp(self, token: bytes) -> int:
        plaintext = self._fernet.decrypt(token)  # InvalidToken unless authentic
        (timestamp,) = struct.unpack(">Q", base64.urlsafe_b64decode(token)[1:9])
        self._last = (token, plaintext)
        return int(timestamp)

    def decrypt(self, token: bytes, ttl: int | None = None) -> bytes:
        last, self._last = self._last, None
        if ttl is None and last is not None and last[0] is token:
            return last[1]  # this very token object was authenticated just now
        return self._fernet.decrypt(token, ttl)  # type: ignore[no-any-return]


def _peer_encryptor(password: str | bytes) -> _PeerFernet:
    return _PeerFernet(_pso_get_encryptor(password))


# -- bounded peer frames ----------------------------------------------------------------


def _bounded_process_read(conn: Any) -> bool:
    """pysyncobj's TcpConnection.__processRead with a cap on the frame length.

    The original appends to an unbounded buffer before a frame's HMAC is checked; an
    80 MiB partial frame costs half a minute of CPU. Here the announced length is checked
    as soon as 4 bytes are in, and reading pauses (level-triggered poll) while a whole
    frame is already buffered.
    """
    buffered = conn._TcpConnection__readBuffer
    if len(buffered) >= MAX_PEER_FRAME + 4 + conn._TcpConnection__recvBufferSize:
        return False
    sock = conn._TcpConnection__socket
    try:
        incoming = sock.recv(conn._TcpConnection__recvBufferSize)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False  # a TLS link with nothing more to read now (its EAGAIN)
    except OSError as e:
        if e.errno not in (socket.errno.EAGAIN, socket.errno.EWOULDBLOCK):  # type: ignore[attr-defined]
            conn.disconnect()
        return False
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        conn.disconnect()
        return False
    if not incoming:
        conn.disconnect()
        return False
    buffered += incoming
    if len(buffered) >= 4:
        (length,) = struct.unpack("i", buffered[:4])
        if length < 0 or length > MAX_PEER_FRAME:
            log.warning("dropping a peer connection that announced a %d-byte frame "
                        "(limit %d)", length, MAX_PEER_FRAME)
            conn.disconnect()
            return False
    conn._TcpConnection__readBuffer = buffered
    return True


# -- peer frames out ---------------------------------------------------------------------

#: Peer messages up to this size leave uncompressed (see :func:`_send`).
STORED_MAX = 16 << 10
_ZLIB_STORED_HEADER = b"\x78\x01"  # deflate, 32 KiB window, no dictionary, "fastest"


def _zlib_stored(data: bytes) -> bytes:
    """``data`` as a zlib stream of stored (uncompressed) deflate blocks.

    Every zlib decompressor reads it (RFC 1950/1951): a node of an earlier version too, so
    a cluster in a rolling upgrade talks both ways. It costs an Adler-32 instead of
    deflate's set-up, about 0.3 MiB of state allocated and freed per message (measured
    with the node's scrubbing allocator: 37 us for zlib.compress(level 3) of a rotate's
    append, 1.2 us here).
    """
    out = [_ZLIB_STORED_HEADER]
    view = memoryview(data)
    pos, end = 0, len(data)
    while True:
        block = view[pos:pos + 0xFFFF]
        pos += len(block)
        last = pos >= end
        out.append(struct.pack("<BHH", 1 if last else 0, len(block), len(block) ^ 0xFFFF))
        out.append(bytes(block))
        if last:
            break
    out.append(struct.pack(">I", zlib.adler32(data)))
    return b"".join(out)


def _send(conn: Any, message: Any) -> None:
    """pysyncobj's TcpConnection.send, cheaper for the small messages of a commit.

    The frame is the same (length, then the Fernet token of a zlib stream of a pickle), so
    nodes of earlier versions read it, but: the pickle is protocol 4 (bytes are native
    opcodes instead of ``_codecs.encode`` calls, which the restricted unpickler resolves
    one by one in Python; any Python 3 unpickler reads it), and a message up to
    :data:`STORED_MAX` is a stored zlib stream (:func:`_zlib_stored`): a commit's appends
    and acknowledgements carry a sealed key or nothing worth compressing. Larger messages
    (catching up, snapshot chunks) are compressed as before.
    """
    if conn.sendRandKey:
        message = (conn.sendRandKey, message)
    data = pickle.dumps(message, _PICKLE_PROTOCOL)
    data = _zlib_stored(data) if len(data) <= STORED_MAX else zlib.compress(data, 3)
    if conn.encryptor:
        data = conn.encryptor.encrypt_at_time(data, int(_pso_monotonic()))
    conn._TcpConnection__writeBuffer += struct.pack("i", len(data)) + data
    conn._TcpConnection__trySendBuffer()


def _process_send(conn: Any) -> bool:
    """pysyncobj's TcpConnection.__processSend, able to write to a TLS socket.

    A plain socket takes what it can of the buffer. A non-blocking TLS socket that cannot
    write now raises SSLWantWriteError instead of EAGAIN (which pysyncobj would take for a
    broken link), and OpenSSL then wants the very same write again: so TLS writes go in
    chunks of at most :data:`TLS_SEND_CHUNK` bytes, and a refused one is retried as it was
    (the buffer only ever grows at its end, so its start is unchanged).
    """
    buffer = conn._TcpConnection__writeBuffer
    if not buffer:
        return False
    sock = conn._TcpConnection__socket
    size = len(buffer)
    if isinstance(sock, ssl.SSLSocket):
        size = getattr(conn, "raftsso_tls_retry", None) or min(size, TLS_SEND_CHUNK)
    try:
        sent = sock.send(buffer[:size])
    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
        conn.raftsso_tls_retry = size
        return False
    except OSError as e:
        if e.errno not in (socket.errno.EAGAIN, socket.errno.EWOULDBLOCK):  # type: ignore[attr-defined]
            conn.disconnect()
        return False
    conn.raftsso_tls_retry = None
    if sent <= 0:
        if sent < 0:
            conn.disconnect()
        return False
    conn._TcpConnection__writeBuffer = buffer[sent:]
    return True


# -- installing the patches -------------------------------------------------------------

_PATCHED = False


def harden_pysyncobj() -> None:
    """Install the patches described in the module docstring (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    version = getattr(pysyncobj, "__version__", None) or _installed_version()
    if version != PYSYNCOBJ_VERSION:
        raise StorageError(f"raftsso needs pysyncobj {PYSYNCOBJ_VERSION} (found {version}); "
                           "its internals are patched for durability and safety")
    _pso_syncobj.createJournal = create_journal
    _pso_syncobj.Serializer = DurableSerializer
    _pso_syncobj.pickle = _PICKLE_SHIM
    _pso_syncobj.getEncryptor = _peer_encryptor
    _pso_tcp.pickle = _PICKLE_SHIM
    _pso_tcp.TcpConnection._TcpConnection__processRead = _bounded_process_read
    _pso_tcp.TcpConnection._TcpConnection__processSend = _process_send
    _pso_tcp.TcpConnection.send = _send
    _PATCHED = True


def _installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("pysyncobj")
    except PackageNotFoundError:
        return None
