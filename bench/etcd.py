"""etcd side by side: the same failover and a single-client write latency, same machine, same run.

Runs only where an ``etcd`` binary is on PATH (Debian: ``apt-get install etcd-server``);
otherwise the scenario is skipped with a note. Three members on 127.0.0.1 (client and peer
URLs on free ports, nothing else bound), **default timings** (heartbeat 100 ms, election
1000 ms), data in a temporary directory. Requests go through etcd's v3 JSON gateway
(``/v3/kv/put``, ``/v3/maintenance/status``) over persistent HTTP connections; an etcd put
is acknowledged after its Raft entry is committed and the WAL fsynced, as a raftsso rotate.

Failover trial, as raftsso's: every member up with one applied index; ``t0``; SIGKILL of the
leader; new leader = first survivor whose status names a leader other than the old one;
first acknowledged write = the first ``put`` answered ``200`` by any member. etcd holds a
put that reaches a follower while the leader is dead until the request times out, so the
probe starts a fresh attempt (own connection, 3 s timeout) every 10 ms, alternating between
the survivors, and takes the first success. The killed member
is restarted on its data directory before the next trial.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import FirstAck, ms, print_table, stop_processes
from bench.stats import summary
from tests.harness import free_base_port

SEQUENTIAL = 1000


class _Member:
    def __init__(self, name: str, client_port: int, peer_port: int, data: Path) -> None:
        self.name, self.client_port, self.peer_port, self.data = name, client_port, peer_port, data
        self.proc: subprocess.Popen[bytes] | None = None
        self.member_id: str | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    def __init__(self, root: Path, binary: str) -> None:
        base = free_base_port(6)
        self.binary = binary
        self.members = [_Member(f"e{i + 1}", base + 2 * i, base + 2 * i + 1, root / f"e{i + 1}")
                        for i in range(3)]
        self.initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        self.logs = root

    def start(self, member: _Member | None = None) -> None:
        for m in [member] if member else self.members:
            log = open(self.logs / f"{m.name}.log", "ab")  # noqa: SIM115 - handed to Popen
            m.proc = subprocess.Popen(
                [self.binary, "--name", m.name, "--data-dir", str(m.data),
                 "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                 "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                 "--initial-cluster", self.initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", "raftsso-bench", "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            log.close()

    def stop(self) -> None:
        stop_processes(m.proc for m in self.members)

    @staticmethod
    def post(conn: http.client.HTTPConnection, path: str, body: dict[str, Any]) -> Any:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise OSError(f"HTTP {resp.status}: {data[:200]!r}")
        return json.loads(data)

    def status(self, m: _Member, timeout: float = 1.0) -> dict[str, Any] | None:
        conn = http.client.HTTPConnection("127.0.0.1", m.client_port, timeout=timeout)
        try:
            st = self.post(conn, "/v3/maintenance/status", {})
        except (OSError, ValueError, http.client.HTTPException):
            return None
        finally:
            conn.close()
        m.member_id = st["header"]["member_id"]
        return st

    def healthy(self, timeout: float = 60.0) -> _Member:
        """Wait for every member up, one leader, one applied index; return the leader."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sts = [self.status(m) for m in self.members]
            if all(sts):
                leaders = {s.get("leader", "0") for s in sts if s}
                applied = {s.get("raftAppliedIndex", s.get("raftIndex")) for s in sts if s}
                if len(leaders) == 1 and "0" not in leaders and len(applied) == 1:
                    lid = leaders.pop()
                    leader = next((m for m in self.members if m.member_id == lid), None)
                    if leader is not None:
                        return leader
            time.sleep(0.05)
        raise RuntimeError("etcd did not become healthy")


def _put(conn: http.client.HTTPConnection, key: bytes, value: bytes) -> None:
    EtcdCluster.post(conn, "/v3/kv/put", {"key": base64.b64encode(key).decode(),
                                         "value": base64.b64encode(value).decode()})


def _trial(cluster: EtcdCluster, i: int) -> dict[str, Any]:
    old = cluster.healthy()
    old_id = old.member_id
    survivors = [m for m in cluster.members if m is not old]
    t0 = time.perf_counter()
    assert old.proc is not None
    old.proc.send_signal(signal.SIGKILL)
    old.proc.wait(timeout=10)

    def attempt(m: _Member) -> str | None:
        conn = http.client.HTTPConnection("127.0.0.1", m.client_port, timeout=3.0)
        try:
            _put(conn, b"bench/failover", b"%d" % i)
        except (OSError, ValueError, http.client.HTTPException):
            return "error"
        finally:
            conn.close()
        return None

    probe = FirstAck(survivors, attempt, t0)
    probe.start()
    leader_s = None
    deadline = t0 + 30
    while leader_s is None and time.perf_counter() < deadline:
        for m in survivors:
            st = cluster.status(m, timeout=0.5)
            if st and st.get("leader", "0") not in ("0", old_id):
                leader_s = time.perf_counter() - t0
                break
        else:
            time.sleep(0.002)
    first = probe.wait(deadline - time.perf_counter())
    if first is None:
        raise RuntimeError("etcd acknowledged no write within 30 s")
    ack_s, acked_by = first
    cluster.start(old)
    return {"killed": old.name, "new_leader_s": leader_s, "ack_write_s": ack_s,
            "acked_by": acked_by.name}


def version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                         check=False).stdout
    return out.splitlines()[0].split(":", 1)[-1].strip() if out else "unknown"


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    binary = shutil.which("etcd")
    if binary is None:
        note = ("skipped: no etcd binary on PATH (Debian: apt-get install etcd-server); "
                "the side-by-side comparison needs it")
        print(f"\netcd: {note}")
        return {"skipped": True, "note": note}
    n = trials or (1 if quick else 20)
    seq = 50 if quick else SEQUENTIAL
    out: dict[str, Any] = {"skipped": False, "config": {
        "binary": binary, "version": version(binary), "members": 3, "host": "127.0.0.1",
        "timings": "defaults (heartbeat 100 ms, election 1000 ms)",
        "api": "v3 JSON gateway over persistent HTTP connections", "trials": n,
        "sequential_puts": seq}}
    with tempfile.TemporaryDirectory(prefix="raftsso-bench-etcd-") as tmp:
        cluster = EtcdCluster(Path(tmp), binary)
        cluster.start()
        try:
            leader = cluster.healthy()
            conn = http.client.HTTPConnection("127.0.0.1", leader.client_port, timeout=5)
            lat = []
            try:
                for k in range(seq):
                    t = time.perf_counter()
                    _put(conn, b"bench/seq/%d" % (k % 100), b"v" * 64)
                    lat.append(time.perf_counter() - t)
            finally:
                conn.close()
            results = []
            for i in range(n):
                r = _trial(cluster, i)
                results.append(r)
                print(f"  etcd {i + 1:2d}/{n}: leader {r['killed']}, new leader "
                      f"{ms(r['new_leader_s']):>7} ms, first ack put {ms(r['ack_write_s']):>7} "
                      f"ms (via {r['acked_by']})", flush=True)
        finally:
            cluster.stop()
    out["sequential_put_s"] = summary(lat)
    out["new_leader_s"] = summary([r["new_leader_s"] for r in results
                                   if r["new_leader_s"] is not None])
    out["ack_write_s"] = summary([r["ack_write_s"] for r in results])
    out["trials_detail"] = results
    s, a = out["sequential_put_s"], out["ack_write_s"]
    print_table(f"etcd {out['config']['version']} (3 members, default timings; ms)",
                ["measure", "median", "p90", "p99", "max"],
                [["SIGKILL leader -> new leader", ms(out["new_leader_s"]["median"]),
                  ms(out["new_leader_s"]["p90"]), ms(out["new_leader_s"]["p99"]),
                  ms(out["new_leader_s"]["max"])],
                 ["SIGKILL leader -> first ack put", ms(a["median"]), ms(a["p90"]),
                  ms(a["p99"]), ms(a["max"])],
                 [f"sequential put (n={seq})", ms(s["median"]), ms(s["p90"]), ms(s["p99"]),
                  ms(s["max"])]])
    out["_plot"] = {"put_latencies": lat, "ack": [r["ack_write_s"] for r in results]}
    return out
