"""Connection floods against a real node process: the limits tests and their measurements.

Loopback only. Every loop is bounded by a count and every wait by a deadline. A flood
comes from one or more *source* addresses (``127.0.0.2`` and up: Linux routes all of
127/8 to the loopback device), so that the test's own admin connections from
``127.0.0.1`` are a different source.

Run as a measurement (prints RSS before, at the peak and after a flood of one node)::

    python -m tests.flood --kind handshake --count 2000 [--nofile 4096]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from raftsso.config import load_node_config, split_address
from tests.harness import Cluster, wait_for

# The first bytes of a TLS record that announces a 512-byte ClientHello: a handshake the
# server must wait for (and hold a TLS state for) until its handshake timeout.
_PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def rss_kib(pid: int) -> int:
    """The resident set size of a process (VmRSS, KiB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_own_nofile(needed: int) -> None:
    """Let this (test) process hold ``needed`` descriptors, within its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def nofile_wrapper(nofile: int) -> tuple[str, ...]:
    """A command prefix that sets RLIMIT_NOFILE (soft and hard) and execs the node."""
    return ("sh", "-c", f'ulimit -n {int(nofile)} && exec "$@"', "sh")


def start_node(cluster: Cluster, node_id: str, nofile: int | None = None) -> None:
    """Start one node of ``cluster``, with RLIMIT_NOFILE set to ``nofile``."""
    cluster.start(node_id, wrapper=nofile_wrapper(nofile) if nofile is not None else ())


def metrics_address(cluster: Cluster, node_id: str) -> str:
    address = load_node_config(cluster.node_toml(node_id)).metrics_address
    assert address is not None
    return address


class Flood:
    """Sockets held open against one address; :meth:`close` (or ``with``) ends the flood.

    ``bare_tcp`` connects and sends nothing; ``slow_tls`` sends the start of a TLS
    ClientHello; ``slow_http`` the start of an HTTP request. :meth:`drip` sends one more
    byte on every slow socket (a slow-loris keeps each connection busy that way).
    """

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self._slow: list[tuple[socket.socket, bytes]] = []
        self.failed = 0
        self._stop = threading.Event()
        self._dripper: threading.Thread | None = None

    def __enter__(self) -> Flood:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, address: str, source: str, timeout: float) -> socket.socket | None:
        host, port = split_address(address)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((source, 0))
            s.settimeout(timeout)
            s.connect((host, port))
        except OSError:
            s.close()
            self.failed += 1
            return None
        self.sockets.append(s)
        return s

    def bare_tcp(self, address: str, count: int, source: str = "127.0.0.2",
                 timeout: float = 2.0) -> None:
        for _ in range(count):
            self._open(address, source, timeout)

    def _open_slow(self, address: str, count: int, source: str, first: bytes, more: bytes,
              timeout: float) -> None:
        for _ in range(count):
            s = self._open(address, source, timeout)
            if s is None:
                continue
            with contextlib.suppress(OSError):  # a refused connection may be closed already
                s.sendall(first)
                self._slow.append((s, more))

    def slow_tls(self, address: str, count: int, source: str = "127.0.0.2",
                 timeout: float = 2.0) -> None:
        self._open_slow(address, count, source, _PARTIAL_CLIENT_HELLO, b"\x00", timeout)

    def slow_http(self, address: str, count: int, source: str = "127.0.0.2",
                  timeout: float = 2.0) -> None:
        self._open_slow(address, count, source, b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
                   b"X-Slow: 1\r\n", timeout)

    def drip(self) -> int:
        """One more byte on every slow socket still open; returns how many took it."""
        alive = 0
        for s, more in self._slow:
            try:
                s.settimeout(0.01)
                s.send(more)
                alive += 1
            except OSError:
                pass
        return alive

    def drip_in_background(self, interval: float = 1.0, deadline: float = 120.0) -> None:
        """Keep dripping every ``interval`` until :meth:`close` (at most ``deadline``)."""

        def run() -> None:
            end = time.monotonic() + deadline
            while not self._stop.wait(interval) and time.monotonic() < end:
                self.drip()

        self._dripper = threading.Thread(target=run, name="flood-drip", daemon=True)
        self._dripper.start()

    def still_open(self) -> int:
        """How many flood sockets the node has not closed (a non-blocking peek on each)."""
        n = 0
        for s in self.sockets:
            try:
                s.setblocking(False)
                if s.recv(1, socket.MSG_PEEK):
                    n += 1  # the node sent something (a TLS alert is still a closing)
            except BlockingIOError:
                n += 1
            except OSError:
                pass
        return n

    def close(self) -> None:
        self._stop.set()
        if self._dripper is not None:
            self._dripper.join(timeout=5)
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()
        self.sockets.clear()
        self._slow.clear()


def wait_rss_back(pid: int, baseline_kib: int, slack_kib: int = 20 * 1024,
                  timeout: float = 60.0) -> int:
    """Poll until the process's RSS is within ``slack_kib`` of ``baseline_kib``."""
    return wait_for(lambda: (rss := rss_kib(pid)) <= baseline_kib + slack_kib and rss,
                    timeout, interval=0.5,
                    what=f"RSS of {pid} to return within {slack_kib // 1024} MiB of "
                         f"{baseline_kib // 1024} MiB")


# -- measurement ------------------------------------------------------------------------


@contextlib.contextmanager
def _cluster(nofile: int | None) -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="raftsso-flood-") as tmp, \
            Cluster(Path(tmp) / "c") as cluster:
        for node_id in cluster.ids:
            start_node(cluster, node_id, nofile)
        cluster.wait_healthy()
        yield cluster


def _measure(kind: str, count: int, nofile: int | None, sources: int) -> None:
    raise_own_nofile(count + 1024)
    with _cluster(nofile) as cluster:
        leader = cluster.leader()
        pid = cluster.procs[leader].pid
        address = (metrics_address(cluster, leader) if kind == "http"
                   else cluster.address(leader))
        cluster.rotate()
        before = rss_kib(pid)
        print(f"{leader} pid {pid} nofile {nofile}: RSS before {before // 1024} MiB, "
              f"{open_fds(pid)} fds", flush=True)
        opener: Callable[..., None] = {"tcp": Flood.bare_tcp, "handshake": Flood.slow_tls,
                                       "http": Flood.slow_http}[kind]
        with Flood() as flood:
            per = max(1, count // sources)
            for i in range(sources):
                opener(flood, address, per, source=f"127.0.0.{2 + i}")
            peak = rss_kib(pid) if cluster.alive(leader) else 0
            print(f"flood of {len(flood.sockets)} {kind} connections ({flood.failed} failed "
                  f"to connect): RSS {peak // 1024} MiB, "
                  f"{open_fds(pid) if cluster.alive(leader) else 'n/a'} fds, "
                  f"still open {flood.still_open()}", flush=True)
            try:
                version = cluster.rotate()["version"]
                print(f"rotation during the flood: version {version}", flush=True)
            except Exception as exc:  # a measurement reports, it does not stop
                print(f"rotation during the flood failed: {exc}", flush=True)
        time.sleep(12)  # measurement only: past the 10 s handshake timeout
        if not cluster.alive(leader):
            print(f"{leader} exited with {cluster.procs[leader].poll()}")
            print("\n".join(cluster.log(leader).splitlines()[-5:]))
            return
        after = rss_kib(pid)
        print(f"after the flood: RSS {after // 1024} MiB, {open_fds(pid)} fds, role "
              f"{cluster.node_status(leader)['role']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["tcp", "handshake", "http"], default="handshake")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--nofile", type=int, default=None)
    parser.add_argument("--sources", type=int, default=1)
    args = parser.parse_args()
    _measure(args.kind, args.count, args.nofile, args.sources)


if __name__ == "__main__":
    main()
