"""A connection flood on a node's Raft port at a low descriptor limit (issue 11).

Real node processes on loopback. The node under attack gets a low ``RLIMIT_NOFILE`` (set on
the running process with ``prlimit``), and bare TCP connections that never start TLS come
at its Raft port from several source addresses. What must hold:

* the Raft port's gate (``[limits]`` ``peer_max_handshakes``, ``peer_max_per_source``,
  ``peer_max_connections``) closes the excess at once or drops the oldest unfinished
  handshake, so the node keeps its role and acknowledges rotations during and after the
  flood;
* even with no file descriptor left at all, the node does not exit: the journal, term and
  vote need no new descriptor (:mod:`raftsso.raft.meta`), and an ``accept`` that finds
  none pauses the listener instead of spinning. (Before, the next term-and-vote write
  failed with EMFILE and the node exited 75.)
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import threading

import pytest

from raftsso.config import load_node_config, split_address
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.integration

SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]  # more sources than one source's cap


class Flood:
    """Keeps up to ``size`` idle TCP connections open to ``address``, from ``SOURCES``."""

    def __init__(self, address: str, size: int) -> None:
        self.target = split_address(address)
        self.size = size
        self.attempts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        live: list[socket.socket] = []
        try:
            while not self._stop.is_set():
                live = [s for s in live if self._alive(s)]
                while len(live) < self.size and not self._stop.is_set():
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    sock.bind((SOURCES[self.attempts % len(SOURCES)], 0))
                    self.attempts += 1
                    err = sock.connect_ex(self.target)
                    if err not in (0, errno.EINPROGRESS):
                        sock.close()
                        break  # the backlog is full: sweep, then try again
                    live.append(sock)
                self._stop.wait(0.05)
        finally:
            for sock in live:
                sock.close()

    @staticmethod
    def _alive(sock: socket.socket) -> bool:
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:  # still connecting
                return True
            sock.close()
            return False
        if data:
            return True
        sock.close()  # closed by the node
        return False


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _limit_descriptors(pid: int, soft: int) -> None:
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


def _raft_address(cluster: Cluster, node_id: str) -> str:
    return load_node_config(cluster.node_toml(node_id)).raft_address


def _role_and_term(cluster: Cluster, node_id: str) -> tuple[str, int]:
    st = cluster.node_status(node_id)
    return str(st["role"]), int(st["term"])


def _settled(cluster: Cluster, node_id: str) -> tuple[str, int]:
    """``node_id``'s role and term once it follows (or is) the leader of the leader's term."""
    leader = cluster.leader()
    term = _role_and_term(cluster, leader)[1]

    def check() -> tuple[str, int] | None:
        role, its_term = _role_and_term(cluster, node_id)
        st = cluster.node_status(node_id)
        if its_term == term and st.get("leader") == leader:
            return role, its_term
        return None

    return wait_for(check, what=f"{node_id} to follow {leader} in term {term}")


def _assert_alive(cluster: Cluster, node_id: str) -> None:
    assert cluster.alive(node_id), f"{node_id} exited:\n{cluster.log(node_id)[-3000:]}"
    assert "stopping this node" not in cluster.log(node_id)


@pytest.mark.parametrize("who", ["leader", "follower"])
def test_a_flooded_raft_port_at_a_low_descriptor_limit_keeps_the_node_serving(
        cluster: Cluster, who: str) -> None:
    leader = cluster.leader()
    target = leader if who == "leader" else next(i for i in cluster.ids if i != leader)
    pid = cluster.pid(target)
    before = _settled(cluster, target)
    # Room for the node's own needs and the capped handshakes, far less than a flood.
    _limit_descriptors(pid, _open_descriptors(pid) + 64)
    with Flood(_raft_address(cluster, target), size=1200) as flood:
        wait_for(lambda: '"event":"connection_refused"' in cluster.log(target)
                 and "raft port:" in cluster.log(target) and flood.attempts > 1200,
                 what="the flood to reach the Raft port's caps")
        version = cluster.rotate()["version"]  # acknowledged during the flood
        assert cluster.wait_healthy()["primary_version"] == version
        _assert_alive(cluster, target)
        assert _role_and_term(cluster, target) == before
    assert "to make room" in cluster.log(target)  # unfinished handshakes were dropped
    version = cluster.rotate()["version"]  # and after it
    assert cluster.wait_healthy()["primary_version"] == version
    _assert_alive(cluster, target)
    assert _role_and_term(cluster, target) == before


def test_a_leader_without_a_free_descriptor_still_acknowledges_rotations(
        cluster: Cluster) -> None:
    leader = cluster.leader()
    pid = cluster.pid(leader)
    before = _settled(cluster, leader)  # the admin connection to it is open from here on
    _limit_descriptors(pid, _open_descriptors(pid))  # nothing left (but holes)
    try:
        with Flood(_raft_address(cluster, leader), size=64):
            wait_for(lambda: "raft port: out of descriptors or memory while accepting"
                     in cluster.log(leader),
                     what="the Raft port's accept to run out of descriptors")
            for _ in range(3):  # each one changes the commit index: a meta write
                version = cluster.rotate()["version"]
                assert cluster.node_status(leader)["primary_version"] == version
            _assert_alive(cluster, leader)
            assert _role_and_term(cluster, leader) == before
    finally:
        _limit_descriptors(pid, 1024)
    version = cluster.rotate()["version"]
    assert cluster.wait_healthy()["primary_version"] == version
    _assert_alive(cluster, leader)
    assert _role_and_term(cluster, leader) == before
