"""``raftsso status`` without click: its text, and the console script's fast path.

``raftsso -c FILE status`` is the command operators and monitoring scripts run most; click
and its option parsing are about a quarter of its start (issue 16.6). The console script
(:mod:`raftsso_cli.launch`) sends exactly ``-c FILE status`` / ``--config FILE status`` /
``--config=FILE status`` here; every other command line, ``--json`` and ``--help`` among
them, goes through click, whose ``status`` command prints the same text from the same
functions below.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raftsso.cluster_status import ClusterStatus
    from raftsso.protocol.node_status import VersionInfo

UNHEALTHY = ("no leader with a quorum: writes (rotation) are unavailable; SSO clients keep "
             "decrypting with their cached secrets")


def _fmt(value: object, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}{suffix}"
    return f"{value}{suffix}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def status_text(status: ClusterStatus) -> str:
    """The summary line and the per-node table (no trailing newline)."""
    rows = [[n.id, n.address, _fmt(n.reachable), _fmt(n.role), _fmt(n.term),
             _fmt(n.commit_index), _fmt(n.primary_version), _fmt(n.last_contact, "s"),
             _fmt(n.lag), _fmt(n.healthy), _fmt(n.sealed)]
            for n in status.nodes]
    head = (f"cluster {status.cluster_id or '?'}  leader {status.leader or 'NONE'}  "
            f"quorum {_fmt(status.has_quorum)}  "
            f"primary version {_fmt(status.primary_version)}  "
            f"failure tolerance {status.failure_tolerance}")
    return head + "\n" + table(["node", "address", "reachable", "role", "term",
                                "commit index", "primary version", "last contact", "lag",
                                "healthy", "sealed"], rows)


def not_backed_up_warning(versions: Sequence[VersionInfo]) -> str | None:
    from raftsso.keyring import KeyState

    missing = [str(v.id) for v in versions
               if not v.backed_up and v.state is not KeyState.RETIRED]
    if not missing:
        return None
    return (f"warning: version(s) {', '.join(missing)} were never backed up; run "
            "`raftsso -c admin.toml backup --out FILE --password-file PF`")


def fast_status_config(argv: Sequence[str]) -> Path | None:
    """The config path when ``argv`` is a plain status call, else None (click's turn)."""
    if len(argv) == 3 and argv[2] == "status" and argv[0] in ("-c", "--config"):
        path = argv[1]
    elif len(argv) == 2 and argv[1] == "status" and argv[0].startswith("--config="):
        path = argv[0].removeprefix("--config=")
    else:
        return None
    # Anything that looks like an option, or no path at all, is click's to judge.
    return Path(path) if path and not path.startswith("-") else None


def run_status(path: Path) -> int:
    """``raftsso -c PATH status``: print, and return the exit code (0 healthy, 3 not; a
    failure prints one ``error:`` line, with main's exit codes)."""
    from raftsso.errors import RaftssoError, exit_code_for

    try:
        from raftsso.admin import AdminClient
        from raftsso.config import load_remote_config

        with AdminClient(load_remote_config(path)) as client:
            result = client.status()
        sys.stdout.write(status_text(result) + "\n")
        sys.stdout.flush()
        warning = not_backed_up_warning(result.versions)
        if warning:
            sys.stderr.write(warning + "\n")
        if not result.healthy:
            sys.stderr.write(UNHEALTHY + "\n")
        return 0 if result.healthy else 3
    except RaftssoError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exit_code_for(exc)
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stops the exit-time flush
        return 1
    except OSError as exc:
        sys.stderr.write(f"error: {exc.strerror or exc}"
                         + (f": {exc.filename}" if getattr(exc, "filename", None) else "")
                         + "\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
