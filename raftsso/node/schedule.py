"""The leader's day-two duties (issue 15), run by one background thread while it leads:

1. **encryption counts**: every :data:`COUNT_PERIOD` seconds, gather the SSO clients' latest
   reports from every member (``encryptions`` op; this node's own tracker too) and commit
   those that grew (an ``encryptions`` command; :mod:`raftsso.encryption_counts`);
2. **rotation policy**: a staged rotation when ``rotation_period`` has passed since the
   newest version, or the primary reached its share of ``max_encryptions``
   (:mod:`raftsso.rotation_policy`); promotion then follows the normal rules
   (:mod:`raftsso.node.duties`);
3. **scheduled backups** (``[backup]``): a backup encrypted to the recipient key, written
   atomically into ``dir`` (:mod:`raftsso.backup_schedule`) when a live version is not
   backed up yet, when the keyring changed since this leader's last backup, and every
   ``interval``; old files rotate out to ``keep``; the versions are then recorded backed up
   (the ``backed_up`` command), which clears the "never backed up" warning and event.

Every write goes through the serialised write path like an operator's. A duty that fails
(no quorum, a full disk) is logged, emitted as an event (backups), and tried again later;
it never stops the thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from raftsso import backup_recipient, events
from raftsso.backup import BackupVersion
from raftsso.backup_schedule import BackupDir, Content, backup_name, due
from raftsso.config import Endpoint, NodeConfig, Peer
from raftsso.errors import RaftssoError
from raftsso.fsm import KeyringStateMachine
from raftsso.keyring import Keyring, KeyState
from raftsso.node.keyring_writes import KeyringWrites
from raftsso.node.raft_member import RaftMember
from raftsso.node.ticker import Ticker
from raftsso.node.tracking import node_client
from raftsso.node.usage import EncryptionReportTracker
from raftsso.node.write_path import WritePath
from raftsso.protocol.commands import MAX_REPORTS_AT_ONCE, Command, Encryptions
from raftsso.protocol.ids import VersionId, new_request_id
from raftsso.protocol.messages import (
    BackedUpRequest,
    EncryptionsRequest,
    KeyringResult,
    RotateRequest,
)
from raftsso.remote import ClusterClient
from raftsso.rotation_policy import RotationPolicy, rotation_due

log = logging.getLogger(__name__)

TICK = 0.25
COUNT_PERIOD = 5.0
#: After a failed backup, the next attempt waits this long (or the interval, if shorter).
BACKUP_RETRY = 10.0


class ScheduledDuties:
    def __init__(self, cfg: NodeConfig, fsm: KeyringStateMachine, raft: RaftMember,
                 writes: WritePath, keyring_writes: KeyringWrites,
                 reports: EncryptionReportTracker, members: Callable[[], list[Peer]],
                 keyring: Callable[[], KeyringResult]) -> None:
        self._cfg = cfg
        self._fsm = fsm
        self._raft = raft
        self._writes = writes
        self._keyring_writes = keyring_writes
        self._reports = reports
        self._members = members
        self._keyring = keyring
        self.policy = RotationPolicy(cfg.rotation_period, cfg.max_encryptions)
        schedule = cfg.backup
        self._dir = BackupDir(schedule.dir, schedule.keep) if schedule is not None else None
        self._recipient = (backup_recipient.load_recipient(schedule.recipient)
                           if schedule is not None else None)
        self._term = -1
        self._last_written: Content | None = None
        self._last_backup_at: float | None = None  # this leadership's last backup
        self._next_backup_try = 0.0
        self.last_backup: float | None = None  # wall clock of this node's last backup
        self.last_backup_file: str | None = None
        self._last_count = 0.0
        self._peers: ClusterClient | None = None
        self._ticker = Ticker("leader-schedule", TICK, self._tick)
        # Counters for /metrics (read by raftsso.daytwo_metrics).
        self.backups_written = 0
        self.backup_failures = 0
        self.policy_rotations: dict[str, int] = {}

    def start(self) -> None:
        schedule = self._cfg.backup
        if schedule is not None and self._recipient is not None:
            log.info("scheduled backups (when leader): to key %s in %s every %g s, keeping "
                     "%d", self._recipient.key_id, schedule.dir, schedule.interval,
                     schedule.keep)
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()
        if self._peers is not None:
            self._peers.close()

    def wake(self) -> None:
        self._ticker.wake()

    def _tick(self) -> None:
        try:
            if self._writes.ready_for_writes:
                self.run_once()
        except RaftssoError as exc:
            log.info("scheduled duty deferred: %s", exc)
        except Exception:
            log.exception("unexpected error in the leader's scheduled duties")
            self._ticker.pause(1.0)

    def run_once(self) -> None:
        term = self._raft.term
        if term != self._term:  # a new leadership: nothing known of the last one's backups
            self._term = term
            self._last_written = None
            self._last_backup_at = None
            self._next_backup_try = 0.0
        now = time.monotonic()
        if now - self._last_count >= COUNT_PERIOD:
            self._last_count = now
            self.commit_encryption_counts()
        self.rotate_by_policy()
        self.backup_if_due()

    # 1. encryption counts ------------------------------------------------------------------

    def _peer_client(self) -> ClusterClient | None:
        others = [Endpoint(p.id, p.service_address) for p in self._members()
                  if p.id != self._cfg.node_id and p.service_address]
        if not others:
            return None
        if self._peers is None or {n.address for n in self._peers.nodes} != \
                {e.address for e in others}:
            if self._peers is not None:
                self._peers.close()
            self._peers = node_client(self._cfg, others)
        return self._peers

    def gather_reports(self) -> dict[str, dict[int, int]]:
        """Every member's latest client reports (the highest count per client and
        version wins: a client may have reported to several nodes)."""
        views = [self._reports.view()]
        peers = self._peer_client()
        for peer in peers.nodes if peers is not None else ():
            assert peers is not None
            try:
                views.append(peers.request_node(peer.address, EncryptionsRequest(),
                                                timeout=1.0))
            except (OSError, RaftssoError) as exc:
                log.debug("no encryption reports from %s: %s", peer.id, exc)
        merged: dict[str, dict[int, int]] = {}
        for view in views:
            for client, counts in view.reports.items():
                mine = merged.setdefault(client, {})
                for version, count in counts.items():
                    mine[version] = max(count, mine.get(version, 0))
        return merged

    def commit_encryption_counts(self) -> None:
        ledger = self._fsm.encryptions()
        grown = {}
        for client, counts in self.gather_reports().items():
            seen = ledger.clients.get(client)
            before = seen.counts if seen is not None else {}
            if any(n > before.get(v, 0) for v, n in counts.items()):
                grown[client] = counts
        clients = sorted(grown)
        for start in range(0, len(clients), MAX_REPORTS_AT_ONCE):  # commands stay bounded
            batch = {c: grown[c] for c in clients[start:start + MAX_REPORTS_AT_ONCE]}
            command = Encryptions(new_request_id(), batch, time.time())
            self._writes.run(command.req, "encryption counts", _always(command))

    # 2. rotation policy --------------------------------------------------------------------

    def _due(self, ring: Keyring) -> str | None:
        return rotation_due(time.time(), ring, self.policy, self._fsm.encryptions().totals)

    def rotate_by_policy(self) -> None:
        if not self.policy.enabled:
            return
        reason = self._due(self._fsm.keyring)
        if reason is None:
            return
        result = self._keyring_writes.rotate_if(RotateRequest(),
                                                lambda ring: self._due(ring) is not None)
        if result is None:
            return
        self.policy_rotations[reason] = self.policy_rotations.get(reason, 0) + 1
        log.info("rotation by policy (%s): version %d is %s", reason, result.version,
                 result.state.value)
        events.emit(events.ROTATION_STAGED, f"version {result.version} staged by the "
                    f"rotation policy ({reason})", version=result.version, reason=reason)

    # 3. scheduled backups ---------------------------------------------------------------------

    def _content(self, ring: Keyring) -> Content:
        return Content.of(((v.id, v.fingerprint) for v in ring.versions
                           if v.state is not KeyState.RETIRED), ring.primary)

    def backup_if_due(self) -> None:
        if self._dir is None or self._recipient is None or self._cfg.backup is None:
            return
        now = time.monotonic()
        if now < self._next_backup_try:
            return
        ring = self._fsm.keyring
        live = [v for v in ring.versions if v.state is not KeyState.RETIRED]
        last_time = self._last_backup_at
        if last_time is None:  # a new leader: the newest file's age stands for it
            newest = self._dir.newest_time()
            last_time = None if newest is None else now - max(0.0, time.time() - newest)
        reason = due(now, current=self._content(ring), last_written=self._last_written,
                     last_time=last_time, all_backed_up=all(v.backed_up for v in live),
                     interval=self._cfg.backup.interval)
        if reason is None:
            return
        try:
            self.write_backup(reason)
        except (RaftssoError, OSError) as exc:
            self.backup_failures += 1
            self._next_backup_try = now + min(BACKUP_RETRY, self._cfg.backup.interval)
            log.error("scheduled backup failed (%s): %s", reason, exc)
            events.emit(events.BACKUP_FAILED, f"scheduled backup failed: {exc}",
                        reason=reason, scheduled=True)

    def write_backup(self, reason: str) -> None:
        assert self._dir is not None and self._recipient is not None
        ring = self._keyring()  # every usable version with its key, unsealed in memory
        versions = [BackupVersion(v.info.id, v.info.state.value, v.info.fingerprint,
                                  v.info.created, v.key) for v in ring.versions]
        blob = backup_recipient.write_backup(self._recipient, cluster_id=ring.cluster_id,
                                             primary=ring.primary, versions=versions)
        wall = time.time()
        path = self._dir.write(blob, backup_name(wall, ring.cluster_id, self._cfg.node_id))
        written = Content.of(((v.id, v.fingerprint) for v in versions), ring.primary)
        self._last_written = written
        self._last_backup_at = time.monotonic()
        self.last_backup, self.last_backup_file = wall, path.name
        self.backups_written += 1
        log.info("scheduled backup (%s): versions %s in %s", reason,
                 sorted(v.id for v in versions), path)
        self._keyring_writes.mark_backed_up(BackedUpRequest(
            {VersionId(v.id): v.fingerprint for v in versions}))
        events.emit(events.BACKUP_WRITTEN, f"scheduled backup {path.name}",
                    versions=sorted(v.id for v in versions), reason=reason, scheduled=True)


def _always(command: Command) -> Callable[[Keyring], Command | None]:
    """A write-path ``build`` that proposes ``command`` whatever the keyring."""
    return lambda ring: command
