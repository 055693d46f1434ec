"""The service port's TLS identity and its revocation checks.

* :class:`ReloadableTLS`: the server context, rebuilt from the node's certificate and key
  files on SIGHUP. A handshake uses the context current when it starts; connections already
  open keep theirs, so a reload drops no client and changes nothing in Raft. A context that
  cannot be built (a missing file, a key that does not match) is refused and the old one
  stays.
* :class:`RevocationGuard`: every verified connection is checked against the cluster's
  revoked serials (:mod:`raftsso.revocation`, replicated) right after its handshake (a
  revoked certificate gets no request answered), and stays *tracked* while it is open. A
  sweep every :data:`SWEEP_PERIOD` seconds closes tracked connections whose certificate
  was revoked since: within a second of the revocation being applied on this node.

The revoked set is read through a callable (the state machine's current registry); it is
an immutable frozenset, so the sweep compares identities and walks the connections only
when the set changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from raftsso import pki
from raftsso.errors import ConfigError

log = logging.getLogger(__name__)

SWEEP_PERIOD = 0.2
NOTHING_REVOKED: frozenset[str] = frozenset()


class ReloadableTLS:
    """The current server context; :meth:`reload` swaps in a new one built the same way."""

    def __init__(self, build: Callable[[], ssl.SSLContext],
                 describe: Callable[[], pki.CertInfo | None] | None = None) -> None:
        self._build = build
        self._describe = describe
        self._lock = threading.Lock()
        self.context = build()
        self.serial = self._serial()

    def _serial(self) -> str | None:
        if self._describe is None:
            return None
        try:
            info = self._describe()
        except (ConfigError, OSError):
            return None
        return info.serial if info is not None else None

    def reload(self) -> str | None:
        """Rebuild the context; return the serial now served. :class:`ConfigError` (the old
        context stays) if the files do not make one."""
        with self._lock:
            context = self._build()
            self.context = context
            self.serial = self._serial()
            return self.serial


Closer = Callable[[], None]
#: Told of every connection refused or closed for a revoked certificate:
#: (``"handshake"`` or ``"open"``, common name, role, peer address, serial).
OnRevoked = Callable[[str, str, str, str, str], None]


@dataclass(eq=False, slots=True)  # one per open connection: no __dict__
class Tracked:
    serial: str
    name: str
    role: str
    peer: str
    close: Closer = field(repr=False)


class RevocationGuard:
    """Refuses and closes connections whose certificate serial is revoked."""

    def __init__(self, revoked: Callable[[], frozenset[str]] = lambda: NOTHING_REVOKED,
                 on_revoked: OnRevoked | None = None) -> None:
        self.revoked = revoked  # the runner points it at the state machine's registry
        self.on_revoked = on_revoked
        self._open: set[Tracked] = set()
        self._seen: frozenset[str] | None = None

    def _report(self, kind: str, t: Tracked) -> None:
        log.warning("%s certificate %r (serial %s, role %r) from %s: revoked",
                    "refused" if kind == "handshake" else "closed the connection of",
                    t.name, t.serial, t.role, t.peer)
        if self.on_revoked is not None:
            try:
                self.on_revoked(kind, t.name, t.role, t.peer, t.serial)
            except Exception:  # reporting must never break serving
                log.exception("revocation observer failed")

    def admit(self, serial: str | None, name: str, role: str, peer: str,
              close: Closer) -> Tracked | None:
        """Track a connection that just completed its handshake, or refuse it (None: the
        caller closes it) if its certificate is revoked. A certificate without a readable
        serial is refused too (TLS verified it, so this does not happen in practice)."""
        t = Tracked(serial or "", name, role, peer, close)
        if serial is None or serial in self.revoked():
            self._report("handshake", t)
            return None
        self._open.add(t)
        return t

    def release(self, t: Tracked | None) -> None:
        if t is not None:
            self._open.discard(t)

    def sweep(self) -> int:
        """Close every tracked connection whose serial is revoked; how many were."""
        revoked = self.revoked()
        if revoked is self._seen:
            return 0
        self._seen = revoked
        closed = 0
        for t in [t for t in self._open if t.serial in revoked]:
            self._open.discard(t)
            self._report("open", t)
            with contextlib.suppress(Exception):
                t.close()
            closed += 1
        return closed

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def run(self, period: float = SWEEP_PERIOD) -> None:
        """Sweep until cancelled (a task on the server's event loop)."""
        while True:
            await asyncio.sleep(period)
            try:
                self.sweep()
            except Exception:
                log.exception("revocation sweep failed")
