"""Three nodes on three "hosts" (network namespaces), and a partition that cuts the leader off.

Layout, all created and deleted by this test (names start with ``rssopt``):

    root namespace (this test, 10.200.0.1/16 on bridge rssopt-br)
      ├── rssopt-v1 ══ veth ══ namespace rssopt-n1: 10.200.0.11  node1
      ├── rssopt-v2 ══ veth ══ namespace rssopt-n2: 10.200.0.12  node2
      └── rssopt-v3 ══ veth ══ namespace rssopt-n3: 10.200.0.13  node3

Every node listens on its own address with the same ports (a deployment made by
``init_deployment(hosts=...)``: certificates name each node's IP). The cut is made *inside
the leader's namespace* with two policy rules per peer (``ip rule add to PEER blackhole``
and ``ip rule add from PEER blackhole``, placed before the ``local`` table's rule, which
is moved from priority 0 to 100 when the namespace is made): nothing goes between the
leader and the other two, in either direction, while this test (10.200.0.1) still reaches
every node and so can watch the cut-off leader refuse writes. Only iproute2 is needed
(no iptables).

Skipped, with the reason, where namespaces cannot be created (not root, no ``ip``, no
CAP_SYS_ADMIN in a container).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raftsso import cluster_status
from raftsso.config import load_remote_config
from raftsso.deployment import init_deployment
from raftsso.errors import RaftssoError
from raftsso.remote import ClusterClient
from tests.harness import wait_for

pytestmark = pytest.mark.integration

PREFIX = "rssopt"
BRIDGE = f"{PREFIX}-br"
HOSTS = ("10.200.0.11", "10.200.0.12", "10.200.0.13")
GATEWAY = "10.200.0.1/16"
BASE_PORT = 7100


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=check)


def _namespace(i: int) -> str:
    return f"{PREFIX}-n{i}"


def _clean_leftovers() -> None:
    """Delete whatever an earlier, interrupted run left (links first, then namespaces)."""
    links = _ip("-o", "link", "show", check=False).stdout.splitlines()
    for line in links:
        name = line.split(":", 2)[1].strip().split("@", 1)[0] if ":" in line else ""
        if name.startswith(PREFIX):
            _ip("link", "del", name, check=False)
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            _ip("netns", "del", name, check=False)


def _require_namespaces() -> None:
    if sys.platform != "linux":
        pytest.skip("network namespaces need Linux")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    if shutil.which("ip") is None:
        pytest.skip("the ip command (iproute2) is not installed")
    probe = f"{PREFIX}-probe"
    _ip("netns", "del", probe, check=False)
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {result.stderr.strip()}")
    _ip("netns", "del", probe, check=False)


def _build_network() -> None:
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", GATEWAY, "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    for i, address in enumerate(HOSTS, start=1):
        ns, outer, inner = _namespace(i), f"{PREFIX}-v{i}", f"{PREFIX}-p{i}"
        _ip("netns", "add", ns)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "master", BRIDGE, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{address}/16", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")
        # Policy rules are consulted in order and the "local" table (rule 0) would accept
        # every packet addressed to this host before a blackhole rule could drop it: move
        # it behind the range the cut uses.
        _ip("-n", ns, "rule", "add", "pref", "100", "lookup", "local")
        _ip("-n", ns, "rule", "del", "pref", "0")


@pytest.fixture
def network() -> Iterator[None]:
    _require_namespaces()
    _clean_leftovers()
    try:
        _build_network()
        yield
    finally:
        _clean_leftovers()
        left = [line for line in _ip("netns", "list", check=False).stdout.splitlines()
                if line.startswith(PREFIX)]
        assert not left, f"namespaces left behind: {left}"


class NamespaceCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cluster_id = init_deployment(root, nodes=None, hosts=HOSTS, base_port=BASE_PORT)
        self.ids = [f"node{i}" for i in range(1, len(HOSTS) + 1)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.client = ClusterClient.from_config(load_remote_config(root / "admin.toml"))

    def address(self, node_id: str) -> str:
        return f"{HOSTS[self.ids.index(node_id)]}:{BASE_PORT + 1}"

    def metrics_url(self, node_id: str, path: str) -> str:
        return f"http://{HOSTS[self.ids.index(node_id)]}:{BASE_PORT + 2}{path}"

    def namespace(self, node_id: str) -> str:
        return _namespace(self.ids.index(node_id) + 1)

    def start(self) -> None:
        for node_id in self.ids:
            fd = os.open(self.root / node_id / "node.log",
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                self.procs[node_id] = subprocess.Popen(
                    ["ip", "netns", "exec", self.namespace(node_id), sys.executable, "-m",
                     "raftsso_cli", "node", "run", str(self.root / node_id / "node.toml")],
                    stdin=subprocess.DEVNULL, stdout=fd, stderr=fd)
            finally:
                os.close(fd)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.client.close()

    def status(self) -> dict[str, Any]:
        return cluster_status.gather(self.client, timeout=1.0)

    def node_status(self, node_id: str) -> dict[str, Any]:
        result = self.client.call_node(self.address(node_id), "status", timeout=2.0)
        assert isinstance(result, dict)
        return result

    def keyring(self, node_id: str) -> dict[int, bytes]:
        ring = self.client.call_node(self.address(node_id), "keyring", timeout=2.0)
        return {v["id"]: v["key"] for v in ring["versions"]}

    def rotate_on(self, node_id: str, request_id: bytes | None = None) -> dict[str, Any]:
        result = self.client.call_node(
            self.address(node_id), "rotate",
            {"request_id": request_id or secrets.token_bytes(16), "now": True}, timeout=30.0)
        assert isinstance(result, dict)
        return result

    def _cut_rules(self, node_id: str) -> list[list[str]]:
        rules = []
        for other in self.ids:
            if other != node_id:
                peer = f"{HOSTS[self.ids.index(other)]}/32"
                n = len(rules)
                rules.append(["pref", str(10 + n), "to", peer, "blackhole"])
                rules.append(["pref", str(11 + n), "from", peer, "blackhole"])
        return rules

    def cut(self, node_id: str) -> None:
        for rule in self._cut_rules(node_id):
            _ip("-n", self.namespace(node_id), "rule", "add", *rule)

    def heal(self, node_id: str) -> None:
        for rule in self._cut_rules(node_id):
            _ip("-n", self.namespace(node_id), "rule", "del", *rule, check=False)

    def log(self, node_id: str) -> str:
        return (self.root / node_id / "node.log").read_text(errors="replace")


def _readyz(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_cut_off_leader_steps_down_majority_goes_on_and_nothing_is_lost(
        network: None, tmp_path: Path) -> None:
    cluster = NamespaceCluster(tmp_path / "deploy")
    cluster.start()
    try:
        _scenario(cluster)
    except BaseException:
        for node_id in cluster.ids:
            print(f"----- {node_id} log -----\n{cluster.log(node_id)[-6000:]}")
        raise
    finally:
        cluster.stop()


def _scenario(cluster: NamespaceCluster) -> None:
    st = wait_for(lambda: (s := cluster.status()) and cluster_status.healthy(s)
                  and s["primary_version"] is not None and s, what="a healthy cluster")
    old = st["leader"]
    first = cluster.rotate_on(old)
    assert first["state"] == "primary"
    before = cluster.keyring(old)
    others = [n for n in cluster.ids if n != old]
    wait_for(lambda: all(cluster.keyring(n) == before for n in others),
             what="every node to hold every version before the cut")

    cluster.cut(old)
    print(f"cut {old} at {time.time():.3f}")
    try:
        # The cut-off leader refuses writes: it cannot reach a majority, so the write is
        # never acknowledged (it answers NO_QUORUM / NOT_LEADER / OUTCOME_UNKNOWN).
        with pytest.raises(RaftssoError):
            cluster.rotate_on(old)
        # ... and it steps down (leader_fallback_timeout), its /readyz turns 503.
        wait_for(lambda: cluster.node_status(old)["role"] != "leader",
                 what="the cut-off leader to step down")
        wait_for(lambda: _readyz(cluster.metrics_url(old, "/readyz")) == 503,
                 what="/readyz of the cut-off node to turn 503")

        # The majority elects a new leader and accepts a rotation.
        def majority_leader() -> str | None:
            views = [cluster.node_status(n) for n in others]
            leaders = [v for v in views if v["role"] == "leader" and v["has_quorum"]]
            return leaders[0]["node_id"] if leaders else None

        new = wait_for(majority_leader, what="a new leader among the majority")
        assert new != old
        # Retried with one request id: applied at most once whatever the retries see.
        rid = secrets.token_bytes(16)
        during = wait_for(lambda: _try_rotate(cluster, new, rid),
                          what="a rotation on the majority")
        assert during["state"] == "primary"
        assert during["version"] == first["version"] + 1
        with pytest.raises(RaftssoError):
            cluster.rotate_on(old)  # still refused, now as NOT_LEADER or NO_QUORUM
        assert during["version"] not in cluster.keyring(old)
    finally:
        cluster.heal(old)
        print(f"healed {old} at {time.time():.3f}")

    # After healing: one leader with a quorum, every node has every version (same keys)
    # and the same primary.
    def converged() -> dict[int, bytes] | None:
        st = cluster.status()
        if not cluster_status.healthy(st):
            return None
        rings = [cluster.keyring(n) for n in cluster.ids]
        primaries = {cluster.node_status(n)["primary_version"] for n in cluster.ids}
        if primaries != {during["version"]} or any(r != rings[0] for r in rings):
            return None
        return rings[0]

    ring = wait_for(converged, what="the cluster to converge after healing")
    assert set(ring) == set(range(1, during["version"] + 1))
    for version, key in before.items():
        assert ring[version] == key
    wait_for(lambda: all(_readyz(cluster.metrics_url(n, "/readyz")) == 200
                         for n in cluster.ids), what="/readyz 200 on every node")


def _try_rotate(cluster: NamespaceCluster, node_id: str,
                request_id: bytes) -> dict[str, Any] | None:
    with contextlib.suppress(RaftssoError):
        return cluster.rotate_on(node_id, request_id)
    return None
