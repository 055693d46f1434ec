"""The node's audit log: an append-only JSON-lines file of who did what, when, with what result.

One file per node (``audit_log`` in node.toml, default ``DATA_DIR/audit.jsonl``), created
0600 and opened ``O_APPEND``. What is written:

* ``"kind": "request"``: one line for **every admin operation** (an op that only the
  ``admin`` role may call: rotate, backup, restore, retire, membership, transfer-leader),
  whatever its result, for every ``keyring`` fetch made with an admin certificate (a key
  export), and for **every refused request** (``FORBIDDEN``, ``UNKNOWN_OP``,
  ``BAD_REQUEST``), whoever sent it.
* ``"kind": "reads"``: other requests (SSO clients' ``keyring`` fetches, ``status``,
  ``ping``) are **aggregated per client per minute**: one line per (certificate CN, role,
  op) and UTC minute, with the number of calls, how many succeeded, the error codes and
  the peer addresses seen (at most 8). The line is written when the minute is over (or at
  stop). Which lines are which is decided by :mod:`raftsso.telemetry`.

Every line: ``ts`` (UTC, ms), ``node``, ``who`` (``cn`` and ``role`` of the verified client
certificate), ``op``, ``peer`` (address:port), ``result`` (``ok`` or ``error``) and
``code`` (the error code). Request lines may carry ``args`` (only the allow-listed scalar
arguments in :data:`AUDITED_ARGS`; a request id as hex) and ``outcome`` (the scalar fields
of the answer). Nothing else from a request or an answer is written: **no key material, no
password, no bytes** (a test checks it).

Durability: each line is one ``write(2)`` to the ``O_APPEND`` descriptor before the answer
goes back, so a crash of the process loses nothing. A background thread ``fdatasync``\\ s the
file right after an admin operation's line and at most one second after any other line.
A failed write is logged and counted (``raftsso_audit_write_errors_total``) but does not
fail the request: refusing SSO clients their keyring because a disk is full would cause
the very outage raftsso exists to prevent (a decision; Vault chooses the opposite).

Rotation by logrotate: the file is reopened when its path no longer names the open file
(checked every second), so ``create`` mode works; so does ``copytruncate`` (O_APPEND).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftsso.logs import json_line, json_scalar, utc_timestamp

log = logging.getLogger(__name__)

AUDIT_FORMAT = 1
#: Request arguments that may appear in an audit line (scalars only; anything else is not
#: written). ``request_id`` is written as hex: a random correlation id, not a secret.
AUDITED_ARGS = frozenset({"request_id", "now", "version", "versions", "node_id", "address",
                          "target", "force", "reminder_set", "serial", "name", "role",
                          "store_id", "full"})
MAX_PEERS_PER_WINDOW = 8
_MAX_STR = 256


def _scalar(value: Any) -> Any:
    """A JSON scalar, or ``None`` when the value must not be written (bytes, containers,
    NaN, any other object)."""
    return json_scalar(value, _MAX_STR, lambda _: None)


def audited_args(args: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in (args or {}).items():
        if name not in AUDITED_ARGS:
            continue
        if name == "request_id" and isinstance(value, bytes) and len(value) <= 32:
            out[name] = value.hex()
        elif isinstance(value, list | tuple):
            items = [_scalar(v) for v in value[:64]]
            if all(i is not None for i in items):
                out[name] = items
        elif (v := _scalar(value)) is not None or value is None:
            out[name] = v
    return out


def audited_outcome(result: Any) -> dict[str, Any]:
    """The scalar, non-bytes fields of an answer (version, state, …); never key material."""
    if not isinstance(result, Mapping):
        return {}
    out: dict[str, Any] = {}
    for name, value in result.items():
        if not isinstance(name, str) or name in ("key", "keys", "sealed", "secret", "backup",
                                                  "blob", "password"):
            continue
        v = _scalar(value)
        if v is not None or value is None:
            out[name] = v
    return out


@dataclass
class _Window:
    count: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    peers: list[str] = field(default_factory=list)


class AuditLog:
    """Append-only audit file; thread-safe. ``clock`` is injectable for tests."""

    def __init__(self, path: Path, node_id: str, clock: Callable[[], float] = time.time,
                 background: bool = True) -> None:
        self.path = Path(path)
        self.node_id = node_id
        self._clock = clock
        self._lock = threading.Lock()
        self._fd = -1
        self._ino: tuple[int, int] | None = None
        self._dirty = False
        self.write_errors = 0
        self.on_write_error: Callable[[], None] | None = None
        self._windows: dict[tuple[int, str, str, str], _Window] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._open()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="audit-sync", daemon=True)
            self._thread.start()

    # file ------------------------------------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
        self._fd = fd
        self._ino = (st.st_dev, st.st_ino)

    def _reopen_if_rotated(self) -> None:
        try:
            st = os.stat(self.path)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if current != self._ino:
            old = self._fd
            self._open()
            if old >= 0:
                os.close(old)

    def _write(self, record: dict[str, Any], sync: bool) -> None:
        line = (json_line(record) + "\n").encode("utf-8")
        with self._lock:
            try:
                if self._fd < 0:
                    self._open()
                os.write(self._fd, line)
                self._dirty = True
            except OSError as exc:
                self.write_errors += 1
                log.error("cannot write the audit log %s: %s", self.path, exc)
                if self.on_write_error is not None:
                    self.on_write_error()
                return
        if sync:
            if self._thread is None:
                self.sync()
            else:
                self._wake.set()

    def sync(self) -> None:
        with self._lock:
            if not self._dirty or self._fd < 0:
                return
            self._dirty = False
            fd = self._fd
        try:
            os.fdatasync(fd)
        except OSError as exc:
            self.write_errors += 1
            log.error("cannot fdatasync the audit log %s: %s", self.path, exc)

    # records ---------------------------------------------------------------------------

    def request(self, *, cn: str, role: str, op: str, peer: str, code: str | None,
                args: Mapping[str, Any] | None = None, result: Any = None,
                admin: bool = False) -> None:
        """One line for an admin operation or a refused request."""
        record: dict[str, Any] = {
            "v": AUDIT_FORMAT, "ts": utc_timestamp(self._clock()), "node": self.node_id,
            "kind": "request", "who": {"cn": cn, "role": role}, "op": op, "peer": peer,
            "result": "ok" if code is None else "error", "code": code,
        }
        a = audited_args(args)
        if a:
            record["args"] = a
        o = audited_outcome(result)
        if o:
            record["outcome"] = o
        self._write(record, sync=admin)

    def read(self, *, cn: str, role: str, op: str, peer: str, code: str | None) -> None:
        """Count one read (keyring, status, ping) in its per-client per-minute window."""
        minute = int(self._clock() // 60)
        key = (minute, cn, role, op)
        flush: list[tuple[tuple[int, str, str, str], _Window]] = []
        with self._lock:
            w = self._windows.get(key)
            if w is None:
                w = self._windows[key] = _Window()
                flush = self._take_closed(minute)
            w.count += 1
            if code is None:
                w.ok += 1
            else:
                w.errors[code] = w.errors.get(code, 0) + 1
            if peer not in w.peers and len(w.peers) < MAX_PEERS_PER_WINDOW:
                w.peers.append(peer)
        self._write_windows(flush)

    def _take_closed(self, current_minute: int | None) -> list[tuple[tuple[int, str, str, str],
                                                                      _Window]]:
        closed = [(k, w) for k, w in self._windows.items()
                  if current_minute is None or k[0] < current_minute]
        for k, _ in closed:
            del self._windows[k]
        return sorted(closed, key=lambda kw: kw[0])

    def _write_windows(self, closed: list[tuple[tuple[int, str, str, str], _Window]]) -> None:
        for (minute, cn, role, op), w in closed:
            self._write({
                "v": AUDIT_FORMAT, "ts": utc_timestamp(min(self._clock(), (minute + 1) * 60.0)),
                "node": self.node_id, "kind": "reads", "who": {"cn": cn, "role": role},
                "op": op, "window_start": utc_timestamp(minute * 60.0),
                "window_end": utc_timestamp((minute + 1) * 60.0), "count": w.count, "ok": w.ok,
                "errors": dict(sorted(w.errors.items())), "peers": w.peers,
                "result": "ok" if not w.errors else "error",
            }, sync=False)

    def flush_windows(self, everything: bool = False) -> None:
        """Write the windows of minutes that are over (all of them with ``everything``)."""
        with self._lock:
            closed = self._take_closed(None if everything else int(self._clock() // 60))
        self._write_windows(closed)

    # lifecycle -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self.flush_windows()
                self.sync()
                with self._lock:
                    self._reopen_if_rotated()
            except Exception:
                log.exception("audit log maintenance failed")

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush_windows(everything=True)
        self.sync()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
