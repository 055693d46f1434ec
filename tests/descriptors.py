"""Run a block of a test in a process that has no file descriptor left (EMFILE)."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from collections.abc import Iterator


@contextlib.contextmanager
def no_free_descriptors() -> Iterator[None]:
    """Lower ``RLIMIT_NOFILE`` to the open descriptors and fill the holes below it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    try:
        while True:
            try:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
