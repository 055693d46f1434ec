"""Membership on real processes: add a node prepared with ``init --join``, remove one,
and the refusals (leader, quorum, tombstones)."""

from __future__ import annotations

import json

import pytest

from raftsso.config import load_node_config
from tests.harness import Cluster, cli, wait_for

pytestmark = pytest.mark.integration


def _admin(cluster: Cluster, *args: str) -> tuple[int, bytes, bytes]:
    r = cli("-c", str(cluster.admin_toml), *args)
    return r.returncode, r.stdout, r.stderr


def _members(cluster: Cluster) -> list[dict[str, object]]:
    code, out, err = _admin(cluster, "members", "--json")
    assert code == 0, err
    rows = json.loads(out)["members"]
    assert isinstance(rows, list)
    return rows


def _join(cluster: Cluster, node_id: str) -> str:
    r = cli("init", str(cluster.root), "--join", node_id)
    assert r.returncode == 0, r.stderr
    cluster.adopt(node_id)  # admin.toml now lists the new node
    cluster.start(node_id)
    return load_node_config(cluster.node_toml(node_id)).raft_address


def test_add_a_node_then_remove_another(cluster: Cluster) -> None:
    rows = _members(cluster)
    assert [r["id"] for r in rows] == ["node1", "node2", "node3"]
    assert {"id", "address", "raft_address", "role", "reachable", "match_index", "lag",
            "last_contact"} <= set(rows[0])

    raft_address = _join(cluster, "node4")
    code, out, err = _admin(cluster, "members", "add", "node4", raft_address)
    assert code == 0, err
    assert b"node4 added" in out
    assert cluster.rotate(now=True)["version"] == 2
    wait_for(lambda: cluster.node_status("node4")["primary_version"] == 2,
             what="the new member to receive the rotation")
    assert [r["id"] for r in _members(cluster)] == ["node1", "node2", "node3", "node4"]

    leader = cluster.leader()
    victim = next(i for i in ("node1", "node2", "node3") if i != leader)
    code, out, err = _admin(cluster, "members", "remove", victim)
    assert code == 0, err
    assert victim not in [r["id"] for r in _members(cluster)]
    # The removed node still runs with its old data; it neither rejoins nor disturbs.
    assert cluster.alive(victim)
    assert cluster.rotate(now=True)["version"] == 3
    survivors = [i for i in cluster.ids if i != victim]
    wait_for(lambda: all(cluster.node_status(i)["primary_version"] == 3 for i in survivors),
             what="the rotation on every remaining member")
    assert cluster.node_status(victim)["primary_version"] == 2
    again = load_node_config(cluster.node_toml(victim)).raft_address
    code, _, err = _admin(cluster, "members", "add", victim, again)
    assert code == 1 and b"never rejoins" in err


def test_membership_refusals(cluster: Cluster) -> None:
    leader = cluster.leader()
    code, _, err = _admin(cluster, "members", "remove", leader)
    assert code == 1 and b"transfer-leader" in err
    code, _, err = _admin(cluster, "members", "remove", "node9")
    assert code == 1 and b"not a member" in err

    down, other = (i for i in cluster.ids if i != leader)
    cluster.kill(down)
    wait_for(lambda: not next(r for r in _members(cluster) if r["id"] == down)["reachable"],
             what="the leader to notice the dead node")
    code, _, err = _admin(cluster, "members", "remove", other)
    assert code == 1 and b"no quorum" in err
    # A fourth member that is not running would leave 2 of 4 up.
    r = cli("init", str(cluster.root), "--join", "node4")
    assert r.returncode == 0
    address = load_node_config(cluster.node_toml("node4")).raft_address
    code, _, err = _admin(cluster, "members", "add", "node4", address)
    assert code == 1 and b"no quorum" in err
    assert [r["id"] for r in _members(cluster)] == ["node1", "node2", "node3"]
    assert cluster.rotate(now=True)["version"] == 2  # nothing was disturbed
