"""Elections only when needed (issue 16, item 1): pre-vote and leader stickiness.

Real node processes. A follower that was paused (SIGSTOP) or cut off (network namespaces)
for several election timeouts comes back without an election and without changing any
node's term: it asks first (pre-vote), and the others, who hear from a live leader,
refuse. Before this (pysyncobj alone) it came back with a higher term and deposed the
leader. A paused *leader* is still replaced, and steps down when it resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from raftsso.errors import RaftssoError
from tests.harness import Cluster, NamespaceNet, make_net, namespaces_available, wait_for

pytestmark = pytest.mark.integration

ELECTION_TIMEOUT_MAX = 0.5  # RaftTimings' default
AWAY = 6 * ELECTION_TIMEOUT_MAX  # "several election timeouts"

Status = Callable[[str], dict[str, Any]]


def _settled(ids: list[str], status: Status) -> tuple[str, int]:
    """(leader, term) once every node follows the same leader in the same term."""

    def check() -> tuple[str, int] | None:
        views = [status(node_id) for node_id in ids]
        leaders = {v.get("leader") for v in views}
        terms = {v.get("term") for v in views}
        if len(leaders) == 1 and len(terms) == 1 and None not in leaders:
            return str(leaders.pop()), int(terms.pop())
        return None

    return wait_for(check, what="every node to follow one leader in one term")


def _silent_for(status: Status, leader: str, node_id: str, seconds: float) -> None:
    """Wait until ``leader`` has not heard from ``node_id`` for ``seconds``."""

    def check() -> bool:
        peer = next(p for p in status(leader)["peers"] if p["id"] == node_id)
        return peer["last_contact"] is not None and peer["last_contact"] >= seconds

    wait_for(check, what=f"{node_id} to be silent for {seconds} s")


def _rotate_at(cluster: Cluster, node_id: str) -> int:
    """Rotate at ``node_id`` itself (the client's leader search could wait on a paused
    node)."""
    return int(cluster.rotate_on(node_id, timeout=10.0)["version"])


def _terms(ids: list[str], status: Status) -> dict[str, int]:
    return {node_id: int(status(node_id)["term"]) for node_id in ids}


def test_a_paused_follower_that_resumes_causes_no_election(cluster: Cluster) -> None:
    leader, term = _settled(cluster.ids, cluster.node_status)
    follower = next(i for i in cluster.ids if i != leader)
    start = len(cluster.log(follower))
    for _ in range(3):
        cluster.pause(follower)
        try:
            _silent_for(cluster.node_status, leader, follower, AWAY)
            version = _rotate_at(cluster, leader)  # the majority goes on meanwhile
        finally:
            cluster.resume(follower)
        # Its election timer ran out long ago; it catches up instead of deposing anyone.
        wait_for(lambda v=version: cluster.node_status(follower)["primary_version"] == v,
                 what="the resumed follower to apply what it missed")
        assert _settled(cluster.ids, cluster.node_status) == (leader, term)
    version = _rotate_at(cluster, leader)
    wait_for(lambda: cluster.node_status(follower)["primary_version"] == version,
             what="the follower to apply a rotation after the pauses")
    assert _terms(cluster.ids, cluster.node_status) == dict.fromkeys(cluster.ids, term)
    assert "starting an election" not in cluster.log(follower)[start:]


def test_a_paused_leader_is_replaced_and_steps_down_when_it_resumes(
        cluster: Cluster) -> None:
    leader, term = _settled(cluster.ids, cluster.node_status)
    cluster.pause(leader)
    others = [i for i in cluster.ids if i != leader]
    try:
        new_leader = cluster.leader(exclude=(leader,))  # failover still works
        version = _rotate_at(cluster, new_leader)
    finally:
        cluster.resume(leader)
    new_leader_now, new_term = _settled(cluster.ids, cluster.node_status)
    assert new_leader_now == new_leader and new_term > term
    wait_for(lambda: cluster.node_status(leader)["primary_version"] == version,
             what="the old leader to catch up")
    assert _rotate_at(cluster, new_leader) > version
    assert _settled(cluster.ids, cluster.node_status) == (new_leader, new_term)
    assert all(cluster.node_status(i)["term"] == new_term for i in others)


# -- a node cut off by the network -------------------------------------------------------


@pytest.fixture
def netns_cluster(tmp_path: Path) -> Iterator[Cluster]:
    reason = namespaces_available()
    if reason is not None:
        pytest.skip(f"network namespaces are not available: {reason}")
    net = make_net(3, "netns")
    assert isinstance(net, NamespaceNet)
    try:
        with Cluster(tmp_path / "deploy", 3, net=net, client_timeout=1.0) as cluster:
            cluster.start()
            yield cluster
    finally:
        net.close()


def test_a_follower_cut_off_that_returns_causes_no_term_change(
        netns_cluster: Cluster) -> None:
    c = netns_cluster

    def status(node_id: str) -> dict[str, Any]:
        try:
            result = c.call(node_id, "status")
        except RaftssoError as exc:
            raise AssertionError(f"{node_id}: {exc}") from exc
        assert isinstance(result, dict)
        return result

    def quiet_status(node_id: str) -> dict[str, Any]:
        try:
            return status(node_id)
        except AssertionError:
            return {}

    leader, term = _settled(c.ids, quiet_status)
    follower = next(i for i in c.ids if i != leader)
    c.cut(follower)  # namespace rules: the test still reaches it, its peers do not
    try:
        # It notices: no leader for an election timeout (it forgets the leader and asks)...
        wait_for(lambda: quiet_status(follower).get("leader", "?") is None,
                 what="the cut-off follower to lose its leader")
        _silent_for(quiet_status, leader, follower, AWAY)  # ...for several timeouts
        assert quiet_status(follower)["term"] == term, "it changed its term while cut off"
    finally:
        c.heal()
    assert _settled(c.ids, quiet_status) == (leader, term)
    version = _rotate_at(c, leader)
    wait_for(lambda: quiet_status(follower).get("primary_version") == version,
             what="the follower to apply a rotation after the cut")
    assert _terms(c.ids, quiet_status) == dict.fromkeys(c.ids, term)
