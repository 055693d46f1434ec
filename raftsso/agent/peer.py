"""Who is calling: the kernel's word about the process at the other end of the socket.

The agent never trusts anything a caller *sends* about itself. On every accepted
connection it asks the kernel:

* ``SO_PEERCRED``: the pid, uid and gid of the process that called ``connect()``,
  recorded by the kernel at that moment;
* ``SO_PEERGROUPS`` (Linux 4.13+): the supplementary groups of that process, recorded
  at the same moment.

Both are snapshots taken *by the kernel at connect time*, so there is no race: the
process may exit, its pid may be reused, it may drop or gain groups afterwards, and the
agent still judges the credentials the connection was opened with (the same rule as a
file descriptor opened before a privilege drop). A connection is judged once; a caller
removed from a group keeps what it had on connections opened before, and loses it on the
next one.

On a kernel without ``SO_PEERGROUPS`` (or for a caller with more than 256 groups, more
than Python's ``getsockopt`` can fetch) the agent falls back to ``/proc/PID/status``
(``Groups:``), read right after ``accept()``, and only if that process still has the
uid and gid ``SO_PEERCRED`` reported; otherwise (process gone, pid reused by another
user) the caller gets only its primary gid. The window of that fallback is: between the
caller's ``connect()`` and the agent's read, the process could exit and its pid be reused
by another process *of the same uid and gid* with other groups; the uid check means a
caller can never borrow the groups of another user, only those a process of its own user
already holds.

User names come from the password database (``getpwuid`` of the kernel's uid), and group
names in application definitions are resolved with ``getgrnam``; both are cached for a
few seconds.
"""

from __future__ import annotations

import errno
import grp
import pwd
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux; not exported by Python 3.11
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_GROUP_BUF = 1024  # 256 groups: the most Python's getsockopt() can fetch


class PeerError(OSError):
    """The kernel would not say who the peer is (not a Unix socket, or no credentials)."""


@dataclass(frozen=True)
class Caller:
    """The calling process as the kernel saw it at ``connect()``."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = field(default_factory=frozenset)
    user: str | None = None  # the uid's name in the password database, if any
    groups_from: str = "SO_PEERGROUPS"

    @property
    def gids(self) -> frozenset[int]:
        """The primary gid and every supplementary group."""
        return self.groups | {self.gid}

    def describe(self) -> dict[str, Any]:
        return {"uid": self.uid, "gid": self.gid, "pid": self.pid, "user": self.user}


def _peer_groups(sock: Any) -> frozenset[int] | None:
    """SO_PEERGROUPS, or None when the kernel lacks it or the caller has more than 256
    supplementary groups (Python's getsockopt() buffer is at most 1024 bytes)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _GROUP_BUF)
    except OSError as exc:
        if exc.errno in (errno.ERANGE, errno.ENOPROTOOPT, errno.EINVAL):
            return None
        raise
    count = len(raw) // 4
    return frozenset(struct.unpack(f"{count}I", raw[:count * 4]))


def _proc_groups(pid: int, uid: int, gid: int) -> frozenset[int]:
    """Fallback: the supplementary groups in /proc/PID/status, if it is still our caller."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            lines = dict(line.split(":", 1) for line in fh if ":" in line)
        uids = {int(x) for x in lines["Uid"].split()}
        gids = {int(x) for x in lines["Gid"].split()}
        groups = frozenset(int(x) for x in lines["Groups"].split())
    except (OSError, KeyError, ValueError):
        return frozenset()
    if uids != {uid} or gids != {gid}:
        return frozenset()  # gone, reused by someone else, or mid-setuid: trust nothing
    return groups


class Names:
    """Cached password/group database lookups (a few seconds, so changes are seen soon)."""

    def __init__(self, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 user_of: Callable[[int], str | None] | None = None,
                 gid_of: Callable[[str], int | None] | None = None) -> None:
        self._ttl = ttl
        self._clock = clock
        self._user_of = user_of or _user_of
        self._gid_of = gid_of or _gid_of
        self._users: dict[int, tuple[float, str | None]] = {}
        self._groups: dict[str, tuple[float, int | None]] = {}
        self._lock = threading.Lock()

    def user(self, uid: int) -> str | None:
        now = self._clock()
        with self._lock:
            hit = self._users.get(uid)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        name = self._user_of(uid)
        with self._lock:
            if len(self._users) > 4096:
                self._users.clear()
            self._users[uid] = (now, name)
        return name

    def gid(self, group: str) -> int | None:
        now = self._clock()
        with self._lock:
            hit = self._groups.get(group)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        gid = self._gid_of(group)
        with self._lock:
            if len(self._groups) > 4096:
                self._groups.clear()
            self._groups[group] = (now, gid)
        return gid

    def group_name(self, gid: int) -> str | None:
        try:
            return grp.getgrgid(gid).gr_name
        except (KeyError, OverflowError):
            return None


def _user_of(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def _gid_of(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except (KeyError, UnicodeEncodeError, ValueError):
        return None


def identify(sock: Any, names: Names) -> Caller:
    """The caller at the other end of an accepted Unix socket (:class:`PeerError`)."""
    try:
        pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                     _CRED.size))
    except (OSError, struct.error) as exc:
        raise PeerError(f"no peer credentials: {exc}") from None
    if uid < 0 or gid < 0:
        raise PeerError("the kernel reported no peer credentials")
    try:
        groups = _peer_groups(sock)
    except OSError as exc:
        raise PeerError(f"no peer groups: {exc}") from None
    source = "SO_PEERGROUPS"
    if groups is None:
        groups, source = _proc_groups(pid, uid, gid), "/proc"
    return Caller(pid=pid, uid=uid, gid=gid, groups=groups, user=names.user(uid),
                  groups_from=source)
