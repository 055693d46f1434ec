"""Prometheus metrics, ``/healthz`` and ``/readyz`` of one node, on a plain-HTTP port.

The HTTP server binds ``metrics_address`` from node.toml (keep it on a management network:
it has no TLS and no authentication, and it shows client certificate names). It runs in its
own thread (one asyncio loop, bounded by ``[limits]``: see :class:`HealthServer`); a scrape
reads the node's state without taking any lock the Raft thread holds, so monitoring can
never stall Raft.

=================  =====================================================================
path               answer
=================  =====================================================================
``/metrics``       Prometheus text format, from this node's own ``CollectorRegistry``
``/healthz``       ``200 ok``: the process is up and serving HTTP
``/readyz``        ``200 ready`` when this node sees a leader, has a quorum and has applied
                   what the leader has committed (as far as it knows), and the cluster has
                   its first secret, and is not sealed; else ``503 not ready: <reason>``
                   (``sealed (...)`` for a shamir node waiting for unseal shares)
=================  =====================================================================

What each metric means is in ``docs/operations.md`` (section *Metrics*). Two need care:

* ``raftsso_tls_handshake_failures_total{reason}`` counts TCP connections to the service
  port whose TLS handshake did not complete (bad or missing client certificate, wrong
  protocol, timeout, peer hung up); the server performs the handshake itself to see them.
* ``raftsso_client_last_sync_age_seconds{client}`` is the time since a ``client``
  certificate last fetched the keyring successfully *from this node*. Clients spread
  their syncs over the nodes and follow the leader, so take the minimum across nodes
  (``min by (client) (...)``) for a client's true sync age. Clients not seen for 24 h are
  dropped; at most :data:`MAX_TRACKED_CLIENTS` are tracked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from raftsso import events
from raftsso.config import split_address
from raftsso.errors import ConfigError
from raftsso.keyring import KeyState
from raftsso.limits import (
    Gate,
    Limits,
    MemoryTrimmer,
    Ticket,
    accept_loop,
    is_exhaustion,
    listen,
    peer_label,
    swallow_eviction,
)
from raftsso.node.tracking import (
    CERTIFICATE_FORGET_AFTER,
    MAX_CERTIFICATES_SHOWN,
    ClientTracker,
)

if TYPE_CHECKING:
    from raftsso.node import Node

log = logging.getLogger(__name__)

# The per-certificate sync ages live in the node's client tracker (one table for the
# metric and for the leader's decisions); these names stay for readers of this module.
ClientSyncTracker = ClientTracker
MAX_TRACKED_CLIENTS = MAX_CERTIFICATES_SHOWN
CLIENT_FORGET_AFTER = CERTIFICATE_FORGET_AFTER
ROLES = ("leader", "candidate", "follower")
FETCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def readiness(node: Node) -> tuple[bool, str]:
    """``(ready, reason)``: the rule behind ``/readyz`` (see the module docstring)."""
    raft = node.raft
    if node.seal.sealed:
        return False, "sealed (supply unseal shares: raftsso unseal NODE --share-file FILE)"
    try:
        leader = raft.leader_id
        if leader is None:
            return False, "no leader known to this node"
        if not raft.has_quorum:
            return False, "this node is not connected to a quorum"
        applied = raft.last_applied
        if raft.is_leader:
            if not node.ready_for_writes:
                return False, "leader of a new term, not ready for writes yet"
            target = raft.commit_index
        else:
            target = raft.leader_commit_index
        if applied < target:
            return False, f"catching up: applied {applied} of {target}"
        if not node.fsm.keyring.bootstrapped:
            return False, "the cluster has no master secret yet"
    except RuntimeError as exc:  # the Raft member is not running (yet, or any more)
        return False, str(exc)
    return True, f"leader {leader}, applied {applied}"


class _StateCollector(Collector):
    """Reads the node's current state at scrape time."""

    def __init__(self, node: Node, metrics: NodeMetrics) -> None:
        self._node = node
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        node = self._node
        info = GaugeMetricFamily("raftsso_node_info", "This node's identity (always 1).",
                                 labels=["node_id", "cluster_id"])
        info.add_metric([node.cfg.node_id, node.cfg.cluster_id], 1)
        yield info
        try:
            raft = node.raft
            role = raft.role
            term, commit, applied = raft.term, raft.commit_index, raft.last_applied
            leader_commit = raft.leader_commit_index
            leader, quorum = raft.leader_id, raft.has_quorum
            peers = raft.peers()
        except RuntimeError:
            return  # Raft is not running: only the process-level metrics
        g = GaugeMetricFamily("raftsso_raft_role", "1 for this node's current Raft role.",
                              labels=["role"])
        for r in ROLES:
            g.add_metric([r], 1 if r == role else 0)
        yield g
        yield GaugeMetricFamily("raftsso_raft_term", "Current Raft term.", value=term)
        yield GaugeMetricFamily("raftsso_raft_commit_index",
                                "Highest log index known committed.", value=commit)
        yield GaugeMetricFamily("raftsso_raft_applied_index",
                                "Highest log index applied to the keyring.", value=applied)
        yield GaugeMetricFamily("raftsso_raft_leader_commit_index",
                                "The leader's commit index as last told to this node.",
                                value=leader_commit)
        yield GaugeMetricFamily("raftsso_raft_has_leader",
                                "1 if this node knows a leader.", value=int(leader is not None))
        yield GaugeMetricFamily("raftsso_raft_has_quorum",
                                "1 if this node is connected to a majority (a leader: has "
                                "one).", value=int(quorum))
        ready, _ = readiness(node)
        yield GaugeMetricFamily("raftsso_ready", "1 when /readyz answers 200.",
                                value=int(ready))
        conn = GaugeMetricFamily("raftsso_raft_peer_connected",
                                 "1 if the Raft link to the peer is up.", labels=["peer"])
        contact = GaugeMetricFamily("raftsso_raft_peer_last_contact_seconds",
                                    "Seconds since a Raft message from the peer.",
                                    labels=["peer"])
        match = GaugeMetricFamily("raftsso_raft_peer_match_index",
                                  "Leader only: highest log index replicated to the peer.",
                                  labels=["peer"])
        for p in peers:
            conn.add_metric([p.id], int(p.connected))
            if p.last_contact is not None:
                contact.add_metric([p.id], p.last_contact)
            if p.match_index is not None and role == "leader":
                match.add_metric([p.id], p.match_index)
        yield conn
        yield contact
        yield match
        ring = node.fsm.keyring
        versions = GaugeMetricFamily("raftsso_keyring_versions",
                                     "Keyring versions by state.", labels=["state"])
        for state in KeyState:
            versions.add_metric([state.value], sum(1 for v in ring.versions
                                                   if v.state is state))
        yield versions
        yield GaugeMetricFamily("raftsso_keyring_primary_version",
                                "Id of the primary version (0: none yet).",
                                value=ring.primary or 0)
        yield GaugeMetricFamily("raftsso_keyring_last_version", "Highest version id.",
                                value=ring.last_id)
        yield GaugeMetricFamily(
            "raftsso_keyring_versions_not_backed_up",
            "Usable versions never included in a backup.",
            value=sum(1 for v in ring.versions
                      if v.state is not KeyState.RETIRED and not v.backed_up))
        ages = self._metrics.clients.ages()
        age = GaugeMetricFamily(
            "raftsso_client_last_sync_age_seconds",
            "Seconds since the client certificate last fetched the keyring from this node.",
            labels=["client"])
        for name, seconds in sorted(ages.items()):
            age.add_metric([name], seconds)
        yield age
        yield GaugeMetricFamily("raftsso_clients_seen",
                                "Client certificates that fetched the keyring from this "
                                "node in the last 24 h.", value=len(ages))


class NodeMetrics:
    """The node's metrics: a private registry, counters fed by the service and the watch."""

    def __init__(self, node: Node | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 clients: ClientTracker | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The node's own tracker when wired by the runner (one table, see raftsso.node.tracking).
        self.clients = clients if clients is not None else ClientTracker(clock=clock)
        r = self.registry
        self.requests = Counter("raftsso_requests", "Service requests by operation.",
                                ["op"], registry=r)
        self.request_errors = Counter("raftsso_request_errors",
                                      "Service requests answered with an error, by code.",
                                      ["op", "code"], registry=r)
        self.keyring_fetches = Counter("raftsso_keyring_fetches",
                                       "Keyring fetches (SSO client syncs) by result.",
                                       ["result"], registry=r)
        self.keyring_fetch_seconds = Histogram(
            "raftsso_keyring_fetch_seconds",
            "Time to answer a keyring fetch inside the node (after TLS, before the send).",
            buckets=FETCH_BUCKETS, registry=r)
        self.tls_handshake_failures = Counter(
            "raftsso_tls_handshake_failures",
            "Service connections whose TLS handshake failed, by reason.", ["reason"],
            registry=r)
        self.connections = Counter("raftsso_connections",
                                   "Service connections accepted (TCP).", registry=r)
        self.connections_refused = Counter(
            "raftsso_connections_refused",
            "Connections closed at once or dropped by a port's [limits], by port and reason.",
            ["port", "reason"], registry=r)
        self.leader_changes = Counter("raftsso_raft_leader_changes",
                                      "New (leader, term) pairs seen by this node.",
                                      registry=r)
        self.audit_write_errors = Counter("raftsso_audit_write_errors",
                                          "Audit lines that could not be written.",
                                          registry=r)
        self.events = Counter("raftsso_events", "Events emitted, by name.", ["event"],
                              registry=r)
        self._children: dict[str, Counter] = {}  # see observe_request
        self._fetches: dict[bool, Counter] = {}  # the fetch series by success, looked up once
        if node is not None:
            r.register(_StateCollector(node, self))

    def count_event(self, event: events.EventType) -> None:
        self.events.labels(event.name).inc()

    def observe_request(self, role: str, cn: str, op: str, code: str | None,
                        seconds: float) -> None:
        # labels() checks and locks on every call: the hot series' children are kept (a
        # few ops; names past the first 64 seen are looked up each time, never cached).
        op_label = op if op.isidentifier() and len(op) <= 32 else "other"
        child = self._children.get(op_label)
        if child is None:
            child = self.requests.labels(op_label)
            if len(self._children) < 64:
                self._children[op_label] = child
        child.inc()
        if code is not None:
            self.request_errors.labels(op_label, code).inc()
        if op == "keyring":
            ok = code is None
            fetches = self._fetches.get(ok)
            if fetches is None:  # a series appears with its first fetch, as ever
                fetches = self._fetches[ok] = self.keyring_fetches.labels(
                    "ok" if ok else "error")
            fetches.inc()
            self.keyring_fetch_seconds.observe(seconds)
            if code is None and role == "client":
                self.clients.synced(cn)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# -- HTTP -------------------------------------------------------------------------------


_MAX_HEAD = 8192  # request line and headers; a scrape needs a few hundred bytes
_MAX_HEADER_LINES = 64


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``address`` (host:port).

    One asyncio loop in its own thread serves every connection, within the metrics caps
    of ``[limits]``: at most ``metrics_max_connections`` open (``metrics_max_per_source``
    from one address; when full, the oldest connection of the busiest source that has not
    sent its whole request yet is dropped), and each connection must send its request and
    take its answer within ``metrics_request_timeout``. A slow or silent client therefore
    holds one socket for a bounded time and never a thread. One request per connection
    (HTTP/1.0, ``Connection: close``), ``GET`` and ``HEAD`` only.
    """

    def __init__(self, address: str, metrics: NodeMetrics, node: Node | None,
                 limits: Limits | None = None) -> None:
        host, port = split_address(address)
        self.metrics = metrics
        self.node = node
        if limits is None:
            limits = node.cfg.limits if node is not None else Limits()
        self.request_timeout = limits.metrics_request_timeout
        self.gate = Gate("metrics", limits.metrics, on_refused=self._refused)
        self.trimmer = MemoryTrimmer([self.gate], threshold=16)
        try:
            self._listeners = listen(host, port, backlog=64)
        except OSError as exc:
            raise ConfigError(f"cannot listen for metrics on {address}: "
                              f"{exc.strerror or exc}") from None
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()  # bound to the loop when first awaited (in _main)
        self._thread = threading.Thread(target=self._run, name="metrics-http", daemon=True)

    def _refused(self, reason: str) -> None:
        self.metrics.connections_refused.labels("metrics", reason).inc()

    @property
    def port(self) -> int:
        return int(self._listeners[0].getsockname()[1])

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        connections: set[asyncio.Task[None]] = set()
        tasks = [loop.create_task(accept_loop(listener, self.gate, self._connection,
                                              connections))
                 for listener in self._listeners]
        tasks.append(loop.create_task(self.trimmer.run()))
        try:
            await self._stop.wait()
        finally:
            for task in (*tasks, *connections):
                task.cancel()
            await asyncio.gather(*tasks, *connections, return_exceptions=True)

    async def _connection(self, sock: socket.socket, address: object, ticket: Ticket) -> None:
        ticket.started = True
        loop = asyncio.get_running_loop()
        writer: asyncio.StreamWriter | None = None
        handed = False  # once asyncio's transport owns the socket, only it may close it
        try:
            async with asyncio.timeout(self.request_timeout):  # the whole request
                reader = asyncio.StreamReader(limit=_MAX_HEAD)
                protocol = asyncio.StreamReaderProtocol(reader)
                handed = True
                transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
                writer = asyncio.StreamWriter(transport, protocol, reader, loop)
                request = await _read_request(reader)
                self.gate.settled(ticket)
                writer.write(self._respond(request))
                writer.close()  # after the answer is flushed, within the deadline
                await writer.wait_closed()
        except asyncio.CancelledError:
            if not swallow_eviction(ticket):  # dropped for room: end quietly; else shutdown
                raise
        except (TimeoutError, ConnectionError, OSError, MemoryError) as exc:
            if is_exhaustion(exc):
                self.gate.report.exhausted("serving a request", exc)
        except Exception:  # never let one request take the server down
            log.exception("metrics connection from %s failed", peer_label(address))
        finally:
            if writer is not None:
                writer.transport.abort()  # a no-op once closed; else drop what is left
            elif not handed:
                sock.close()

    def _respond(self, request: tuple[str, str] | int) -> bytes:
        if isinstance(request, int):
            status, ctype, head = request, "text/plain; charset=utf-8", False
            body = f"{HTTPStatus(status).phrase.lower()}\n".encode()
        else:
            method, path = request
            head = method == "HEAD"
            try:
                status, ctype, body = self.route(path)
            except Exception as exc:  # never let a scrape fail silently
                log.exception("metrics endpoint %s failed", path)
                status, ctype = 500, "text/plain"
                body = f"error: {type(exc).__name__}\n".encode()
        lines = [f"HTTP/1.0 {status} {HTTPStatus(status).phrase}",
                 f"Content-Type: {ctype}", f"Content-Length: {len(body)}",
                 "Cache-Control: no-store", "Connection: close"]
        if status == 405:
            lines.append("Allow: GET, HEAD")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)

    def route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self.metrics.render()
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if path == "/readyz":
            if self.node is None:
                return 503, "text/plain; charset=utf-8", b"not ready: node not running\n"
            ready, reason = readiness(self.node)
            if ready:
                return 200, "text/plain; charset=utf-8", f"ready: {reason}\n".encode()
            return 503, "text/plain; charset=utf-8", f"not ready: {reason}\n".encode()
        return 404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz, /readyz\n"

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop has just ended
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=5)
        elif not self._loop.is_closed() and self._thread.ident is None:
            self._loop.close()  # never started
        for listener in self._listeners:
            listener.close()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | int:
    """``(method, path)`` of an HTTP request head, or the status to answer it with."""
    try:
        line = await reader.readline()
        parts = line.decode("latin-1").split()
        for _ in range(_MAX_HEADER_LINES):  # headers: read and ignored
            header = await reader.readline()
            if not header.strip():
                break
            if not header.endswith(b"\n"):
                return 400  # EOF inside the head
        else:
            return 431
    except ValueError:  # a line longer than the limit
        return 431
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return 400
    method, target = parts[0], parts[1]
    if method not in ("GET", "HEAD"):
        return 405
    return method, target.split("?", 1)[0]
