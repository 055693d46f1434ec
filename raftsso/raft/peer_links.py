"""Mutual TLS between Raft peers: pysyncobj's bytes travel only over authenticated links.

pysyncobj 0.3.17 pickles its messages and guards them with one shared Fernet password
(:mod:`raftsso.raft.hardening` restricts the unpickler and caps frames). A leaked
password alone would still let anyone who reaches the Raft port join as a member, send
commands and read every sealed secret. With peer TLS (``peer_tls = true``, the default)
pysyncobj binds no port and opens no connection of its own; this module carries its bytes::

    node A (dials)                                           node B (listens)
    pysyncobj ─socketpair─ PeerLinks ══ TLS 1.3, mutual ══ PeerLinks front ─socketpair─ pysyncobj
                                        (A's node cert)    on B's raft_address

* **Incoming.** The front listens on the node's public ``raft_address``. The TLS handshake
  demands a client certificate of the cluster CA; the certificate must carry the role
  ``node`` and, as its common name, the id of a current member other than this node. Only
  then is a socketpair made and one end handed to the Raft thread together with that
  member's Raft address (the transport refuses the link if pysyncobj's own hello names
  another address). Nothing sent by an unauthenticated peer ever reaches pysyncobj.
* **Outgoing.** pysyncobj asks for a link to a Raft address (:meth:`PeerLinks.dial`, from
  its own thread) and at once gets its end of a socketpair; here the other end is connected
  to the peer's ``raft_address`` over TLS with this node's certificate. The peer's
  certificate must verify against the cluster CA, name the peer's host (subject alternative
  name), carry the role ``node`` and have as common name the member id that this node's
  directory gives for that address. Until then pysyncobj's bytes wait in the socketpair; on
  any failure both ends close and pysyncobj retries after ``connection_retry``.
* **Bounded.** Anyone who reaches the port can connect, so incoming connections go through
  the same kind of gate as the service port's (:class:`raftsso.limits.Gate`, ``[limits]``
  ``peer_max_connections``, ``peer_max_handshakes``, ``peer_max_per_source``): past the
  total or per-source cap a connection is closed at once; when the handshake slots are
  full, the oldest handshake of the busiest source is dropped, so a flood of connections
  that never finish their handshake cannot shut out a member (whose handshake takes
  milliseconds). Each handshake must finish within ``handshake_timeout``; an ``accept``
  that finds no descriptor left backs off instead of spinning and emits
  ``resources_exhausted``. A link idle for ``idle_timeout`` is closed (pysyncobj's own
  ``connection_timeout`` is shorter and normally closes idle links first); a link whose
  peer stops being a member is closed within a second. Reading from one side pauses while
  the other side's write buffer is full. The two sides of a link close together. Refusals
  are logged, at most one line per second for each reason and remote host.

Why socketpairs and not a loopback port for pysyncobj: a port on 127.0.0.1 can be reached by
every local user of the host, who with the password could join through it; a socketpair has
no address. The links run in their own thread with its own event loop, so Raft heartbeats
never queue behind SSO client requests on the service's loop.

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
IDLE_TIMEOUT = 120.0
# Bytes accepted from one side of a link before the other side is connected; beyond it
# reading pauses (pysyncobj's frames are capped at 4 MiB, a heartbeat is ~100 bytes).
PENDING_LIMIT = 1 << 20
SWEEP_PERIOD = 1.0
BIND_PATIENCE = 10.0
KEEPALIVE = (16, 3, 5)  # idle, interval, count: pysyncobj's own tcp_keepalive
ROLE = "node"

Members = Callable[[], Mapping[str, str]]
"""The current members other than this node: node id -> Raft address."""
Incoming = Callable[[socket.socket, str], None]
"""Takes pysyncobj's end of an authenticated incoming link and the peer's Raft address."""


def peer_context(ca: Path, cert: Path, key: Path, *, server: bool) -> ssl.SSLContext:
    """The TLS context of a Raft link: the cluster CA, this node's certificate, TLS 1.3."""
    ctx = (pki.server_context if server else pki.client_context)(ca, cert, key)
    # Both ends are raftsso nodes: no reason to speak anything older.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def failure_reason(exc: BaseException) -> str:
    """A short description of a failed TLS handshake (see :mod:`raftsso.tlserrors`)."""
    return describe(handshake_failure_reason(exc))


def _set_keepalive(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE[0])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE[1])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE[2])


class _Half(asyncio.Protocol):
    """One side of a link: what it receives is written to the other side."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.partner: _Half | None = None
        self.pending = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.link.last_active = time.monotonic()
        partner = self.partner
        if partner is not None and partner.transport is not None:
            partner.transport.write(data)
            return
        self.pending += data
        if len(self.pending) > PENDING_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self.link.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.close()

    # Backpressure: while this side cannot take more, stop reading the other side.

    def pause_writing(self) -> None:
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.resume_reading()


class _Link:
    """A local socketpair end joined to a TLS connection; both close together."""

    def __init__(self, owner: PeerLinks, direction: str, peer_address: str) -> None:
        self.owner = owner
        self.direction = direction  # "in" or "out"
        self.peer_address = peer_address  # the peer's Raft address
        self.peer_id: str | None = None  # set once its certificate was checked
        self.serial = ""  # the peer certificate's serial (revocation, raftsso.revocation)
        self.local = _Half(self)
        self.remote = _Half(self)
        self.last_active = time.monotonic()
        self.closed = False
        # Set when the link closes: the handler of an incoming link waits for it, so the
        # port's gate counts the link as an open connection for as long as it lasts.
        self.done: asyncio.Future[None] | None = None

    def join(self) -> None:
        """Start forwarding both ways, first what either side sent meanwhile."""
        if self.closed:
            return
        a, b = self.local, self.remote
        assert a.transport is not None and b.transport is not None
        a.partner, b.partner = b, a
        # Resuming delivers nothing before the next loop iteration, so the pending bytes
        # still go first; a write that fills a buffer then pauses the other side properly.
        a.transport.resume_reading()
        b.transport.resume_reading()
        for src, dst in ((a, b), (b, a)):
            if src.pending:
                assert dst.transport is not None
                dst.transport.write(bytes(src.pending))
                src.pending.clear()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.owner._links.discard(self)
        if self.done is not None and not self.done.done():
            self.done.set_result(None)
        for half in (self.local, self.remote):
            if half.transport is not None:
                # Both at once: whatever one side still had to say is moot without the other.
                half.transport.abort()


class PeerLinks:
    """The TLS front on ``listen`` and the outgoing links of one node, in their own thread."""

    def __init__(self, *, node_id: str, listen: str, ca: Path, cert: Path, key: Path,
                 members: Members, on_incoming: Incoming,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT,
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
        # neither links in nor is linked to, and its open links close at the next sweep.
        self.revoked: Callable[[], frozenset[str]] = revoked or (lambda: frozenset())
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        # The port's caps ([limits] peer_max_*), the service port's kind of gate: the
        # handshakes in progress are its "pending" connections, member links settled ones.
        self.gate = Gate("raft", PortLimits(max_connections, max_handshakes, max_per_source))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listeners: list[socket.socket] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
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
        self._sweeper = loop.create_task(self._sweep())
        log.info("Raft peer links: mutual TLS on %s (role %r, current members only)",
                 self.listen, ROLE)

    def stop(self) -> None:
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
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in (*self._tasks, *self._handlers):
            task.cancel()
        for link in list(self._links):
            link.close()
        pending = [t for t in (self._sweeper, *self._accepting, *self._tasks, *self._handlers)
                   if t is not None]
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

    # outgoing -------------------------------------------------------------------------

    def dial(self, raft_address: str) -> socket.socket | None:
        """A link to the member at ``raft_address``: pysyncobj's end of it, or None.

        Thread-safe and non-blocking (called from the Raft thread). The returned socket is
        connected at once; the TLS connection behind it is made in this object's thread,
        and if it fails the socket is closed.
        """
        loop = self._loop
        if loop is None or self._closing or not loop.is_running():
            return None
        expected = self.expected_id(raft_address)
        if expected is None:
            # Normal for a moment while a member is added: Raft knows its address before
            # this node has applied the directory record that names it.
            self._refuse(("unknown member", raft_address),
                                f"not connecting to Raft address {raft_address}: no current "
                                "member is known there (yet)", level=logging.INFO)
            return None
        try:
            ours, theirs = socket.socketpair()
        except OSError as exc:  # out of descriptors: pysyncobj tries again later
            self._refuse(("socketpair", raft_address),
                                f"cannot link to Raft member {expected} now: {exc}")
            return None
        ours.setblocking(False)
        theirs.setblocking(False)
        try:
            loop.call_soon_threadsafe(self._start_dial, theirs, raft_address, expected)
        except RuntimeError:  # the loop is closed
            ours.close()
            theirs.close()
            return None
        return ours

    def _start_dial(self, sock: socket.socket, raft_address: str, expected: str) -> None:
        if self._closing:
            sock.close()
            return
        self._spawn(self._dial(sock, raft_address, expected))

    async def _dial(self, sock: socket.socket, raft_address: str, expected: str) -> None:
        loop = asyncio.get_running_loop()
        link = _Link(self, "out", raft_address)
        self._links.add(link)
        try:
            await self._connect(loop, link, sock, raft_address, expected)
        finally:
            if link.peer_id is None:  # not joined: failed, refused or cancelled
                link.close()
                if link.local.transport is None:
                    sock.close()

    async def _connect(self, loop: asyncio.AbstractEventLoop, link: _Link,
                       sock: socket.socket, raft_address: str, expected: str) -> None:
        await loop.connect_accepted_socket(lambda: link.local, sock)
        assert link.local.transport is not None
        link.local.transport.pause_reading()  # pysyncobj waits until the peer is verified
        host, port = split_address(raft_address)
        try:
            transport, _ = await asyncio.wait_for(loop.create_connection(
                lambda: link.remote, host, port, ssl=self._client_ctx, server_hostname=host,
                ssl_handshake_timeout=self.handshake_timeout), 2 * self.handshake_timeout)
        except OSError as exc:  # ssl.SSLError and TimeoutError included
            if isinstance(exc, ssl.SSLError | TimeoutError):
                self._refuse((failure_reason(exc), raft_address),
                                    f"Raft link to {expected} at {raft_address} failed: "
                                    f"{failure_reason(exc)} ({exc})")
            else:  # the peer is down: pysyncobj retries
                log.debug("Raft link to %s at %s failed: %s", expected, raft_address, exc)
            return
        _set_keepalive(transport)
        peercert = transport.get_extra_info("peercert")
        role, name = pki.peer_identity(peercert)
        if (revoked := self._revoked_serial(peercert)) is not None:
            self._refuse(("revoked", raft_address),
                         f"Raft link to {expected} at {raft_address} refused: its certificate "
                         f"(serial {revoked}) is revoked")
            transport.abort()
            return
        if role != ROLE or name != expected:
            self._refuse(("wrong server", raft_address),
                                f"Raft link to {raft_address} refused: it presented a "
                                f"certificate for {name!r} (role {role!r}); expected member "
                                f"{expected!r} (role {ROLE!r})")
            transport.abort()
            return
        if link.closed:  # pysyncobj gave up meanwhile
            transport.abort()
            return
        link.peer_id = expected
        link.serial = pki.peer_serial(peercert) or ""
        link.join()

    # incoming -------------------------------------------------------------------------

    async def _admit(self, sock: socket.socket, address: Any, ticket: Ticket) -> None:
        """An incoming connection the gate let in: TLS, the member's certificate, the link."""
        ticket.started = True
        loop = asyncio.get_running_loop()
        host, label = source_of(address), peer_label(address)
        link = _Link(self, "in", "")
        try:
            tls, _ = await asyncio.wait_for(loop.connect_accepted_socket(
                lambda: link.remote, sock, ssl=self._server_ctx,
                ssl_handshake_timeout=self.handshake_timeout), 2 * self.handshake_timeout)
        except asyncio.CancelledError:
            sock.close()
            if swallow_eviction(ticket):  # the gate made room for a newer connection
                self._refuse(("evicted", host), f"dropped a Raft peer connection from "
                             f"{label} still in its TLS handshake, to make room")
                return
            raise
        except (OSError, EOFError) as exc:  # ssl.SSLError and TimeoutError included
            sock.close()
            if is_exhaustion(exc):
                self.gate.report.exhausted("starting TLS", exc)
            reason = failure_reason(exc)
            self._refuse((reason, host), f"refused a Raft peer connection from {label}: "
                         f"TLS handshake failed ({reason}: {exc})")
            return
        self.gate.settled(ticket)  # no longer evictable: it finished its handshake
        link.done = loop.create_future()
        self._links.add(link)
        try:
            if await self._join_incoming(link, tls, host, label):
                await link.done  # the gate counts the link until it closes
        finally:
            link.close()

    async def _join_incoming(self, link: _Link, tls: asyncio.BaseTransport, host: str,
                             label: str) -> bool:
        """Check the member's certificate and hand pysyncobj its end of the link."""
        loop = asyncio.get_running_loop()
        peercert = tls.get_extra_info("peercert")
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
            return False
        link.peer_address = members[name]
        _set_keepalive(tls)
        try:
            ours, theirs = socket.socketpair()
        except OSError as exc:  # out of descriptors: the peer reconnects later
            self._refuse(("socketpair", host),
                         f"cannot hand the Raft link from {name} to pysyncobj: {exc}")
            return False
        ours.setblocking(False)
        theirs.setblocking(False)
        try:
            await loop.connect_accepted_socket(lambda: link.local, ours)
        except BaseException:
            theirs.close()
            if link.local.transport is None:
                ours.close()
            raise
        if link.closed:  # the peer went away meanwhile
            theirs.close()
            return False
        link.peer_id = name
        link.serial = pki.peer_serial(peercert) or ""
        link.join()
        log.debug("Raft peer %s connected from %s", name, label)
        self._on_incoming(theirs, link.peer_address)
        return True

    # housekeeping ---------------------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_PERIOD)
            if not self._links:
                continue
            try:
                members: Mapping[str, str] | None = self._members()
            except Exception:  # a failed lookup says nothing about membership: keep links
                log.exception("cannot read the current members; not sweeping this time")
                members = None
            now = time.monotonic()
            revoked = self.revoked()
            for link in list(self._links):
                if link.peer_id is None:
                    continue  # still connecting: bounded by the handshake timeout
                if link.serial in revoked:
                    log.warning("closing the Raft link %s %s: its certificate (serial %s) "
                                "was revoked", "from" if link.direction == "in" else "to",
                                link.peer_id, link.serial)
                    link.close()
                elif members is not None and members.get(link.peer_id) != link.peer_address:
                    log.info("closing the Raft link %s %s: it is no longer a member",
                             "from" if link.direction == "in" else "to", link.peer_id)
                    link.close()
                elif now - link.last_active > self.idle_timeout:
                    log.debug("closing the idle Raft link with %s", link.peer_id)
                    link.close()

    def links(self) -> list[tuple[str, str | None, str]]:
        """``(direction, peer id, peer Raft address)`` of the open links (for tests)."""
        return [(link.direction, link.peer_id, link.peer_address) for link in self._links]
