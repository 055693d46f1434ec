"""Rotation: acknowledged-rotate latency (sequential) and commits per second (concurrent).

An acknowledged rotate is a committed Raft entry: the leader generates and seals a key,
proposes it, and answers once a majority has appended it with every fsync in place (the
journal of raftsso.raft). Sequential: one admin connection to the leader, ``rotate`` one
after another (staged, the default; every rotation adds a version). Concurrent: ``THREADS``
threads, each with its own connection, rotating with ``expect_primary`` left to the leader
(rotations to one leader are serialised), for ``CONCURRENT_S`` seconds.

Every rotation adds a version to the keyring that each node serves to every client; the
keyring answer's size before and after is reported, and the keyring fetch latency with it,
and the size of the answer to a client that already holds the keyring (it sends the index
it holds as ``known``, as SSOClient does): that one must not grow with history.
Last, ``rotate --now`` with SSO clients running (4 threads encrypting and decrypting each
other's tokens, resync 0.25 s): decrypt failures when a client meets a token under a
version it has not synced and its on-demand resync lands on a node that has not applied
it yet.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from bench.common import concurrent_calls, local_cluster, ms, print_table
from bench.failover import ClientFleet
from bench.stats import percentile
from raftsso.config import load_remote_config
from raftsso.remote import ClusterClient
from raftsso.wire import pack

SEQUENTIAL = 200
THREADS = 8
CONCURRENT_S = 3.0
NOW_ROTATIONS = 10


def _keyring_size(client: ClusterClient, address: str) -> tuple[int, int, float, int | None]:
    """The whole answer's size, its versions, fetch p50, and the size of the answer to a
    client that already holds this keyring (None when the node sent the whole one again)."""
    times = []
    for _ in range(50):
        t = time.perf_counter()
        ring = client.call_node(address, "keyring", {"client_id": "bench"})
        times.append(time.perf_counter() - t)
    whole: Any = ring  # a keyring answer: a mapping
    held: Any = client.call_node(address, "keyring",
                                 {"client_id": "bench", "known": whole["commit_index"]})
    return (len(pack(ring)), len(ring["versions"]), percentile(times, 50),
            len(pack(held)) if held.get("unchanged") else None)


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    n = trials or (20 if quick else SEQUENTIAL)
    conc_s = 0.5 if quick else CONCURRENT_S
    now_rotations = 2 if quick else NOW_ROTATIONS
    out: dict[str, Any] = {"config": {"sequential": n, "threads": THREADS,
                                      "concurrent_s": conc_s, "fsync": "every append, term "
                                      "and vote (raftsso.raft journal)", "kind": "staged"}}
    with local_cluster("rotation") as cluster:
        cfg = load_remote_config(cluster.admin_toml)
        leader = cluster.leader()
        leader_addr = cluster.address(leader)
        with ClusterClient.from_config(cfg) as admin:
            size0, versions0, fetch0, held0 = _keyring_size(admin, leader_addr)
            lat: list[float] = []
            for _ in range(n):
                t = time.perf_counter()
                admin.call_node(leader_addr, "rotate",
                                {"request_id": secrets.token_bytes(16), "now": False})
                lat.append(time.perf_counter() - t)
            size1, versions1, fetch1, held1 = _keyring_size(admin, leader_addr)
        # Concurrent.
        commits, errors, elapsed = concurrent_calls(
            THREADS, conc_s,
            lambda c: c.call_node(leader_addr, "rotate",
                                  {"request_id": secrets.token_bytes(16), "now": False}),
            lambda: ClusterClient.from_config(cfg))
        # rotate --now with clients running.
        fleet = ClientFleet(str(cluster.client_toml), 4)
        fleet.start()
        try:
            time.sleep(0.5)
            w0 = time.perf_counter()
            for _ in range(now_rotations):
                cluster.rotate(now=True)
                time.sleep(0.6)
            window = fleet.window(w0, time.perf_counter())
        finally:
            fleet.stop()
    out["sequential"] = {
        "n": n, "p50_s": percentile(lat, 50), "p90_s": percentile(lat, 90),
        "p99_s": percentile(lat, 99), "max_s": max(lat),
        "first_tenth_p50_s": percentile(lat[: max(1, n // 10)], 50),
        "last_tenth_p50_s": percentile(lat[-max(1, n // 10):], 50)}
    out["concurrent"] = {"threads": THREADS, "commits": commits, "seconds": elapsed,
                         "commits_per_s": commits / elapsed, "errors": len(errors),
                         "error_examples": errors[:3]}
    out["keyring_growth"] = {
        "versions_before": versions0, "versions_after_sequential": versions1,
        "answer_bytes_before": size0, "answer_bytes_after_sequential": size1,
        "bytes_per_version": (size1 - size0) / max(1, versions1 - versions0),
        "fetch_p50_s_before": fetch0, "fetch_p50_s_after": fetch1,
        # Issue 16: the answer to an up-to-date client must not grow with history.
        "held_answer_bytes_before": held0, "held_answer_bytes_after_sequential": held1}
    out["rotate_now_with_clients"] = {"rotations": now_rotations, **window}
    s, c = out["sequential"], out["concurrent"]
    print_table("rotation (acknowledged = committed on a majority, fsynced)",
                ["sequential n", "p50 ms", "p90 ms", "p99 ms", "max ms", "concurrent commits/s",
                 f"keyring {versions0}->{versions1} versions"],
                [[str(n), ms(s["p50_s"]), ms(s["p90_s"]), ms(s["p99_s"]), ms(s["max_s"]),
                  f"{c['commits_per_s']:.0f} ({THREADS} threads)",
                  f"{size0} -> {size1} B, fetch p50 {ms(fetch0)} -> {ms(fetch1)} ms"]])
    print(f"  rotate --now x{now_rotations} with 4 SSO clients running: "
          f"{window['failed_ops']} failed client ops of {window['ok_ops'] + window['failed_ops']}"
          + (f" (e.g. {window['failures'][0]})" if window["failures"] else ""))
    out["_plot"] = {"rotate_latencies": lat}
    return out
