"""Operational events: one JSON line per event, with a stable numeric id.

An event is something an operator may alert on (a leader change, a lost quorum, a version
that was never backed up). Each has an id that never changes meaning, a name, a level and,
where ENTSSO logged the same situation, the ENTSSO event id; the catalogue below is the
source of ``docs/events.md`` (a unit test keeps the two in step).

Emitting::

    from raftsso import events
    events.emit(events.ROTATION_STAGED, version=4, by="admin-1")

writes, on the ``raftsso.events`` logger, one line such as::

    {"ts": "2025-01-01T12:00:00.123Z", "event_id": 1200, "event": "rotation_staged",
     "level": "info", "node": "node1", "message": "version 4 staged", "version": 4, ...}

Rules that keep the lines safe and cheap:

* Field values are reduced to JSON scalars and lists of them; ``bytes`` are *never*
  written (they appear as ``"<N bytes withheld>"``), so a key or a request id cannot leak
  through a careless field. Field names are restricted to ``[a-z0-9_]``.
* :func:`emit` never raises (a log line must not stop a node) and never blocks on I/O once
  :func:`configure` has installed the queue: the Raft thread may call it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import sys
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from raftsso import logs
from raftsso.logs import json_line, json_scalar, utc_timestamp

LOGGER_NAME = "raftsso.events"
_logger = logging.getLogger(LOGGER_NAME)


@dataclass(frozen=True)
class EventType:
    id: int
    name: str
    level: str  # "info", "warning", "error"
    summary: str
    entsso: str = ""  # the ENTSSO event id(s) for the same situation, if any
    emitted_by: str = ""  # where in raftsso it is emitted

    @property
    def levelno(self) -> int:
        return {"info": logging.INFO, "warning": logging.WARNING,
                "error": logging.ERROR}[self.level]


_CATALOGUE: dict[int, EventType] = {}


def _event(id_: int, name: str, level: str, summary: str, entsso: str = "",
           emitted_by: str = "") -> EventType:
    if id_ in _CATALOGUE or any(e.name == name for e in _CATALOGUE.values()):
        raise ValueError(f"duplicate event {id_} {name}")
    et = EventType(id_, name, level, summary, entsso, emitted_by)
    _CATALOGUE[id_] = et
    return et


# -- the catalogue (ids are stable: never renumber, never reuse) -------------------------

# 10xx: node lifecycle
NODE_STARTED = _event(
    1000, "node_started", "info", "the node process started and serves its ports",
    emitted_by="runner")
NODE_STOPPING = _event(
    1001, "node_stopping", "info", "the node received SIGTERM/SIGINT and is stopping",
    emitted_by="runner")

# 11xx: Raft and the cluster as this node sees it
LEADER_ELECTED = _event(
    1100, "leader_elected", "info",
    "this node became the Raft leader (the primary that takes writes)",
    emitted_by="node (role change)")
LEADERSHIP_LOST = _event(
    1101, "leadership_lost", "warning",
    "this node stopped being the leader (a higher term, or no answers from a majority "
    "for leader_fallback_timeout)",
    emitted_by="node (role change)")
LEADER_CHANGED = _event(
    1102, "leader_changed", "info",
    "this node sees a new leader (or a new term of the same leader); counted in "
    "raftsso_raft_leader_changes_total",
    emitted_by="watch")
QUORUM_LOST = _event(
    1110, "quorum_lost", "warning",
    "this node sees no leader with a quorum: rotation, backup and restore are unavailable; "
    "SSO clients keep encrypting until max_staleness and decrypting indefinitely",
    entsso="none (ENTSSO's single server had no quorum; its outage shows as 10783/10843 "
           "on the SSO servers)",
    emitted_by="watch")
QUORUM_REGAINED = _event(
    1111, "quorum_regained", "info", "this node again sees a leader with a quorum",
    emitted_by="watch")
PEER_UNREACHABLE = _event(
    1120, "peer_unreachable", "warning",
    "a peer is unreachable from this node (its Raft link is down, or it is silent while it "
    "should be talking: our follower, or our leader)",
    emitted_by="watch")
PEER_REACHABLE = _event(
    1121, "peer_reachable", "info", "a peer reported unreachable is back",
    emitted_by="watch")

# 12xx: the keyring
FIRST_SECRET_CREATED = _event(
    1200, "first_secret_created", "warning",
    "the cluster's first master secret (version 1) was created; back it up now",
    emitted_by="node (leader duties)")
ROTATION_STAGED = _event(
    1201, "rotation_staged", "info",
    "a new version was created and staged (distributed, not yet used to encrypt)",
    entsso="10520 (master secret generation), by meaning",
    emitted_by="server (rotate op)")
ROTATION_PROMOTED = _event(
    1202, "rotation_promoted", "info",
    "a version became primary (rotate --now, or a staged version after rotation_grace)",
    entsso="10520 (master secret generation), by meaning",
    emitted_by="server (rotate --now); node (promotion after the grace period or once every "
               "recent client synced)")
VERSION_RETIRED = _event(
    1203, "version_retired", "info", "an old version's key material was destroyed",
    emitted_by="server (retire op)")
REWRAP_FAILED = _event(
    1204, "rewrap_failed", "warning",
    "re-encryption of stored values under the primary failed and will be retried",
    entsso="10522 (re-encryption under a new secret, retried until it succeeds), by meaning",
    emitted_by="reserved: rewrap runs in the CLI, not in a node; it reports on stderr")

# 13xx: backup and restore
BACKUP_WRITTEN = _event(
    1300, "backup_written", "info",
    "an encrypted backup of the keyring was written; its versions are marked backed up",
    emitted_by="server (backed_up op, sent by `raftsso backup` once the file is written); "
               "node (a scheduled backup, [backup])")
VERSION_NOT_BACKED_UP = _event(
    1301, "version_not_backed_up", "warning",
    "a usable version has never been in a backup: losing every node would lose the data "
    "encrypted under it",
    emitted_by="watch (the leader, once per version and then hourly)")
RESTORE_APPLIED = _event(
    1302, "restore_applied", "warning", "a backup was restored into the keyring",
    emitted_by="server (restore op)")
BACKUP_FAILED = _event(
    1303, "backup_failed", "error", "a backup or restore request failed",
    emitted_by="server (backed_up and restore ops); node (a scheduled backup, [backup])")

# 14xx: SSO clients as seen by this node
CLIENT_SYNC_FAILED = _event(
    1400, "client_sync_failed", "warning",
    "a keyring request (an SSO client's sync) failed at this node",
    entsso="10532 (failed to retrieve master secrets)",
    emitted_by="server (keyring op)")
SECRET_UNAVAILABLE = _event(
    1401, "secret_unavailable", "error",
    "this node could not hand out the master secret (no first secret yet, or its seal "
    "key does not match the cluster's)",
    entsso="10783 / 10843 (secret not available from the master secret server)",
    emitted_by="server (keyring op)")

# 15xx: security
REQUEST_REFUSED = _event(
    1500, "request_refused", "warning",
    "a request was refused because the caller's certificate role does not allow it",
    emitted_by="server (every op)")
CONNECTION_REFUSED = _event(
    1510, "connection_refused", "warning",
    "a port's connection limit was reached ([limits] in node.toml): a new connection was "
    "closed at once (reason max_connections or max_per_source), or one still in its TLS "
    "handshake or HTTP request was dropped to make room (reason evicted); at most one "
    "line per port and reason a minute",
    emitted_by="limits (service, metrics and Raft ports)")
RESOURCES_EXHAUSTED = _event(
    1511, "resources_exhausted", "error",
    "the node ran out of file descriptors or memory while accepting or serving a "
    "connection; it refuses connections until some close and keeps running (raise "
    "LimitNOFILE or lower the [limits] caps)",
    emitted_by="limits (service, metrics and Raft ports)")
LIMITS_LOWERED = _event(
    1512, "limits_lowered", "warning",
    "a configured [limits] cap does not fit the process's descriptor limit "
    "(RLIMIT_NOFILE, systemd's LimitNOFILE) and was lowered at start",
    emitted_by="server (at start)")
CERTIFICATE_REVOKED = _event(
    1520, "certificate_revoked", "warning",
    "certificates were revoked (certs revoke): every node refuses them at the handshake and "
    "closes their open connections; a revoked node certificate cannot rejoin the Raft mesh",
    emitted_by="server (cert_revoke op)")
REVOKED_CERTIFICATE_REFUSED = _event(
    1521, "revoked_certificate_refused", "warning",
    "a connection with a revoked certificate was refused after its handshake, or closed "
    "when the revocation arrived; at most one line per certificate and kind a minute",
    emitted_by="server (service port)")
CERTIFICATE_RELOADED = _event(
    1522, "certificate_reloaded", "info",
    "the node loaded its certificate and key again (SIGHUP): new connections get the new "
    "certificate, open ones keep theirs",
    emitted_by="runner (SIGHUP)")

# 16xx: the seal (raftsso.seal)
NODE_SEALED = _event(
    1600, "node_sealed", "warning",
    "the node started sealed (shamir seal): it replicates but serves no keyring and seals "
    "nothing until threshold unseal shares are supplied (raftsso unseal)",
    emitted_by="node (at start)")
NODE_UNSEALED = _event(
    1601, "node_unsealed", "info", "enough unseal shares were supplied: the node serves",
    emitted_by="node (unseal op)")
SEAL_REKEYED = _event(
    1602, "seal_rekeyed", "warning",
    "every live version was re-sealed under a new seal generation (raftsso rekey-seal)",
    emitted_by="node (reseal op, on the leader)")
VERSION_DESTROYED = _event(
    1603, "version_destroyed", "info",
    "a retired version left this node's unseal cache and, after a compaction, its journal "
    "and snapshot",
    emitted_by="node (after retire)")


def catalogue() -> tuple[EventType, ...]:
    """Every event type, by id."""
    return tuple(_CATALOGUE[i] for i in sorted(_CATALOGUE))


def by_id(event_id: int) -> EventType:
    return _CATALOGUE[event_id]


# -- formatting ---------------------------------------------------------------------------

_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_RESERVED = frozenset({"ts", "event_id", "event", "level", "node", "message"})
_MAX_STR = 512
_MAX_LIST = 64

_node_id = ""


def _described(value: Any) -> str:
    """What an event line says instead of a value that is not a JSON scalar."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes withheld>"
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        return f"<{type(value).__name__} withheld>"  # nested values could hide bytes
    text = str(value)  # NaN, inf, enums, paths, ...: their text
    return text if len(text) <= _MAX_STR else text[:_MAX_STR] + "…"


def _scalar(value: Any) -> Any:
    return json_scalar(value, _MAX_STR, _described)


def clean(value: Any) -> Any:
    """A JSON-safe value with no raw bytes (lists and tuples kept, shallow)."""
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_scalar(v) for v in list(items)[:_MAX_LIST]]
    return _scalar(value)


def format_event(event: EventType, message: str = "", node: str | None = None,
                 now: dt.datetime | None = None, **fields: Any) -> str:
    """The JSON line for one event (no newline)."""
    record: dict[str, Any] = {
        "ts": utc_timestamp(now or dt.datetime.now(dt.UTC)),
        "event_id": event.id,
        "event": event.name,
        "level": event.level,
        "node": _node_id if node is None else node,
        "message": _scalar(message or event.summary),
    }
    for name, value in fields.items():
        if not _FIELD_NAME.match(name) or name in _RESERVED:
            name = f"field_{re.sub(r'[^a-z0-9_]', '_', name.lower())[:48]}"
        record[name] = clean(value)
    return json_line(record)


_listeners: list[Callable[[EventType], None]] = []


def add_listener(listener: Callable[[EventType], None]) -> None:
    """Call ``listener`` with the type of every emitted event (metrics count them)."""
    _listeners.append(listener)


def remove_listener(listener: Callable[[EventType], None]) -> None:
    with contextlib.suppress(ValueError):
        _listeners.remove(listener)


def emit(event: EventType | int, message: str = "", **fields: Any) -> None:
    """Log one event line. Never raises; cheap enough for the Raft thread."""
    try:
        et = event if isinstance(event, EventType) else _CATALOGUE[event]
        _logger.log(et.levelno, format_event(et, message, **fields))
        for listener in list(_listeners):
            listener(et)
    except Exception:  # a log line must never stop a node
        logging.getLogger(__name__).debug("could not emit event %r", event, exc_info=True)


class RateLimiter(logs.RateLimiter):
    """:class:`raftsso.logs.RateLimiter` for events: for events a remote party can cause at
    will (refused requests, failing syncs), so that a misbehaving client cannot flood the
    node log. A line that follows held-back ones carries ``suppressed``."""

    def emit(self, key: Hashable, event: EventType, message: str = "", **fields: Any) -> bool:
        held = self.allow(key)
        if held is None:
            return False
        if held:
            fields["suppressed"] = held
        emit(event, message, **fields)
        return True


# -- wiring -------------------------------------------------------------------------------

_stop_queue: Callable[[], None] | None = None
_lock = threading.Lock()


def configure(node_id: str, stream: IO[str] | None = None) -> None:
    """Send event lines, bare (no prefix), to ``stream`` (stderr) through a queue.

    The queue makes :func:`emit` non-blocking: a slow log consumer (a full pipe, a stalled
    journald) never delays the thread that emits, the Raft thread included.
    """
    global _node_id, _stop_queue
    with _lock:
        _node_id = node_id
        if _stop_queue is not None:
            return
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _logger.propagate = False
        _stop_queue = logs.log_through_queue(_logger, handler, logging.INFO)


def shutdown() -> None:
    """Flush queued event lines (called at exit)."""
    global _stop_queue
    with _lock:
        if _stop_queue is not None:
            _stop_queue()
            _stop_queue = None
            _logger.handlers[:] = []
            _logger.propagate = True


def set_node(node_id: str) -> None:
    global _node_id
    _node_id = node_id


def as_markdown_rows(items: Mapping[int, EventType] | None = None) -> list[str]:
    """The catalogue as markdown table rows (``docs/events.md`` is checked against it)."""
    rows = []
    for et in catalogue() if items is None else tuple(items.values()):
        rows.append(f"| {et.id} | `{et.name}` | {et.level} | {et.summary} | "
                    f"{et.entsso or '-'} | {et.emitted_by or '-'} |")
    return rows
