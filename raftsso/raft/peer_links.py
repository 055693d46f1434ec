"""Mutual TLS between Raft peers: pysyncobj's bytes travel only over authenticated links.

pysyncobj 0.3.17 pickles its messages and guards them with one shared Fernet password
(:mod:`raftsso.raft.hardening` restricts the unpickler and caps frames). A leaked
password alone would still let anyone who reaches the Raft port join as a member, send
commands and read every sealed secret. With peer TLS (``peer_tls = true``, the default)
pysyncobj binds no port and opens no connection of its own. This module makes and checks
the TLS connections, in its own thread, and hands each one, verified, to the Raft thread,
which from then on reads and writes it itself::

    node A (dials)                                           node B (listens)
    pysyncobj ══════════════ TLS 1.3, mutual (A's node cert) ═════════════ pysyncobj
        PeerLinks: connect, handshake, check B's certificate   PeerLinks front on B's
                                                               raft_address: accept, gate,
                                                               handshake, check A's cert

* **Incoming.** The front listens on the node's public ``raft_address``. The TLS handshake
  demands a client certificate of the cluster CA; the certificate must carry the role
  ``node`` and, as its common name, the id of a current member other than this node. Only
  then is the TLS socket handed to the Raft thread together with that member's Raft
  address (the transport refuses the link if pysyncobj's own hello names another address).
  Nothing sent by an unauthenticated peer ever reaches pysyncobj.
* **Outgoing.** pysyncobj asks for a link to a Raft address (:meth:`PeerLinks.dial`, from
  its own thread, without waiting); the connection is made here, over TLS with this
  node's certificate. The peer's certificate must verify against the cluster CA, name the
  peer's host (subject alternative name), carry the role ``node`` and have as common name
  the member id that this node's directory gives for that address. Only then does the
  Raft thread get the socket (through the ``on_done`` callback); on any failure it gets
  None and pysyncobj retries after ``connection_retry``.
* **Bounded.** Anyone who reaches the port can connect, so incoming connections go through
  the same kind of gate as the service port's (:class:`raftsso.limits.Gate`, ``[limits]``
  ``peer_max_connections``, ``peer_max_handshakes``, ``peer_max_per_source``): past the
  total or per-source cap a connection is closed at once; when the handshake slots are
  full, the oldest handshake of the busiest source is dropped, so a flood of connections
  that never finish their handshake cannot shut out a member (whose handshake takes
  milliseconds). Each handshake must finish within ``handshake_timeout``; an ``accept``
  that finds no descriptor left backs off instead of spinning and emits
  ``resources_exhausted``. A member's link counts against the caps until the Raft thread
  closes it (pysyncobj's ``connection_timeout`` closes idle ones; the transport closes,
  within a second, a link whose peer stopped being a member or whose certificate was
  revoked, see :meth:`PeerLinks.close_reason`). Refusals
  are logged, at most one line per second for each reason and remote host.

Why the Raft thread owns the TLS sockets: each message then costs one TLS record and no
thread hop. (These links first ran through socketpairs to a thread that forwarded bytes
between them and TLS: every message crossed two more threads on each node, which cost a
write about a millisecond on a two-core machine.) Handshakes stay in this module's own
thread and event loop, so neither a slow handshake nor a flood of strangers ever holds up
a Raft heartbeat.

This module knows nothing of pysyncobj; :mod:`raftsso.raft.transport` wires it in.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from raftsso import pki
from raftsso.config import split_address
from raftsso.errors import ConfigError
from raftsso.limits import (
    DEFAULT_PEER_MAX_CONNECTIONS,
    DEFAULT_PEER_MAX_HANDSHAKES,
    DEFAULT_PEER_MAX_PER_SOURCE,
    Gate,
    PortLimits,
    Ticket,
    accept_loop,
    is_exhaustion,
    listen,
    peer_label,
    source_of,
    swallow_eviction,
)
from raftsso.logs import RateLimiter
from raftsso.tlserrors import describe, handshake_failure_reason

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 5.0
BIND_PATIENCE = 10.0
KEEPALIVE = (16, 3, 5)  # idle, interval, count: pysyncobj's own tcp_keepalive
ROLE = "node"


class PeerSocket(ssl.SSLSocket):
    """The TLS socket of one Raft link, handed to the Raft thread once its peer is verified.

    ``direction`` is "in" or "out"; ``peer_id`` and ``peer_address`` name the member (from
    its certificate and the directory), ``serial`` is its certificate's. Closing it, from
    whichever thread, tells the :class:`PeerLinks` that made it (its gate stops counting
    the link).
    """

    direction = ""
    peer_id = ""
    peer_address = ""
    serial = ""  # the peer certificate's serial (revocation, raftsso.revocation)
    on_close: Callable[[], None] | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            hook, self.on_close = self.on_close, None
            if hook is not None:
                hook()


Members = Callable[[], Mapping[str, str]]
"""The current members other than this node: node id -> Raft address."""
Incoming = Callable[[PeerSocket, str], None]
"""Takes an authenticated incoming link (non-blocking) and the peer's Raft address."""
Dialed = Callable[[PeerSocket | None], None]
"""Takes the outgoing link :meth:`PeerLinks.dial` made, or None if it failed."""


def peer_context(ca: Path, cert: Path, key: Path, *, server: bool) -> ssl.SSLContext:
    """The TLS context of a Raft link: the cluster CA, this node's certificate, TLS 1.3."""
    ctx = (pki.server_context if server else pki.client_context)(ca, cert, key)
    # Both ends are raftsso nodes: no reason to speak anything older.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.sslsocket_class = PeerSocket
    return ctx


def failure_reason(exc: BaseException) -> str:
    """A short description of a failed TLS handshake (see :mod:`raftsso.tlserrors`)."""
    return describe(handshake_failure_reason(exc))


def _tune(sock: socket.socket) -> None:
    """Every message at once (no Nagle delay), and dead peers noticed by keepalives."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE[0])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE[1])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE[2])


async def _io_ready(sock: socket.socket, write: bool) -> None:
    """Wait until ``sock`` is readable (or writable, with ``write``)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _handshake(tls: ssl.SSLSocket) -> None:
    """The TLS handshake of a non-blocking socket, driven by this thread's event loop."""
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            await _io_ready(tls, write=False)
        except ssl.SSLWantWriteError:
            await _io_ready(tls, write=True)


class _Link:
    """A verified link handed to the Raft thread, until that thread closes it."""

    def __init__(self, sock: PeerSocket) -> None:
        self.direction = sock.direction
        self.peer_id = sock.peer_id
        self.peer_address = sock.peer_address
        self.serial = sock.serial
        # Set when the link closes: the handler of an incoming link waits for it, so the
        # port's gate counts the link as an open connection for as long as it lasts.
        self.done: asyncio.Future[None] | None = None


class PeerLinks:
    """The TLS front on ``listen`` and the outgoing links of one node, in their own thread."""

    def __init__(self, *, node_id: str, listen: str, ca: Path, cert: Path, key: Path,
                 members: Members, on_incoming: Incoming,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 max_connections: int = DEFAULT_PEER_MAX_CONNECTIONS,
                 max_handshakes: int = DEFAULT_PEER_MAX_HANDSHAKES,
                 max_per_source: int = DEFAULT_PEER_MAX_PER_SOURCE,
                 revoked: Callable[[], frozenset[str]] | None = None) -> None:
        self.node_id = node_id
        self.listen = listen
        self._members = members
        self._on_incoming = on_incoming
        self._tls_files = (ca, cert, key)
        self._server_ctx = peer_context(ca, cert, key, server=True)
        self._client_ctx = peer_context(ca, cert, key, server=False)
        # Revoked certificate serials (the replicated registry): a revoked node certificate
        # neither links in nor is linked to, and the Raft thread closes its open links
        # within a second (close_reason).
        self.revoked: Callable[[], frozenset[str]] = revoked or (lambda: frozenset())
        self.handshake_timeout = handshake_timeout
        # The port's caps ([limits] peer_max_*), the service port's kind of gate: the
        # handshakes in progress are its "pending" connections, member links settled ones.
        self.gate = Gate("raft", PortLimits(max_connections, max_handshakes, max_per_source))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listeners: list[socket.socket] = []
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[Any]] = set()  # outgoing dials
        self._accepting: set[asyncio.Task[None]] = set()  # accept loops
        self._handlers: set[asyncio.Task[None]] = set()  # incoming connections
        # Refusals: at most one line a second per (reason, host).
        self._refusals = RateLimiter(1.0)
        self._closing = False

    def _refuse(self, key: tuple[str, str], message: str,
                level: int = logging.WARNING) -> None:
        self._refusals.log(key, log, level, message)

    def reload_certificate(self) -> None:
        """Build the TLS contexts again from the same files (SIGHUP): new links use the new
        certificate, open ones keep theirs. :class:`~raftsso.errors.ConfigError` (the old
        contexts stay) if the files do not load."""
        ca, cert, key = self._tls_files
        server, client = (peer_context(ca, cert, key, server=True),
                          peer_context(ca, cert, key, server=False))
        self._server_ctx, self._client_ctx = server, client

    def _revoked_serial(self, peercert: Any) -> str | None:
        """The peer certificate's serial if it is revoked, else None."""
        serial = pki.peer_serial(peercert)
        return serial if serial is not None and serial in self.revoked() else None

    # lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread and listen on ``listen`` (raises ConfigError if it cannot)."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run, args=(loop,), name="raft-peer-tls",
                                        daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result()
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + BIND_PATIENCE
        host, port = split_address(self.listen)
        while True:
            try:
                self._listeners = listen(host, port)
                break
            except OSError as exc:
                # A previous process may still hold the port for a moment.
                if time.monotonic() >= deadline:
                    raise ConfigError(f"cannot listen for Raft peers on {self.listen}: "
                                      f"{exc.strerror or exc}") from None
                await asyncio.sleep(0.2)
        for sock in self._listeners:
            self._accepting.add(loop.create_task(
                accept_loop(sock, self.gate, self._admit, self._handlers)))
        log.info("Raft peer links: mutual TLS on %s (role %r, current members only)",
                 self.listen, ROLE)

    def stop(self) -> None:
        """Stop listening, dialling and handshaking. Links already handed to the Raft
        thread are its to close (pysyncobj closes them when it stops)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    async def _shutdown(self) -> None:
        self._closing = True
        for task in self._accepting:
            task.cancel()
        for sock in self._listeners:
            sock.close()
        self._listeners = []
        for task in (*self._tasks, *self._handlers):
            task.cancel()
        pending = [*self._accepting, *self._tasks, *self._handlers]
        await asyncio.gather(*pending, return_exceptions=True)

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the front listens (host, port), once started."""
        if not self._listeners:
            return None
        name = self._listeners[0].getsockname()
        return str(name[0]), int(name[1])

    def counts(self) -> dict[str, int]:
        """Incoming connections now: all of them, and those still in their handshake."""
        return {"open": self.gate.open, "handshakes": self.gate.pending}

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # who is who -----------------------------------------------------------------------

    def _current(self) -> Mapping[str, str]:
        try:
            return self._members()
        except Exception:  # a lookup that fails admits nobody
            log.exception("cannot read the current members; refusing Raft peer links")
            return {}

    def expected_id(self, raft_address: str) -> str | None:
        """The member id at ``raft_address``, or None if no current member is there."""
        return next((nid for nid, addr in self._current().items()
                     if addr == raft_address and nid != self.node_id), None)

    def close_reason(self, sock: PeerSocket) -> str | None:
        """Why the Raft thread must close this link now, or None to keep it.

        Its peer's certificate was revoked, or the peer is no longer a member at the
        address the link was made for. A member lookup that fails says nothing about
        membership: the link is kept.
        """
        if sock.serial and sock.serial in self.revoked():
            return f"its certificate (serial {sock.serial}) was revoked"
        try:
            members = self._members()
        except Exception:
            log.exception("cannot read the current members; keeping the Raft links")
            return None
        if members.get(sock.peer_id) != sock.peer_address:
            return "it is no longer a member"
        return None

    def _track(self, sock: PeerSocket, direction: str, peer_id: str,
               peer_address: str) -> _Link:
        """Register a verified link before it is handed over; forget it when it closes."""
        sock.direction, sock.peer_id, sock.peer_address = direction, peer_id, peer_address
        sock.serial = pki.peer_serial(sock.getpeercert()) or ""
        link = _Link(sock)
        self._links.add(link)
        loop = asyncio.get_running_loop()

        def closed() -> None:  # in whichever thread closed the socket
            with contextlib.suppress(RuntimeError):  # our loop is gone: nothing to do
                loop.call_soon_threadsafe(self._forget, link)

        sock.on_close = closed
        return link

    def _forget(self, link: _Link) -> None:
        self._links.discard(link)
        if link.done is not None and not link.done.done():
            link.done.set_result(None)

    # outgoing -------------------------------------------------------------------------

    def dial(self, raft_address: str, on_done: Dialed) -> bool:
        """Start a link to the member at ``raft_address``; False if none can be started.

        Thread-safe and non-blocking (called from the Raft thread). ``on_done`` is then
        called once, in this object's thread, with the verified, non-blocking TLS socket,
        or with None if the connection, the handshake or the peer's identity failed.
        """
        loop = self._loop
        if loop is None or self._closing or not loop.is_running():
            return False
        expected = self.expected_id(raft_address)
        if expected is None:
            # Normal for a moment while a member is added: Raft knows its address before
            # this node has applied the directory record that names it.
            self._refuse(("unknown member", raft_address),
                         f"not connecting to Raft address {raft_address}: no current "
                         "member is known there (yet)", level=logging.INFO)
            return False
        try:
            loop.call_soon_threadsafe(self._start_dial, raft_address, expected, on_done)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def _start_dial(self, raft_address: str, expected: str, on_done: Dialed) -> None:
        if self._closing:
            on_done(None)
            return
        self._spawn(self._dial(raft_address, expected, on_done))

    async def _dial(self, raft_address: str, expected: str, on_done: Dialed) -> None:
        tls: PeerSocket | None = None
        try:
            tls = await self._connect(raft_address, expected)
        finally:
            on_done(tls)  # None as well when cancelled (shutdown)

    async def _connect(self, raft_address: str, expected: str) -> PeerSocket | None:
        loop = asyncio.get_running_loop()
        host, port = split_address(raft_address)
        raw: socket.socket | None = None
        tls: PeerSocket | None = None
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, kind, proto, _name, target = infos[0]
            raw = socket.socket(family, kind, proto)
            raw.setblocking(False)
            _tune(raw)
            async with asyncio.timeout(self.handshake_timeout):
                await loop.sock_connect(raw, target)
                wrapped = self._client_ctx.wrap_socket(raw, server_hostname=host,
                                                       do_handshake_on_connect=False)
                assert isinstance(wrapped, PeerSocket)
                tls, raw = wrapped, None
                await _handshake(tls)
        except OSError as exc:  # ssl.SSLError and TimeoutError included
            for sock in (raw, tls):
                if sock is not None:
                    sock.close()
            if isinstance(exc, ssl.SSLError | TimeoutError):
                self._refuse((failure_reason(exc), raft_address),
                             f"Raft link to {expected} at {raft_address} failed: "
                             f"{failure_reason(exc)} ({exc})")
            else:  # the peer is down: pysyncobj retries
                log.debug("Raft link to %s at %s failed: %s", expected, raft_address, exc)
            return None
        except BaseException:
            for sock in (raw, tls):
                if sock is not None:
                    sock.close()
            raise
        peercert = tls.getpeercert()
        role, name = pki.peer_identity(peercert)
        if (revoked := self._revoked_serial(peercert)) is not None:
            self._refuse(("revoked", raft_address),
                         f"Raft link to {expected} at {raft_address} refused: its certificate "
                         f"(serial {revoked}) is revoked")
            tls.close()
            return None
        if role != ROLE or name != expected:
            self._refuse(("wrong server", raft_address),
                         f"Raft link to {raft_address} refused: it presented a "
                         f"certificate for {name!r} (role {role!r}); expected member "
                         f"{expected!r} (role {ROLE!r})")
            tls.close()
            return None
        if self._closing:
            tls.close()
            return None
        self._track(tls, "out", expected, raft_address)
        return tls

    # incoming -------------------------------------------------------------------------

    async def _admit(self, sock: socket.socket, address: Any, ticket: Ticket) -> None:
        """An incoming connection the gate let in: TLS, the member's certificate, the link."""
        ticket.started = True
        host, label = source_of(address), peer_label(address)
        tls: PeerSocket | None = None
        try:
            sock.setblocking(False)
            _tune(sock)
            wrapped = self._server_ctx.wrap_socket(sock, server_side=True,
                                                   do_handshake_on_connect=False)
            assert isinstance(wrapped, PeerSocket)
            tls = wrapped
            async with asyncio.timeout(self.handshake_timeout):
                await _handshake(tls)
        except asyncio.CancelledError:
            (tls or sock).close()
            if swallow_eviction(ticket):  # the gate made room for a newer connection
                self._refuse(("evicted", host), f"dropped a Raft peer connection from "
                             f"{label} still in its TLS handshake, to make room")
                return
            raise
        except (OSError, EOFError) as exc:  # ssl.SSLError and TimeoutError included
            (tls or sock).close()
            if is_exhaustion(exc):
                self.gate.report.exhausted("starting TLS", exc)
            reason = failure_reason(exc)
            self._refuse((reason, host), f"refused a Raft peer connection from {label}: "
                         f"TLS handshake failed ({reason}: {exc})")
            return
        self.gate.settled(ticket)  # no longer evictable: it finished its handshake
        link = self._join_incoming(tls, host, label)
        if link is None:
            return
        # The gate counts the link until the Raft thread closes it. Cancelled at
        # shutdown: the link stays the Raft thread's.
        assert link.done is not None
        await link.done

    def _join_incoming(self, tls: PeerSocket, host: str, label: str) -> _Link | None:
        """Check the member's certificate and hand the link to the Raft thread."""
        peercert = tls.getpeercert()
        role, name = pki.peer_identity(peercert)
        members = self._current()
        problem = None
        if (revoked := self._revoked_serial(peercert)) is not None:
            problem = f"its certificate for {name!r} (serial {revoked}) is revoked"
        elif role != ROLE:
            problem = (f"its certificate has the role {role!r} (CN {name!r}); only {ROLE!r} "
                       "certificates may speak Raft")
        elif name == self.node_id:
            problem = f"its certificate names this node ({name!r})"
        elif name not in members:
            problem = f"node {name!r} is not a current member"
        if problem is not None:
            self._refuse((f"identity {name}", host),
                         f"refused a Raft peer connection from {label}: {problem}")
            tls.close()
            return None
        link = self._track(tls, "in", name, members[name])
        link.done = asyncio.get_running_loop().create_future()
        log.debug("Raft peer %s connected from %s", name, label)
        self._on_incoming(tls, link.peer_address)
        return link

    def links(self) -> list[tuple[str, str, str]]:
        """``(direction, peer id, peer Raft address)`` of the open links (for tests)."""
        return [(link.direction, link.peer_id, link.peer_address)
                for link in list(self._links)]
