"""One chaos run: cluster, clients, nemesis for ``duration`` seconds, heal, converge, check.

Used by the pytest short run (``tests/chaos/test_chaos.py``) and by the long run on demand
(``python -m tests.chaos --seed N --duration 1800``). Everything lands in ``workdir``:
``history.jsonl`` (every operation), ``report.json`` (counts, statistics, violations),
``deploy/nodeN/node.log`` and the nodes' data directories.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftsso import cluster_status, envelope
from raftsso.client import SSOClient
from raftsso.errors import RaftssoError
from tests.chaos import checker
from tests.chaos.history import History, format_ops
from tests.chaos.nemesis import Nemesis
from tests.chaos.workload import AdminWorker, SSOWorker, TokenPool
from tests.harness import Cluster, LoopbackNet, NodeOptions, make_net, wait_for


@dataclass
class RunResult:
    seed: int
    duration: float
    workdir: Path
    net: str
    counts: dict[str, dict[str, int]]
    stats: dict[str, Any]
    violations: list[checker.Violation] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        lines = [f"chaos run seed={self.seed} duration={self.duration:g}s net={self.net} "
                 f"elapsed={self.elapsed:.1f}s workdir={self.workdir}",
                 f"operations: {json.dumps(self.counts)}",
                 f"stats: {json.dumps(self.stats, default=str)}"]
        if self.violations:
            lines.append(f"{len(self.violations)} VIOLATION(S):")
            lines += [f"  {v}" for v in self.violations[:50]]
            lines.append(f"history: {self.workdir / 'history.jsonl'}")
            lines.append(f"reproduce: python -m tests.chaos --seed {self.seed} "
                         f"--duration {self.duration:g} --net {self.net}")
        else:
            lines.append("no violations")
        return "\n".join(lines)


def _converged(cluster: Cluster) -> dict[str, Any] | None:
    """Every node up, one leader with a quorum, every node applied the leader's commit
    index, and every node serves the same keyring."""
    st = cluster.status()
    if not cluster_status.healthy(st) or st["primary_version"] is None:
        return None
    statuses = {n: cluster.call(n, "status", timeout=1.0) for n in cluster.ids}
    leader = statuses[st["leader"]]
    commit = leader["commit_index"]
    if any(s["last_applied"] != commit or s["commit_index"] != commit
           for s in statuses.values()):
        return None
    rings = {n: cluster.call(n, "keyring", timeout=1.0) for n in cluster.ids}
    first = rings[cluster.ids[0]]
    if any(r["versions"] != first["versions"] or r["primary"] != first["primary"]
           for r in rings.values()):
        return None
    # Stable: the leader's commit index did not move while we looked.
    if cluster.call(st["leader"], "status", timeout=1.0)["commit_index"] != commit:
        return None
    return {"commit_index": commit, "leader": st["leader"], "rings": rings,
            "statuses": statuses}


def run(seed: int, duration: float, workdir: Path, *, nodes: int = 3, admins: int = 2,
        sso_clients: int = 3, net_mode: str = "auto", options: NodeOptions | None = None,
        out: Callable[[str], None] = print) -> RunResult:
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    net = make_net(nodes, net_mode)
    history = History(workdir / "history.jsonl")
    cluster: Cluster | None = None
    workers: list[AdminWorker | SSOWorker] = []
    stop = threading.Event()
    pool = TokenPool()
    out(f"chaos: seed={seed} duration={duration:g}s nodes={nodes} net={net.kind} "
        f"workdir={workdir}")
    if isinstance(net, LoopbackNet) and net.reason:
        out(f"chaos: nodes are cut off with SIGSTOP: {net.reason}")
    # The SSO clients' warnings (every fault makes some) go to a file, not the terminal.
    client_log = logging.FileHandler(workdir / "clients.log")
    client_log.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s "
                                              "%(name)s: %(message)s"))
    raftsso_logger = logging.getLogger("raftsso")
    previous_level = raftsso_logger.level
    raftsso_logger.addHandler(client_log)
    raftsso_logger.setLevel(logging.INFO)
    try:
        cluster = Cluster(workdir / "deploy", nodes, options=options, net=net,
                          client_timeout=1.0)
        cluster.start()
        wait_for(lambda: _converged(cluster), 60, 0.2, "a healthy cluster at start")
        for i in range(sso_clients):
            workers.append(SSOWorker(f"sso{i + 1}", cluster, history, rng.randrange(2**32),
                                     stop, pool))
        for i in range(admins):
            workers.append(AdminWorker(f"admin{i + 1}", cluster, history,
                                       rng.randrange(2**32), stop))
        nemesis = Nemesis(cluster, history, rng.randrange(2**32), stop)
        for w in workers:
            w.start()
        nemesis.start()
        end = time.monotonic() + duration
        next_report = time.monotonic() + 60
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            if time.monotonic() >= next_report:
                next_report += 60
                history.flush()
                out(f"chaos: t={history.now():.0f}s {json.dumps(history.counts())}")
            if nemesis.error is not None or any(w.error is not None for w in workers):
                break
        stop.set()
        nemesis.join(timeout=60)
        for w in workers:
            w.join(timeout=60)
        errors = [f"{t.name}: {t.error!r}" for t in [nemesis, *workers] if t.error is not None]
        errors += [f"{t.name} did not stop" for t in [nemesis, *workers] if t.is_alive()]

        # Heal everything and let the cluster converge.
        cluster.heal()
        cluster.resume()
        nemesis.check_exits()
        cluster.start()
        final = wait_for(lambda: _converged(cluster), 90, 0.2, "the healed cluster to converge")

        # Every ciphertext written during the run decrypts, with a fresh client.
        failures: list[dict[str, Any]] = []
        token_ops = {op["value"]["token"]: op["i"] for op in history.ops()
                     if op["f"] == "encrypt" and op["outcome"] == "ok"}
        with SSOClient.from_config(cluster.client_toml, resync_interval=60.0) as reader:
            for token, plaintext, ad in pool.snapshot():
                try:
                    if reader.decrypt(token, ad) != plaintext:
                        failures.append({"version": envelope.token_key_version(token),
                                         "error": "wrong plaintext",
                                         "op": token_ops.get(token.hex(), -1)})
                except RaftssoError as exc:
                    failures.append({"version": envelope.token_key_version(token),
                                     "error": type(exc).__name__,
                                     "op": token_ops.get(token.hex(), -1)})
        cluster.stop()
        node_logs = [checker.read_node_log(n, cluster.data_dir(n)) for n in cluster.ids]
        logs = {n: cluster.log(n) for n in cluster.ids}
        history.close()
        ops = history.ops()
        violations, stats = checker.check(ops, final["rings"], node_logs,
                                          final["commit_index"], logs, failures)
        violations += [checker.Violation("harness", e) for e in errors]
        stats.update({
            "final_commit_index": final["commit_index"],
            "final_primary": final["rings"][cluster.ids[0]]["primary"],
            "final_versions": len(final["rings"][cluster.ids[0]]["versions"]),
            "ciphertexts_checked_at_end": len(pool.items),
            "faults": {f: n for f, c in history.counts().items()
                       if f in ("kill", "pause", "cut_one", "cut_majority", "kill_all")
                       for n in [sum(c.values())]},
            "torn_tails_at_end": {log.node: log.torn_tail for log in node_logs},
        })
        result = RunResult(seed, duration, workdir, net.kind, history.counts(), stats,
                           violations, time.monotonic() - started)
        report = {"seed": seed, "duration": duration, "net": net.kind,
                  "elapsed": result.elapsed, "counts": result.counts, "stats": stats,
                  "violations": [str(v) for v in violations]}
        (workdir / "report.json").write_text(json.dumps(report, indent=2, default=str))
        out(result.summary())
        if violations:
            involved = sorted({i for v in violations for i in v.ops})
            by_i = {op["i"]: op for op in ops}
            out("operations involved:\n" + format_ops([by_i[i] for i in involved if i in by_i]))
            out("last operations:\n" + format_ops(ops, 80))
        return result
    finally:
        stop.set()
        raftsso_logger.removeHandler(client_log)
        raftsso_logger.setLevel(previous_level)
        client_log.close()
        history.close()
        if cluster is not None:
            cluster.close()
        net.close()
