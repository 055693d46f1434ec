"""Manual designation of the primary: ``transfer-leader`` and its refusals."""

from __future__ import annotations

import json
import signal

import pytest

from raftsso.errors import RemoteError
from tests.harness import Cluster, cli, wait_for

pytestmark = pytest.mark.integration


def _transfer(cluster: Cluster, node_id: str) -> tuple[int, bytes, bytes]:
    r = cli("-c", str(cluster.admin_toml), "transfer-leader", node_id, "--json")
    return r.returncode, r.stdout, r.stderr


def test_transfer_moves_leadership_and_waits_for_it(cluster: Cluster) -> None:
    old = cluster.leader()
    target = next(i for i in cluster.ids if i != old)
    wait_for(lambda: cluster.node_status(target)["last_applied"]
             >= cluster.node_status(old)["last_applied"], what="the target to catch up")
    code, out, err = _transfer(cluster, target)
    assert code == 0, err
    result = json.loads(out)
    assert result["leader"] == target and result["changed"] is True
    # Done when the command returns: the target itself says it leads.
    status = cluster.node_status(target)
    assert status["role"] == "leader" and status["term"] == result["term"]
    assert cluster.rotate(now=True)["version"] == 2
    code, out, _ = _transfer(cluster, target)
    assert code == 0 and json.loads(out)["changed"] is False


def test_transfer_refusals(cluster: Cluster) -> None:
    leader = cluster.leader()
    unknown = cli("-c", str(cluster.admin_toml), "transfer-leader", "node9")
    assert unknown.returncode == 2 and b"node9" in unknown.stderr
    with pytest.raises(RemoteError) as info:
        cluster.client.call_leader("transfer_leader", {"node_id": "node9"})
    assert info.value.code == "NOT_A_MEMBER"

    dead = next(i for i in cluster.ids if i != leader)
    cluster.kill(dead)
    code, _, err = _transfer(cluster, dead)
    assert code == 1 and b"unreachable" in err

    hung = next(i for i in cluster.ids if i not in (leader, dead))
    cluster.start(dead)
    wait_for(lambda: cluster.status()["nodes"][int(dead[-1]) - 1]["reachable"],
             what="the killed node to be back")
    cluster.signal(hung, signal.SIGSTOP)
    try:
        def refused() -> bool:
            c, _, e = _transfer(cluster, hung)
            return c == 1 and b"unreachable" in e

        wait_for(refused, what="a transfer to a hung node to be refused as unreachable")
    finally:
        cluster.signal(hung, signal.SIGCONT)
    # The resumed node may call an election (pysyncobj has no pre-vote); the cluster
    # settles with a leader either way.
    cluster.wait_healthy()
