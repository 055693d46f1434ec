"""Certificates issued and revoked, as replicated writes (``certs`` ops, issue 15).

``cert_register`` records a certificate made by ``certs issue``; ``cert_revoke`` revokes
every registered certificate of a name, or one serial. Both go through the leader's
serialised write path, so the name is resolved to serials on the registry as it is past
the barrier. Every node enforces revocations from its own copy of the registry
(:mod:`raftsso.tls_guard` on the service port, the Raft peer links for node certificates).
"""

from __future__ import annotations

import time

from raftsso.errors import RemoteError
from raftsso.fsm import KeyringStateMachine
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
from raftsso.revocation import RegistryError


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
