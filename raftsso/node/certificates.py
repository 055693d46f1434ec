"""Certificates issued and revoked, as replicated writes (``certs`` ops, issue 15).

``cert_register`` records a certificate made by ``certs issue``; ``cert_revoke`` revokes
every registered certificate of a name, or one serial. Both go through the leader's
serialised write path, so the name is resolved to serials on the registry as it is past
the barrier. Every node enforces revocations from its own copy of the registry
(:mod:`raftsso.tls_guard` on the service port, the Raft peer links for node certificates).

A restarted node replays its log only once it hears the leader's commit index: until then
its registry is behind. So each node also keeps the revoked serials it has seen in
``DATA_DIR/revoked.serials`` (0600, written atomically when the set grows) and enforces
them from the moment it starts (:class:`RevokedSerials`). Revocations are never undone, so
the file only grows, bounded like the registry.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from raftsso.errors import RaftssoError, RemoteError
from raftsso.fsm import KeyringStateMachine
from raftsso.fsutil import atomic_write
from raftsso.keyring import Keyring
from raftsso.node.write_path import WritePath, result_of
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.commands import CertRegister, CertRevoke, Command
from raftsso.protocol.messages import (
    CertRegisterRequest,
    CertRegisterResult,
    CertRevokeRequest,
    CertRevokeResult,
    CertsResult,
    CertView,
)
from raftsso.revocation import MAX_RECORDS, RegistryError, canonical_serial

log = logging.getLogger(__name__)


class CertificateWrites:
    def __init__(self, fsm: KeyringStateMachine, writes: WritePath) -> None:
        self._fsm = fsm
        self._writes = writes

    def view(self) -> CertsResult:
        return CertsResult(tuple(CertView.of(r) for r in self._fsm.certs().records()))

    def register(self, req: CertRegisterRequest) -> CertRegisterResult:
        outcome = self._writes.run(
            req.request_id, "certificate registration",
            lambda ring: CertRegister(req.request_id, req.serial, req.name, req.role,
                                      req.not_after, time.time()),
            require_secret=False)
        assert outcome is not None
        return CertRegisterResult.from_wire(result_of(outcome))

    def revoke(self, req: CertRevokeRequest, by: str) -> CertRevokeResult:
        """Revoke what ``req.target`` names (``by``: the operator's certificate name)."""

        def build(ring: Keyring) -> Command:
            try:
                serials = self._fsm.certs().resolve(req.target)
            except RegistryError as exc:
                raise RemoteError(str(exc), code=ErrorCode.NOT_FOUND) from None
            names = {s: req.name for s in serials if req.name}
            return CertRevoke(req.request_id, tuple(serials), names, by, time.time())

        outcome = self._writes.run(req.request_id, "revocation", build, require_secret=False)
        assert outcome is not None
        return CertRevokeResult.from_wire(result_of(outcome))


class RevokedSerials:
    """The serials this node refuses: the replicated registry's, and those it saw before
    it last stopped (so a restart opens no window before the log is replayed)."""

    def __init__(self, fsm: KeyringStateMachine, path: Path) -> None:
        self._fsm = fsm
        self._path = path
        self._lock = threading.Lock()
        self._persisted = self._load()
        self._seen: frozenset[str] | None = None
        self._current = self._persisted

    def _load(self) -> frozenset[str]:
        try:
            text = self._path.read_text(encoding="ascii")
        except FileNotFoundError:
            return frozenset()
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read %s (%s); relying on the replicated registry alone",
                      self._path, exc)
            return frozenset()
        serials = set()
        for line in text.splitlines()[:MAX_RECORDS]:
            try:
                serials.add(canonical_serial(line))
            except ValueError:
                continue
        return frozenset(serials)

    def __call__(self) -> frozenset[str]:
        """The revoked serials now (the same object until the set changes)."""
        registry = self._fsm.certs().revoked
        if registry is self._seen:
            return self._current
        with self._lock:
            if registry is not self._seen:
                self._seen = registry
                if not registry <= self._persisted:
                    union = self._persisted | registry
                    try:
                        atomic_write(self._path, "".join(f"{s}\n" for s in sorted(union))
                                     .encode("ascii"))
                        self._persisted = union
                    except RaftssoError as exc:  # enforced all the same, from memory
                        log.error("cannot record the revoked serials: %s", exc)
                self._current = self._persisted | registry
            return self._current
