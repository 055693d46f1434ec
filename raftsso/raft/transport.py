"""pysyncobj transports: TCP without read-only members or utility commands, and peer TLS.

:class:`HardenedTransport` is pysyncobj's TCP transport minus what a holder of the cluster
secret could abuse (read-only "observer" members, remote utility commands). With peer TLS
(the default) :class:`PeerTLSTransport` binds nothing and dials nobody: every link is a
mutual-TLS connection that :mod:`raftsso.raft.peer_links` made and verified, which
pysyncobj then reads and writes in the Raft thread.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import queue
import socket
import ssl
import time
from typing import Any

from pysyncobj.monotonic import monotonic as _pso_monotonic
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.tcp_server import TcpServer
from pysyncobj.transport import TCPTransport

from raftsso.raft import storage
from raftsso.raft.peer_links import PeerLinks, PeerSocket

log = logging.getLogger(__name__)

ACCEPT_PAUSE = 0.5  # password-only fallback: how long its listener rests after EMFILE
SWEEP_PERIOD = 1.0  # peer TLS: how often links are checked against the members


class _PausingTcpServer(TcpServer):  # type: ignore[misc]
    """pysyncobj's listener (password-only fallback), paused instead of closed on EMFILE.

    pysyncobj unbinds its listening socket for good on any ``accept`` error but EAGAIN, so
    a process out of descriptors would stop hearing its peers until restarted. Here the
    listener leaves the poller for :data:`ACCEPT_PAUSE` and comes back
    (:meth:`resume_if_due`, from the transport's tick).
    """

    resume_at: float | None = None

    def _TcpServer__onNewConnection(self, descr: int, event: int) -> None:
        if event & POLL_EVENT_TYPE.READ:
            try:
                sock, _addr = self._TcpServer__socket.accept()
            except OSError as exc:
                if exc.errno in storage.TRANSIENT_ERRNOS:
                    storage.transient.warn("accepting Raft peer connections", exc)
                    self._TcpServer__poller.unsubscribe(self._TcpServer__fileno)
                    self.resume_at = time.monotonic() + ACCEPT_PAUSE
                    return
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self.unbind()
                    return
            else:
                # pysyncobj's own handling of an accepted connection.
                send, recv = self._TcpServer__sendBufferSize, self._TcpServer__recvBufferSize
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                conn = TcpConnection(poller=self._TcpServer__poller, socket=sock,
                                     timeout=self._TcpServer__connectionTimeout,
                                     sendBufferSize=send, recvBufferSize=recv,
                                     keepalive=self._TcpServer__keepalive)
                self._TcpServer__onNewConnectionCallback(conn)
        if event & POLL_EVENT_TYPE.ERROR:
            self.unbind()

    def resume_if_due(self) -> None:
        if self.resume_at is None or time.monotonic() < self.resume_at:
            return
        self.resume_at = None
        if self._TcpServer__fileno is not None:
            self._TcpServer__poller.subscribe(self._TcpServer__fileno,
                                              self._TcpServer__onNewConnection,
                                              POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)


class HardenedTransport(TCPTransport):  # type: ignore[misc]
    """pysyncobj's TCP transport minus read-only members and remote utility commands.

    It also records when each peer was last heard from (for ``status``), lets
    :class:`~raftsso.raft.elections.Elections` see every message first (pre-vote and
    leader stickiness), and treats
    running out of descriptors as a reason to try again later (pysyncobj's connect would
    raise out of its tick, and its listener would close for good).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.last_heard: dict[str, float] = {}
        super().__init__(*args, **kwargs)

    def _createServer(self) -> None:
        super()._createServer()
        plain = self._server
        if plain is not None:
            plain.__class__ = _PausingTcpServer

    def _onTick(self) -> None:
        if isinstance(self._server, _PausingTcpServer):
            self._server.resume_if_due()
        super()._onTick()

    def _connectIfNecessarySingle(self, node: Any) -> bool:
        try:
            return bool(super()._connectIfNecessarySingle(node))
        except OSError as exc:
            if exc.errno not in storage.TRANSIENT_ERRNOS:
                raise
            storage.transient.warn("connecting to a Raft peer", exc)
            return False

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
        elections = getattr(self._syncObj, "elections", None)
        if elections is not None and elections.on_message(node, message):
            return  # pre-vote traffic, or a vote request a sticky member ignores
        super()._onMessageReceived(node, message)

    def _onNodeConnected(self, node: Any) -> None:
        super()._onNodeConnected(node)
        elections = getattr(self._syncObj, "elections", None)
        if elections is not None:
            elections.on_connected(node)

    def _onNodeDisconnected(self, node: Any) -> None:
        super()._onNodeDisconnected(node)
        elections = getattr(self._syncObj, "elections", None)
        if elections is not None:
            elections.on_disconnected(node)

    def send(self, node: Any, message: Any) -> bool:
        before_send = getattr(self._syncObj, "before_send", None)
        if before_send is not None:
            before_send(message)  # an acknowledgement leaves only once its entries are durable
        elections = getattr(self._syncObj, "elections", None)
        if elections is not None:
            message = elections.outgoing(message)
        return bool(super().send(node, message))


class PeerTLSTransport(HardenedTransport):
    """:class:`HardenedTransport` over the TLS links of :mod:`~raftsso.raft.peer_links`.

    pysyncobj binds nothing and dials nothing. Incoming links arrive authenticated (the TLS
    front queues each verified TLS socket with the peer's Raft address; they are adopted
    here, in the Raft thread, on the next tick). For an outgoing link :meth:`PeerLinks.dial`
    connects and verifies the peer in its own thread and queues the socket back (or None);
    the link then starts in the state of a TCP connect just done, so pysyncobj's own
    handshake (key exchange with the password, then its hello) runs exactly as over TCP.
    Only one side of a pair dials (pysyncobj's ``_shouldConnect``: the greater address).
    From then on pysyncobj reads and writes the TLS socket itself (see
    :func:`raftsso.raft.hardening.harden_pysyncobj` for what a TLS socket needs). Once a
    second, a link whose peer stopped being a member, or whose certificate was revoked,
    is closed.
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        self._peer_links: PeerLinks = syncObj._peer_links
        self._peer_incoming: queue.SimpleQueue[tuple[PeerSocket, str]] = \
            syncObj._peer_incoming
        self._dialed: queue.SimpleQueue[tuple[Any, PeerSocket | None]] = queue.SimpleQueue()
        self._dialing: set[Any] = set()  # nodes with a dial under way
        self._next_sweep = 0.0
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
        self._adopt_dialed()
        self._read_pending()
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_PERIOD
            self._close_former_members()
        super()._onTick()

    def _new_connection(self, sock: PeerSocket) -> Any:
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

    def _adopt_dialed(self) -> None:
        while True:
            try:
                node, sock = self._dialed.get_nowait()
            except queue.Empty:
                return
            self._dialing.discard(node)
            if sock is None:
                continue  # failed: pysyncobj dials again after connection_retry
            current = self._connections.get(node)
            if node not in self._nodes or (
                    current is not None and current.state != CONNECTION_STATE.DISCONNECTED):
                sock.close()  # dropped meanwhile, or linked another way
                continue
            conn = self._new_connection(sock)
            conn._TcpConnection__state = CONNECTION_STATE.CONNECTING
            conn.encryptor = self._syncObj.encryptor
            conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
            conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
            conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
            self._connections[node] = conn

    def _links(self) -> list[Any]:
        return [*self._connections.values(), *self._unknownConnections]

    def _read_pending(self) -> None:
        # TLS may hold decrypted bytes that the socket no longer signals (a read that
        # stopped at the frame cap): read them now rather than at the next packet.
        for conn in self._links():
            sock = conn._TcpConnection__socket
            if isinstance(sock, ssl.SSLSocket) and conn.state != CONNECTION_STATE.DISCONNECTED:
                with contextlib.suppress(OSError, ValueError):
                    if sock.pending():
                        conn._TcpConnection__processConnection(sock.fileno(),
                                                               POLL_EVENT_TYPE.READ)

    def _close_former_members(self) -> None:  # and revoked certificates
        for conn in self._links():
            sock = conn._TcpConnection__socket
            if not isinstance(sock, PeerSocket) or conn.state == CONNECTION_STATE.DISCONNECTED:
                continue
            reason = self._peer_links.close_reason(sock)
            if reason is not None:
                log.log(logging.WARNING if "revoked" in reason else logging.INFO,
                        "closing the Raft link %s %s: %s",
                        "from" if sock.direction == "in" else "to", sock.peer_id, reason)
                conn.disconnect()
                self._unknownConnections.discard(conn)

    def _connectIfNecessarySingle(self, node: Any) -> bool:
        # TCPTransport's version, with PeerLinks.dial instead of conn.connect(ip, port).
        current = self._connections.get(node)
        if current is not None and current.state != CONNECTION_STATE.DISCONNECTED:
            return True
        if node in self._dialing:
            return True
        if not self._shouldConnect(node):
            return False
        last = self._lastConnectAttempt.get(node)
        if last is not None and \
                _pso_monotonic() - last < self._syncObj.conf.connectionRetryTime:
            return False
        self._lastConnectAttempt[node] = _pso_monotonic()
        dialed = self._dialed
        if not self._peer_links.dial(node.address, lambda sock: dialed.put((node, sock))):
            return False
        self._dialing.add(node)
        return True
