"""Three real node processes: agreement, failover, durability, secrecy on disk."""

from __future__ import annotations

import base64
import signal
from pathlib import Path

import pytest

from raftsso.errors import RaftssoError
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.integration


def _keys(cluster: Cluster) -> dict[int, bytes]:
    # From the leader: a follower may not have applied the newest commit yet.
    ring = cluster.client.call_node(cluster.address(cluster.leader()), "keyring")
    return {v["id"]: v["key"] for v in ring["versions"]}


def test_three_nodes_agree_on_one_leader_and_the_primary(cluster: Cluster) -> None:
    status = wait_for(lambda: (s := cluster.status()) and
                      all(n["reachable"] and n["primary_version"] == 1 for n in s["nodes"])
                      and s, what="every node to report primary version 1")
    assert status["has_quorum"] is True
    assert status["cluster_id"] == cluster.cluster_id
    roles = sorted(n["role"] for n in status["nodes"])
    assert roles == ["follower", "follower", "leader"]
    assert len({n["term"] for n in status["nodes"]}) == 1
    # Every node serves the same key material for version 1.
    rings = [cluster.client.call_node(cluster.address(i), "keyring") for i in cluster.ids]
    assert len({r["versions"][0]["key"] for r in rings}) == 1
    assert all(len(r["versions"][0]["key"]) == 32 for r in rings)


def test_rotation_is_replicated_to_every_node(cluster: Cluster) -> None:
    staged = cluster.rotate(now=False)
    assert staged == {"version": 2, "state": "staged", "primary_version": 1}
    promoted = cluster.rotate(now=True)
    assert promoted == {"version": 3, "state": "primary", "primary_version": 3}

    def all_have_three() -> bool:
        return all(cluster.node_status(i)["primary_version"] == 3 for i in cluster.ids)

    wait_for(all_have_three, what="version 3 on every node")
    states = {v["id"]: v["state"] for v in cluster.node_status("node1")["versions"]}
    assert states == {1: "active", 2: "active", 3: "primary"}


def test_sigkill_of_the_leader_elects_another_and_rotation_succeeds(
        cluster: Cluster) -> None:
    old = cluster.leader()
    term = cluster.node_status(old)["term"]
    cluster.kill(old)
    new = cluster.leader(exclude=(old,))
    assert new != old
    assert cluster.node_status(new)["term"] > term
    result = cluster.rotate(now=True)
    assert result["state"] == "primary"
    assert result["version"] == 2
    # The old leader comes back as a follower and catches up.
    cluster.start(old)
    wait_for(lambda: cluster.node_status(old)["primary_version"] == 2,
             what="the restarted node to catch up")
    assert cluster.node_status(old)["role"] == "follower"


def test_acknowledged_rotation_survives_sigkill_of_every_node(cluster: Cluster) -> None:
    acked = [cluster.rotate(now=True)["version"] for _ in range(3)]
    assert acked == [2, 3, 4]
    keys_before = _keys(cluster)
    cluster.kill()  # every node at once, right after the acknowledgement
    cluster.start()
    cluster.wait_healthy()

    def everyone_has_four() -> bool:
        return all(cluster.node_status(i)["primary_version"] == 4 for i in cluster.ids)

    wait_for(everyone_has_four, what="version 4 on every restarted node")
    assert _keys(cluster) == keys_before


def test_no_plaintext_secret_in_any_file(cluster: Cluster) -> None:
    cluster.rotate(now=True)
    cluster.rotate(now=False)
    keys = _keys(cluster)
    assert len(keys) == 3
    cluster.stop()  # flush everything a node would write
    needles = []
    for key in keys.values():
        needles += [key, key.hex().encode(), base64.b64encode(key),
                    base64.urlsafe_b64encode(key)]
    files = [p for p in cluster.root.rglob("*") if p.is_file()]
    assert any(p.name == "raft.journal" for p in files)
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"a master secret appears in {path}"


def test_node_files_are_private(cluster: Cluster) -> None:
    cluster.rotate(now=True)
    for node_id in cluster.ids:
        for path in (cluster.root / node_id).rglob("*"):
            mode = path.stat().st_mode & 0o777
            assert mode & 0o077 == 0, f"{path} has mode {mode:o}"


def test_a_leader_cut_off_by_sigstop_is_replaced_and_rejoins(cluster: Cluster) -> None:
    old = cluster.leader()
    cluster.signal(old, signal.SIGSTOP)
    try:
        new = cluster.leader(exclude=(old,))
        assert cluster.rotate(now=True)["version"] == 2
    finally:
        cluster.signal(old, signal.SIGCONT)
    # The resumed former leader steps down and learns the new version.
    wait_for(lambda: (s := cluster.node_status(old))["primary_version"] == 2
             and s["role"] == "follower", what="the resumed node to follow")
    assert cluster.leader() == new or cluster.status()["has_quorum"]


def test_restart_of_a_single_node_keeps_its_data(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "one", nodes=1)
    c.start()
    try:
        c.wait_healthy()
        assert c.rotate(now=True)["version"] == 2
        c.kill()
        c.start()
        assert c.wait_healthy()["primary_version"] == 2
    finally:
        c.close()


def test_a_leader_without_quorum_steps_down_and_refuses_writes(cluster: Cluster) -> None:
    leader = cluster.leader()
    followers = [i for i in cluster.ids if i != leader]
    for f in followers:
        cluster.signal(f, signal.SIGSTOP)
    try:
        # pysyncobj's default would keep it "leader" for 30 s; ours steps down in ~1 s.
        wait_for(lambda: cluster.node_status(leader)["role"] != "leader",
                 what="the isolated leader to step down")
        endpoint = next(n for n in cluster.client.nodes if n.id == leader)
        with pytest.raises(RaftssoError) as info:
            cluster.client.call_node(endpoint.address, "rotate",
                                     {"request_id": b"q" * 16, "now": True}, timeout=10)
        assert getattr(info.value, "code", "") in ("NOT_LEADER", "NO_QUORUM", "UNAVAILABLE")
        assert cluster.node_status(leader)["primary_version"] == 1
    finally:
        for f in followers:
            cluster.signal(f, signal.SIGCONT)
    cluster.wait_healthy()
    assert cluster.rotate(now=True)["version"] == 2
