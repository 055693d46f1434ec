"""Port blocks for test clusters: below the kernel's ephemeral range, free, and reserved.

Ports used to be drawn from 20000-60000, which overlaps the ephemeral range the kernel
hands to outgoing connections (32768-60999 by default): a client or peer connection made
while a cluster starts could take a port a node was about to bind. Blocks are now taken
below the ephemeral range, checked free, and held with an ``flock`` on a file in
:data:`LOCK_DIR` so that test runs in other worktrees (and processes) never pick the same
block at the same time. A block is released by :meth:`PortBlock.release` or when the
process exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
from pathlib import Path

LOCK_DIR = Path("/tmp/raftsso-test-ports")
LOWEST = 10000
BLOCK = 32  # ports per block: a 5-node cluster (15) plus joined nodes fits
_held: list[PortBlock] = []  # blocks reserved by free_base_port(), kept until exit


def ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (32768 if it cannot be read)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
    return max(low, LOWEST + BLOCK)


def ports_free(base: int, count: int, host: str = "127.0.0.1") -> bool:
    for port in range(base, base + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


class PortBlock:
    """``count`` consecutive ports from ``base``, reserved until :meth:`release`."""

    def __init__(self, base: int, count: int, fds: list[int]) -> None:
        self.base = base
        self.count = count
        self._fds = fds

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # drops the flock


def _lock(base: int) -> int | None:
    try:  # flock needs no write access: files another user made are usable too
        fd = os.open(LOCK_DIR / str(base), os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def reserve_ports(count: int) -> PortBlock:
    """``count`` consecutive free ports below the ephemeral range, reserved (whole blocks
    of :data:`BLOCK` ports are locked, so the ports past ``count`` in the last block, which
    nodes joined later use, are reserved too)."""
    blocks = -(-count // BLOCK)
    top = ephemeral_start()
    LOCK_DIR.mkdir(mode=0o777, exist_ok=True)
    with contextlib.suppress(OSError):
        LOCK_DIR.chmod(0o1777)  # shared by every user's test runs, like /tmp
    candidates = list(range(LOWEST, top - blocks * BLOCK + 1, BLOCK))
    random.shuffle(candidates)
    for base in candidates[:400]:
        fds: list[int] = []
        for i in range(blocks):
            fd = _lock(base + i * BLOCK)
            if fd is None:
                break
            fds.append(fd)
        block = PortBlock(base, count, fds)
        if len(fds) == blocks and ports_free(base, blocks * BLOCK):
            return block
        block.release()
    raise RuntimeError(f"no free block of {count} ports below {top}")


def free_base_port(count: int) -> int:
    """The first of ``count`` free ports, reserved for the rest of this process."""
    block = reserve_ports(count)
    _held.append(block)
    return block.base
