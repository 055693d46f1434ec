"""Failover: SIGKILL of the leader -> new leader -> first acknowledged rotation.

Each trial uses the same three-node cluster on 127.0.0.1: wait until healthy, SIGKILL the
leader, then from the moment of the kill poll for (a) a new leader reporting a quorum and
(b) the first acknowledged ``rotate --now`` (retried against every node until one accepts).
The killed node is restarted before the next trial.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import summary
from raftsso.errors import RaftssoError
from tests.harness import LocalCluster, wait_for


def _first_rotate(cluster: LocalCluster, t0: float) -> float:
    request_id = secrets.token_bytes(16)
    while True:
        try:
            cluster.client.call_leader("rotate", {"request_id": request_id, "now": True},
                                       deadline=0.5)
            return time.perf_counter() - t0
        except (RaftssoError, OSError):
            continue


def _new_leader(cluster: LocalCluster, old: str, t0: float) -> float:
    while True:
        for node_id in cluster.ids:
            if node_id == old:
                continue
            try:
                st = cluster.node_status(node_id)
            except (RaftssoError, OSError):
                continue
            if st["role"] == "leader" and st["has_quorum"]:
                return time.perf_counter() - t0
        time.sleep(0.002)


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    n = trials or (2 if quick else 20)
    to_leader: list[float] = []
    to_write: list[float] = []
    with tempfile.TemporaryDirectory(prefix="raftsso-bench-") as tmp:
        cluster = LocalCluster(Path(tmp) / "c")
        cluster.start()
        try:
            for i in range(n):
                # Every node up and caught up, connections warm: the measurement is the
                # cluster's, not the restart's of the previous trial.
                wait_for(lambda: (s := cluster.status()) and s["leader"] and all(
                    x["reachable"] and x["primary_version"] == s["primary_version"]
                    for x in s["nodes"]), what="a fully caught-up cluster")
                old = cluster.leader()
                t0 = time.perf_counter()
                cluster.kill(old)
                leader_s = _new_leader(cluster, old, t0)
                write_s = _first_rotate(cluster, t0)
                to_leader.append(leader_s)
                to_write.append(write_s)
                print(f"  trial {i + 1:2d}/{n}: new leader {leader_s * 1000:7.1f} ms, "
                      f"first acknowledged rotate {write_s * 1000:7.1f} ms", flush=True)
                cluster.start(old)
        finally:
            cluster.stop()
    result = {"trials": n, "kill_to_leader_s": summary(to_leader),
              "kill_to_ack_rotate_s": summary(to_write),
              "raw": {"kill_to_leader_s": to_leader, "kill_to_ack_rotate_s": to_write}}
    for key in ("kill_to_leader_s", "kill_to_ack_rotate_s"):
        s = result[key]
        print(f"failover {key:22s} median {s['median'] * 1000:6.0f} ms  "
              f"p90 {s['p90'] * 1000:6.0f} ms  max {s['max'] * 1000:6.0f} ms  (n={n})")
    return result
