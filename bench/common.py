"""Shared pieces of the benchmark scenarios: a cluster per scenario, process figures from /proc,
timing loops and table printing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Generic, TypeVar

from raftsso import cluster_status
from tests.harness import Cluster, running_cluster, wait_for
from tests.harness.cluster import cluster_client

T = TypeVar("T")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def local_cluster(prefix: str) -> Iterator[Cluster]:
    """A fresh three-node cluster on 127.0.0.1 (free ports), healthy, stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"raftsso-bench-{prefix}-") as tmp, \
            running_cluster(Path(tmp) / "c") as cluster:
        yield cluster


def caught_up(cluster: Cluster) -> dict[str, Any]:
    """Wait until every node is reachable and serves the same primary and commit index."""

    def check() -> dict[str, Any] | None:
        st = cluster.status()
        if not (st["leader"] and st["has_quorum"]):
            return None
        nodes = st["nodes"]
        if all(n["reachable"] and n["primary_version"] == st["primary_version"]
               for n in nodes) and len({n["commit_index"] for n in nodes}) == 1:
            return st
        return None

    return wait_for(check, what="a fully caught-up cluster", interval=0.02)


class ElectionCounter:
    """Elections in a cluster while it runs: how far the highest term any node reports
    went up (every election round raises it, a pre-vote does not) and how often the leader
    changed, from every node's ``status`` every ``period`` seconds, on its own connections.

    With no node killed or stopped meanwhile, every election is a spurious one.
    """

    def __init__(self, cluster: Cluster, period: float = 0.25) -> None:
        self._client = cluster_client(cluster.admin_toml, timeout=1.0)
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.first_term: int | None = None
        self.last_term: int | None = None
        self.leader: str | None = None
        self.leader_changes = 0
        self.samples = 0
        self._t0 = 0.0

    def _sample(self) -> None:
        st = cluster_status.gather(self._client, timeout=1.0)
        terms = [n["term"] for n in st["nodes"] if isinstance(n.get("term"), int)]
        if terms:
            term = max(terms)
            if self.first_term is None:
                self.first_term = term
            self.last_term = max(term, self.last_term or term)
        if st["leader"] is not None:
            if self.leader is not None and st["leader"] != self.leader:
                self.leader_changes += 1
            self.leader = st["leader"]
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self._sample()

    def start(self) -> ElectionCounter:
        self._t0 = time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop polling; the counts: ``elections`` (term rises), ``leader_changes``."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()
        self._client.close()
        first, last = self.first_term, self.last_term
        return {"seconds": round(time.monotonic() - self._t0, 1), "samples": self.samples,
                "first_term": first, "last_term": last,
                "elections": None if first is None or last is None else last - first,
                "leader_changes": self.leader_changes}


def node_pid(cluster: Cluster, node_id: str) -> int:
    return cluster.procs[node_id].pid


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its threads) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def proc_nofile(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE of a process (how many connections it can hold)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                value = line.split()[3]
                return None if value == "unlimited" else int(value)
    return None


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])
    return total - idle, total


class CpuMeter:
    """CPU share (1.0 = one core) of some processes over an interval; ``machine`` is the
    whole machine's busy cores (every process, ours or not)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._t0 = time.monotonic()
        self._c0 = {k: proc_cpu_seconds(p) for k, p in pids.items()}
        self._m0 = machine_cpu()

    def read(self) -> dict[str, float]:
        dt = max(time.monotonic() - self._t0, 1e-9)
        busy, total = machine_cpu()
        out = {"machine": round((busy - self._m0[0]) / max(1, total - self._m0[1])
                                * (os.cpu_count() or 1), 3)}
        for k, p in self.pids.items():
            try:
                out[k] = round((proc_cpu_seconds(p) - self._c0[k]) / dt, 3)
            except OSError:
                out[k] = float("nan")
        return out


def ops_per_second(fn: Callable[[], object], seconds: float, repeats: int = 3) -> float:
    """Best-of-``repeats`` rate of ``fn`` calls, each repeat running about ``seconds``."""
    # Calibrate a batch size that takes ~1/20 of the period so the clock is read rarely.
    batch = 1
    while True:
        t = time.perf_counter()
        for _ in range(batch):
            fn()
        if time.perf_counter() - t >= seconds / 20 or batch >= 1 << 22:
            break
        batch *= 2
    best = 0.0
    for _ in range(repeats):
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            for _ in range(batch):
                fn()
            n += batch
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n / (now - t0))
    return best


def concurrent_calls(threads: int, seconds: float, call: Callable[[Any], object],
                     open_conn: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
                     ) -> tuple[int, list[str], float]:
    """``threads`` threads each open a connection and ``call`` it back to back for ``seconds``.

    Returns the calls that succeeded, the failures (``Type: message``) and the seconds taken.
    """
    done = [0] * threads
    errors: list[str] = []
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        with open_conn() as conn:
            while time.perf_counter() < stop:
                try:
                    call(conn)
                    done[i] += 1
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:120])

    t0 = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done), errors, time.perf_counter() - t0


def stop_processes(procs: Iterable[subprocess.Popen[bytes] | None],
                   timeout: float = 10.0) -> None:
    """Stop the processes a scenario started (by their PIDs): SIGCONT (a stopped one would
    not act on SIGTERM), SIGTERM to all, then wait for each, SIGKILL past ``timeout``."""
    running = [p for p in procs if p is not None]
    for p in running:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
            p.terminate()
    for p in running:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=timeout)


class FirstAck(Generic[T]):
    """The first acknowledged write after a leader dies, from fresh attempts every 10 ms.

    A write sent to a follower while the leader is dead may be held until its timeout
    rather than failed (etcd does): one attempt at a time would measure that timeout. So a
    fresh attempt (its own connection, in its own thread) starts every ``interval``,
    alternating between the ``targets``, and the first success is the time since ``t0``.
    ``attempt(target)`` returns None on success, else a label for the failure (counted in
    :attr:`failures`).
    """

    def __init__(self, targets: Sequence[T], attempt: Callable[[T], str | None], t0: float,
                 interval: float = 0.01) -> None:
        self._targets, self._attempt, self._t0 = targets, attempt, t0
        self._interval = interval
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.first: tuple[float, T] | None = None
        self.failures: Counter[str] = Counter()
        self._launcher = threading.Thread(target=self._launch, daemon=True)

    def start(self) -> None:
        self._launcher.start()

    def wait(self, timeout: float) -> tuple[float, T] | None:
        """(seconds since t0, the target that acknowledged), or None past ``timeout``."""
        self._done.wait(max(0.0, timeout))
        self._done.set()  # stop launching either way
        self._launcher.join(timeout=5)
        with self._lock:
            return self.first

    def _one(self, target: T) -> None:
        failure = self._attempt(target)
        with self._lock:
            if failure is not None:
                self.failures[failure] += 1
                return
            if self.first is None:
                self.first = (time.perf_counter() - self._t0, target)
        self._done.set()

    def _launch(self) -> None:
        k = 0
        while not self._done.is_set():
            threading.Thread(target=self._one, args=(self._targets[k % len(self._targets)],),
                             daemon=True).start()
            k += 1
            time.sleep(self._interval)


def ms(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    return f"{x * 1000:.1f}"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    print(f"\n{title}")
    print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)))
    print("  " + "  ".join("-" * w for w in widths))
    for row in rows:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)))
