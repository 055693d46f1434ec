"""The operator's writes to the keyring: rotate, retire, record a backup, restore.

Keys are generated and sealed here, *before* proposing, so the state machine stays
deterministic. Every refusal is decided in the leader's serialised write path, on the
keyring as it is past the barrier (:mod:`raftsso.node.write_path`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from raftsso import envelope
from raftsso.config import NodeConfig
from raftsso.errors import Conflict, RemoteError
from raftsso.keyring import Keyring, KeyState
from raftsso.known_stores import KnownStore, retire_blocker
from raftsso.node.sealing import NodeSeal, scrub
from raftsso.node.tracking import ClientCensus
from raftsso.node.write_path import WritePath, result_of
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.commands import BackedUp, Command, Restore, Retire, Rotate, SealedVersion
from raftsso.protocol.ids import VersionId, version_id
from raftsso.protocol.messages import (
    BackedUpRequest,
    BackedUpResult,
    RestoreRequest,
    RestoreResult,
    RetireRequest,
    RotateRequest,
    VersionResult,
)

log = logging.getLogger(__name__)

#: Versions not retired at once. Every one travels, with its key, in each ``keyring``
#: answer: at this cap the answer stays far below a frame (1 MiB; about 140 bytes a
#: version). A rotation past it is refused until old versions are retired.
MAX_LIVE_VERSIONS = 4096


def live_versions(ring: Keyring) -> int:
    return sum(1 for v in ring.versions if v.state is not KeyState.RETIRED)


def _too_many(live: int) -> RemoteError:
    return RemoteError(
        f"the keyring holds {live} versions that are not retired, the most it may hold "
        f"({MAX_LIVE_VERSIONS}); retire old versions first (rewrap, then raftsso retire "
        "VERSION)", code=ErrorCode.TOO_MANY_VERSIONS)


class KeyringWrites:
    def __init__(self, cfg: NodeConfig, writes: WritePath, census: ClientCensus,
                 seal: NodeSeal,
                 stores: Callable[[], Mapping[str, KnownStore]] = dict) -> None:
        self._cfg = cfg
        self._stores = stores
        self._writes = writes
        self._census = census
        self._seal = seal

    def rotate(self, req: RotateRequest) -> VersionResult:
        """A new version (staged, or primary with ``now``): a compare-and-set on the primary.

        ``expect_primary`` is the primary the caller saw; if another rotation changed it
        meanwhile, this one fails with CONFLICT. Without it the leader uses the primary it
        sees now (rotations to one leader are serialised, so none is lost).
        """

        result = self.rotate_if(req, lambda ring: True)
        assert result is not None
        return result

    async def rotate_async(self, req: RotateRequest) -> VersionResult:
        """:meth:`rotate` for the service's event loop: built there and awaited there,
        with no worker thread, when the seal wraps in memory and the write path is free
        (:meth:`WritePath.run_async`); otherwise in a worker thread."""
        if not self._seal.wraps_in_memory:  # a token call may block: not on the loop
            return await asyncio.to_thread(self.rotate, req)
        outcome = await self._writes.run_async(req.request_id, "rotation",
                                               self._rotate_builder(req, lambda ring: True))
        assert outcome is not None
        return VersionResult.from_wire(result_of(outcome))

    def rotate_if(self, req: RotateRequest,
                  still_wanted: Callable[[Keyring], bool]) -> VersionResult | None:
        """:meth:`rotate`, unless ``still_wanted`` says no on the keyring past the barrier
        (the leader's rotation policy, :mod:`raftsso.node.schedule`): then None."""
        outcome = self._writes.run(req.request_id, "rotation",
                                   self._rotate_builder(req, still_wanted))
        return None if outcome is None else VersionResult.from_wire(result_of(outcome))

    def _rotate_builder(self, req: RotateRequest, still_wanted: Callable[[Keyring], bool]
                        ) -> Callable[[Keyring], Command | None]:
        def build(ring: Keyring) -> Command | None:
            if not still_wanted(ring):
                return None
            # Counting walks every version: only when there are enough to reach the cap.
            if len(ring.versions) >= MAX_LIVE_VERSIONS and \
                    (live := live_versions(ring)) >= MAX_LIVE_VERSIONS:
                raise _too_many(live)
            version = version_id(ring.last_id + 1)
            key = envelope.new_key()
            expect = req.expect_primary
            if expect is None and ring.primary is not None:
                expect = VersionId(ring.primary)
            # Sealed under the keyring's seal generation, read here in the write path: a
            # seal rekey committed meanwhile is seen (and the state machine checks again).
            sealed = self._seal.wrap(key, version, ring.seal_generation)
            fingerprint = envelope.fingerprint(key)
            scrub(key)  # the plaintext is needed no more: overwritten, not just freed
            return Rotate(req.request_id, version, sealed, fingerprint, time.time(), expect,
                          req.now)

        return build

    def retire(self, req: RetireRequest) -> VersionResult:
        """Destroy a non-primary version's key material in the replicated state.

        Clients keep encrypting with their cached primary until they resync, so a version
        that was primary until recently may still be receiving new data: refused until
        every client seen recently has been served a newer primary, or the primary has
        been primary for a whole ``client_window`` (``force`` skips this check). Decided
        on the keyring past the barrier: a new leader that has not applied the latest
        promotion yet would otherwise see the old primary as primary still, skip the check,
        and then retire it right after its promotion.
        """

        def build(ring: Keyring) -> Command:
            primary = ring.get(ring.primary) if ring.primary is not None else None
            target = ring.get(req.version)
            # Every known store, not only one the operator names: refused while one has
            # rows under the version or no full count since it stopped being primary.
            # First, as it names what to do (rewrap that store).
            blocker = None if req.force or target is None or \
                target.state is not KeyState.ACTIVE else \
                retire_blocker(self._stores(), ring, req.version)
            if blocker is not None:
                raise RemoteError(f"version {req.version} may still encrypt stored data: "
                                  f"{blocker} (or use --force)", code=ErrorCode.STORE_IN_USE)
            if not req.force and target is not None and primary is not None and \
                    target.id < primary.id and target.state is KeyState.ACTIVE:
                window = self._cfg.client_window
                since = time.time() - (primary.promoted or primary.created)
                if since < window and not self._census.every_recent_client_has(primary.id):
                    raise RemoteError(
                        f"version {primary.id} became primary {since:.0f} s ago; clients "
                        f"that have not resynced may still encrypt under version "
                        f"{req.version}. Retry after {window - since:.0f} s (and rewrap "
                        "again), or use --force", code=ErrorCode.TOO_SOON)
            return Retire(req.request_id, req.version)

        outcome = self._writes.run(req.request_id, "retirement", build)
        assert outcome is not None
        return VersionResult.from_wire(result_of(outcome))

    def mark_backed_up(self, req: BackedUpRequest) -> BackedUpResult:
        """Record that a backup holds these versions (ids with their fingerprints)."""
        outcome = self._writes.run(req.request_id, "backup record",
                                   lambda ring: BackedUp(req.request_id, {
                                       int(k): v for k, v in req.fingerprints.items()}))
        assert outcome is not None
        return BackedUpResult.from_wire(result_of(outcome))

    def restore(self, req: RestoreRequest) -> RestoreResult:
        """Merge a backup's versions (plaintext keys from the operator) into this cluster.

        The keys are sealed here, under this cluster's seal key and id. A backup of
        another cluster needs ``force``, which also lets it replace the first secret of a
        brand-new cluster.
        """
        if req.cluster_id != self._cfg.cluster_id and not req.force:
            raise Conflict(f"the backup is of cluster {req.cluster_id}, this is "
                           f"{self._cfg.cluster_id}; use --force for disaster recovery")
        if any(envelope.fingerprint(v.key) != v.fingerprint for v in req.versions):
            raise RemoteError("a restored version's fingerprint does not match its key",
                              code=ErrorCode.BAD_REQUEST)

        def build(ring: Keyring) -> Command:
            live = live_versions(ring) + sum(
                1 for v in req.versions
                if (cur := ring.get(v.id)) is None or cur.state is KeyState.RETIRED)
            if live > MAX_LIVE_VERSIONS:
                raise _too_many(live)
            sealed = tuple(SealedVersion(v.id, self._seal.wrap(v.key, v.id, ring.seal_generation),
                                         v.fingerprint, v.created) for v in req.versions)
            return Restore(req.request_id, sealed, req.primary, req.force, time.time())

        outcome = self._writes.run(req.request_id, "restore", build)
        assert outcome is not None
        return RestoreResult.from_wire(result_of(outcome))
