"""What a writing SSO client tells the cluster about the stores it writes to.

Every write through :class:`raftsso.store.SSOStore` with an :class:`~raftsso.client.SSOClient`
as its cipher adds the rows written, by store and by the key version of their tokens (read
from the tokens the client just made: nothing is counted in the database). The client
sends them as an *increment* (``store_report``, ``full`` false) from its resync thread,
just before fetching the keyring (so at most once per resync interval, and every row a
client wrote under an old primary is reported before it is served the next keyring), and
when it closes (a one-shot ``raftsso sso cred set`` reports on exit).

An increment only adds rows: it makes a store known and can block ``retire``, never let
one through (that takes a full count, from ``rewrap``). A report that fails is kept and
merged into the next one. Bounded: at most :data:`MAX_PENDING_STORES` stores are kept
pending (a client writes to one or two); past it the writes of a new store are dropped
with a warning (its next ``rewrap`` counts them anyway).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from raftsso.errors import ClusterUnavailable, RaftssoError, RemoteError
from raftsso.protocol.codes import RETRYABLE
from raftsso.protocol.messages import StoreReportRequest

log = logging.getLogger(__name__)

MAX_PENDING_STORES = 64

Send = Callable[[StoreReportRequest], object]


@dataclass
class _Pending:
    kind: str
    last_write: float
    versions: dict[int, int] = field(default_factory=dict)


class StoreWriteReports:
    """Rows written, by store and version, until the cluster has them; thread-safe."""

    def __init__(self, send: Send | None, wall: Callable[[], float]) -> None:
        self._send = send
        self._wall = wall
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._dropped_logged = False

    def add(self, store_id: str, kind: str, versions: Mapping[int, int]) -> None:
        if self._send is None:
            return
        with self._lock:
            pending = self._pending.get(store_id)
            if pending is None:
                if len(self._pending) >= MAX_PENDING_STORES:
                    if not self._dropped_logged:
                        self._dropped_logged = True
                        log.warning("writes to more than %d stores await their report; the "
                                    "writes of store %s are not reported (rewrap counts "
                                    "them)", MAX_PENDING_STORES, store_id)
                    return
                pending = self._pending[store_id] = _Pending(kind, self._wall())
            pending.last_write = self._wall()
            for version, rows in versions.items():
                pending.versions[version] = pending.versions.get(version, 0) + rows

    @property
    def pending(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def flush(self) -> None:
        """Send every pending increment; a failed one stays pending (merged with later
        writes). Never raises for a cluster failure."""
        if self._send is None:
            return
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            for store_id, pending in batch.items():
                request = StoreReportRequest(store_id, pending.kind, pending.last_write,
                                             pending.versions, full=False)
                try:
                    self._send(request)
                except (OSError, RaftssoError) as exc:
                    if _transient(exc):
                        log.warning("could not report the rows written to store %s to the "
                                    "cluster (kept for the next report): %s", store_id, exc)
                        self.add(store_id, pending.kind, pending.versions)
                    else:  # refused (an old node, the store cap): retrying would not help
                        log.warning("the cluster refused the report of the rows written to "
                                    "store %s (dropped; rewrap counts them): %s", store_id, exc)


def _transient(exc: Exception) -> bool:
    if isinstance(exc, RemoteError):
        return exc.code in RETRYABLE
    return isinstance(exc, OSError | ClusterUnavailable)
