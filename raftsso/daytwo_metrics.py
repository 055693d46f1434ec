"""``/metrics`` of day-two operations (issue 15): cluster health, revocations, certificate
reloads, scheduled backups, rotation policy and encryption counts.

Registered in the node's own registry by the runner (:mod:`raftsso.runner`).

===============================================  ===================================================
metric                                           meaning
===============================================  ===================================================
``raftsso_failure_tolerance``                    leader only: voters that may fail with the quorum
                                                 kept (:mod:`raftsso.cluster_health`)
``raftsso_node_healthy{node}``                   leader only: 1 if the member is healthy (the
                                                 leader itself: 1)
``raftsso_node_lag_entries{node}``               leader only: entries the member trails the
                                                 leader's commit index by
``raftsso_node_reachable{node}``                 leader only: 1 if the Raft link is up
``raftsso_revoked_connections_total{when}``      connections refused (``handshake``) or closed
                                                 (``open``) for a revoked certificate
``raftsso_certificates_revoked``                 revoked serials in the replicated registry
``raftsso_certificate_reloads_total{result}``    SIGHUP reloads of this node's certificate
``raftsso_scheduled_backups_total{result}``      backups this node wrote as leader (``ok``,
                                                 ``failed``)
``raftsso_last_scheduled_backup_timestamp``      when this node last wrote one (Unix time)
``raftsso_policy_rotations_total{reason}``       rotations started by the rotation policy
``raftsso_version_encryptions{version}``         encryptions per version, as SSO clients
                                                 reported them
===============================================  ===================================================
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from raftsso import cluster_health

if TYPE_CHECKING:
    from raftsso.node import Node


class _Collector(Collector):
    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node
        yield GaugeMetricFamily("raftsso_certificates_revoked",
                                "Revoked certificate serials in the replicated registry.",
                                value=len(node.revoked()))
        schedule = node.schedule
        backups = CounterMetricFamily("raftsso_scheduled_backups",
                                      "Scheduled backups this node wrote as leader.",
                                      labels=["result"])
        backups.add_metric(["ok"], schedule.backups_written)
        backups.add_metric(["failed"], schedule.backup_failures)
        yield backups
        if schedule.last_backup is not None:
            yield GaugeMetricFamily("raftsso_last_scheduled_backup_timestamp",
                                    "When this node last wrote a scheduled backup (Unix time).",
                                    value=schedule.last_backup)
        rotations = CounterMetricFamily("raftsso_policy_rotations",
                                        "Rotations started by the rotation policy.",
                                        labels=["reason"])
        for reason in ("rotation_period", "max_encryptions"):
            rotations.add_metric([reason], schedule.policy_rotations.get(reason, 0))
        yield rotations
        counts = GaugeMetricFamily("raftsso_version_encryptions",
                                   "Encryptions per version, as SSO clients reported them.",
                                   labels=["version"])
        for version, n in sorted(node.fsm.encryptions().totals.items()):
            counts.add_metric([str(version)], n)
        yield counts
        yield from self._health()

    def _health(self) -> Iterator[Metric]:
        raft = self._node.raft
        try:
            if not raft.is_leader:
                return
            commit = raft.commit_index
            peers = list(raft.peers())
            me = self._node.cfg.node_id
        except RuntimeError:
            return
        rows = [cluster_health.node_health(me, reachable=True, leader=True, lag=0,
                                           last_contact=0.0)]
        rows += [cluster_health.node_health(
            p.id, reachable=p.connected, leader=False,
            lag=cluster_health.lag(commit, p.match_index), last_contact=p.last_contact)
            for p in peers]
        healthy = GaugeMetricFamily("raftsso_node_healthy",
                                    "Leader only: 1 if the member is healthy.", labels=["node"])
        lag = GaugeMetricFamily("raftsso_node_lag_entries",
                                "Leader only: entries the member trails the commit index by.",
                                labels=["node"])
        reachable = GaugeMetricFamily("raftsso_node_reachable",
                                      "Leader only: 1 if the member's Raft link is up.",
                                      labels=["node"])
        for row in rows:
            healthy.add_metric([row.id], int(row.healthy))
            reachable.add_metric([row.id], int(row.reachable))
            if row.lag is not None:
                lag.add_metric([row.id], row.lag)
        yield healthy
        yield lag
        yield reachable
        yield GaugeMetricFamily(
            "raftsso_failure_tolerance",
            "Leader only: voters that may fail with the quorum kept.",
            value=cluster_health.tolerance_of(rows, has_leader=True))


class DaytwoMetrics:
    """The counters fed by the server and the runner, and the collector above."""

    def __init__(self, registry: CollectorRegistry, node: Node | None) -> None:
        self.revoked_connections = Counter(
            "raftsso_revoked_connections",
            "Connections refused after the handshake (handshake) or closed (open) because "
            "their certificate is revoked.", ["when"], registry=registry)
        self.certificate_reloads = Counter(
            "raftsso_certificate_reloads", "SIGHUP reloads of this node's certificate.",
            ["result"], registry=registry)
        if node is not None:
            registry.register(_Collector(node))
