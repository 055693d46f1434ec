"""Three nodes on three "hosts" (network namespaces), and a partition that cuts the leader off.

The network is the harness's :class:`~tests.harness.net.NamespaceNet` (one namespace per
node on a bridge; its docstring draws it): every node listens on its own address with the
same ports, and the cut is made *inside the leader's namespace* with blackhole policy
rules towards each peer, so nothing goes between the leader and the other two, in either
direction, while this test (the bridge's address) still reaches every node and so can
watch the cut-off leader refuse writes. Only iproute2 is needed (no iptables).

Skipped, with the reason, where namespaces cannot be created (not root, no ``ip``, no
CAP_SYS_ADMIN in a container).
"""

from __future__ import annotations

import contextlib
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raftsso import cluster_status
from raftsso.errors import RaftssoError
from tests.harness import Cluster, NamespaceNet, make_net, namespaces_available, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def network() -> Iterator[NamespaceNet]:
    reason = namespaces_available()
    if reason is not None:
        pytest.skip(reason)
    net = make_net(3, "netns")  # also removes what killed runs left behind
    assert isinstance(net, NamespaceNet)
    try:
        yield net
    finally:
        net.close()
        left = net.leftovers()
        assert not left, f"namespaces or links left behind: {left}"


def _readyz(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_cut_off_leader_steps_down_majority_goes_on_and_nothing_is_lost(
        network: NamespaceNet, tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "deploy", net=network)
    cluster.start()
    try:
        _scenario(cluster)
    except BaseException:
        for node_id in cluster.ids:
            print(f"----- {node_id} log -----\n{cluster.log(node_id)[-6000:]}")
        raise
    finally:
        cluster.close()


def _scenario(cluster: Cluster) -> None:
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
        cluster.heal()
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


def _try_rotate(cluster: Cluster, node_id: str,
                request_id: bytes) -> dict[str, Any] | None:
    with contextlib.suppress(RaftssoError):
        return cluster.rotate_on(node_id, request_id)
    return None
