"""``raftsso local up/down``: run every node of a deployment directory on this machine.

Each node runs as its own background process (its own session, so a terminal's Ctrl-C
does not reach it) with ``nodeN/node.pid`` and ``nodeN/node.log``. ``down`` signals only
processes whose pid file it finds *and* whose command line names that node's config.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from raftsso import cluster_status
from raftsso.config import load_remote_config
from raftsso.errors import ClusterUnavailable, ConfigError
from raftsso.fsutil import atomic_write
from raftsso.remote import ClusterClient


def node_configs(directory: Path) -> list[Path]:
    found = sorted(directory.glob("node*/node.toml"))
    if not found:
        raise ConfigError(f"{directory} holds no node*/node.toml; create it with "
                          f"`raftsso init {directory}`")
    return found


def _pid_of(node_toml: Path) -> int | None:
    pid_file = node_toml.parent / "node.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        if not raw:
            # Empty while the node re-executes itself (raftsso.memscrub), and for a zombie.
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            return None if state in ("Z", "X") else pid
    except (OSError, IndexError):
        return None
    cmdline = raw.split(b"\0")
    # Only a process that runs this very node: pids are recycled.
    if str(node_toml.resolve()).encode() not in cmdline:
        return None
    return pid


def start_node(node_toml: Path) -> int:
    """Start one node in the background; return its pid (or the running one's)."""
    running = _pid_of(node_toml)
    if running is not None:
        return running
    log_path = node_toml.parent / "node.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "raftsso_cli", "node", "run", str(node_toml.resolve())],
            stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True,
            close_fds=True, cwd=node_toml.parent)
    finally:
        os.close(fd)
    atomic_write(node_toml.parent / "node.pid", f"{proc.pid}\n".encode())
    return proc.pid


def up(directory: Path, timeout: float = 30.0, agent: bool = False) -> dict[str, object]:
    """Start every node and wait until a leader with a quorum serves the first secret;
    with ``agent``, then start the SSO agent of ``DIR/agent.toml`` too."""
    status = _up(directory, timeout)
    if agent:
        from raftsso.agent.local import start_agent
        start_agent(directory, timeout)
    return status


def _up(directory: Path, timeout: float) -> dict[str, object]:
    configs = node_configs(directory)
    for cfg in configs:
        start_node(cfg)
    admin = load_remote_config(directory / "admin.toml")
    deadline = time.monotonic() + timeout
    with ClusterClient.from_config(admin) as client:
        while True:
            status = cluster_status.gather(client, timeout=1.0)
            ready = cluster_status.healthy(status) and status["primary_version"] is not None
            if ready and all(n["reachable"] for n in status["nodes"]):
                return status
            dead = [c.parent.name for c in configs if _pid_of(c) is None]
            if dead:
                raise ClusterUnavailable(
                    f"node(s) {', '.join(dead)} exited; see {directory}/<node>/node.log")
            if time.monotonic() >= deadline:
                if ready:  # a leader and a quorum, but a node is slow: still usable
                    return status
                raise ClusterUnavailable(f"no leader elected within {timeout:.0f} s; see "
                                         f"{directory}/<node>/node.log")
            time.sleep(0.2)


def down(directory: Path, timeout: float = 10.0) -> list[str]:
    """Stop every node of ``directory`` (SIGTERM, then SIGKILL); return the ones stopped."""
    from raftsso.agent.local import stop_agent

    stopped = ["agent"] if stop_agent(directory, timeout) else []
    for cfg in node_configs(directory):
        pid = _pid_of(cfg)
        if pid is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_of(cfg) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_of(cfg) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            (cfg.parent / "node.pid").unlink()
        stopped.append(cfg.parent.name)
    return stopped
