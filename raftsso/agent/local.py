"""An agent beside a local deployment: ``raftsso local up DIR --agent`` / ``local down``.

The agent runs in the background (its own session) with ``DIR/agent.pid`` and
``DIR/agent.log``; ``stop_agent`` signals only a process whose pid file it finds *and*
whose command line names ``DIR/agent.toml`` (pids are recycled).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from raftsso.agent.client import AgentClient
from raftsso.agent.config import load_agent_config
from raftsso.errors import ClusterUnavailable, ConfigError, RaftssoError
from raftsso.fsutil import atomic_write


def _pid(directory: Path) -> int | None:
    try:
        pid = int((directory / "agent.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str((directory / "agent.toml").resolve()).encode() in cmdline else None


def start_agent(directory: Path, timeout: float = 30.0) -> int:
    """Start the agent of ``DIR/agent.toml`` and wait until it answers; return its pid."""
    config = directory / "agent.toml"
    if not config.exists():
        raise ConfigError(f"{directory} has no agent.toml (made by `raftsso init` since "
                          "the agent exists; add one as in docs/agent.md)")
    cfg = load_agent_config(config)
    pid = _pid(directory)
    if pid is None:
        fd = os.open(directory / "agent.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "raftsso_cli", "agent", "run", "--config",
                 str(config.resolve())],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True,
                close_fds=True, cwd=directory)
        finally:
            os.close(fd)
        pid = proc.pid
        atomic_write(directory / "agent.pid", f"{pid}\n".encode())
    deadline = time.monotonic() + timeout
    while True:
        try:
            with AgentClient(cfg.socket, timeout=2.0) as client:
                client.health()
            return pid
        except (RaftssoError, OSError):
            pass
        if _pid(directory) is None:
            raise ClusterUnavailable(f"the agent exited; see {directory / 'agent.log'}")
        if time.monotonic() >= deadline:
            raise ClusterUnavailable(f"the agent did not answer within {timeout:.0f} s; see "
                                     f"{directory / 'agent.log'}")
        time.sleep(0.1)


def stop_agent(directory: Path, timeout: float = 10.0) -> bool:
    """Stop the agent started by :func:`start_agent` (SIGTERM, then SIGKILL)."""
    pid = _pid(directory)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid(directory) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid(directory) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        (directory / "agent.pid").unlink()
    return True
