"""The seal's operations on a node: unseal shares, and the three steps of a seal rekey.

A seal rekey (driven by ``raftsso rekey-seal``, see :mod:`raftsso.seal.rekey`):

1. ``seal_install`` on every node: the new generation's key, over admin mTLS (never
   through the Raft log: a log entry sealed under the old key would hand the new key to
   whoever holds the old one);
2. ``reseal`` on the leader: every live version re-sealed under the new generation, in
   one compare-and-set command (:class:`raftsso.protocol.commands.Reseal`);
3. ``seal_forget`` on every node, once its keyring seals under the new generation: the
   old key is destroyed, and the node compacts its log so no blob of the old generation
   stays in its files.

Each step can run again: installing a generation not yet in use replaces its key,
re-sealing to the generation in use is a no-op, forgetting a forgotten key does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from raftsso import events
from raftsso.config import NodeConfig
from raftsso.errors import RemoteError
from raftsso.fsm import KeyringStateMachine
from raftsso.keyring import Keyring
from raftsso.node.sealing import NodeSeal
from raftsso.node.write_path import WritePath, result_of
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.commands import Command, Reseal
from raftsso.protocol.ids import VersionId
from raftsso.protocol.messages import (
    ResealRequest,
    ResealResult,
    SealForgetRequest,
    SealInstallRequest,
    SealView,
    UnsealRequest,
)
from raftsso.seal.base import InvalidShare
from raftsso.seal.shares import parse_share

log = logging.getLogger(__name__)


class SealOps:
    def __init__(self, cfg: NodeConfig, fsm: KeyringStateMachine, writes: WritePath,
                 seal: NodeSeal, on_unsealed: Callable[[], None],
                 compact: Callable[[], bool], destroy_after_write: Callable[[], bool]) -> None:
        self._cfg = cfg
        self._fsm = fsm
        self._writes = writes
        self._seal = seal
        self._on_unsealed = on_unsealed
        self._compact = compact
        self._destroy_after_write = destroy_after_write

    def view(self) -> SealView:
        status = self._seal.status()
        supplied, threshold = status.progress if status.progress is not None else (None, None)
        return SealView(status.kind, status.sealed, status.generations,
                        self._fsm.keyring.seal_generation, supplied, threshold)

    def unseal(self, req: UnsealRequest) -> SealView:
        """One share; unsealed once ``threshold`` shares of the current generation came."""
        if not self._seal.sealed:
            return self.view()
        try:
            share = parse_share(req.share, "the share")
        except InvalidShare as exc:
            raise RemoteError(str(exc), code=ErrorCode.BAD_REQUEST) from None
        self._seal.expect_generation(self._fsm.keyring.seal_generation)
        progress = self._seal.submit_share(share)
        log.info("unseal share %d of %s received (%s)", share.index,
                 progress.threshold or "?", "unsealed" if progress.done else "still sealed")
        if progress.done:
            events.emit(events.NODE_UNSEALED, f"{self._cfg.node_id} is unsealed",
                        generation=share.generation)
            self._on_unsealed()
        return self.view()

    def install(self, req: SealInstallRequest) -> SealView:
        in_use = self._fsm.keyring.seal_generation
        if req.generation <= in_use:
            raise RemoteError(f"seal generation {req.generation} is not newer than the one "
                              f"in use ({in_use}); a rekey installs {in_use + 1}",
                              code=ErrorCode.CONFLICT)
        if self._seal.sealed:
            raise RemoteError("this node is sealed: unseal it before a seal rekey",
                              code=ErrorCode.SEALED)
        self._seal.install(req.generation, req.key)
        log.info("seal generation %d installed (%s seal)", req.generation, self._seal.kind)
        return self.view()

    def forget(self, req: SealForgetRequest) -> SealView:
        """Destroy an old generation's key once this node's keyring no longer uses it, then
        compact so no blob sealed under it stays in this node's files."""
        in_use = self._fsm.keyring.seal_generation
        if req.generation >= in_use:
            raise RemoteError(f"this node's keyring still seals under generation {in_use}; "
                              f"generation {req.generation} stays until a reseal to a newer "
                              "one is applied here", code=ErrorCode.CONFLICT)
        if req.generation in self._seal.status().generations:
            self._seal.forget(req.generation)
            log.info("seal generation %d destroyed", req.generation)
        self._seal.prune(self._fsm.keyring)
        self._compact()
        return self.view()

    def reseal(self, req: ResealRequest) -> ResealResult:
        """On the leader: every live version re-sealed under ``req.generation``."""

        def build(ring: Keyring) -> Command | None:
            if ring.seal_generation == req.generation:
                return None  # done already (a rerun)
            if req.generation <= ring.seal_generation:
                raise RemoteError(f"the cluster seals under generation "
                                  f"{ring.seal_generation} already", code=ErrorCode.CONFLICT)
            if req.generation not in self._seal.status().generations:
                raise RemoteError(f"this leader holds no seal key of generation "
                                  f"{req.generation}: install it on every node first "
                                  "(raftsso rekey-seal does)", code=ErrorCode.SEAL_MISMATCH)
            versions = {}
            for v in ring.live():
                assert v.sealed is not None
                secret = self._seal.unwrap(v.id, v.sealed)
                versions[VersionId(v.id)] = self._seal.wrap(secret, v.id, req.generation)
                del secret
            return Reseal(req.request_id, ring.seal_generation, req.generation, versions)

        outcome = self._writes.run(req.request_id, "seal rekey", build)
        if outcome is not None:
            result_of(outcome)
            log.info("every live version re-sealed under seal generation %d", req.generation)
        compacted = self._destroy_after_write()
        ring = self._fsm.keyring
        return ResealResult(ring.seal_generation, tuple(VersionId(v.id) for v in ring.live()),
                            compacted)

