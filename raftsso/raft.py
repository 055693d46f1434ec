"""The hardened Raft layer: the only module that imports pysyncobj.

pysyncobj 0.3.17 gives a working Raft core; this module closes what it leaves open
(DESIGN.md section 4):

* **Durability.** :class:`DurableJournal` replaces pysyncobj's mmap journal: every appended
  entry is ``fdatasync``-ed before ``add`` returns, so neither a follower's acknowledgement
  nor the leader's own vote in the commit count can run ahead of the disk. Term and vote are
  written with temp file, fsync, rename, fsync of the directory before any message that
  reflects them is sent. Records carry a CRC; a torn tail (a crash mid-append, never
  acknowledged) is cut off at start with a warning, while a damaged record followed by valid
  ones (disk corruption) stops the node at start. A failed fsync ends the process: it
  never acknowledges what it could not persist.
* **Snapshots** use our msgpack serializer (no pickle, no fork) and are written atomically.
* **Peer links.** With ``peer_tls`` (the default) peers authenticate each other by their
  node certificates: pysyncobj binds no port and dials nobody; :class:`PeerTLSTransport`
  hands it socketpairs whose other ends :mod:`raftsso.peer_tls` joins to mutual-TLS links,
  and an incoming link must name, in pysyncobj's hello, the Raft address of the member its
  certificate names. Without it (the documented fallback) the listener binds to the
  configured address only. In both modes a random 256-bit cluster secret is mandatory
  (pysyncobj's Fernet link); a peer frame longer than
  :data:`MAX_PEER_FRAME` drops the connection before it is buffered; peer bytes are
  unpickled by a restricted unpickler that knows no global but ``_codecs.encode`` and an
  argument-checking stand-in for ``bytes`` (``b""`` needs it); read-only
  members and pysyncobj's "utility" admin commands are refused.
* **Liveness.** Every proposal has a timeout and maps pysyncobj's failure codes to
  "definitely not applied" (:class:`NotLeader`) or "unknown" (:class:`OutcomeUnknown`).
  A leader steps down after ``leader_fallback_timeout`` without a majority (default 1 s,
  pysyncobj's own default is 30 s).

The patches touch pysyncobj internals, so the version is pinned and checked here.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import pickle
import queue
import socket
import struct
import sys
import threading
import time
import types
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysyncobj
import pysyncobj.pickle as _pso_pickle
import pysyncobj.syncobj as _pso_syncobj
import pysyncobj.tcp_connection as _pso_tcp
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.journal import Journal
from pysyncobj.monotonic import monotonic as _pso_monotonic
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import TCPTransport

from raftsso.config import NodeConfig, Peer
from raftsso.errors import DecodeError, NotLeader, OutcomeUnknown, StorageError
from raftsso.fsm import KeyringStateMachine, Outcome
from raftsso.fsutil import atomic_write, fsync_dir
from raftsso.peer_tls import IDLE_TIMEOUT, PeerLinks
from raftsso.wire import unversioned, versioned

log = logging.getLogger(__name__)

PYSYNCOBJ_VERSION = "0.3.17"
MAX_PEER_FRAME = 4 << 20
JOURNAL_MAGIC = b"RSSOJNL"
JOURNAL_FORMAT = 1
META_FORMAT = 1
SNAPSHOT_FILE_FORMAT = 1
_RECORD = struct.Struct(">II")  # payload length, crc32 of payload
_ENTRY = struct.Struct(">QQ")  # index, term
_HEADER = JOURNAL_MAGIC + bytes([JOURNAL_FORMAT])


def _die(message: str) -> None:
    """Stop the process at once: nothing after a failed fsync may be acknowledged."""
    text = f"{message}; stopping this node so that nothing unpersisted is acknowledged"
    log.critical("%s", text)
    # Logging may go through a queue whose writer thread os._exit would not wait for.
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"CRITICAL raftsso.raft: {text}\n")
        sys.stderr.flush()
    logging.shutdown()
    os._exit(75)


# Replaceable by tests that prove a failing fsync never acknowledges.
on_storage_failure: Callable[[str], None] = _die


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


_PICKLE_SHIM = types.SimpleNamespace(
    dumps=_pso_pickle.dumps, loads=restricted_loads, to_bytes=_pso_pickle.to_bytes)


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


# -- durable journal ---------------------------------------------------------------------


class DurableJournal(Journal):  # type: ignore[misc]
    """An append-only, CRC-checked, fsynced Raft journal with durable term and vote.

    File: ``RSSOJNL | format (1) | records``; a record is ``length (u32) | crc32 (u32) |
    index (u64) | term (u64) | command``.
    """

    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._meta_path = Path(path + ".meta")
        self._entries: list[tuple[bytes, int, int]] = []
        self._offsets: list[int] = []
        # Records cut from the view but still on disk (see deleteEntriesFrom).
        self._pending: list[tuple[tuple[bytes, int, int], int]] = []
        self._meta = self._load_meta()
        self._meta_dirty = False
        self._fd = self._open_and_recover()

    # file handling -----------------------------------------------------------------

    def _open_and_recover(self) -> int:
        if not self._path.exists():
            atomic_write(self._path, _HEADER)
        fd = os.open(self._path, os.O_RDWR)
        data = b""
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0)
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot read the Raft journal {self._path}: {exc}") from exc
        if data[:len(_HEADER)] != _HEADER:
            os.close(fd)
            raise StorageError(
                f"{self._path} is not a raftsso journal of format {JOURNAL_FORMAT} "
                "(a pysyncobj journal or another file?); move it away and let this node "
                "catch up from its peers")
        offset = len(_HEADER)
        while offset < len(data):
            entry = self._parse_record(data, offset)
            if entry is None:
                last_idx = self._entries[-1][1] if self._entries else None
                found = self._find_valid_record(data, offset + 1, last_idx)
                if found is not None:
                    os.close(fd)
                    raise StorageError(
                        f"Raft journal {self._path} is corrupt: the record at offset "
                        f"{offset} is damaged but a valid record (index {found[1]}) follows "
                        f"at offset {found[0]}. This is disk corruption, not an interrupted "
                        "append, and cutting the journal here could lose acknowledged "
                        "entries; this node will not start. Move its data directory away "
                        "and let it catch up from its peers")
                dropped = len(data) - offset
                log.warning(
                    "Raft journal %s has a torn or corrupt tail at offset %d (%d bytes "
                    "dropped): a crash interrupted an append that this node never "
                    "acknowledged; the entries will be replicated again by the leader",
                    self._path, offset, dropped)
                try:
                    self._truncate_fd(fd, offset)
                except StorageError:
                    os.close(fd)
                    raise
                break
            record_len, command, idx, term = entry
            self._entries.append((command, idx, term))
            self._offsets.append(offset)
            offset += record_len
        self._end = offset
        return fd

    @classmethod
    def _find_valid_record(cls, data: bytes, start: int,
                           after_idx: int | None) -> tuple[int, int] | None:
        """The first ``(offset, index)`` at or after ``start`` where a valid record begins.

        This decides between a torn tail and corruption when the record at ``start - 1``
        fails to parse. The rule: the damaged record is a *torn tail* (cut with a warning)
        only if no complete, CRC-valid record whose index is greater than the last good
        index begins at *any* byte offset after the damaged record's start, up to the end of
        the file. Otherwise valid data follows damaged data, which no crash of an
        append-only writer produces (an append is one ``pwrite`` at the end, made durable
        before the next one starts; truncations are fsynced), so it is disk corruption.

        Every offset is tried, not only the one after the damaged record's length field:
        that field may be the damaged part. The cost is one cheap header check per byte of
        the tail, plus a CRC when the header announces a length that fits; a torn tail is
        at most one record, and in corruption the scan stops at the next good record. A
        false "corruption" needs a 32-bit CRC to match by chance (or a command that embeds
        a whole record); it errs on the safe side: the node refuses to start instead of
        dropping data.
        """
        for offset in range(start, len(data) - _RECORD.size - _ENTRY.size + 1):
            entry = cls._parse_record(data, offset)
            if entry is not None and (after_idx is None or entry[2] > after_idx):
                return offset, entry[2]
        return None

    @staticmethod
    def _parse_record(data: bytes, offset: int) -> tuple[int, bytes, int, int] | None:
        if offset + _RECORD.size > len(data):
            return None
        length, crc = _RECORD.unpack_from(data, offset)
        start = offset + _RECORD.size
        if length < _ENTRY.size or start + length > len(data):
            return None
        payload = data[start:start + length]
        if zlib.crc32(payload) != crc:
            return None
        idx, term = _ENTRY.unpack_from(payload)
        return _RECORD.size + length, bytes(payload[_ENTRY.size:]), idx, term

    def _sync(self, fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            on_storage_failure(f"fdatasync of the Raft journal {self._path} failed: {exc}")
            raise StorageError(str(exc)) from exc

    def _truncate_fd(self, fd: int, size: int) -> None:
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            on_storage_failure(f"truncating the Raft journal {self._path} failed: {exc}")
            raise StorageError(str(exc)) from exc
        self._sync(fd)

    # Journal interface -------------------------------------------------------------

    def add(self, command: bytes | str, idx: int, term: int) -> None:
        cmd = command if isinstance(command, bytes) else command.encode("utf-8")
        if self._pending:
            entry, offset = self._pending[0]
            if entry == (cmd, idx, term) and offset == self._end:
                # The very record a deferred cut left on disk: already durable, keep it.
                self._pending.pop(0)
                self._entries.append(entry)
                self._offsets.append(offset)
                self._end = offset + _RECORD.size + _ENTRY.size + len(cmd)
                return
            self._cut_pending()
        payload = _ENTRY.pack(idx, term) + cmd
        record = _RECORD.pack(len(payload), zlib.crc32(payload)) + payload
        try:
            os.pwrite(self._fd, record, self._end)
        except OSError as exc:
            on_storage_failure(f"writing the Raft journal {self._path} failed: {exc}")
            raise StorageError(str(exc)) from exc
        self._sync(self._fd)
        self._entries.append((cmd, idx, term))
        self._offsets.append(self._end)
        self._end += len(record)

    # The in-memory view changes only once the disk has: if a truncation fails (and the
    # failure hook returns, as in tests), the journal still reports what the file holds.

    def clear(self) -> None:
        self._truncate_fd(self._fd, len(_HEADER))
        self._pending = []
        self._entries = []
        self._offsets = []
        self._end = len(_HEADER)

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """Cut the log from ``entryFrom``, deferring the cut on disk.

        pysyncobj cuts a follower's log whenever an append reaches back before its last
        entry, then appends the leader's entries, which are usually the very same ones
        (a resend). Cutting the file at once would briefly un-persist entries this node
        has acknowledged; so the records stay on disk, are re-used when the same entries
        come back, and are cut only when a different entry is appended (a real
        conflict). Raft does not need a cut to be durable: after a crash, the kept
        records are as if the cut had never arrived, which the protocol tolerates.
        """
        if entryFrom >= len(self._entries):
            return
        cut = list(zip(self._entries[entryFrom:], self._offsets[entryFrom:], strict=True))
        self._pending = cut + self._pending
        self._end = self._offsets[entryFrom]
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]

    def _cut_pending(self) -> None:
        """Make a deferred cut real before anything different is written after it."""
        if self._pending:
            self._truncate_fd(self._fd, self._end)
            self._pending = []

    def deleteEntriesTo(self, entryTo: int) -> None:
        # Log compaction: rewrite the kept entries to a new file and swap it in atomically.
        kept = self._entries[entryTo:]
        chunks = [_HEADER]
        offsets = []
        end = len(_HEADER)
        for cmd, idx, term in kept:
            payload = _ENTRY.pack(idx, term) + cmd
            record = _RECORD.pack(len(payload), zlib.crc32(payload)) + payload
            offsets.append(end)
            chunks.append(record)
            end += len(record)
        try:
            atomic_write(self._path, b"".join(chunks))
        except StorageError as exc:
            on_storage_failure(str(exc))
            raise
        os.close(self._fd)
        self._fd = os.open(self._path, os.O_RDWR)
        self._pending = []  # the rewritten file holds only the kept entries
        self._entries = list(kept)
        self._offsets = offsets
        self._end = end

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self._flush_meta()
        with contextlib.suppress(StorageError):
            self._cut_pending()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def flush(self) -> None:
        self._flush_meta()

    # meta: term, vote, commit index ---------------------------------------------------

    def _load_meta(self) -> dict[str, Any]:
        if not self._meta_path.exists():
            return {}
        try:
            meta = unversioned(self._meta_path.read_bytes(), META_FORMAT, "journal meta")
        except (OSError, DecodeError) as exc:
            raise StorageError(
                f"cannot read Raft term and vote from {self._meta_path}: {exc}; the file "
                "is written atomically, so this is disk damage or a foreign file") from exc
        if not isinstance(meta, dict):
            raise StorageError(f"{self._meta_path} does not hold a map")
        return meta

    def _store_meta(self, meta: dict[str, Any] | None = None) -> None:
        """Write ``meta`` (default: the current meta) durably, then make it current."""
        new = self._meta if meta is None else meta
        try:
            atomic_write(self._meta_path, versioned(META_FORMAT, new))
        except StorageError as exc:
            on_storage_failure(str(exc))
            raise
        self._meta = new
        self._meta_dirty = False

    def _flush_meta(self) -> None:
        if self._meta_dirty:
            self._store_meta()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        # Raft does not need the commit index to be durable (it is re-learnt from the
        # leader); it is saved once a second, as pysyncobj does, to speed up restarts.
        if self._meta.get("commit_index") != raftCommitIndex:
            self._meta["commit_index"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:
        return int(self._meta.get("commit_index", 1))

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        # Term and vote must be on disk before a vote or an append reflecting them leaves,
        # and are visible in memory only once they are: a failed write leaves the old ones.
        self._store_meta({**self._meta, "term": term, "voted_for": votedForNodeId})

    def getCurrentTerm(self) -> int:
        return int(self._meta.get("term", 0))

    def getVotedForNodeId(self) -> str | None:
        value = self._meta.get("voted_for")
        return value if isinstance(value, str) else None

    def onOneSecondTimer(self) -> None:
        self._flush_meta()


def _create_journal(journal_file: str | None = None) -> DurableJournal:
    if journal_file is None:
        raise StorageError("raftsso never runs Raft with an in-memory journal")
    return DurableJournal(journal_file)


# -- transport ---------------------------------------------------------------------------


class HardenedTransport(TCPTransport):  # type: ignore[misc]
    """pysyncobj's TCP transport minus read-only members and remote utility commands.

    It also records when each peer was last heard from (for ``status``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.last_heard: dict[str, float] = {}
        super().__init__(*args, **kwargs)

    def _onIncomingMessageReceived(self, conn: Any, message: Any) -> None:
        if self._syncObj.encryptor and not conn.sendRandKey:
            super()._onIncomingMessageReceived(conn, message)
            return
        # After the key exchange the first message names the peer. Only configured members
        # may speak; "readonly" observers would receive every sealed secret, and utility
        # commands would let a password holder change membership behind our back.
        if not isinstance(message, str) or message not in self._nodeAddrToNode:
            log.warning("refusing a Raft connection that did not identify as a member")
            conn.disconnect()
            self._unknownConnections.discard(conn)
            return
        # Over peer TLS the certificate has named the member already: its hello must agree
        # (a member's certificate does not let it speak as another member).
        expected = getattr(conn, "raftsso_peer_address", None)
        if expected is not None and message != expected:
            log.warning("refusing a Raft link from the member at %s: it introduced itself "
                        "as %s", expected, message)
            conn.disconnect()
            self._unknownConnections.discard(conn)
            return
        super()._onIncomingMessageReceived(conn, message)

    def _onMessageReceived(self, node: Any, message: Any) -> None:
        self.last_heard[node.id] = time.monotonic()
        super()._onMessageReceived(node, message)


class PeerTLSTransport(HardenedTransport):
    """:class:`HardenedTransport` whose every link is a socketpair to :mod:`raftsso.peer_tls`.

    pysyncobj binds nothing and dials nothing. Incoming links arrive authenticated (the TLS
    front queues pysyncobj's end with the peer's Raft address; they are adopted here, in
    the Raft thread, on the next tick). An outgoing link is pysyncobj's end of a socketpair
    whose other end :meth:`PeerLinks.dial` joins to the peer over mutual TLS; it starts in
    the state of a TCP connect under way, so pysyncobj's own handshake (key exchange with
    the password, then its hello) runs exactly as over TCP. Only one side of a pair dials
    (pysyncobj's ``_shouldConnect``: the greater address).
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        self._peer_links: PeerLinks = syncObj._peer_links
        self._peer_incoming: queue.SimpleQueue[tuple[socket.socket, str]] = \
            syncObj._peer_incoming
        super().__init__(syncObj, selfNode, otherNodes)

    def _createServer(self) -> None:
        self._server = None  # the TLS front listens on raft_address

    def _maybeBind(self) -> None:
        # Nothing to bind: ready at once (TCPTransport's flag and event, read by waitReady).
        if not getattr(self, "_ready", False):
            self._ready = True
            self._bindOverEvent.set()

    def _onTick(self) -> None:
        self._adopt_incoming()
        super()._onTick()

    def _new_connection(self, sock: socket.socket) -> Any:
        conf = self._syncObj.conf
        return TcpConnection(poller=self._syncObj._poller, socket=sock,
                             timeout=conf.connectionTimeout,
                             sendBufferSize=conf.sendBufferSize,
                             recvBufferSize=conf.recvBufferSize)

    def _adopt_incoming(self) -> None:
        while True:
            try:
                sock, address = self._peer_incoming.get_nowait()
            except queue.Empty:
                return
            conn = self._new_connection(sock)
            conn.raftsso_peer_address = address
            self._onNewIncomingConnection(conn)

    def _connectIfNecessarySingle(self, node: Any) -> bool:
        # TCPTransport's version, with PeerLinks.dial instead of conn.connect(ip, port).
        current = self._connections.get(node)
        if current is not None and current.state != CONNECTION_STATE.DISCONNECTED:
            return True
        if not self._shouldConnect(node):
            return False
        last = self._lastConnectAttempt.get(node)
        if last is not None and \
                _pso_monotonic() - last < self._syncObj.conf.connectionRetryTime:
            return False
        self._lastConnectAttempt[node] = _pso_monotonic()
        sock = self._peer_links.dial(node.address)
        if sock is None:
            return False
        conn = self._new_connection(sock)
        conn._TcpConnection__state = CONNECTION_STATE.CONNECTING
        conn.encryptor = self._syncObj.encryptor
        conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
        conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
        conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
        self._connections[node] = conn
        return True


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
    _pso_syncobj.createJournal = _create_journal
    _pso_syncobj.pickle = _PICKLE_SHIM
    _pso_tcp.pickle = _PICKLE_SHIM
    _pso_tcp.TcpConnection._TcpConnection__processRead = _bounded_process_read
    _PATCHED = True


def _installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("pysyncobj")
    except PackageNotFoundError:
        return None


# -- snapshots ---------------------------------------------------------------------------


def _entry(raw: Any) -> tuple[bytes, int, int]:
    if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], bytes)
            and isinstance(raw[1], int) and isinstance(raw[2], int)):
        raise DecodeError("malformed log entry in snapshot")
    return (raw[0], raw[1], raw[2])


def read_snapshot_file(path: Path) -> tuple[bytes, tuple[bytes, int, int],
                                             tuple[bytes, int, int], list[str]]:
    """Decode a snapshot file: ``(fsm blob, last entry, previous entry, members)``."""
    raw = unversioned(path.read_bytes(), SNAPSHOT_FILE_FORMAT, "snapshot file")
    if not isinstance(raw, dict) or not isinstance(raw.get("fsm"), bytes):
        raise DecodeError("malformed snapshot file")
    cluster = raw.get("cluster")
    if not isinstance(cluster, list) or not all(isinstance(c, str) for c in cluster):
        raise DecodeError("malformed member list in snapshot file")
    return raw["fsm"], _entry(raw.get("last")), _entry(raw.get("prev")), cluster


# -- the SyncObj -------------------------------------------------------------------------


class _KeyringSyncObj(SyncObj):  # type: ignore[misc]
    def __init__(self, fsm: KeyringStateMachine, self_addr: str, others: list[str],
                 conf: SyncObjConf, links: PeerLinks | None = None,
                 incoming: queue.SimpleQueue[tuple[socket.socket, str]] | None = None) -> None:
        self._fsm = fsm
        # Read by PeerTLSTransport while SyncObj.__init__ builds it.
        self._peer_links = links
        self._peer_incoming = incoming
        transport = HardenedTransport if links is None else PeerTLSTransport
        super().__init__(self_addr, others, conf, transportClass=transport)

    @replicated  # type: ignore[untyped-decorator]
    def _apply_command(self, command: bytes) -> Outcome:
        # The one replicated method: opaque, versioned msgpack bytes (see raftsso.fsm).
        # pysyncobj applies entry raftLastApplied + 1 and counts it only afterwards.
        return self._fsm.apply(command, index=self.raftLastApplied + 1)


ROLE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}


@dataclass(frozen=True)
class PeerView:
    id: str
    connected: bool
    last_contact: float | None  # seconds since a message from this peer was received
    match_index: int | None


class RaftNode:
    """One replica's Raft member: propose commands, read its view of the cluster."""

    def __init__(self, cfg: NodeConfig, fsm: KeyringStateMachine,
                 on_role_change: Callable[[str, str], None] | None = None,
                 directory: Callable[[], Sequence[Peer]] | None = None) -> None:
        harden_pysyncobj()
        self._cfg = cfg
        self._fsm = fsm
        self._on_role_change = on_role_change
        # Who is who (ids, addresses): the config's members plus later membership changes.
        self._directory = directory or (lambda: cfg.members)
        self._sync: _KeyringSyncObj | None = None
        self._tick_jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        # Peer TLS (raftsso.peer_tls): the links, the authenticated incoming sockets waiting
        # for the Raft thread, and members this leader is adding (raft address -> node id)
        # whose directory record has not landed yet.
        self._links: PeerLinks | None = None
        self._incoming: queue.SimpleQueue[tuple[socket.socket, str]] = queue.SimpleQueue()
        self._joining: dict[str, str] = {}
        secret = cfg.cluster_secret()
        if len(secret) != 32:
            raise StorageError("the cluster secret must be 32 random bytes")
        self._password = secret.hex()
        cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.journal_path = cfg.data_dir / "raft.journal"
        self.snapshot_path = cfg.data_dir / "raft.snapshot"
        if self.snapshot_path.exists():
            # Validate before pysyncobj sees it: it would log and carry on with empty state.
            try:
                KeyringStateMachine().restore(read_snapshot_file(self.snapshot_path)[0])
            except (OSError, DecodeError) as exc:
                raise StorageError(
                    f"snapshot {self.snapshot_path} is unreadable ({exc}); this node cannot "
                    "start. Move its data directory away and let it catch up from its "
                    "peers") from exc

    def _conf(self) -> SyncObjConf:
        t = self._cfg.raft
        return SyncObjConf(
            password=self._password,
            bindAddress=self._cfg.raft_address,
            journalFile=str(self.journal_path),
            fullDumpFile=str(self.snapshot_path),
            serializer=self._serialize,
            deserializer=self._deserialize,
            useFork=False,
            appendEntriesUseBatch=False,  # batching adds ~100 ms to every write
            appendEntriesPeriod=t.append_entries_period,
            raftMinTimeout=t.election_timeout_min,
            raftMaxTimeout=t.election_timeout_max,
            leaderFallbackTimeout=t.leader_fallback_timeout,
            connectionTimeout=t.connection_timeout,
            connectionRetryTime=t.connection_retry,
            commandsWaitLeader=False,
            dynamicMembershipChange=True,
            onStateChanged=self._state_changed,
            autoTick=True,
            autoTickPeriod=min(0.02, t.append_entries_period),
            logCompactionMinEntries=t.log_compaction_min_entries,
            logCompactionMinTime=600,
        )

    # snapshot hooks (run in the Raft thread) -------------------------------------------

    def _serialize(self, filename: str, data: tuple[Any, Any, Any]) -> None:
        last, prev, cluster = data
        blob = versioned(SNAPSHOT_FILE_FORMAT, {
            "fsm": self._fsm.snapshot(),
            "last": list(last), "prev": list(prev),
            "cluster": sorted(getattr(n, "id", str(n)) for n in cluster),
        })
        try:
            atomic_write(filename, blob)
        except StorageError as exc:
            on_storage_failure(f"writing snapshot failed: {exc}")
            raise

    def _deserialize(self, filename: str) -> tuple[Any, Any, list[str]]:
        path = Path(filename)
        try:
            fsm_blob, last, prev, cluster = read_snapshot_file(path)
            self._fsm.restore(fsm_blob)
            # A snapshot received from the leader was written by pysyncobj without fsync;
            # make it durable before pysyncobj clears the journal it replaces.
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(path, 0o600)
            fsync_dir(path.parent)
        except Exception as exc:  # any malformed snapshot: never carry on with empty state
            on_storage_failure(f"loading snapshot {path} failed: {exc}")
            raise
        return last, prev, cluster

    # lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        others = [p.raft_address for p in self._cfg.peers]
        cfg = self._cfg
        if cfg.peer_tls:
            self._links = PeerLinks(
                node_id=cfg.node_id, listen=cfg.raft_address, ca=cfg.ca_cert, cert=cfg.cert,
                key=cfg.key, members=self.peer_members,
                on_incoming=lambda sock, address: self._incoming.put((sock, address)),
                idle_timeout=max(IDLE_TIMEOUT, 2 * cfg.raft.connection_timeout))
            self._links.start()
        else:
            log.warning("peer_tls is off in %s: Raft peers are authenticated by the cluster "
                        "secret alone (anyone who has it can join)", cfg.path)
        try:
            self._sync = _KeyringSyncObj(self._fsm, cfg.raft_address, others, self._conf(),
                                         links=self._links, incoming=self._incoming)
        except BaseException:
            self._stop_links()
            raise
        self._sync.addOnTickCallback(self._run_tick_jobs)

    def peer_members(self) -> dict[str, str]:
        """The current members but this node, ``{node id: raft address}`` (peer TLS)."""
        members = {p.id: p.raft_address for p in self._directory()
                   if p.id != self._cfg.node_id and not p.id.startswith("?")}
        if self._joining and self._sync is not None:
            # A member this leader is adding is in Raft before its directory record can
            # commit; with one member before, that commit needs the new member itself.
            in_raft = self.raft_addresses()
            for address, node_id in list(self._joining.items()):
                if address in in_raft and node_id not in members:
                    members[node_id] = address
        return members

    def _stop_links(self) -> None:
        if self._links is not None:
            self._links.stop()
            self._links = None
        while True:
            try:
                sock, _ = self._incoming.get_nowait()
            except queue.Empty:
                return
            sock.close()

    # pysyncobj is not thread-safe: anything beyond proposing (which goes through its
    # queue) must run in its tick thread. Jobs are queued here and run on the next tick.

    def _run_tick_jobs(self) -> None:
        while True:
            try:
                job = self._tick_jobs.get_nowait()
            except queue.Empty:
                return
            job()

    def in_raft_thread(self, fn: Callable[[], Any], timeout: float) -> Any:
        """Run ``fn`` in the Raft thread and return its result (or raise its exception)."""
        done = threading.Event()
        abandoned = threading.Event()
        box: dict[str, Any] = {}

        def job() -> None:
            if abandoned.is_set():  # the caller was told it failed: do not act late
                return
            try:
                box["result"] = fn()
            except Exception as exc:  # handed back to the caller
                box["error"] = exc
            done.set()

        self._tick_jobs.put(job)
        if not done.wait(timeout):
            abandoned.set()
            raise OutcomeUnknown(f"the Raft thread did not answer within {timeout:.1f} s")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def transfer_leadership(self, node_id: str, timeout: float) -> int:
        """Ask pysyncobj to hand leadership to ``node_id`` (Raft TimeoutNow).

        Returns pysyncobj's FAIL_REASON: SUCCESS means the request was sent, not that the
        election is over; the caller polls :attr:`leader_id`.
        """
        address = next(p.raft_address for p in self._directory() if p.id == node_id)
        answer: dict[str, int] = {}

        def send() -> None:
            self.sync.transferLeadership(address, callback=lambda _r, err: answer.update(
                error=err))

        self.in_raft_thread(send, timeout)
        return int(answer.get("error", FAIL_REASON.REQUEST_DENIED))

    @property
    def last_log_index(self) -> int:
        return int(self.sync._SyncObj__getCurrentLogIndex())

    def stop(self) -> None:
        self._stop_links()
        if self._sync is not None:
            self._sync.destroy()
            self._sync = None

    @property
    def sync(self) -> _KeyringSyncObj:
        if self._sync is None:
            raise RuntimeError("the Raft node is not running")
        return self._sync

    def _state_changed(self, old: int, new: int) -> None:
        if self._on_role_change is not None:
            self._on_role_change(ROLE_NAMES.get(old, "?"), ROLE_NAMES.get(new, "?"))

    # views ---------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return bool(self.sync._isLeader())

    @property
    def role(self) -> str:
        return "leader" if self.is_leader else self._status().get("role", "follower")

    @property
    def term(self) -> int:
        return int(self.sync.raftCurrentTerm)

    @property
    def commit_index(self) -> int:
        return int(self.sync.raftCommitIndex)

    @property
    def last_applied(self) -> int:
        return int(self.sync.raftLastApplied)

    @property
    def leader_commit_index(self) -> int:
        """The leader's commit index as last told to this node (read-only, for /readyz)."""
        return int(self.sync._SyncObj__leaderCommitIndex or 0)

    @property
    def leader_id(self) -> str | None:
        leader = self.sync._getLeader()
        if leader is None:
            return None
        address = getattr(leader, "id", str(leader))
        return next((p.id for p in self._directory() if p.raft_address == address), None)

    def raft_addresses(self) -> set[str]:
        """The Raft configuration as pysyncobj has it now (this node included)."""
        sync = self.sync
        return {sync.selfNode.id} | {n.id for n in sync.otherNodes}

    def change_membership(self, add: bool, raft_address: str, timeout: float,
                          node_id: str | None = None) -> int:
        """Add or remove one member through Raft; returns pysyncobj's FAIL_REASON.

        pysyncobj allows one change at a time and only after the leader's no-op of its
        term committed; it answers REQUEST_DENIED otherwise. ``node_id`` (of a member being
        added) lets peer TLS admit it before its directory record has committed.
        """
        if add and node_id is not None:
            self._joining[raft_address] = node_id
        elif not add:
            self._joining.pop(raft_address, None)
        done = threading.Event()
        box: dict[str, int] = {}

        def callback(_result: Any, error: int) -> None:
            box["error"] = error
            done.set()

        change = self.sync.addNodeToCluster if add else self.sync.removeNodeFromCluster
        change(raft_address, callback=callback)
        if not done.wait(timeout):
            raise OutcomeUnknown(f"the membership change did not commit within {timeout:.1f} s")
        return box["error"]

    @property
    def has_quorum(self) -> bool:
        """A leader has a quorum; a follower sees one (it is connected to a majority)."""
        return bool(self.sync.hasQuorum)

    def _status(self) -> dict[str, Any]:
        for _ in range(3):
            try:
                raw = self.sync.getStatus()
                break
            except RuntimeError:  # a dict changed size under us in the Raft thread
                continue
        else:
            return {}
        raw["role"] = ROLE_NAMES.get(raw.get("state", 0), "follower")
        return dict(raw)

    def peers(self) -> list[PeerView]:
        raw = self._status()
        transport = self.sync._SyncObj__transport
        heard = dict(getattr(transport, "last_heard", {}))
        now = time.monotonic()
        views = []
        raft_members = self.raft_addresses()
        for peer in self._directory():
            addr = peer.raft_address
            if addr == self._cfg.raft_address or addr not in raft_members:
                continue
            last = heard.get(addr)
            views.append(PeerView(
                id=peer.id,
                connected=raw.get(f"partner_node_status_server_{addr}", 0) == 2,
                last_contact=None if last is None else max(0.0, now - last),
                match_index=raw.get(f"match_idx_server_{addr}"),
            ))
        return views

    # writes --------------------------------------------------------------------------

    def propose(self, command: bytes, timeout: float) -> Outcome:
        """Replicate ``command`` and return its :class:`Outcome` once applied here.

        Raises :class:`NotLeader` when the command was certainly not appended, and
        :class:`OutcomeUnknown` when it may or may not commit (timeout, leader change);
        the caller re-reads by request id and retries with the same id.
        """
        done = threading.Event()
        box: dict[str, Any] = {}

        def callback(result: Any, error: int) -> None:
            box["result"], box["error"] = result, error
            done.set()

        self.sync._apply_command(command, callback=callback)
        if not done.wait(timeout):
            raise OutcomeUnknown(f"no commit within {timeout:.1f} s")
        error = box["error"]
        if error == FAIL_REASON.SUCCESS and isinstance(box["result"], Outcome):
            return box["result"]
        if error in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER,
                     FAIL_REASON.QUEUE_FULL, FAIL_REASON.REQUEST_DENIED):
            raise NotLeader("this node cannot append the command now", leader=None)
        raise OutcomeUnknown(f"outcome unknown (pysyncobj reason {error})")
