"""The SSO stores known to the cluster: reports from rewrap and writing clients, the list,
forgetting one (the table itself is replicated: :mod:`raftsso.known_stores`).

What a caller may claim is decided by its certificate's role, here on the leader: a
``client`` may only send an increment (rows it wrote; counts only go up and the store's
full-count time stays), so a client certificate can never make a retirement pass; an
``admin`` may also send a full count, which replaces the counts. ``retire`` reads the table
in the write path, past the barrier (:mod:`raftsso.node.keyring_writes`).
"""

from __future__ import annotations

import logging
import time

from raftsso.errors import PermissionDenied
from raftsso.fsm import KeyringStateMachine
from raftsso.known_stores import KnownStore
from raftsso.node.write_path import WritePath, result_of
from raftsso.protocol.commands import StoreForget, StoreReport
from raftsso.protocol.messages import (
    StoreForgetRequest,
    StoreForgetResult,
    StoreReportRequest,
    StoreResult,
    StoresResult,
)

log = logging.getLogger(__name__)

#: Roles whose reports may be full counts.
FULL_COUNT_ROLES = frozenset({"admin"})


class StoreReports:
    def __init__(self, fsm: KeyringStateMachine, writes: WritePath) -> None:
        self._fsm = fsm
        self._writes = writes

    def report(self, req: StoreReportRequest, role: str) -> StoreResult:
        """Record a store's report; a full count only from an admin certificate."""
        if req.full and role not in FULL_COUNT_ROLES:
            raise PermissionDenied(
                "a client certificate may report only the rows it wrote (an increment); a "
                "full count, which can let a retirement through, needs an admin certificate "
                "(run rewrap with admin.toml)")
        # A count dated in the future (a fast clock) is taken as made now: it could
        # otherwise pass for a count made after a later demotion.
        counted_at = min(req.counted_at, time.time())
        outcome = self._writes.run(req.request_id, "store report", lambda ring: StoreReport(
            req.request_id, req.store_id, req.kind, counted_at, dict(req.versions_in_use),
            req.full))
        assert outcome is not None
        return StoreResult(KnownStore.from_wire(result_of(outcome)))

    def forget(self, req: StoreForgetRequest) -> StoreForgetResult:
        outcome = self._writes.run(req.request_id, "store forget",
                                   lambda ring: StoreForget(req.request_id, req.store_id))
        assert outcome is not None
        return StoreForgetResult.from_wire(result_of(outcome))

    def view(self) -> StoresResult:
        return StoresResult(tuple(sorted(self._fsm.stores().values(), key=lambda s: s.id)))
