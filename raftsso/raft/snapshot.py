"""Snapshot files: our msgpack format (no pickle, no fork), written and loaded durably.

A snapshot file is ``format (1) | msgpack {"fsm": bytes, "last": [cmd, index, term],
"prev": [cmd, index, term], "cluster": [raft address, ...]}``: the state machine's own
snapshot, the last two log entries it covers (pysyncobj keeps them at the head of the
compacted journal) and the Raft members at that point.

Written without pickle or fork, fsynced before pysyncobj renames it into place; a snapshot
received from the leader is durable before the journal it replaces is cleared. Neither
path needs a new file descriptor once the transfer or the write has begun.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from pysyncobj.serializer import Serializer

from raftsso.errors import DecodeError, StorageError
from raftsso.fsutil import fsync_dir
from raftsso.raft import storage
from raftsso.raft.machine import StateMachine
from raftsso.wire import unversioned, versioned

log = logging.getLogger(__name__)

SNAPSHOT_FILE_FORMAT = 1
COMPACTION_RETRY = 5.0

Entry = tuple[bytes, int, int]
"""A log entry as pysyncobj has it: ``(command, index, term)``."""


def _entry(raw: Any) -> Entry:
    if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], bytes)
            and isinstance(raw[1], int) and isinstance(raw[2], int)):
        raise DecodeError("malformed log entry in snapshot")
    return (raw[0], raw[1], raw[2])


def read_snapshot_file(path: Path) -> tuple[bytes, Entry, Entry, list[str]]:
    """Decode a snapshot file: ``(fsm blob, last entry, previous entry, members)``."""
    return decode_snapshot(path.read_bytes())


def decode_snapshot(blob: bytes) -> tuple[bytes, Entry, Entry, list[str]]:
    """Decode the bytes of a snapshot file (see :func:`read_snapshot_file`)."""
    raw = unversioned(blob, SNAPSHOT_FILE_FORMAT, "snapshot file")
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
    """pysyncobj's ``serializer`` and ``deserializer`` hooks (they run in the Raft thread).

    The codec object itself is the ``serializer`` (pysyncobj calls it with the temporary
    file name), so that :class:`DurableSerializer`, which pysyncobj builds with it, can
    hand it a snapshot received from the leader as an open descriptor.

    Writing a snapshot needs a new file (pysyncobj renames it into place afterwards):
    without a descriptor for it (EMFILE, ENFILE) compaction is postponed for
    :data:`COMPACTION_RETRY` seconds (:attr:`retry_at`), nothing else happens. A failed
    write or fsync is a storage failure and stops the node.
    """

    def __init__(self, machine: StateMachine[Any], directory: Path) -> None:
        self._machine = machine
        self._directory = directory
        self._dir_fd: int | None = None
        # A snapshot received from the leader, durable and renamed into place, still open:
        # the deserializer reads it through this descriptor (no open() needed then).
        self.received_fd: int | None = None
        self.retry_at = 0.0

    def open(self) -> None:
        """Open the directory once, at start (fsyncs after a rename use it)."""
        if self._dir_fd is None:
            self._dir_fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY)

    def close(self) -> None:
        for fd in (self._dir_fd, self.received_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._dir_fd = self.received_fd = None

    def fsync_directory(self) -> None:
        if self._dir_fd is None:
            fsync_dir(self._directory)
        else:
            os.fsync(self._dir_fd)

    def __call__(self, filename: str, data: tuple[Any, Any, Any]) -> None:
        """Write the snapshot to ``filename`` (pysyncobj's temporary name) durably."""
        last, prev, cluster = data
        blob = versioned(SNAPSHOT_FILE_FORMAT, {
            "fsm": self._machine.snapshot(),
            "last": list(last), "prev": list(prev),
            "cluster": sorted(getattr(n, "id", str(n)) for n in cluster),
        })
        try:
            fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            if storage.is_transient(exc):
                self.retry_at = time.monotonic() + COMPACTION_RETRY
                storage.transient.warn("writing a Raft snapshot", exc)
                raise storage.TransientStorageError(str(exc)) from exc
            storage.fail(f"creating snapshot file {filename} failed: {exc}")
            raise StorageError(str(exc)) from exc
        try:
            os.fchmod(fd, 0o600)
            storage.write_all(fd, blob)
            os.fsync(fd)
        except OSError as exc:
            storage.fail(f"writing snapshot {filename} failed: {exc}")
            raise StorageError(str(exc)) from exc
        finally:
            os.close(fd)

    def deserialize(self, filename: str) -> tuple[Entry, Entry, list[str]]:
        path = Path(filename)
        fd, self.received_fd = self.received_fd, None
        try:
            # A snapshot found at start is read by name; a received one through its fd.
            raw = path.read_bytes() if fd is None else _read_all(fd)
            fsm_blob, last, prev, cluster = decode_snapshot(raw)
            self._machine.restore(fsm_blob)
        except Exception as exc:  # any malformed snapshot: never carry on with empty state
            storage.fail(f"loading snapshot {path} failed: {exc}")
            raise
        finally:
            if fd is not None:
                os.close(fd)
        return last, prev, cluster


class DurableSerializer(Serializer):  # type: ignore[misc]
    """pysyncobj's Serializer, with snapshot transfers that need no descriptor at the end.

    Receiving (follower): the chunks go to a temporary file that is fsynced, renamed
    over the snapshot and the directory fsynced *before* pysyncobj is told the transfer
    is complete (it then clears the journal the snapshot replaces and acknowledges); the
    file stays open for :meth:`SnapshotCodec.deserialize`. pysyncobj's own version wrote
    without fsync and reopened the file to load it. A transfer that cannot start for
    lack of a descriptor is dropped (the leader starts it again): nothing acknowledged.

    Sending (leader): a snapshot file that cannot be opened for lack of a descriptor is
    retried on the next append period, with one log line per period instead of pysyncobj's
    traceback on every try.
    """

    def __init__(self, fileName: str | None, transmissionBatchSize: int, tryUseFork: bool,
                 serializer: Any, deserializer: Any, serializeChecker: Any) -> None:
        super().__init__(fileName, transmissionBatchSize, tryUseFork, serializer,
                         deserializer, serializeChecker)
        self._codec = serializer if isinstance(serializer, SnapshotCodec) else None
        self._incoming_fd: int | None = None

    def setTransmissionData(self, data: Any) -> bool:
        codec = self._codec
        filename = self._Serializer__fileName
        if codec is None or filename is None:
            return bool(super().setTransmissionData(data))
        if data is None:
            return False
        chunk, is_first, is_last = data
        tmp = filename + ".1.tmp"
        if is_first:
            self._drop_incoming()
            try:
                self._incoming_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            except OSError as exc:
                if storage.is_transient(exc):
                    storage.transient.warn("receiving a Raft snapshot", exc)
                else:
                    log.warning("cannot receive a Raft snapshot into %s: %s", tmp, exc)
                return False
        fd = self._incoming_fd
        if fd is None:
            return False
        try:
            storage.write_all(fd, bytes(chunk))
        except OSError as exc:
            # Nothing is acknowledged before the last chunk: drop it, the leader resends.
            log.warning("cannot receive a Raft snapshot into %s: %s", tmp, exc)
            self._drop_incoming()
            return False
        if not is_last:
            return False
        self._incoming_fd = None
        try:
            os.fsync(fd)
            os.replace(tmp, filename)
            codec.fsync_directory()
        except OSError as exc:
            os.close(fd)
            storage.fail(f"making the received snapshot {filename} durable failed: {exc}")
            return False
        if codec.received_fd is not None:
            os.close(codec.received_fd)
        codec.received_fd = fd
        return True

    def _drop_incoming(self) -> None:
        if self._incoming_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._incoming_fd)
            self._incoming_fd = None

    def getTransmissionData(self, transmissionID: Any) -> Any:
        transmissions = self._Serializer__transmissions
        filename = self._Serializer__fileName
        if (self._Serializer__pid == 0 and filename is not None
                and transmissionID not in transmissions):
            try:
                transmissions[transmissionID] = {"file": open(filename, "rb"),  # noqa: SIM115
                                                 "transmitted": 0}
            except OSError as exc:
                if storage.is_transient(exc):
                    storage.transient.warn("sending a Raft snapshot", exc)
                    return None
                # anything else: pysyncobj's own handling (it logs and retries)
        return super().getTransmissionData(transmissionID)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
