"""Freed memory of a node process is overwritten, so a retired master secret does not
linger in it (issue 14: "its fingerprint is gone from every node's memory").

CPython frees memory without clearing it, and a node copies each key it serves into
answer frames (msgpack, TLS records) that are freed right after sending: without help, a
retired version's key stays readable in freed heap memory (a core dump, ``/proc/PID/mem``,
a swapped page) until the allocator happens to reuse it. Three settings of the C runtime
make every free overwrite the memory it releases:

* ``PYTHONMALLOC=malloc``: Python's small objects go through ``malloc``/``free`` instead
  of pymalloc's arenas (which are never cleared);
* ``MALLOC_PERTURB_``: glibc fills every freed chunk with one byte value;
* ``GLIBC_TUNABLES=glibc.malloc.tcache_count=0``: glibc's per-thread cache would keep the
  last few freed chunks of each size without that fill.

All three are read when the process starts, so ``raftsso node run`` re-executes itself
once (the same pid: systemd, pid files and test harnesses are unaffected) with them set,
unless ``scrub_freed_memory = false`` in node.toml. The cost is CPU on every allocation
(see operations.md, *Seal*); live objects are handled where they are owned (the unseal
cache overwrites its entries, :func:`raftsso.node.sealing.scrub`; answers are dropped as
soon as they are sent).
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

MARK = "RAFTSSO_SCRUB_FREED"
PERTURB = "165"  # 0xa5: freed memory reads as a run of 0xa5 bytes
TCACHE_OFF = "glibc.malloc.tcache_count=0"


def scrubbing_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with, or None if it is set already."""
    if environ.get(MARK) == "1":
        return None
    env = dict(environ)
    env["PYTHONMALLOC"] = "malloc"
    env["MALLOC_PERTURB_"] = PERTURB
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":")
                if t and not t.startswith("glibc.malloc.tcache_count=")]
    env["GLIBC_TUNABLES"] = ":".join([*tunables, TCACHE_OFF])
    env[MARK] = "1"
    return env


def wanted(node_toml: Path) -> bool:
    """``scrub_freed_memory`` of a node.toml, read before anything heavy is imported (true
    when absent; an unreadable file is left for the full load to report)."""
    try:
        with node_toml.open("rb") as fh:
            value = tomllib.load(fh).get("scrub_freed_memory", True)
    except (OSError, ValueError, RecursionError):
        return True
    return value is not False


def reexec_scrubbed() -> None:
    """Re-execute this process with freed-memory scrubbing on (returns only if it is on
    already, or if the platform has no ``execve``)."""
    env = scrubbing_environment(os.environ)
    if env is None or not hasattr(os, "execve"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # The same interpreter and arguments: no shell, nothing taken from input.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)  # noqa: S606
