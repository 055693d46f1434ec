"""Failover: SIGKILL (a dead leader) and SIGSTOP (a hung leader), with SSO clients running.

One three-node cluster on 127.0.0.1 serves every trial. Before each trial every node is up
and caught up (same commit index and primary). A trial:

1. ``t0``; the leader gets SIGKILL (or SIGSTOP);
2. the new leader is the first other node whose ``status`` says ``leader`` with a quorum;
3. the first acknowledged rotate: one prober thread per node sends ``rotate`` (staged, the
   default rotation; one request id shared by all, so it applies at most once) over its
   own warm mTLS connection and retries on ``NOT_LEADER``/errors every 2 ms; the first
   ``ok`` answer, from whichever node, is the time. Per-node threads measure the cluster's
   availability rather than a client's choice of node (a request to a hung node costs
   its timeout).
4. the killed node is restarted (the stopped one gets SIGCONT) and the trial ends when the
   cluster is fully caught up again (and, before the next trial, every Raft link is up
   again). The highest term before and after says how many
   elections the failover took (one, unless a vote was split or a round failed).

Before the trials, ``LOAD_S`` seconds of load with no failure (the clients below, and a
rotation through the leader every ``LOAD_ROTATE_EVERY`` seconds) count spurious elections:
every term change there is one. ``python -m bench idle`` counts them in an idle cluster
(``IDLE_S`` seconds, the issue's 10 minutes).

Throughout the run, ``--clients`` SSOClient instances (threads in this process, each with its
own connections) encrypt and decrypt in a loop: each iteration encrypts 64 random bytes,
puts the token in a pool shared by all clients, and decrypts a random token from the pool
(often made by another client, possibly under a version this one has not synced yet). Every
exception is a failure, counted against the trial whose window it falls in. (The probe
stages its version rather than ``--now``: ``rotate --now`` with running clients makes
cross-client decrypt failures of its own, failover or not; the rotation scenario measures
that separately.) Clients resync
every 0.25 s (a compressed 60 s, so that every trial sees resyncs across the failover) with
``max_staleness`` 10 s, above the client's 5 s connect/read timeout, as production's 120 s is.
"""

from __future__ import annotations

import bisect
import os
import random
import secrets
import signal
import threading
import time
from collections import deque
from typing import Any

from bench.common import ElectionCounter, caught_up, local_cluster, ms, print_table
from bench.stats import summary
from raftsso.client import SSOClient
from raftsso.config import load_remote_config
from raftsso.errors import RaftssoError
from raftsso.pki import client_context
from raftsso.remote import Connection
from tests.harness import Cluster, wait_for

RESYNC_INTERVAL = 0.25
MAX_STALENESS = 10.0
CLIENTS = 4
PACE = 0.002  # seconds slept per client iteration: ~1,000 ops/s per client
SLOW_OP = 0.05  # an encrypt/decrypt slower than this is recorded with its time
LOAD_S = 30.0
LOAD_ROTATE_EVERY = 0.1
IDLE_S = 600.0


class ClientFleet:
    """SSO clients in threads, encrypting and decrypting until stopped."""

    def __init__(self, client_toml: str, n: int) -> None:
        self.clients = [SSOClient.from_config(client_toml, resync_interval=RESYNC_INTERVAL,
                                              max_staleness=MAX_STALENESS)
                        for _ in range(n)]
        self.pool: deque[tuple[bytes, bytes]] = deque(maxlen=256)
        self.ok_times: list[list[float]] = [[] for _ in range(n)]
        self.failures: list[tuple[float, int, str, str]] = []  # (t, client, op, error)
        self.slow: list[tuple[float, int, str, float]] = []  # (t, client, op, seconds)
        self.samples: list[tuple[float, int, str | None, float]] = []  # (t, client, node, age)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True)
                         for i in range(n)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        for c in self.clients:
            c.close()

    def _fail(self, t: float, i: int, op: str, exc: BaseException) -> None:
        with self._lock:
            self.failures.append((t, i, op, f"{type(exc).__name__}: {exc}"[:200]))

    def _loop(self, i: int) -> None:
        client = self.clients[i]
        oks = self.ok_times[i]
        rnd = random.Random(i)
        next_sample = 0.0
        n = 0
        while not self._stop.is_set():
            ad = b"bench/%d/%d" % (i, n)
            n += 1
            t = time.perf_counter()
            try:
                token = client.encrypt(os.urandom(64), ad)
                self.pool.append((token, ad))
                done = time.perf_counter()
                oks.append(done)
                if done - t > SLOW_OP:
                    self.slow.append((t, i, "encrypt", done - t))
            except Exception as exc:
                self._fail(t, i, "encrypt", exc)
            try:
                token, tad = self.pool[rnd.randrange(len(self.pool))]
            except (IndexError, ValueError):
                token = None
            if token is not None:
                t = time.perf_counter()
                try:
                    client.decrypt(token, tad)
                    done = time.perf_counter()
                    oks.append(done)
                    if done - t > SLOW_OP:
                        self.slow.append((t, i, "decrypt", done - t))
                except Exception as exc:
                    self._fail(t, i, "decrypt", exc)
            now = time.perf_counter()
            if now >= next_sample:
                st = client.state()
                self.samples.append((now, i, st["node"], st["last_sync_age"] or 0.0))
                next_sample = now + 0.02
            time.sleep(PACE)

    def window(self, start: float, end: float) -> dict[str, Any]:
        ops = sum(bisect.bisect_left(o, end) - bisect.bisect_left(o, start)
                  for o in list(self.ok_times))
        fails = [f for f in list(self.failures) if start <= f[0] < end]
        slow = [s for s in list(self.slow) if start <= s[0] < end]
        ages = [s[3] for s in list(self.samples) if start <= s[0] < end]
        return {"ok_ops": ops, "failed_ops": len(fails),
                "failures": [f"{f[2]}: {f[3]}" for f in fails[:5]],
                "slowest_op_s": max((s[3] for s in slow), default=0.0),
                "max_sync_age_s": max(ages, default=0.0)}


class RotateProber:
    """One warm mTLS connection per node; per trial, races a rotate through all of them."""

    def __init__(self, cluster: Cluster) -> None:
        cfg = load_remote_config(cluster.admin_toml)
        ctx = client_context(cfg.ca_cert, cfg.cert, cfg.key)
        self.conns = {n.id: Connection(n, ctx, timeout=1.0) for n in cfg.nodes}

    def first_ack(self, t0: float, timeout: float = 30.0) -> tuple[float, str]:
        request_id = secrets.token_bytes(16)
        done = threading.Event()
        result: list[tuple[float, str]] = []
        lock = threading.Lock()

        def probe(node_id: str, conn: Connection) -> None:
            while not done.is_set():
                try:
                    conn.call("rotate", {"request_id": request_id, "now": False}, timeout=1.0)
                except (RaftssoError, OSError):
                    time.sleep(0.002)
                    continue
                with lock:
                    if not result:
                        result.append((time.perf_counter() - t0, node_id))
                done.set()

        threads = [threading.Thread(target=probe, args=item, daemon=True)
                   for item in self.conns.items()]
        for t in threads:
            t.start()
        if not done.wait(timeout):
            done.set()
            raise RuntimeError(f"no node acknowledged a rotate within {timeout:.0f} s")
        self._threads = threads
        return result[0]

    def join(self) -> None:
        for t in getattr(self, "_threads", []):
            t.join(timeout=5)

    def close(self) -> None:
        for c in self.conns.values():
            c.close()


def _new_leader(cluster: Cluster, old: str, t0: float, timeout: float = 30.0) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
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
    raise RuntimeError(f"no new leader within {timeout:.0f} s")


def _top_term(status: dict[str, Any]) -> int:
    return max(n["term"] for n in status["nodes"] if isinstance(n.get("term"), int))


def _linked(cluster: Cluster) -> None:
    """Wait until every node has a live link to every other (a restarted node's links to
    the other followers come up after it has caught up through the leader's)."""

    def check() -> bool:
        for node_id in cluster.ids:
            peers = cluster.node_status(node_id)["peers"]
            if len(peers) != len(cluster.ids) - 1 or not all(p["connected"] for p in peers):
                return False
        return True

    wait_for(check, what="every Raft link up", interval=0.02)


def _trial(cluster: Cluster, prober: RotateProber, fleet: ClientFleet,
           sig: int) -> dict[str, Any]:
    _linked(cluster)
    term0 = _top_term(caught_up(cluster))
    old = cluster.leader()
    start = time.perf_counter()
    t0 = time.perf_counter()
    if sig == signal.SIGKILL:
        cluster.kill(old)
    else:
        cluster.signal(old, signal.SIGSTOP)
    try:
        leader_s = _new_leader(cluster, old, t0)
        write_s, via = prober.first_ack(t0)
    finally:
        if sig == signal.SIGKILL:
            cluster.start(old)
        else:
            cluster.signal(old, signal.SIGCONT)
    prober.join()
    elections = _top_term(caught_up(cluster)) - term0
    end = time.perf_counter()
    return {"killed": old, "new_leader_s": leader_s, "ack_rotate_s": write_s,
            "acked_by": via, "elections": elections, "t0": t0, "start": start, "end": end,
            **fleet.window(start, end)}


def _load_phase(cluster: Cluster, fleet: ClientFleet, seconds: float) -> dict[str, Any]:
    """Clients and rotations, no failure: every election counted here is a spurious one."""
    counter = ElectionCounter(cluster).start()
    rotations = errors = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        try:
            cluster.rotate(now=False)
            rotations += 1
        except (RaftssoError, OSError):
            errors += 1
        time.sleep(LOAD_ROTATE_EVERY)
    return {**counter.stop(), "rotations": rotations, "rotation_errors": errors,
            "clients": CLIENTS}


def run_idle(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    """An idle cluster for ``IDLE_S`` seconds: elections (every one of them spurious)."""
    seconds = 3.0 if quick else IDLE_S
    with local_cluster("idle") as cluster:
        caught_up(cluster)
        counter = ElectionCounter(cluster, period=1.0).start()
        time.sleep(seconds)
        out = counter.stop()
    print_table("idle cluster (spurious elections: term changes with every node up)",
                ["seconds", "elections", "leader changes"],
                [[f"{out['seconds']:.0f}", str(out["elections"]), str(out["leader_changes"])]])
    return {"config": {"idle_s": seconds, "nodes": 3,
                       "timings": "raftsso defaults (RaftTimings)"}, **out}


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    n = trials or (1 if quick else 20)
    results: dict[str, list[dict[str, Any]]] = {"sigkill": [], "sigstop": []}
    timeline: dict[str, Any] | None = None
    with local_cluster("failover") as cluster:
        prober = RotateProber(cluster)
        fleet = ClientFleet(str(cluster.client_toml), CLIENTS)
        fleet.start()
        try:
            time.sleep(0.3)  # the pool fills, every client has resynced once
            warm = fleet.window(0, time.perf_counter())
            load = _load_phase(cluster, fleet, 1.0 if quick else LOAD_S)
            print(f"  load without failures ({load['seconds']:.0f} s, {CLIENTS} clients, "
                  f"{load['rotations']} rotations): {load['elections']} elections, "
                  f"{load['leader_changes']} leader changes", flush=True)
            for kind, sig in (("sigkill", signal.SIGKILL), ("sigstop", signal.SIGSTOP)):
                for i in range(n):
                    r = _trial(cluster, prober, fleet, sig)
                    results[kind].append(r)
                    print(f"  {kind} {i + 1:2d}/{n}: leader {r['killed']}, new leader "
                          f"{ms(r['new_leader_s']):>7} ms, first ack rotate "
                          f"{ms(r['ack_rotate_s']):>7} ms (via {r['acked_by']}), "
                          f"{r['elections']} election(s), client ops "
                          f"{r['ok_ops']} ok / {r['failed_ops']} failed, slowest "
                          f"{ms(r['slowest_op_s'])} ms", flush=True)
            # The timeline of the median SIGKILL trial, for the plot.
            kills = sorted(results["sigkill"], key=lambda r: r["ack_rotate_s"])
            med = kills[len(kills) // 2]
            timeline = _timeline(fleet, med)
        finally:
            fleet.stop()
            prober.close()
    out: dict[str, Any] = {
        "config": {"trials_per_signal": n, "clients": CLIENTS,
                   "client_resync_interval_s": RESYNC_INTERVAL,
                   "client_max_staleness_s": MAX_STALENESS, "client_pace_s": PACE,
                   "nodes": 3, "timings": "raftsso defaults (RaftTimings)",
                   "probe": "rotate (staged) raced on one warm mTLS connection per node",
                   "load_s": 1.0 if quick else LOAD_S, "load_rotate_every_s": LOAD_ROTATE_EVERY},
        "warmup": {"failed_ops": warm["failed_ops"]},
        "load_without_failures": load,
    }
    rows = []
    for kind, trials_ in results.items():
        entry = {
            "trials": len(trials_),
            "new_leader_s": summary([t["new_leader_s"] for t in trials_]),
            "ack_rotate_s": summary([t["ack_rotate_s"] for t in trials_]),
            "failed_client_ops": sum(t["failed_ops"] for t in trials_),
            "client_ops": sum(t["ok_ops"] for t in trials_),
            "failed_ops_per_trial": summary([float(t["failed_ops"]) for t in trials_]),
            "slowest_client_op_s": max((t["slowest_op_s"] for t in trials_), default=0.0),
            "max_client_sync_age_s": max((t["max_sync_age_s"] for t in trials_), default=0.0),
            "over_2s": sum(1 for t in trials_ if t["ack_rotate_s"] > 2.0),
            "elections": sum(t["elections"] for t in trials_),
            "extra_elections": sum(max(0, t["elections"] - 1) for t in trials_),
            "failure_examples": [f for t in trials_ for f in t["failures"]][:10],
            "trials_detail": [{k: v for k, v in t.items() if k not in ("t0", "start", "end")}
                              for t in trials_],
        }
        out[kind] = entry
        for metric in ("new_leader_s", "ack_rotate_s"):
            s = entry[metric]
            rows.append([kind, metric, ms(s["median"]), ms(s["p90"]), ms(s["p99"]),
                         ms(s["max"]), str(entry["failed_client_ops"])])
    print_table("failover (ms; failed = client encrypt/decrypt failures over all trials)",
                ["signal", "time to", "median", "p90", "p99", "max", "failed"], rows)
    print("  elections per failover: " + ", ".join(
        f"{kind} {out[kind]['elections']} in {out[kind]['trials']} trials "
        f"({out[kind]['extra_elections']} more than one)" for kind in results))
    for kind in results:
        if out[kind]["failure_examples"]:
            print(f"  {kind} failures, e.g.: {out[kind]['failure_examples'][:3]}")
    out["_plot"] = {"timeline": timeline,
                    "sigkill_ack": [t["ack_rotate_s"] for t in results["sigkill"]],
                    "sigstop_ack": [t["ack_rotate_s"] for t in results["sigstop"]]}
    return out


def _timeline(fleet: ClientFleet, trial: dict[str, Any]) -> dict[str, Any]:
    """Client ops per 10 ms bin around one trial, with its events (seconds from t0)."""
    t0, start = trial["t0"], trial["start"]
    end = min(trial["end"], t0 + max(2.0, trial["ack_rotate_s"] + 1.0))
    bins = int((end - start) / 0.01) + 1
    ok = [0] * bins
    for times in fleet.ok_times:
        lo = bisect.bisect_left(times, start)
        hi = bisect.bisect_left(times, end)
        for t in times[lo:hi]:
            ok[int((t - start) / 0.01)] += 1
    failed = [f[0] - t0 for f in fleet.failures if start <= f[0] < end]
    nodes = [(s[0] - t0, s[1], s[2]) for s in fleet.samples if start <= s[0] < end]
    return {"bin_s": 0.01, "offset_s": start - t0, "ok_per_bin": ok, "failed_at": failed,
            "client_nodes": nodes, "killed": trial["killed"],
            "new_leader_s": trial["new_leader_s"], "ack_rotate_s": trial["ack_rotate_s"]}
