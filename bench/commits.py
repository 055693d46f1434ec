"""Commits: the Raft write path alone, one writer and eight (group commit).

Three member processes run a :class:`raftsso.raft.RaftNode` each, exactly as a node runs
it (the deployment's certificates, peer TLS, the fsynced journal, the node's Raft timings)
but with a state machine that only counts, so that what is measured is replication and
durability, not the key store: no client connection, no sealing, no node write lock. The
member that leads runs the writers in its own process, as the node's request threads do:

* sequential: one thread proposes ``SEQUENTIAL`` commands of ``COMMAND_BYTES`` bytes one
  after another; a proposal returns once a majority has the entry fsynced and it is
  applied on the leader (the latency of an acknowledged write, less the node's own work);
* concurrent: ``THREADS`` threads propose back to back for ``CONCURRENT_S`` seconds;
  commits per second (several entries appended in one tick can share one fdatasync).

Each member also reports how many times its journal called ``fdatasync`` and how many
entries it appended, so the JSON shows how many entries shared each flush.

``python -m bench commits``; a member is ``python -m bench.commits --member NODE_TOML DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import concurrent_calls, ms, print_table
from bench.stats import percentile
from raftsso.config import load_node_config
from raftsso.deployment import PORTS_PER_NODE, init_deployment
from raftsso.raft import RaftNode
from raftsso.runner import raft_config
from tests.harness.ports import reserve_ports

SEQUENTIAL = 1000
THREADS = 8
CONCURRENT_S = 5.0
COMMAND_BYTES = 300  # about a rotate command (a sealed 32-byte key and its metadata)
START_TIMEOUT = 60.0


class Counter:
    """A state machine that counts the commands applied (and returns the index)."""

    def __init__(self) -> None:
        self.applied = 0

    def apply(self, command: bytes, index: int) -> int:
        self.applied += 1
        return index

    def snapshot(self) -> bytes:
        return self.applied.to_bytes(8, "big")

    def restore(self, blob: bytes) -> None:
        self.applied = int.from_bytes(blob[:8], "big")


def _journal_counts(raft: RaftNode[int]) -> dict[str, int]:
    journal = raft.sync._SyncObj__raftLog
    return {"syncs": int(getattr(journal, "syncs", 0)),
            "appends": int(getattr(journal, "appends", 0))}


def _workload(raft: RaftNode[int], sequential: int, threads: int,
              seconds: float) -> dict[str, Any]:
    command = os.urandom(COMMAND_BYTES)
    for _ in range(20):  # warm up: every link open, every follower caught up
        raft.propose(command, 5.0)
    before = _journal_counts(raft)
    cpu0 = time.process_time()
    lat = []
    for _ in range(sequential):
        t = time.perf_counter()
        raft.propose(command, 5.0)
        lat.append(time.perf_counter() - t)
    middle = _journal_counts(raft)
    cpu1 = time.process_time()
    commits, errors, elapsed = concurrent_calls(threads, seconds,
                                                lambda _: raft.propose(command, 5.0))
    after = _journal_counts(raft)
    cpu2 = time.process_time()
    return {
        "sequential": {"n": sequential, "p50_s": percentile(lat, 50),
                       "p90_s": percentile(lat, 90), "p99_s": percentile(lat, 99),
                       "max_s": max(lat),
                       "leader_fsyncs_per_commit": (middle["syncs"] - before["syncs"])
                       / sequential,
                       "leader_cpu_ms_per_commit": (cpu1 - cpu0) * 1000 / sequential},
        "concurrent": {"threads": threads, "commits": commits, "seconds": elapsed,
                       "commits_per_s": commits / elapsed, "errors": len(errors),
                       "error_examples": errors[:3],
                       "leader_entries_per_fsync": (after["appends"] - middle["appends"])
                       / max(1, after["syncs"] - middle["syncs"]),
                       "leader_cpu_ms_per_commit": (cpu2 - cpu1) * 1000 / max(1, commits)},
        "latencies": lat,
    }


def member(node_toml: Path, out: Path, sequential: int, threads: int, seconds: float) -> None:
    """One member process: run until ``out/done`` exists; the leader runs the workload."""
    cfg = load_node_config(node_toml)
    rcfg = raft_config(cfg)
    if os.environ.get("RAFTSSO_BENCH_PEER_TLS") == "0":  # compare: pysyncobj's own TCP
        rcfg = dataclasses.replace(rcfg, peer_tls=False)
    raft: RaftNode[int] = RaftNode(rcfg, Counter())
    raft.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (out / "done").exists() and time.monotonic() < deadline:
            if raft.is_leader and len(raft.peers()) == 2 and all(
                    p.connected for p in raft.peers()):
                result = _workload(raft, sequential, threads, seconds)
                result["leader"] = cfg.node_id
                tmp = out / f".result-{cfg.node_id}"
                tmp.write_text(json.dumps(result))
                tmp.rename(out / "result.json")
                (out / "done").touch()
                break
            time.sleep(0.05)
        while not (out / "done").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        counts = _journal_counts(raft)
        (out / f"journal-{cfg.node_id}.json").write_text(json.dumps(counts))
    finally:
        raft.stop()


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    sequential = trials or (100 if quick else SEQUENTIAL)
    seconds = 0.5 if quick else CONCURRENT_S
    out: dict[str, Any] = {"config": {
        "sequential": sequential, "threads": THREADS, "concurrent_s": seconds,
        "command_bytes": COMMAND_BYTES, "members": 3, "peer_tls": True,
        "fsync": "every entry durable on the leader and a follower before it commits"}}
    with tempfile.TemporaryDirectory(prefix="raftsso-bench-commits-") as tmp:
        root = Path(tmp)
        ports = reserve_ports(PORTS_PER_NODE * 3)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            init_deployment(root / "c", nodes=3, base_port=ports.base)
            shared = root / "run"
            shared.mkdir()
            for i in range(3):
                log = open(root / f"node{i + 1}.log", "wb")  # noqa: SIM115
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.commits", "--member",
                     str(root / "c" / f"node{i + 1}" / "node.toml"), str(shared),
                     "--sequential", str(sequential), "--threads", str(THREADS),
                     "--seconds", str(seconds)],
                    stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent))
                log.close()
            deadline = time.monotonic() + START_TIMEOUT + sequential * 0.05 + seconds
            while not (shared / "result.json").exists():
                if time.monotonic() > deadline or all(p.poll() is not None for p in procs):
                    logs = "\n".join((root / f"node{i + 1}.log").read_text()[-2000:]
                                     for i in range(3))
                    raise RuntimeError(f"the commit benchmark produced no result:\n{logs}")
                time.sleep(0.1)
            (shared / "done").touch()
            for p in procs:
                p.wait(timeout=30)
            result = json.loads((shared / "result.json").read_text())
            journals = {f"node{i + 1}": json.loads(
                (shared / f"journal-node{i + 1}.json").read_text()) for i in range(3)
                if (shared / f"journal-node{i + 1}.json").exists()}
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            ports.release()
    lat = result.pop("latencies")
    out.update(result)
    out["journals"] = journals
    s, c = out["sequential"], out["concurrent"]
    print_table("Raft commits (3 members, peer TLS, fsynced on the leader and a follower)",
                ["sequential n", "p50 ms", "p90 ms", "p99 ms", "max ms",
                 "leader CPU ms/commit", f"concurrent ({THREADS} writers)",
                 "leader CPU ms/commit", "entries per leader fsync"],
                [[str(sequential), ms(s["p50_s"]), ms(s["p90_s"]), ms(s["p99_s"]),
                  ms(s["max_s"]), f"{s['leader_cpu_ms_per_commit']:.2f}",
                  f"{c['commits_per_s']:.0f}/s, {c['errors']} errors",
                  f"{c['leader_cpu_ms_per_commit']:.2f}",
                  f"{c['leader_entries_per_fsync']:.1f}"]])
    out["_plot"] = {"commit_latencies": lat}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--member", type=Path, required=True)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--sequential", type=int, default=SEQUENTIAL)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--seconds", type=float, default=CONCURRENT_S)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        member(args.member, args.dir, args.sequential, args.threads, args.seconds)


if __name__ == "__main__":
    main()
