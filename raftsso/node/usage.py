"""Encryption counts SSO clients report at each resync, as one node received them.

Each SSO client counts its encryptions per version and sends the cumulative counts with
its keyring request. A node keeps the latest report of each client (certificate name and
client id, as in :mod:`raftsso.node.tracking`); the leader gathers every member's reports
(the ``encryptions`` op) and commits them (:mod:`raftsso.node.schedule`), where the
replicated ledger turns them into totals (:mod:`raftsso.encryption_counts`).

Bounded: at most :data:`MAX_REPORTING_CLIENTS` clients (the least recently heard is
dropped first: its counts were committed already if it reported more than a commit period
ago), and a report older than :data:`REPORT_KEEP` is forgotten.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from raftsso.protocol.messages import EncryptionReports

MAX_REPORTING_CLIENTS = 8192
REPORT_KEEP = 3600.0


def client_key(certificate: str, client_id: str) -> str:
    """How a client is named in reports and in the ledger."""
    return f"{certificate}/{client_id}"


class EncryptionReportTracker:
    """The latest report of each client this node served; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._reports: OrderedDict[str, tuple[float, Mapping[int, int]]] = OrderedDict()
        self._overflowed = False

    def record(self, certificate: str, client_id: str, counts: Mapping[int, int]) -> None:
        if not counts:
            return
        key = client_key(certificate, client_id)
        now = self._clock()
        with self._lock:
            self._reports[key] = (now, dict(counts))
            self._reports.move_to_end(key)
            while len(self._reports) > MAX_REPORTING_CLIENTS:
                self._reports.popitem(last=False)
                self._overflowed = True

    def view(self) -> EncryptionReports:
        now = self._clock()
        with self._lock:
            while self._reports:
                _, (at, _) = next(iter(self._reports.items()))
                if now - at <= REPORT_KEEP:
                    break
                self._reports.popitem(last=False)
            reports = {k: counts for k, (_, counts) in self._reports.items()}
            overflowed, self._overflowed = self._overflowed, False
        return EncryptionReports(reports, overflowed)
