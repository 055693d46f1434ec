"""The agent process: wires the SSO client, the store, the policy, the audit log and the
HTTP server on the Unix socket, and runs until SIGTERM.

Start-up order: harden the process (no core dumps, not ptrace-able by the agent's own
user), read agent.toml, fetch the keyring (retrying up to ``start_timeout``; without it
there is nothing to serve), open the store, bind the socket (created with its final mode,
then given its group), serve. Stop: close the listener, finish the answers in progress,
drop the keyring, remove the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import grp
import logging
import os
import resource
import signal
import socket
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from raftsso.agent.api import AgentApi, Cipher, Store
from raftsso.agent.audit import AgentAudit
from raftsso.agent.config import AgentConfig, load_agent_config
from raftsso.agent.http import HttpServer
from raftsso.agent.openapi import document_bytes
from raftsso.agent.peer import Names, identify
from raftsso.agent.policy import Policy
from raftsso.client import SSOClient
from raftsso.errors import ClusterUnavailable, ConfigError, RaftssoError
from raftsso.store import open_store

log = logging.getLogger("raftsso.agent")
_PR_SET_DUMPABLE = 4


def harden_process() -> None:
    """No core dump (it would hold every master secret) and no ptrace by the same uid."""
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def bind_socket(path: Path, mode: int, group: str | None, backlog: int = 128) -> socket.socket:
    """A listening Unix socket at ``path`` with ``mode`` from its creation on.

    A stale socket file (nobody listening) is replaced; a live one (another agent) or any
    other kind of file is refused.
    """
    if not path.parent.is_dir():
        raise ConfigError(f"the directory of the agent socket {path.parent} does not exist")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{path} exists and is not a socket; move it away or set "
                              "another socket path in agent.toml")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # left behind by an agent that died
            except OSError as exc:
                raise ConfigError(f"cannot check the existing socket {path}: "
                                  f"{exc.strerror or exc}") from None
            else:
                raise ConfigError(f"another agent is listening on {path}; stop it first")
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"socket_group {group!r} is not a group on this host") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)  # the socket is never more open than ``mode``
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot create the agent socket {path}: "
                          f"{exc.strerror or exc}") from None
    finally:
        os.umask(old)
    try:
        if gid >= 0:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise ConfigError(f"cannot set up the agent socket {path}: "
                          f"{exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def connect_client(cfg: AgentConfig) -> SSOClient:
    """The SSO client, retrying the first sync for up to ``start_timeout`` seconds."""
    remote = cfg.remote()
    options: dict[str, Any] = {}
    if cfg.resync_interval is not None:
        options["resync_interval"] = cfg.resync_interval
    if cfg.max_staleness is not None:
        options["max_staleness"] = cfg.max_staleness
    deadline = time.monotonic() + cfg.start_timeout
    delay = 0.25
    while True:
        try:
            return SSOClient(remote, **options)
        except ClusterUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise ClusterUnavailable(f"the agent cannot start without a keyring: {exc}") \
                    from None
            log.warning("no keyring yet (%s); retrying", exc)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


class Agent:
    """One agent: build it with :meth:`from_config` (production) or from parts (tests)."""

    def __init__(self, cfg: AgentConfig, cipher: Cipher, store: Store, audit: AgentAudit,
                 names: Names | None = None) -> None:
        self.cfg = cfg
        self.cipher = cipher
        self.store = store
        self.audit = audit
        self.names = names or Names()
        self.policy = Policy(self.names.gid, cfg.admin_group)
        self.executor = ThreadPoolExecutor(cfg.workers, thread_name_prefix="raftsso-agent")
        self.api = AgentApi(cipher, store, self.policy, audit, self.names, self.executor,
                            app_cache_ttl=cfg.app_cache_ttl, openapi=document_bytes())
        names_ = self.names
        self.http = HttpServer(self.api, cfg.limits, lambda sock: identify(sock, names_))
        self._sock_ino: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> Agent:
        remote = cfg.remote()
        setting = cfg.store if cfg.store is not None else remote.store
        if setting is None:
            raise ConfigError(f"no SSO store: set store = \"...\" in {cfg.path} or in "
                              f"{remote.path}")
        client = connect_client(cfg)
        try:
            store = open_store(setting, client, password_file=cfg.store_password_file,
                               cluster_id=remote.cluster_id)
        except BaseException:
            client.close()
            raise
        audit = AgentAudit(cfg.audit_path, f"agent@{socket.gethostname()}")
        return cls(cfg, client, store, audit)

    async def start(self) -> None:
        sock = bind_socket(self.cfg.socket, self.cfg.socket_mode, self.cfg.socket_group)
        st = os.stat(self.cfg.socket)
        self._sock_ino = (st.st_dev, st.st_ino)
        await self.http.start(sock)

    async def stop(self, grace: float = 5.0) -> None:
        await self.http.close(grace)
        self._remove_socket()

    def _remove_socket(self) -> None:
        try:
            st = os.stat(self.cfg.socket)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._sock_ino:  # never another agent's socket
            with contextlib.suppress(OSError):
                self.cfg.socket.unlink()

    def close(self) -> None:
        """Drop everything: threads, store, the cached keyring, the audit file."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        for thing in (self.store, self.cipher):
            close = getattr(thing, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("error while closing %s", type(thing).__name__)
        self.audit.close()


def run_agent(config_path: str | Path) -> int:
    """Run the agent of ``agent.toml`` until SIGTERM or SIGINT; returns the exit code."""
    os.umask(0o077)
    harden_process()
    cfg = load_agent_config(config_path)
    agent = Agent.from_config(cfg)
    try:
        return asyncio.run(_serve(agent))
    finally:
        agent.close()
        log.info("agent stopped")


def _reload_certificate(agent: Agent) -> None:
    """SIGHUP: new connections to the nodes present the certificate and key on disk now;
    files that do not load leave the last good pair in use."""
    cipher = agent.cipher
    if not isinstance(cipher, SSOClient):  # a test's in-memory cipher has no certificate
        return
    try:
        if cipher.reload_certificate():
            log.info("client certificate reloaded")
    except RaftssoError as exc:
        log.error("client certificate not reloaded (the previous one stays): %s", exc)


async def _serve(agent: Agent) -> int:
    await agent.start()
    state = agent.cipher.state()
    log.info("agent serving on %s (cluster %s, primary version %s)", agent.cfg.socket,
             state.cluster_id, state.primary)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_certificate, agent)
    await stop.wait()
    log.info("agent stopping")
    await agent.stop()
    return 0
