"""The agent's audit log: every refusal and every write, one JSON line each.

The file is :class:`raftsso.audit.AuditLog`'s (created 0600, ``O_APPEND``, one
``write(2)`` per line before the answer goes back, ``fdatasync`` by a background thread,
reopened after logrotate). A line::

    {"v": 1, "ts": "2025-01-01T12:00:00.000Z", "node": "agent@host", "kind": "agent",
     "who": {"uid": 1001, "gid": 1001, "pid": 4242, "user": "alice"},
     "op": "credential.set", "app": "payroll", "name": "alice",
     "result": "ok" | "error", "code": null | "FORBIDDEN" | ..., "status": 403}

``name`` is the user of a credential mapping or the name of a configuration value;
``status`` (the HTTP status) only on errors.
Never a secret: no plaintext, ciphertext, credential or value is ever passed here.
"""

from __future__ import annotations

from typing import Any

from raftsso.agent.peer import Caller
from raftsso.audit import AUDIT_FORMAT, AuditLog, _scalar
from raftsso.logs import utc_timestamp


class AgentAudit(AuditLog):
    def event(self, caller: Caller, op: str, *, app: str | None = None,
              name: str | None = None, code: str | None = None, status: int = 200,
              extra: dict[str, Any] | None = None) -> None:
        record: dict[str, Any] = {
            "v": AUDIT_FORMAT, "ts": utc_timestamp(self._clock()), "node": self.node_id,
            "kind": "agent", "who": caller.describe(), "op": op,
        }
        if app is not None:
            record["app"] = _scalar(app)
        if name is not None:
            record["name"] = _scalar(name)
        record.update({"result": "ok" if code is None else "error", "code": code})
        if code is not None:
            record["status"] = status
        for key, value in (extra or {}).items():
            scalar = _scalar(value)
            if scalar is not None:
                record[key] = scalar
        self._write(record, sync=True)
