"""Disk faults on real node processes: failing fsync, torn journal tails, corrupt journals.

Failing fsync is injected with libfiu (Debian package ``fiu-utils``): the node runs under
``fiu-run -x`` (the POSIX preload library, remote control over named pipes) and the
failure points ``posix/io/sync/fdatasync`` and ``posix/io/sync/fsync`` are enabled at run
time with ``fiu-ctrl``, or from the start with ``fiu-run -c``. Nothing in raftsso is
changed for these tests. Without ``fiu-run`` they are skipped with the reason.

What must hold (DESIGN.md "Durability", docs/architecture.md):

* a node whose fsync fails exits (code 75, :func:`raftsso.raft.storage._die`) before anything it
  could not persist is acknowledged: a leader never acknowledges the write, and a follower
  never counts toward the quorum that would acknowledge it;
* the rest of the cluster goes on;
* a torn journal tail (a crash mid-append) is cut at start with a clear warning and the
  node catches up from the leader; a damaged record *followed by valid ones* is corruption
  and the node refuses to start (move its data away and it catches up from its peers).
"""

from __future__ import annotations

import os
import secrets
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from raftsso.errors import RaftssoError
from raftsso.fsm import COMMAND_FORMAT
from raftsso.raft.journal import _HEADER, DurableJournal
from raftsso.wire import unversioned
from tests.chaos.checker import fsm_command, read_node_log, replay
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.integration

FDATASYNC = "posix/io/sync/fdatasync"
FSYNC = "posix/io/sync/fsync"
EXIT_STORAGE_FAILURE = 75


def _require_fiu() -> None:
    if shutil.which("fiu-run") is None or shutil.which("fiu-ctrl") is None:
        pytest.skip("libfiu's fiu-run/fiu-ctrl are not installed (Debian: apt-get install "
                    "fiu-utils)")


def _start_under_fiu(cluster: Cluster, node_id: str, ctrl: Path,
                     enable: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """Start ``node_id`` under ``fiu-run -x`` with remote control at ``ctrl``-PID."""
    commands = [arg for point in enable for arg in ("-c", f"enable name={point}")]
    # fiu-run execs the program: this pid is the node's, so kill/stop/wait work as usual.
    cluster.start(node_id, wrapper=["fiu-run", "-x", "-f", str(ctrl), *commands])
    return cluster.procs[node_id]


def _fiu_ctrl(ctrl: Path, pid: int, *commands: str) -> None:
    wait_for(lambda: Path(f"{ctrl}-{pid}.in").exists(), timeout=10,
             what="libfiu's control fifo")
    args = [arg for c in commands for arg in ("-c", c)]
    subprocess.run(["fiu-ctrl", "-f", str(ctrl), *args, str(pid)], check=True, timeout=10,
                   capture_output=True)


def _primary(cluster: Cluster, node_id: str) -> Any:
    return cluster.node_status(node_id)["primary_version"]


def _make_leader(cluster: Cluster, node_id: str) -> None:
    def leads() -> bool:
        if cluster.leader() == node_id:
            return True
        cluster.client.call_leader("transfer_leader", {"node_id": node_id}, deadline=10)
        return False

    wait_for(leads, timeout=60, what=f"{node_id} to lead")


def _rotate_on(cluster: Cluster, node_id: str, request_id: bytes,
               timeout: float = 25.0) -> Any:
    return cluster.rotate_on(node_id, request_id, timeout=timeout)


def _requests_on_disk(path: Path) -> set[str]:
    """Request ids (hex) of every command in a journal file, committed or not."""
    found = set()
    for _idx, _term, raw in read_node_log(path.parent.name, path.parent).entries:
        command = fsm_command(raw)
        if command is not None:
            cmd = unversioned(command, COMMAND_FORMAT, "command")
            found.add(cmd["req"].hex())
    return found


def _committed_verdicts(cluster: Cluster) -> dict[str, Any]:
    """Stop the cluster and replay every node's committed log (request id -> verdict)."""
    commit = max(cluster.node_status(n)["commit_index"] for n in cluster.ids)
    cluster.stop()
    verdicts: dict[str, Any] = {}
    for node_id in cluster.ids:
        result = replay(read_node_log(node_id, cluster.root / node_id / "data"), commit)
        assert not result.violations, result.violations
        verdicts.update(result.verdicts)
    return verdicts


def _fail_log(cluster: Cluster) -> None:
    for node_id in cluster.ids:
        print(f"----- {node_id} log -----\n{cluster.log(node_id)[-5000:]}")


# -- failing fsync -------------------------------------------------------------------------


def test_leader_whose_fsync_fails_exits_and_never_acknowledges(tmp_path: Path) -> None:
    _require_fiu()
    cluster = Cluster(tmp_path / "deploy")
    ctrl = tmp_path / "fiu"
    try:
        cluster.start("node2", "node3")
        proc = _start_under_fiu(cluster, "node1", ctrl)
        cluster.wait_healthy()
        _make_leader(cluster, "node1")
        base = cluster.rotate(now=True)
        wait_for(lambda: all(_primary(cluster, n) == base["version"] for n in cluster.ids),
                 what="the first rotation on every node")
        time.sleep(1.5)  # the once-a-second commit-index flush happens while the disk works

        _fiu_ctrl(ctrl, proc.pid, f"enable name={FDATASYNC}", f"enable name={FSYNC}")
        rid = secrets.token_bytes(16)
        with pytest.raises((RaftssoError, OSError)):
            answer = _rotate_on(cluster, "node1", rid)
            pytest.fail(f"a leader that cannot fsync acknowledged a rotation: {answer}")
        assert proc.wait(timeout=20) == EXIT_STORAGE_FAILURE
        log = cluster.log("node1")
        assert "failed" in log and "sync" in log
        assert "stopping this node so that nothing unpersisted is acknowledged" in log
        # The write reached the page cache (pwrite succeeded), maybe the file: report it.
        print("unacknowledged entry in node1's journal file:",
              rid.hex() in _requests_on_disk(cluster.root / "node1" / "data" / "raft.journal"))

        # The other two go on. The leader sends an entry to its followers while it flushes
        # it itself (the flushes run in parallel), so they may hold the failed write and
        # the next leader may commit it: its outcome was unknown to the caller, as for any
        # write whose leader dies. Either way it takes the next version or none.
        cluster.leader(exclude=("node1",))
        after = cluster.rotate(now=True)
        taken = after["version"] - base["version"] - 1
        assert taken in (0, 1)

        # With a working disk again, node1 rejoins (dropping the entry if it never committed).
        cluster.start("node1")
        wait_for(lambda: _primary(cluster, "node1") == after["version"],
                 what="node1 to catch up after its restart")
        verdicts = _committed_verdicts(cluster)
        assert (rid.hex() in verdicts) == bool(taken), "a version taken by nothing"
        if not taken:
            assert rid.hex() not in _requests_on_disk(
                cluster.root / "node1" / "data" / "raft.journal")
    except BaseException:
        _fail_log(cluster)
        raise
    finally:
        cluster.close()


def test_follower_whose_fsync_fails_never_completes_a_quorum(tmp_path: Path) -> None:
    """Leader + a follower that cannot persist is not a majority: nothing is acknowledged."""
    _require_fiu()
    cluster = Cluster(tmp_path / "deploy")
    ctrl = tmp_path / "fiu"
    try:
        cluster.start("node1", "node2")
        proc = _start_under_fiu(cluster, "node3", ctrl)
        cluster.wait_healthy()
        _make_leader(cluster, "node1")
        base = cluster.rotate(now=True)
        wait_for(lambda: all(_primary(cluster, n) == base["version"] for n in cluster.ids),
                 what="the first rotation on every node")
        time.sleep(1.5)

        cluster.kill("node2")  # the only possible quorum is now node1 + node3
        _fiu_ctrl(ctrl, proc.pid, f"enable name={FDATASYNC}", f"enable name={FSYNC}")
        rid = secrets.token_bytes(16)
        with pytest.raises(RaftssoError):
            answer = _rotate_on(cluster, "node1", rid)
            pytest.fail(f"a rotation was acknowledged without a durable majority: {answer}")
        assert proc.wait(timeout=20) == EXIT_STORAGE_FAILURE
        assert "stopping this node so that nothing unpersisted is acknowledged" in \
            cluster.log("node3")
        assert _primary(cluster, "node1") == base["version"]

        # Disks fixed, nodes back: the cluster recovers; the write may commit now (its
        # outcome was unknown), and retrying with its request id never applies it twice.
        cluster.start("node2", "node3")
        cluster.wait_healthy()
        first = cluster.rotate(now=True, request_id=rid)
        again = cluster.rotate(now=True, request_id=rid)
        assert first == again
        wait_for(lambda: all(_primary(cluster, n) == first["version"] for n in cluster.ids),
                 what="every node to agree after recovery")
    except BaseException:
        _fail_log(cluster)
        raise
    finally:
        cluster.close()


def test_node_whose_disk_cannot_sync_from_the_start_never_joins(tmp_path: Path) -> None:
    _require_fiu()
    cluster = Cluster(tmp_path / "deploy")
    try:
        cluster.start("node1", "node2")
        proc = _start_under_fiu(cluster, "node3", tmp_path / "fiu", enable=(FDATASYNC,))
        assert proc.wait(timeout=30) == EXIT_STORAGE_FAILURE
        assert "fdatasync of the Raft journal" in cluster.log("node3")
        cluster.wait_healthy()
        assert cluster.rotate(now=True)["version"] == 2
    except BaseException:
        _fail_log(cluster)
        raise
    finally:
        cluster.close()


# -- torn and corrupt journals ------------------------------------------------------------


def _records(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of every valid record of a journal file."""
    data = path.read_bytes()
    assert data.startswith(_HEADER)
    offset, out = len(_HEADER), []
    while offset < len(data):
        parsed = DurableJournal._parse_record(data, offset)
        if parsed is None:
            break
        out.append((offset, parsed[0]))
        offset += parsed[0]
    return out


def _group_starts(path: Path) -> set[int]:
    """Offsets of the valid records that started a write group (the first after a flush)."""
    data = path.read_bytes()
    starts = set()
    for offset, _ in _records(path):
        parsed = DurableJournal._parse(data, offset)
        assert parsed is not None
        if parsed[4]:
            starts.add(offset)
    return starts


def _follower_with_entries(cluster: Cluster, rotations: int = 3) -> tuple[str, int]:
    cluster.wait_healthy()
    for _ in range(rotations):
        version = cluster.rotate(now=True)["version"]
    wait_for(lambda: all(_primary(cluster, n) == version for n in cluster.ids),
             what="every node to apply the rotations")
    leader = cluster.leader()
    return next(n for n in cluster.ids if n != leader), version


@pytest.mark.parametrize("damage", ["cut_mid_record", "partial_append"])
def test_torn_journal_tail_is_cut_with_a_warning_and_the_node_catches_up(
        tmp_path: Path, damage: str) -> None:
    cluster = Cluster(tmp_path / "deploy")
    try:
        cluster.start()
        node, version = _follower_with_entries(cluster)
        cluster.kill(node)
        journal = cluster.root / node / "data" / "raft.journal"
        records = _records(journal)
        size = journal.stat().st_size
        if damage == "cut_mid_record":
            # A crash in the middle of appending the last record (which the majority has).
            offset, length = records[-1]
            os.truncate(journal, offset + length // 2)
            torn_at = offset
        else:
            # A crash while appending one more record: its header promises more than came.
            with journal.open("ab") as f:
                f.write(struct.pack(">II", 200, 0) + b"\x00" * 30)
            torn_at = size
        cluster.start(node)
        wait_for(lambda: _primary(cluster, node) == version, what=f"{node} to catch up")
        log = cluster.log(node)
        assert f"has a torn or corrupt tail at offset {torn_at}" in log, log[-3000:]
        assert "the entries will be replicated again by the leader" in log
        new = cluster.rotate(now=True)["version"]
        wait_for(lambda: _primary(cluster, node) == new, what=f"{node} to take new writes")
        ring = cluster.client.call_node(cluster.address(node), "keyring")
        leader_ring = cluster.client.call_node(cluster.address(cluster.leader()), "keyring")
        assert ring["versions"] == leader_ring["versions"]
    except BaseException:
        _fail_log(cluster)
        raise
    finally:
        cluster.close()


def test_corrupt_journal_refuses_to_start_and_recovers_from_peers_once_moved_away(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "deploy")
    try:
        cluster.start()
        node, version = _follower_with_entries(cluster)
        cluster.kill(node)
        journal = cluster.root / node / "data" / "raft.journal"
        # A damaged record followed by a valid record that started a later write group:
        # disk corruption, not a torn tail (a damage inside the last group is cut as torn).
        records = _records(journal)
        starts = _group_starts(journal)
        later = max(i for i, (offset, _) in enumerate(records) if offset in starts)
        assert later >= 1, "the follower's journal holds a single write group"
        offset, length = records[later - 1]
        data = bytearray(journal.read_bytes())
        data[offset + length - 3] ^= 0xFF
        journal.write_bytes(bytes(data))
        cluster.start(node)
        code = cluster.wait(node, timeout=30)
        assert code not in (0, None)
        log = cluster.log(node)
        assert "is corrupt" in log and "this node will not start" in log, log[-3000:]
        assert journal.read_bytes() == bytes(data), "a refused start must not touch the file"

        # The documented way out: move the data directory away; the node catches up.
        (cluster.root / node / "data").rename(cluster.root / node / "data.corrupt")
        cluster.start(node)
        wait_for(lambda: _primary(cluster, node) == version,
                 what=f"{node} to catch up from its peers")
    except BaseException:
        _fail_log(cluster)
        raise
    finally:
        cluster.close()
