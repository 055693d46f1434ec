"""Wires what the service answers into metrics, the audit log and events.

:class:`RequestTelemetry` is a :data:`raftsso.server.Observer`: the service calls it, on
the event loop, after every answered request: :meth:`~RequestTelemetry.record` (metrics, the
audit line) before the answer leaves, :meth:`~RequestTelemetry.announce` (event lines) once
it has. Everything it does is in memory or one ``write(2)`` (see :mod:`raftsso.audit`), so
it adds microseconds to a request.

Audit rule (documented in ``docs/operations.md``):

* one line per request for every operation only admins may call (with the scalar fields
  of its answer), for every ``keyring`` fetch made with an ``admin`` certificate (an
  operator exporting keys: ``backup``, ``rewrap``), and for every refused request
  (``FORBIDDEN``, ``UNKNOWN_OP``, ``BAD_REQUEST``);
* every other request (an SSO client's ``keyring`` sync, ``status``, ``ping``, the nodes'
  ``clients`` calls) is aggregated per certificate, op and minute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raftsso import events

if TYPE_CHECKING:
    from raftsso.audit import AuditLog
    from raftsso.metrics import NodeMetrics
    from raftsso.server import Observed

REFUSED_CODES = frozenset({"FORBIDDEN", "UNKNOWN_OP", "BAD_REQUEST"})
SECRET_UNAVAILABLE_CODES = frozenset({"SEAL_MISMATCH"})
_RESULT_EVENTS = {
    "retire": events.VERSION_RETIRED,
    "backed_up": events.BACKUP_WRITTEN,
    "restore": events.RESTORE_APPLIED,
    "cert_revoke": events.CERTIFICATE_REVOKED,
}


class RequestTelemetry:
    def __init__(self, audit: AuditLog | None = None, metrics: NodeMetrics | None = None,
                 limiter: events.RateLimiter | None = None) -> None:
        self.audit = audit
        self.metrics = metrics
        self.limiter = limiter or events.RateLimiter(60.0)

    def __call__(self, seen: Observed) -> None:
        self.record(seen)
        self.announce(seen)

    def record(self, seen: Observed) -> None:
        """Metrics and the audit line: before the answer leaves."""
        caller = seen.caller
        if self.metrics is not None:
            self.metrics.observe_request(caller.role, caller.name, seen.op, seen.code,
                                         seen.seconds)
        admin_only = "admin" in seen.roles and "client" not in seen.roles
        export = seen.op == "keyring" and caller.role == "admin"
        if self.audit is not None:
            if admin_only or export or seen.code in REFUSED_CODES:
                self.audit.request(cn=caller.name, role=caller.role, op=seen.op,
                                   peer=caller.peer, code=seen.code, args=seen.args,
                                   result=seen.result if admin_only else None,
                                   admin=admin_only or export)
            else:
                self.audit.read(cn=caller.name, role=caller.role, op=seen.op,
                                peer=caller.peer, code=seen.code)

    def announce(self, seen: Observed) -> None:
        """Event lines: once the answer has been sent (raftsso.server's late observers)."""
        caller, op, code = seen.caller, seen.op, seen.code
        if op == "keyring" and code is None and isinstance(seen.result, dict) \
                and seen.result.get("primary") is not None:
            return  # a sync served a primary: nothing to announce (every fetch, so first)
        who = {"client": caller.name, "role": caller.role, "peer": caller.peer}
        if code == "FORBIDDEN":
            self.limiter.emit(("refused", caller.name, caller.role, op),
                              events.REQUEST_REFUSED,
                              f"{caller.role or 'no'} role may not call {op}", op=op, **who)
            return
        if op == "keyring":
            if code is None:
                result = seen.result if isinstance(seen.result, dict) else {}
                if result.get("primary") is None:
                    self.limiter.emit(("unavailable", caller.name), events.SECRET_UNAVAILABLE,
                                      "this node has no primary master secret to hand out",
                                      **who)
            elif code in SECRET_UNAVAILABLE_CODES:
                self.limiter.emit(("unavailable", caller.name), events.SECRET_UNAVAILABLE,
                                  f"keyring request failed: {code}", code=code, **who)
            elif code != "NOT_LEADER":
                self.limiter.emit(("sync", caller.name, code), events.CLIENT_SYNC_FAILED,
                                  f"keyring request failed: {code}", code=code, **who)
            return
        result = seen.result if isinstance(seen.result, dict) else {}
        if op == "rotate" and code is None:
            version, state = result.get("version"), result.get("state")
            et = events.ROTATION_PROMOTED if state == "primary" else events.ROTATION_STAGED
            events.emit(et, f"version {version} is {state} (rotation by {caller.name})",
                        version=version, state=state,
                        primary_version=result.get("primary_version"), by=caller.name,
                        reason="rotate_now" if state == "primary" else "rotate")
        elif op in _RESULT_EVENTS and code is None:
            events.emit(_RESULT_EVENTS[op], f"{op} by {caller.name}", by=caller.name,
                        **{k: v for k, v in result.items()
                           if k in ("version", "versions", "primary_version", "marked",
                                    "added", "revived", "replaced", "serials", "revoked")})
        elif op in ("backed_up", "restore") and code not in (None, "NOT_LEADER"):
            events.emit(events.BACKUP_FAILED, f"{op} by {caller.name} failed: {code}",
                        op=op, code=code, by=caller.name)
