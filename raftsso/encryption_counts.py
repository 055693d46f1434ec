"""How many messages each master secret version has encrypted, cluster-wide (replicated;
pure).

AES-GCM with random 96-bit nonces must stay far below 2^32 messages per key (NIST SP 800-38D:
the chance of a repeated nonce must stay below 2^-32), so ``max_encryptions`` makes the
leader rotate before a version has encrypted that many (:mod:`raftsso.rotation_policy`).

Every SSO client counts its encryptions per version and reports the *cumulative* counts at
each resync (``encryptions`` in its keyring request). Nodes remember the latest report per
client; the leader gathers them (with the client census) and proposes an
``encryptions`` command with the reports that changed. Applying it adds, per client and
version, what grew since the client's previous report, so a report counted twice (a retry,
or a new leader sending an old report again) adds nothing, and a total never goes down.

A client is named ``certificate/client id`` (the client id is random per process, so a
restarted client starts a new count). Clients silent for :data:`CLIENT_KEEP` seconds are
forgotten (their counts stay in the totals); totals of versions no longer in the keyring
are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from types import MappingProxyType
from typing import Any

from raftsso.protocol.record import record  # (cheap to define: see there)

MAX_CLIENTS = 100_000
MAX_COUNT = 1 << 62
CLIENT_KEEP = 7 * 86400.0

Counts = Mapping[int, int]  # version id -> messages


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ValueError("an encryption count is an integer from 0 to 2**62")
    return value


def _version(value: Any) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**32:
        raise ValueError("a version id is an integer from 1 to 2**32 - 1")
    return value


def parse_counts(raw: Any) -> dict[int, int]:
    """``{version: count}`` from the wire (keys may be strings); :class:`ValueError`."""
    if not isinstance(raw, Mapping):
        raise ValueError("encryption counts must be a map of version to count")
    if len(raw) > 4096:
        raise ValueError("too many versions in encryption counts")
    return {_version(k): _count(v) for k, v in raw.items()}


@record
class ClientReport:
    counts: Mapping[int, int]
    at: float


@record
class EncryptionLedger:
    """Totals per version, and the last counted report of every client (immutable)."""

    totals: Mapping[int, int] = field(default_factory=dict)
    clients: Mapping[str, ClientReport] = field(default_factory=dict)

    def total(self, version: int) -> int:
        return self.totals.get(version, 0)

    def add_reports(self, reports: Mapping[str, Counts], *, at: float,
                    live_versions: frozenset[int]) -> EncryptionLedger:
        """Count what grew since each client's last report; forget silent clients and
        versions no longer live."""
        totals = {v: n for v, n in self.totals.items() if v in live_versions}
        clients = {c: r for c, r in self.clients.items() if r.at + CLIENT_KEEP >= at}
        for client, counts in reports.items():
            before = clients.get(client)
            seen = before.counts if before is not None else {}
            for version, cumulative in counts.items():
                if version not in live_versions:
                    continue
                grown = cumulative - seen.get(version, 0)
                if grown > 0:
                    totals[version] = min(MAX_COUNT, totals.get(version, 0) + grown)
            merged = {v: n for v, n in seen.items() if v in live_versions}
            for version, cumulative in counts.items():
                if version in live_versions:
                    merged[version] = max(cumulative, merged.get(version, 0))
            clients[client] = ClientReport(MappingProxyType(merged), at)
        if len(clients) > MAX_CLIENTS:  # the oldest reports go first
            for client in sorted(clients, key=lambda c: clients[c].at)[:len(clients)
                                                                        - MAX_CLIENTS]:
                del clients[client]
        return EncryptionLedger(MappingProxyType(totals), MappingProxyType(clients))

    def to_wire(self) -> dict[str, Any]:
        return {"totals": {str(v): n for v, n in self.totals.items()},
                "clients": {c: {"at": r.at, "counts": {str(v): n for v, n in r.counts.items()}}
                            for c, r in self.clients.items()}}

    @classmethod
    def from_wire(cls, raw: Any) -> EncryptionLedger:
        """From a snapshot; :class:`ValueError` / :class:`TypeError` if malformed."""
        if not isinstance(raw, Mapping):
            raise TypeError("the encryption ledger must be a map")
        totals = parse_counts(raw.get("totals", {}))
        raw_clients = raw.get("clients", {})
        if not isinstance(raw_clients, Mapping) or len(raw_clients) > MAX_CLIENTS:
            raise ValueError("the ledger's clients must be a bounded map")
        clients = {}
        for name, report in raw_clients.items():
            if not isinstance(name, str) or not isinstance(report, Mapping):
                raise ValueError("a ledger client must be a name and a report")
            at = report.get("at")
            if isinstance(at, bool) or not isinstance(at, int | float) or not at == at:
                raise ValueError("a report time must be a number")
            clients[name] = ClientReport(MappingProxyType(parse_counts(report.get("counts"))),
                                         float(at))
        return cls(MappingProxyType(totals), MappingProxyType(clients))
