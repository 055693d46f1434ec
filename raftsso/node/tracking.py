"""SSO clients seen: what early promotion and retire's window decide on, and the metric.

Each node remembers, per **(certificate name, client id)**, when it last served that SSO
client the keyring and the highest version it was served. The certificate name comes from
the verified TLS certificate, so one certificate's clients can never stand for another's:

* at most :data:`MAX_CLIENTS_PER_CERTIFICATE` ids per certificate and
  :data:`MAX_TRACKED_CLIENTS` in all;
* an entry still inside ``client_window`` is never evicted: when a table is full of
  recent entries, the new id is not recorded and the tracker notes an *overflow*;
* an overflow within the window makes the view incomplete: the leader then takes the safe
  choice (no early promotion, retire refused until the window has passed), so a flood of
  fresh ids from one certificate can delay a promotion but never make the leader believe
  that another certificate's client has synced.

The leader asks every member for its view (:class:`ClientCensus`); only when every member
answered, has watched for a whole window and overflowed in none of it are the views trusted.

The same tracker keeps, per certificate, when it last synced (``/metrics``:
``raftsso_client_last_sync_age_seconds``; at most :data:`MAX_CERTIFICATES_SHOWN`, forgotten
after a day).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from raftsso import pki
from raftsso.config import Endpoint, NodeConfig, Peer
from raftsso.errors import RaftssoError
from raftsso.protocol.messages import ClientSeen, ClientsRequest, ClientsView
from raftsso.remote import ClusterClient

log = logging.getLogger(__name__)

MAX_CLIENTS_PER_CERTIFICATE = 4096
MAX_TRACKED_CLIENTS = 65536
#: A view longer than this is not sent (it could outgrow a frame): it counts as overflowed.
MAX_VIEW_CLIENTS = 8192
MAX_CERTIFICATES_SHOWN = 1000
CERTIFICATE_FORGET_AFTER = 24 * 3600.0
DEFAULT_WINDOW = 120.0


class ClientTracker:
    """The SSO clients this node served; thread-safe, in memory only (a restart simply makes
    the leader wait a window before trusting views again)."""

    def __init__(self, window: float = DEFAULT_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        # certificate -> client id -> (last served, highest version), oldest first.
        self._clients: dict[str, OrderedDict[str, tuple[float, int]]] = {}
        self._total = 0
        self._overflow_at: float | None = None
        self._last_sync: dict[str, float] = {}  # certificate -> last successful fetch

    # decisions ----------------------------------------------------------------------------

    def record(self, certificate: str, client_id: str, version: int) -> None:
        """``client_id`` of ``certificate`` was served the keyring up to ``version``."""
        now = self._clock()
        with self._lock:
            bucket = self._clients.get(certificate)
            if bucket is not None and client_id in bucket:
                _, highest = bucket[client_id]
                bucket[client_id] = (now, max(highest, version))
                bucket.move_to_end(client_id)
                return
            if bucket is None:
                bucket = self._clients[certificate] = OrderedDict()
            if len(bucket) >= MAX_CLIENTS_PER_CERTIFICATE:
                self._expire(bucket, now)
            if self._total >= MAX_TRACKED_CLIENTS:
                for other in list(self._clients.values()):
                    self._expire(other, now)
            if len(bucket) >= MAX_CLIENTS_PER_CERTIFICATE or self._total >= MAX_TRACKED_CLIENTS:
                if self._overflow_at is None or now - self._overflow_at > 1.0:
                    log.warning("client tracking is full (certificate %s: %d ids, %d in all); "
                                "early promotion and retire fall back to the client window",
                                certificate, len(bucket), self._total)
                self._overflow_at = now
                if not bucket:
                    del self._clients[certificate]
                return
            bucket[client_id] = (now, version)
            self._total += 1

    def _expire(self, bucket: OrderedDict[str, tuple[float, int]], now: float) -> None:
        """Drop entries older than the window (they decide nothing any more)."""
        while bucket:
            cid, (seen, _) = next(iter(bucket.items()))
            if now - seen <= self.window:
                return
            del bucket[cid]
            self._total -= 1

    def view(self) -> ClientsView:
        """The clients served within the window (what a peer's ``clients`` call answers)."""
        now = self._clock()
        with self._lock:
            rows = [ClientSeen(cert, cid, now - seen, version)
                    for cert, bucket in self._clients.items()
                    for cid, (seen, version) in bucket.items() if now - seen <= self.window]
            overflowed = (self._overflow_at is not None
                          and now - self._overflow_at <= self.window)
        if len(rows) > MAX_VIEW_CLIENTS:
            rows, overflowed = [], True
        return ClientsView(now - self._started, self.window, tuple(rows), overflowed)

    # the metric --------------------------------------------------------------------------

    def synced(self, certificate: str) -> None:
        """``certificate`` fetched the keyring successfully (for the sync-age metric)."""
        now = self._clock()
        with self._lock:
            if certificate not in self._last_sync and \
                    len(self._last_sync) >= MAX_CERTIFICATES_SHOWN:
                self._forget(now)
                if len(self._last_sync) >= MAX_CERTIFICATES_SHOWN:
                    oldest = min(self._last_sync, key=self._last_sync.__getitem__)
                    del self._last_sync[oldest]
            self._last_sync[certificate] = now

    def _forget(self, now: float) -> None:
        for name in [n for n, t in self._last_sync.items() if now - t > CERTIFICATE_FORGET_AFTER]:
            del self._last_sync[name]

    def ages(self) -> dict[str, float]:
        """Seconds since each certificate last synced from this node."""
        now = self._clock()
        with self._lock:
            self._forget(now)
            return {name: max(0.0, now - t) for name, t in self._last_sync.items()}


class ClientCensus:
    """The leader's question to every member: has every recent client got ``version``?"""

    def __init__(self, cfg: NodeConfig, tracker: ClientTracker,
                 members: Callable[[], list[Peer]]) -> None:
        self._cfg = cfg
        self._tracker = tracker
        self._members = members
        self._peers: ClusterClient | None = None

    def close(self) -> None:
        if self._peers is not None:
            self._peers.close()
            self._peers = None

    def _peer_client(self) -> ClusterClient:
        """mTLS calls to the other members' services, with this node's certificate."""
        others = [Endpoint(p.id, p.service_address) for p in self._members()
                  if p.id != self._cfg.node_id and p.service_address]
        if self._peers is None or {n.address for n in self._peers.nodes} != \
                {e.address for e in others}:
            self.close()
            self._peers = node_client(
                self._cfg, others or [Endpoint(self._cfg.node_id, self._cfg.service_address)])
        return self._peers

    def _peer_views(self) -> list[ClientsView] | None:
        peers = self._peer_client()
        views = []
        for peer in peers.nodes:
            if peer.id == self._cfg.node_id:
                continue
            try:
                views.append(peers.request_node(peer.address, ClientsRequest(), timeout=1.0))
            except (OSError, RaftssoError):
                return None  # an unknown view: fall back to the safe choice
        return views

    def every_recent_client_has(self, version: int) -> bool:
        """True when every client any member served within the window has been served
        ``version`` (by some member).

        Only trusted when every member answered, has been watching for a whole window and
        did not overflow within it (see the module docstring); False otherwise.
        """
        peer_views = self._peer_views()
        if peer_views is None:
            return False
        views = [self._tracker.view(), *peer_views]
        window = self._tracker.window
        if any(v.tracking_for < window or v.overflowed for v in views):
            return False
        highest: dict[tuple[str, str], int] = {}
        for view in views:
            for c in view.clients:
                if c.age <= window:
                    key = (c.certificate, c.client_id)
                    highest[key] = max(highest.get(key, 0), c.version)
        return all(v >= version for v in highest.values())


def node_client(cfg: NodeConfig, endpoints: list[Endpoint]) -> ClusterClient:
    """A client of other members' services that presents this node's certificate."""
    return ClusterClient(endpoints, pki.client_context(cfg.ca_cert, cfg.cert, cfg.key),
                         timeout=1.0)
