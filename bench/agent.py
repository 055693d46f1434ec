"""The agent: encrypt, decrypt and ``cred get`` over its Unix socket, 1 KiB, 1 and 8 clients.

A real three-node cluster and a real agent process (``raftsso agent run``). Each client is
its own process (:mod:`bench.agent_worker`, stdlib only) holding one keep-alive connection
and sending raw HTTP/1.1 requests in a closed loop (the next request when the previous
answer is complete), so the figures are the agent's, not a client library's. ``cred get``
goes through the store (SQLite) on the agent's thread pool. Every answer's status is
checked; a non-200 counts as an error.

Target (issue 13): >= 10,000 encrypts/s with 8 clients and p99 <= 2 ms. OpenBao 2.7.2's
transit engine, measured on this machine: 2,200/s sequential, 3,300-4,500/s with 8
clients (DESIGN.md section 7).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import CpuMeter, local_cluster, print_table
from bench.stats import percentile
from raftsso.agent.client import AgentClient
from tests.harness import wait_for

SIZE = 1024
SECONDS = 3.0
CLIENTS = (1, 8)
APP = "bench"
USER = "alice"
TARGET_OPS = 10_000.0
TARGET_P99_S = 0.002


def _request(method: str, path: str, body: dict[str, Any] | None) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: agent\r\n"
            + (f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
               if body is not None else "") + "\r\n")
    return head.encode() + data


def _measure(path: Path, request: bytes, clients: int, seconds: float,
             agent_pid: int) -> dict[str, Any]:
    procs = [subprocess.Popen([sys.executable, "-m", "bench.agent_worker", str(path),
                               str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              cwd=Path(__file__).resolve().parents[1])
             for _ in range(clients)]
    try:
        for p in procs:
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write(b"%d\n" % len(request) + request)
            p.stdin.flush()
        for p in procs:  # every client connected before the clock starts
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        meter = CpuMeter({"agent": agent_pid})
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            assert p.stdout is not None
            results.append(json.loads(p.stdout.readline()))
        cpu = meter.read()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
    latencies = sorted(x for r in results for x in r["latencies"])
    errors = sum(r["errors"] for r in results)
    return {"clients": clients, "ops": len(latencies), "errors": errors,
            "ops_per_s": len(latencies) / seconds,
            "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "max_ms": (latencies[-1] * 1000) if latencies else float("nan"),
            "agent_cpu": cpu.get("agent"), "machine_cpu": cpu.get("machine"),
            "agent_cpu_us_per_op": (cpu.get("agent", 0.0) * seconds / len(latencies) * 1e6)
            if latencies else float("nan")}


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    seconds = 0.3 if quick else SECONDS
    out: dict[str, Any] = {"config": {"size": SIZE, "seconds": seconds, "clients": CLIENTS,
                                      "transport": "HTTP/1.1 keep-alive, Unix socket",
                                      "loadavg_before": [round(x, 2)
                                                         for x in os.getloadavg()]}}
    rows = []
    with local_cluster("agent") as cluster:
        config = cluster.root / "agent.toml"
        sock_path = cluster.root / "agent.sock"
        log = os.open(cluster.root / "agent.log", os.O_WRONLY | os.O_CREAT, 0o600)
        agent = subprocess.Popen([sys.executable, "-m", "raftsso_cli", "agent", "run",
                                  "--config", str(config), "--log-level", "WARNING"],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        os.close(log)
        try:
            def ready() -> bool:
                with AgentClient(sock_path, timeout=2) as c:
                    return c.health()["status"] == "ok"

            wait_for(ready, what="the agent")
            data = os.urandom(SIZE)
            with AgentClient(sock_path) as c:
                c.add_app(APP, "benchmark")
                c.set_credential(APP, USER, data)
                token = c.encrypt(APP, data)
            b64 = base64.b64encode
            requests = {
                "encrypt": _request("POST", "/v1/encrypt",
                                    {"app": APP, "plaintext": b64(data).decode()}),
                "decrypt": _request("POST", "/v1/decrypt",
                                    {"app": APP, "ciphertext": b64(token).decode()}),
                "cred get": _request("GET", f"/v1/apps/{APP}/credentials/{USER}", None),
            }
            for op, request in requests.items():
                for clients in CLIENTS:
                    r = _measure(sock_path, request, clients, seconds, agent.pid)
                    out[f"{op} x{clients}"] = r
                    rows.append([op, str(clients), f"{r['ops_per_s']:,.0f}",
                                 f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
                                 f"{r['max_ms']:.1f}", str(r["errors"]),
                                 f"{r['agent_cpu']:.2f}"])
        finally:
            agent.terminate()
            agent.wait(timeout=30)
    enc = out["encrypt x8"]
    out["target"] = {"ops_per_s": TARGET_OPS, "p99_ms": TARGET_P99_S * 1000,
                     "met": enc["ops_per_s"] >= TARGET_OPS
                     and enc["p99_ms"] <= TARGET_P99_S * 1000 and enc["errors"] == 0}
    out["config"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print_table(f"agent over its Unix socket, {SIZE} B, {seconds:g} s per figure",
                ["op", "clients", "ops/s", "p50 ms", "p99 ms", "max ms", "errors",
                 "agent cpu"], rows)
    print(f"\ntarget: >= {TARGET_OPS:,.0f} encrypts/s with 8 clients, p99 <= "
          f"{TARGET_P99_S * 1000:g} ms: {'met' if out['target']['met'] else 'MISSED'} "
          f"(OpenBao 2.7.2 transit here: 2,200/s sequential, 3,300-4,500/s with 8 clients); "
          f"load average {out['config']['loadavg_before']} -> "
          f"{out['config']['loadavg_after']}")
    return out
