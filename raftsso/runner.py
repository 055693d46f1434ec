"""Runs one node process: logging, umask, Raft, TLS service, clean shutdown on SIGTERM.

Also wires the operations side: event lines (:mod:`raftsso.events`), the metrics and
health endpoint (:mod:`raftsso.metrics`, started first so ``/healthz`` answers while Raft
starts), the audit log (:mod:`raftsso.audit`) and the cluster watch (:mod:`raftsso.watch`).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import importlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from raftsso import events, memscrub
from raftsso.audit import AuditLog
from raftsso.config import NodeConfig, load_node_config
from raftsso.daytwo_metrics import DaytwoMetrics
from raftsso.errors import RaftssoError
from raftsso.fsm import KeyringStateMachine
from raftsso.logs import log_through_queue
from raftsso.metrics import HealthServer, NodeMetrics
from raftsso.node import Node, RaftHooks
from raftsso.raft import RaftConfig, RaftNode
from raftsso.server import Server
from raftsso.telemetry import RequestTelemetry
from raftsso.watch import ClusterWatch

log = logging.getLogger("raftsso")


def setup_logging(level: str = "INFO") -> None:
    # Through a queue: the Raft thread logs too, and must never block on a full stderr
    # pipe (a stuck log collector); one listener thread does the writing.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log_through_queue(logging.getLogger(), handler,
                      getattr(logging, level.upper(), logging.INFO))
    # pysyncobj is chatty at INFO and its messages are ours to translate.
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)


def raft_config(cfg: NodeConfig) -> RaftConfig:
    """The Raft member's settings out of a node's configuration (the one place they meet)."""
    return RaftConfig(
        node_id=cfg.node_id, raft_address=cfg.raft_address, members=cfg.members,
        data_dir=cfg.data_dir, cluster_secret=cfg.cluster_secret(), timings=cfg.raft,
        peer_tls=cfg.peer_tls, ca_cert=cfg.ca_cert, cert=cfg.cert, key=cfg.key,
        peer_max_connections=cfg.limits.peer_max_connections,
        peer_max_handshakes=cfg.limits.peer_max_handshakes,
        peer_max_per_source=cfg.limits.peer_max_per_source, source=str(cfg.path))


def build_node(cfg: NodeConfig) -> Node:
    """Wire one replica: its state machine, its Raft member (built here, the one place a
    RaftNode is made) and the node that is given both."""
    fsm = KeyringStateMachine()
    hooks = RaftHooks(cfg)
    raft = RaftNode(raft_config(cfg), fsm, on_role_change=hooks.role_changed,
                    directory=hooks.members)
    node = Node(cfg, fsm, raft, hooks)
    raft.revoked = node.revoked  # a revoked node certificate cannot rejoin the peer mesh
    return node


def run_node(config_path: str | Path) -> int:
    """Run a node until SIGTERM or SIGINT; returns the process exit code."""
    os.umask(0o077)  # every file this process creates is private, pysyncobj's included
    # asyncio gives every TLS connection a 256 KiB read buffer: 2.9 GiB for 10,000 idle SSO
    # clients (bench/RESULTS.md). 32 KiB reads serve our small frames just as well.
    asyncio.sslproto.SSLProtocol.max_size = 32 * 1024
    cfg = load_node_config(config_path)
    if cfg.scrub_freed_memory:
        memscrub.reexec_scrubbed()  # once, before anything holds a secret
    events.configure(cfg.node_id)
    node = build_node(cfg)
    metrics = NodeMetrics(node, clients=node.clients)
    daytwo = DaytwoMetrics(metrics.registry, node)
    events.add_listener(metrics.count_event)
    health = (HealthServer(cfg.metrics_address, metrics, node)
              if cfg.metrics_address is not None else None)
    if health is None:
        log.warning("no metrics_address in %s: /metrics, /healthz and /readyz are off",
                    cfg.path)
    audit = AuditLog(cfg.audit_path, cfg.node_id)
    audit.on_write_error = metrics.audit_write_errors.inc
    watch = ClusterWatch(node, metrics)
    if health is not None:
        health.start()
    try:
        node.start()
        watch.start()
        return run_loop(_serve(node, metrics, audit, daytwo))
    finally:
        watch.stop()
        node.stop()
        audit.close()
        if health is not None:
            health.close()
        log.info("node %s stopped", cfg.node_id)
        events.shutdown()


#: ``uvloop`` makes a node serve on uvloop's loop (installed with the optional ``fast`` extra).
EVENT_LOOP_ENV = "RAFTSSO_EVENT_LOOP"


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run the service's loop: asyncio's own, or uvloop's with ``RAFTSSO_EVENT_LOOP=uvloop``
    (when it is installed; otherwise a warning and asyncio's).

    Why: every keyring fetch is a few loop callbacks (readable, timers); uvloop runs them
    with less CPU (issue 16.3). Opt-in, not the default: the whole test suite has not run on
    it (two runs of tests/integration/test_flood.py on it ended with /readyz 503 in the
    metrics-port test, which passed alone and on asyncio; not understood yet). Only the
    main thread's loop changes (the metrics server and peer TLS links keep asyncio's)."""
    if os.environ.get(EVENT_LOOP_ENV, "") == "uvloop":
        try:
            # By name: an optional package, so the types do not depend on its presence.
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            log.warning("%s=uvloop but uvloop is not installed: serving on asyncio's loop",
                        EVENT_LOOP_ENV)
        else:
            log.info("event loop: uvloop %s", getattr(uvloop, "__version__", "?"))
            return int(uvloop.run(main))
    log.info("event loop: asyncio")
    return asyncio.run(main)


def reload_certificates(node: Node, server: Server,
                        daytwo: DaytwoMetrics | None = None) -> bool:
    """SIGHUP: load this node's certificate and key again, for the service port and the
    Raft peer links. Connections already open keep theirs (no client is dropped, no
    election happens); files that do not load leave everything as it was."""
    try:
        serial = server.tls.reload()
        node.raft.reload_certificate()
    except RaftssoError as exc:
        log.error("SIGHUP: kept the current certificate: %s", exc)
        if daytwo is not None:
            daytwo.certificate_reloads.labels("failed").inc()
        return False
    log.info("SIGHUP: reloaded %s (serial %s) for new connections", node.cfg.cert, serial)
    events.emit(events.CERTIFICATE_RELOADED, f"serving certificate serial {serial}",
                serial=serial, cert=str(node.cfg.cert))
    if daytwo is not None:
        daytwo.certificate_reloads.labels("ok").inc()
    return True


def watch_revocations(server: Server, node: Node, audit: AuditLog | None,
                      daytwo: DaytwoMetrics | None) -> None:
    """Every node enforces the replicated revocations on its service port: audited,
    counted and emitted (at most one event per certificate and kind a minute)."""
    limiter = events.RateLimiter(60.0)

    def revoked(when: str, name: str, role: str, peer: str, serial: str) -> None:
        if daytwo is not None:
            daytwo.revoked_connections.labels(when).inc()
        if audit is not None:
            audit.request(cn=name, role=role, op="tls", peer=peer, code="REVOKED",
                          args={"serial": serial, "name": name}, admin=True)
        limiter.emit((when, serial), events.REVOKED_CERTIFICATE_REFUSED,
                     f"{'refused' if when == 'handshake' else 'closed'} a connection of "
                     f"revoked certificate {name!r}", serial=serial, client=name, role=role,
                     when=when, peer=peer)

    server.guard.revoked = node.revoked
    server.guard.on_revoked = revoked


async def _serve(node: Node, metrics: NodeMetrics | None = None,
                 audit: AuditLog | None = None, daytwo: DaytwoMetrics | None = None) -> int:
    server = Server(node)
    loop = asyncio.get_running_loop()

    def forget_answers() -> None:  # from the node's destroy thread
        loop.call_soon_threadsafe(server.service.forget_answers)

    node.drop_listeners.append(forget_answers)
    watch_revocations(server, node, audit, daytwo)
    telemetry = RequestTelemetry(audit, metrics)
    server.service.observers.append(telemetry.record)
    server.service.late_observers.append(telemetry.announce)
    if metrics is not None:
        server.on_tls_failure = lambda reason: metrics.tls_handshake_failures.labels(
            reason).inc()
        server.on_connection = metrics.connections.inc
        server.on_refused = lambda reason: metrics.connections_refused.labels(
            "service", reason).inc()
    await server.start()
    log.info("node %s serving on %s", node.cfg.node_id, node.cfg.service_address)
    events.emit(events.NODE_STARTED, f"serving on {node.cfg.service_address}",
                raft_address=node.cfg.raft_address, service_address=node.cfg.service_address,
                metrics_address=node.cfg.metrics_address, cluster_id=node.cfg.cluster_id)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_certificates, node, server, daytwo)
    await stop.wait()
    events.emit(events.NODE_STOPPING)
    await server.close()
    return 0
