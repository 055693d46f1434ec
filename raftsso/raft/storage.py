"""What a failed storage operation means: stop the node, or wait and retry.

A failed ``fsync``, ``write`` or ``ftruncate`` on the journal, its term and vote, or a
snapshot (EIO, ENOSPC, EROFS...) is a real storage failure: nothing after it may be
acknowledged, so the process ends at once with :data:`EXIT_STORAGE_FAILURE`
(:func:`on_storage_failure`, replaceable by tests).

Running out of file descriptors or memory (EMFILE, ENFILE, ENOMEM, ENOBUFS) is *transient*:
someone opened too many connections, and they will go. The journal never needs a new
descriptor for what it acknowledges (it keeps its files open, see
:mod:`raftsso.raft.journal` and :mod:`raftsso.raft.meta`); where an ``open`` cannot be
avoided (a snapshot's temporary file, the rewritten journal of a compaction) the operation
is skipped and retried later, nothing is acknowledged on its account, and a line is logged
at most every :data:`TRANSIENT_LOG_PERIOD` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable

from raftsso.errors import StorageError
from raftsso.limits import EXHAUSTION_ERRNOS, is_exhaustion
from raftsso.logs import RateLimiter

log = logging.getLogger(__name__)

EXIT_STORAGE_FAILURE = 75
TRANSIENT_ERRNOS = EXHAUSTION_ERRNOS  # EMFILE, ENFILE, ENOMEM, ENOBUFS
TRANSIENT_LOG_PERIOD = 10.0


class TransientStorageError(StorageError):
    """A storage step could not run for lack of descriptors or memory; retry later."""


def is_transient(exc: BaseException) -> bool:
    """Out of descriptors or memory (retry later), as opposed to a failing disk."""
    return isinstance(exc, TransientStorageError) or is_exhaustion(exc)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a regular file may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _die(message: str) -> None:
    """Stop the process at once: nothing after a failed fsync may be acknowledged."""
    text = f"{message}; stopping this node so that nothing unpersisted is acknowledged"
    log.critical("%s", text)
    # Logging may go through a queue whose writer thread os._exit would not wait for.
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"CRITICAL raftsso.raft: {text}\n")
        sys.stderr.flush()
    logging.shutdown()
    os._exit(EXIT_STORAGE_FAILURE)


on_storage_failure: Callable[[str], None] = _die
"""Called with a message on a real storage failure; tests replace it to observe one."""


def fail(message: str) -> None:
    """Report a real storage failure (through the current :data:`on_storage_failure`)."""
    on_storage_failure(message)


class _TransientLog:
    """One warning per :data:`TRANSIENT_LOG_PERIOD` for each kind of postponed step."""

    def __init__(self) -> None:
        self._limiter = RateLimiter(TRANSIENT_LOG_PERIOD)

    def warn(self, what: str, exc: BaseException) -> None:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self._limiter.log(what, log, logging.WARNING,
                          f"{what} postponed: {reason} (out of file descriptors or memory; "
                          "nothing is acknowledged on its account, it is retried later)")


transient = _TransientLog()
"""The rate-limited log of postponed storage steps."""
