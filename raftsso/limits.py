"""Connection limits of the node's listening ports, and memory handed back after a flood.

Anyone who reaches a port can open connections; each costs the node a file descriptor
and, until its TLS handshake (or HTTP request) completes, a TLS state. Unbounded, a flood
of them once exhausted the process's descriptors, and the next journal write failed with
``EMFILE``: a node stopped by strangers. Each port therefore has a :class:`Gate`:

* ``max_connections`` open connections in all; a new one beyond it is closed at once;
* ``max_per_source`` from one source address (an IPv6 source counts by its /64, where a
  single host usually has all of its addresses); a new one beyond it is closed at once;
* ``max_pending`` connections still *pending*: in their TLS handshake (service and Raft
  ports) or still sending their request (metrics port). When the pending slots (or all
  connection slots) are full, the oldest pending connection of the source with the most
  pending connections is dropped to make room. A real client's handshake takes
  milliseconds, so it is never the oldest of the busiest source: a flood of connections
  that never finish their handshake cannot lock real clients out, it only churns itself.

The caps derive from the process's descriptor limit (``RLIMIT_NOFILE``, systemd's
``LimitNOFILE``) when ``node.toml`` is loaded (:func:`resolve_limits`): what is not
configured is derived to stay below it, and a configured cap that would not fit is lowered
with a warning. So a flood is refused long before the node runs out of descriptors.

Running out anyway (another process's share of a system-wide limit, or memory) is
transient: :func:`accept_loop` backs off and retries, connection handlers close what they
hold, and a rate-limited ``resources_exhausted`` event says so. Nothing here stops the node.

Memory: a pending TLS handshake held about 90 KiB when the service ran on asyncio's
streams (OpenSSL's state and asyncio's read buffer; now OpenSSL's ~25 KiB); glibc keeps
freed heap memory in its arenas, so after a flood of 2,000 handshakes the process stayed
~170 MiB larger for good. Three things bound and return it: the pending
cap; the service port starting TLS only once a client has sent its first bytes (a bare TCP
connection holds just a socket); and :class:`MemoryTrimmer`, which calls glibc's
``malloc_trim`` once many connections have closed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import ipaddress
import logging
import math
import resource
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raftsso import events

# asyncio (~15 ms to import) in the functions that serve ports: the configuration
# (Limits, resolve_limits) is read by every CLI call, which needs no event loop.
if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

# Descriptors a node needs besides its listeners' connections: stdio and log pipes, the
# journal, snapshot and audit files, the event loop, Raft links to members (a socket and a
# socketpair each) and its own calls to other nodes.
RESERVED_FDS = 128
# The least a port is given, however low the descriptor limit (warned about).
MIN_CONNECTIONS = 16
DEFAULT_MAX_CONNECTIONS = 16384
DEFAULT_MAX_HANDSHAKES = 128
MAX_DERIVED_PER_SOURCE = 1024
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_SEND_TIMEOUT = 30.0
DEFAULT_METRICS_MAX_CONNECTIONS = 32
DEFAULT_METRICS_MAX_PER_SOURCE = 8
DEFAULT_METRICS_REQUEST_TIMEOUT = 5.0
# The Raft port speaks only to the other members; these are read by the Raft package.
DEFAULT_PEER_MAX_CONNECTIONS = 128
DEFAULT_PEER_MAX_HANDSHAKES = 32
DEFAULT_PEER_MAX_PER_SOURCE = 8
_UNLIMITED_NOFILE = 1 << 20

# Errors that mean "out of descriptors or memory": transient, never fatal for a listener.
EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class LimitsError(ValueError):
    """A ``[limits]`` value is invalid (the config loader names the file)."""


@dataclass(frozen=True)
class Limits:
    """The ``[limits]`` section of node.toml, resolved against ``RLIMIT_NOFILE``.

    ``notes`` lists caps that were lowered to fit the descriptor limit (warned at start);
    ``nofile`` is the limit they were resolved against.
    """

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES
    max_per_source: int = MAX_DERIVED_PER_SOURCE
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    metrics_max_connections: int = DEFAULT_METRICS_MAX_CONNECTIONS
    metrics_max_per_source: int = DEFAULT_METRICS_MAX_PER_SOURCE
    metrics_request_timeout: float = DEFAULT_METRICS_REQUEST_TIMEOUT
    peer_max_connections: int = DEFAULT_PEER_MAX_CONNECTIONS
    peer_max_handshakes: int = DEFAULT_PEER_MAX_HANDSHAKES
    peer_max_per_source: int = DEFAULT_PEER_MAX_PER_SOURCE
    nofile: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def service(self) -> PortLimits:
        return PortLimits(self.max_connections, self.max_handshakes, self.max_per_source)

    @property
    def metrics(self) -> PortLimits:
        return PortLimits(self.metrics_max_connections, self.metrics_max_connections,
                          self.metrics_max_per_source)

    @property
    def peer(self) -> PortLimits:
        return PortLimits(self.peer_max_connections, self.peer_max_handshakes,
                          self.peer_max_per_source)

    def describe(self) -> str:
        """One line for the start-up log."""
        return (f"service {self.max_connections} connections ({self.max_handshakes} in TLS "
                f"handshake, {self.max_per_source} per source), metrics "
                f"{self.metrics_max_connections} ({self.metrics_max_per_source} per source), "
                f"raft {self.peer_max_connections} ({self.peer_max_handshakes} in handshake, "
                f"{self.peer_max_per_source} per source); RLIMIT_NOFILE "
                f"{self.nofile if self.nofile is not None else 'unknown'}")


_INT_KEYS = ("max_connections", "max_handshakes", "max_per_source", "metrics_max_connections",
             "metrics_max_per_source", "peer_max_connections", "peer_max_handshakes",
             "peer_max_per_source")
_FLOAT_KEYS = ("handshake_timeout", "send_timeout", "metrics_request_timeout")
KEYS = _INT_KEYS + _FLOAT_KEYS


def nofile_limit() -> int:
    """This process's soft descriptor limit (a large number for "unlimited")."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _UNLIMITED_NOFILE if soft == resource.RLIM_INFINITY else int(soft)


def resolve_limits(raw: Mapping[str, Any], nofile: int | None = None, *,
                   idle_timeout: float = math.inf) -> Limits:
    """``[limits]`` as written (types already checked) -> the caps this process uses.

    Unset service caps are derived from ``nofile`` (default: this process's limit): the
    descriptors left after :data:`RESERVED_FDS`, the Raft port's and the metrics port's
    caps go to the service port, up to :data:`DEFAULT_MAX_CONNECTIONS`; a source may hold
    an eighth of them (at most :data:`MAX_DERIVED_PER_SOURCE`). A configured cap that does
    not fit is lowered, and a note says so. ``send_timeout`` never exceeds ``idle_timeout``.
    """
    unknown = set(raw) - set(KEYS)
    if unknown:
        raise LimitsError(f"unknown [limits] keys: {', '.join(sorted(unknown))} (known: "
                          f"{', '.join(KEYS)})")
    for key in _INT_KEYS:
        if key in raw and not raw[key] >= 1:
            raise LimitsError(f"[limits] {key} must be at least 1")
    for key in _FLOAT_KEYS:
        if key in raw and not raw[key] > 0:  # also refuses NaN
            raise LimitsError(f"[limits] {key} must be positive (seconds)")
    n = nofile_limit() if nofile is None else nofile
    notes: list[str] = []
    defaults = Limits()
    values: dict[str, Any] = {k: raw.get(k, getattr(defaults, k)) for k in KEYS}

    budget = n - RESERVED_FDS - values["peer_max_connections"] - \
        values["metrics_max_connections"]
    if budget < MIN_CONNECTIONS:
        notes.append(f"RLIMIT_NOFILE is {n}: too low for the configured caps; the service "
                     f"port gets {MIN_CONNECTIONS} connections; raise LimitNOFILE (ulimit -n) "
                     f"to at least {n - budget + 1024}")
        budget = MIN_CONNECTIONS
    if "max_connections" in raw and raw["max_connections"] > budget:
        notes.append(f"[limits] max_connections {raw['max_connections']} does not fit "
                     f"RLIMIT_NOFILE {n}; using {budget} (raise LimitNOFILE to at least "
                     f"{n - budget + raw['max_connections']} to allow it)")
    values["max_connections"] = min(values["max_connections"], budget)
    if "max_per_source" not in raw:
        values["max_per_source"] = max(1, min(MAX_DERIVED_PER_SOURCE,
                                              values["max_connections"] // 8))
    for key, total in (("max_handshakes", "max_connections"),
                       ("max_per_source", "max_connections"),
                       ("metrics_max_per_source", "metrics_max_connections"),
                       ("peer_max_handshakes", "peer_max_connections"),
                       ("peer_max_per_source", "peer_max_connections")):
        values[key] = min(values[key], values[total])
    if values["send_timeout"] > idle_timeout:
        values["send_timeout"] = idle_timeout
    return Limits(**values, nofile=n, notes=tuple(notes))


def source_of(address: Any) -> str:
    """The source a connection counts against: its IP address, an IPv6 one by its /64."""
    host = address[0] if isinstance(address, tuple) and address else address
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)  # a Unix socket or an unexpected form: counted as one source
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def peer_label(address: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a socket address, for logs."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def is_exhaustion(exc: BaseException) -> bool:
    """Out of descriptors or memory: transient, never a reason to stop."""
    return isinstance(exc, MemoryError) or (isinstance(exc, OSError)
                                            and exc.errno in EXHAUSTION_ERRNOS)


# -- the gate ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PortLimits:
    max_connections: int
    max_pending: int
    max_per_source: int


@dataclass(eq=False, slots=True)  # one per open connection: no __dict__
class Ticket:
    """One admitted connection. ``on_evict`` is called (once) if it is dropped for room."""

    source: str
    pending: bool = True
    evicted: bool = False
    released: bool = False
    started: bool = False  # its handler has begun (and so owns the socket's cleanup)
    # The handler returned and left the connection open: whatever serves it now calls
    # Gate.release when it closes (the service port: no task per idle connection).
    handed_off: bool = False
    on_evict: Callable[[], None] | None = field(default=None, repr=False)


class _Reporter:
    """Rate-limited events (one per port, event and reason a minute) and a counter hook."""

    def __init__(self, port: str, on_refused: Callable[[str], None] | None) -> None:
        self.port = port
        self.on_refused = on_refused
        self._limiter = events.RateLimiter(60.0)

    def refused(self, reason: str, source: str, limit: int, open_now: int) -> None:
        if self.on_refused is not None:
            with contextlib.suppress(Exception):
                self.on_refused(reason)
        what = {"max_connections": f"{limit} connections are open",
                "max_per_source": f"{source} has {limit} connections open",
                "evicted": f"a connection from {source} still pending was dropped to make "
                           "room (pending or connection slots full)"}.get(reason, reason)
        self._limiter.emit(("refused", reason), events.CONNECTION_REFUSED,
                           f"{self.port} port: {what}", port=self.port, reason=reason,
                           source=source, limit=limit, open=open_now)

    def exhausted(self, where: str, exc: BaseException) -> None:
        name = errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
        self._limiter.emit(("exhausted", where, name), events.RESOURCES_EXHAUSTED,
                           f"{self.port} port: out of descriptors or memory while {where} "
                           f"({name}); refusing connections until some close",
                           port=self.port, error=name, where=where)


class Gate:
    """Admission for one listening port (see the module docstring). Thread-safe."""

    def __init__(self, port: str, limits: PortLimits,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.port = port
        self.limits = limits
        self.report = _Reporter(port, on_refused)
        self._lock = threading.Lock()
        self._open = 0
        self._by_source: dict[str, int] = {}
        # Pending tickets by source, oldest first (dicts keep insertion order).
        self._pending: dict[str, dict[Ticket, None]] = {}
        self._pending_count = 0
        self._peak = 0

    @property
    def open(self) -> int:
        return self._open

    @property
    def pending(self) -> int:
        return self._pending_count

    def admit(self, source: str) -> Ticket | None:
        """A ticket for a new connection from ``source``, or None: close it at once."""
        lim = self.limits
        evict: list[Ticket] = []
        with self._lock:
            if self._by_source.get(source, 0) >= lim.max_per_source:
                refused = ("max_per_source", lim.max_per_source)
            elif self._open >= lim.max_connections and not self._pending_count:
                refused = ("max_connections", lim.max_connections)
            else:
                refused = None
                if self._open >= lim.max_connections:
                    evict.append(self._evict_locked())
                if self._pending_count >= lim.max_pending:
                    evict.append(self._evict_locked())
                ticket = Ticket(source)
                self._open += 1
                self._by_source[source] = self._by_source.get(source, 0) + 1
                self._pending.setdefault(source, {})[ticket] = None
                self._pending_count += 1
                self._peak = max(self._peak, self._open)
            open_now = self._open
        for victim in evict:
            self.report.refused("evicted", victim.source, lim.max_pending, open_now)
            if victim.on_evict is not None:
                victim.on_evict()
        if refused is not None:
            self.report.refused(refused[0], source, refused[1], open_now)
            return None
        return ticket

    def _evict_locked(self) -> Ticket:
        # The oldest pending ticket of the source with the most pending tickets.
        source = max(self._pending, key=lambda s: len(self._pending[s]))
        victim = next(iter(self._pending[source]))
        victim.evicted = True
        self._release_locked(victim)
        return victim

    def settled(self, ticket: Ticket) -> None:
        """The connection finished its handshake (or request): it can no longer be evicted."""
        with self._lock:
            self._unpend_locked(ticket)

    def release(self, ticket: Ticket) -> None:
        """The connection is closed (idempotent)."""
        with self._lock:
            self._release_locked(ticket)

    def _unpend_locked(self, ticket: Ticket) -> None:
        if not ticket.pending:
            return
        ticket.pending = False
        queue = self._pending.get(ticket.source)
        if queue is not None and ticket in queue:
            del queue[ticket]
            self._pending_count -= 1
            if not queue:
                del self._pending[ticket.source]

    def _release_locked(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        self._unpend_locked(ticket)
        ticket.released = True
        self._open -= 1
        left = self._by_source[ticket.source] - 1
        if left:
            self._by_source[ticket.source] = left
        else:
            del self._by_source[ticket.source]

    @property
    def peak(self) -> int:
        """The most connections open at once since :meth:`reset_peak`."""
        return self._peak

    def reset_peak(self) -> None:
        with self._lock:
            self._peak = self._open


# -- asyncio helpers --------------------------------------------------------------------


def listen(host: str, port: int, backlog: int = 128) -> list[socket.socket]:
    """Non-blocking listening sockets on every address ``host`` resolves to."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[Any] = set()
    try:
        for family, kind, proto, _, address in infos:
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def accept_loop(listener: socket.socket, gate: Gate,
                      serve: Callable[[socket.socket, Any, Ticket], Coroutine[Any, Any, None]],
                      tasks: set[asyncio.Task[None]]) -> None:
    """Accept connections for ever: refused ones are closed at once, the others served.

    Running out of descriptors or memory pauses accepting briefly (the kernel keeps the
    waiting connections in the listen backlog) and is reported; it never ends the loop.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    backoff = 0.05
    while True:
        try:
            sock, address = await loop.sock_accept(listener)
        except OSError as exc:
            if is_exhaustion(exc):
                gate.report.exhausted("accepting a connection", exc)
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
            elif exc.errno == errno.EBADF:  # the listener was closed: shutting down
                return
            else:  # ECONNABORTED and friends: that one connection is gone
                log.debug("accept on the %s port failed: %s", gate.port, exc)
            continue
        except MemoryError as exc:
            gate.report.exhausted("accepting a connection", exc)
            await asyncio.sleep(backoff)
            continue
        backoff = 0.05
        ticket = gate.admit(source_of(address))
        if ticket is None:
            sock.close()
        else:
            _serve(loop, sock, address, ticket, gate, serve, tasks)
        # sock_accept does not yield while connections wait in the backlog: without this,
        # a flood would keep the loop here, and evicted sockets could not close meanwhile.
        await asyncio.sleep(0)


def _serve(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: Any,
           ticket: Ticket, gate: Gate,
           serve: Callable[[socket.socket, Any, Ticket], Coroutine[Any, Any, None]],
           tasks: set[asyncio.Task[None]]) -> None:
    try:
        task = loop.create_task(serve(sock, address, ticket))
    except MemoryError as exc:
        gate.release(ticket)
        sock.close()
        gate.report.exhausted("starting a connection handler", exc)
        return
    tasks.add(task)
    ticket.on_evict = _canceller(task)
    task.add_done_callback(_finished(sock, ticket, gate, tasks))


def _canceller(task: asyncio.Task[None]) -> Callable[[], None]:
    def cancel() -> None:
        task.cancel()
    return cancel


def _finished(sock: socket.socket, ticket: Ticket, gate: Gate,
              tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if ticket.handed_off and not task.cancelled() and task.exception() is None:
            ticket.on_evict = None  # only a pending connection is evicted: drop the task
            return
        gate.release(ticket)
        if not ticket.started:  # cancelled before it ran: nothing else owns the socket
            sock.close()
    return done


async def wait_readable(sock: socket.socket, timeout: float) -> bool:
    """Wait until ``sock`` has data (or EOF) to read, without reading it; False on timeout."""
    import asyncio

    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        async with asyncio.timeout(timeout):
            await ready
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


def swallow_eviction(ticket: Ticket) -> bool:
    """In a handler that caught CancelledError: True if it was this gate's eviction.

    The caller then ends quietly; for any other cancellation (shutdown) it re-raises.
    """
    if not ticket.evicted:
        return False
    import asyncio

    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return True


# -- memory -----------------------------------------------------------------------------


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        # The symbols already loaded into this process (libc's among them): no library
        # search, which would run ldconfig in a subprocess.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def release_memory() -> bool:
    """Hand freed heap memory back to the system (glibc only); True if it could."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)  # ctypes releases the GIL for the call
    return True


class MemoryTrimmer:
    """Calls :func:`release_memory` once ``threshold`` connections closed since the peak.

    glibc keeps what thousands of closed TLS connections freed in its heap (fragmented,
    so it is not trimmed on its own); without this, a flood leaves the node hundreds of
    MiB larger for good.
    """

    def __init__(self, gates: list[Gate], threshold: int = 32, interval: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gates = gates
        self.threshold = threshold
        self.interval = interval
        self.trims = 0
        self._clock = clock

    def due(self) -> bool:
        """Enough connections closed since the highest point (which then starts anew)."""
        if sum(gate.peak - gate.open for gate in self.gates) < self.threshold:
            return False
        for gate in self.gates:
            gate.reset_peak()
        return True

    async def run(self) -> None:
        import asyncio

        armed = False
        while True:
            await asyncio.sleep(self.interval)
            if armed:
                # One interval after the connections closed: their TLS objects are gone by
                # now, but some sit in reference cycles until the collector runs.
                armed = False
                start = self._clock()
                gc.collect()
                if await asyncio.to_thread(release_memory):
                    self.trims += 1
                    log.debug("returned freed memory to the system in %.3f s",
                              self._clock() - start)
            if self.due():
                armed = True
