"""Snapshot files: our msgpack format (no pickle, no fork), written and loaded durably.

A snapshot file is ``format (1) | msgpack {"fsm": bytes, "last": [cmd, index, term],
"prev": [cmd, index, term], "cluster": [raft address, ...]}``: the state machine's own
snapshot, the last two log entries it covers (pysyncobj keeps them at the head of the
compacted journal) and the Raft members at that point.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from raftsso.errors import DecodeError, StorageError
from raftsso.fsutil import atomic_write, fsync_dir
from raftsso.raft import storage
from raftsso.raft.machine import StateMachine
from raftsso.wire import unversioned, versioned

SNAPSHOT_FILE_FORMAT = 1

Entry = tuple[bytes, int, int]
"""A log entry as pysyncobj has it: ``(command, index, term)``."""


def _entry(raw: Any) -> Entry:
    if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], bytes)
            and isinstance(raw[1], int) and isinstance(raw[2], int)):
        raise DecodeError("malformed log entry in snapshot")
    return (raw[0], raw[1], raw[2])


def read_snapshot_file(path: Path) -> tuple[bytes, Entry, Entry, list[str]]:
    """Decode a snapshot file: ``(fsm blob, last entry, previous entry, members)``."""
    raw = unversioned(path.read_bytes(), SNAPSHOT_FILE_FORMAT, "snapshot file")
    if not isinstance(raw, dict) or not isinstance(raw.get("fsm"), bytes):
        raise DecodeError("malformed snapshot file")
    cluster = raw.get("cluster")
    if not isinstance(cluster, list) or not all(isinstance(c, str) for c in cluster):
        raise DecodeError("malformed member list in snapshot file")
    return raw["fsm"], _entry(raw.get("last")), _entry(raw.get("prev")), cluster


def check_snapshot_file(path: Path, machine: StateMachine[Any]) -> None:
    """Load a snapshot found at start into ``machine``, or refuse to start.

    pysyncobj would log an unreadable snapshot and carry on with an empty state.
    """
    try:
        machine.restore(read_snapshot_file(path)[0])
    except (OSError, DecodeError) as exc:
        raise StorageError(
            f"snapshot {path} is unreadable ({exc}); this node cannot start. Move its data "
            "directory away and let it catch up from its peers") from exc


class SnapshotCodec:
    """pysyncobj's ``serializer`` and ``deserializer`` hooks (they run in the Raft thread)."""

    def __init__(self, machine: StateMachine[Any]) -> None:
        self._machine = machine

    def serialize(self, filename: str, data: tuple[Any, Any, Any]) -> None:
        last, prev, cluster = data
        blob = versioned(SNAPSHOT_FILE_FORMAT, {
            "fsm": self._machine.snapshot(),
            "last": list(last), "prev": list(prev),
            "cluster": sorted(getattr(n, "id", str(n)) for n in cluster),
        })
        try:
            atomic_write(filename, blob)
        except StorageError as exc:
            storage.fail(f"writing snapshot failed: {exc}")
            raise

    def deserialize(self, filename: str) -> tuple[Entry, Entry, list[str]]:
        path = Path(filename)
        try:
            fsm_blob, last, prev, cluster = read_snapshot_file(path)
            self._machine.restore(fsm_blob)
            # A snapshot received from the leader was written by pysyncobj without fsync;
            # make it durable before pysyncobj clears the journal it replaces.
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(path, 0o600)
            fsync_dir(path.parent)
        except Exception as exc:  # any malformed snapshot: never carry on with empty state
            storage.fail(f"loading snapshot {path} failed: {exc}")
            raise
        return last, prev, cluster
