"""Log compaction and snapshot install across real processes, then recovery after SIGKILL.

The nodes compact their Raft log after a handful of entries (``[raft]
log_compaction_min_entries``), so a follower that was down while the others compacted can
only catch up through a snapshot sent by the leader: a chunked transfer over the peer link
(through the restricted unpickler; the last chunk is ``(b"", False, True)``), written and
fsynced by the follower, which then clears its journal. Afterwards every node is killed at
once and must come back from snapshot + journal with nothing lost.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from raftsso.config import RaftTimings
from raftsso.raft.journal import DurableJournal
from raftsso.raft.snapshot import read_snapshot_file
from tests.harness import Cluster, NodeOptions, wait_for

pytestmark = pytest.mark.integration

COMPACT_AFTER = 8  # log entries before a node compacts (the default is 1000)
ROTATIONS = 3 * COMPACT_AFTER


def _snapshot_file(cluster: Cluster, node_id: str) -> Path:
    return cluster.root / node_id / "data" / "raft.snapshot"


def _snapshot_first_index(cluster: Cluster, node_id: str) -> int | None:
    """The index of the first entry a node's journal keeps after its last compaction."""
    path = _snapshot_file(cluster, node_id)
    if not path.exists():
        return None
    _, _last, prev, _members = read_snapshot_file(path)
    return prev[1]


def _last_journal_index(cluster: Cluster, node_id: str) -> int:
    """The last entry in a stopped node's journal (appended, maybe not yet committed)."""
    journal = DurableJournal(str(cluster.root / node_id / "data" / "raft.journal"))
    try:
        return int(journal[-1][1])
    finally:
        journal._destroy()


def _ring(cluster: Cluster, node_id: str) -> dict[str, Any]:
    ring = cluster.client.call_node(cluster.address(node_id), "keyring", timeout=2.0)
    assert isinstance(ring, dict)
    return ring


def _keys(ring: dict[str, Any]) -> dict[int, tuple[str, bytes]]:
    return {v["id"]: (v["state"], v["key"]) for v in ring["versions"]}


def test_a_lagging_follower_installs_a_snapshot_and_everything_survives_sigkill(
        tmp_path: Path) -> None:
    started = time.monotonic()
    cluster = Cluster(tmp_path / "deploy", options=NodeOptions(
        raft=RaftTimings(log_compaction_min_entries=COMPACT_AFTER)))
    cluster.start()
    try:
        leader = cluster.leader()
        lagging = next(i for i in cluster.ids if i != leader)
        others = [i for i in cluster.ids if i != lagging]
        wait_for(lambda: cluster.node_status(lagging)["primary_version"] == 1,
                 what="the follower to apply version 1")
        assert _snapshot_file(cluster, lagging).exists() is False
        cluster.kill(lagging)
        behind = _last_journal_index(cluster, lagging)

        versions = [cluster.rotate(now=True)["version"] for _ in range(ROTATIONS)]
        assert versions == list(range(2, ROTATIONS + 2))
        last = versions[-1]

        # Both running nodes compacted beyond what the stopped follower has, so whoever
        # leads cannot send it the missing entries: only a snapshot can bring it up to date.
        def compacted_past_the_follower() -> bool:
            firsts = [_snapshot_first_index(cluster, i) for i in others]
            return all(f is not None and f > behind + 1 for f in firsts)

        wait_for(compacted_past_the_follower, timeout=10,
                 what="both running nodes to compact past the stopped follower")
        expected = _keys(_ring(cluster, cluster.leader()))
        assert len(expected) == ROTATIONS + 1
        assert expected[last][0] == "primary"

        cluster.start(lagging)
        wait_for(lambda: _keys(_ring(cluster, lagging)) == expected, timeout=15,
                 what="the restarted follower to install the snapshot and catch up")
        first = _snapshot_first_index(cluster, lagging)
        assert first is not None and first > behind + 1
        assert cluster.alive(lagging)
        assert "Traceback" not in cluster.log(lagging)

        # One more acknowledged rotation on top of the snapshot, then SIGKILL everyone.
        extra = cluster.rotate(now=True)
        assert extra["version"] == last + 1
        wait_for(lambda: all(cluster.node_status(i)["primary_version"] == last + 1
                             for i in cluster.ids), what="every node to apply the rotation")
        expected = _keys(_ring(cluster, cluster.leader()))
        cluster.kill()
        cluster.start()
        cluster.wait_healthy()
        for node_id in cluster.ids:
            wait_for(lambda n=node_id: _keys(_ring(cluster, n)) == expected,  # type: ignore[misc]
                     timeout=15, what=f"{node_id} to recover every version after SIGKILL")
        assert cluster.status()["primary_version"] == last + 1
        # and the recovered cluster still takes writes
        assert cluster.rotate(now=True)["version"] == last + 2
    finally:
        cluster.close()
    assert time.monotonic() - started < 60
