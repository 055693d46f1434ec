"""agent.toml checking, the kernel's peer credentials, socket binding."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from raftsso.agent.config import load_agent_config
from raftsso.agent.peer import Names, _proc_groups, identify
from raftsso.agent.service import bind_socket
from raftsso.errors import ConfigError
from tests.agent.conftest import write_agent_toml


def test_defaults_and_relative_paths(short_dir: Path) -> None:
    cfg = load_agent_config(write_agent_toml(short_dir / "agent.toml", socket="a.sock"))
    assert cfg.socket == short_dir / "a.sock" and cfg.client == short_dir / "client.toml"
    assert cfg.socket_mode == 0o660 and cfg.audit_path == short_dir / "agent-audit.jsonl"
    assert cfg.limits.max_body == 1 << 20 and cfg.store is None


@pytest.mark.parametrize(("values", "message"), [
    ({}, "missing required key 'socket'"),
    ({"socket": "a.sock", "socket_mode": "0666"}, "every local user"),
    ({"socket": "a.sock", "socket_mode": 432}, "octal mode as a string"),
    ({"socket": "a.sock", "socket_group": "bad group"}, "Unix group name"),
    ({"socket": "a.sock", "workers": 0}, "'workers'"),
    ({"socket": "a.sock", "app_cache_ttl": -1}, "'app_cache_ttl'"),
    ({"socket": "a.sock", "max_staleness": True}, "'max_staleness'"),
    ({"socket": "a.sock", "sokcet": "x"}, "unknown keys: sokcet"),
    ({"socket": "a.sock", "limits": {"max_body": 10}}, "'max_body'"),
    ({"socket": "a.sock", "limits": {"max_bdy": 10}}, "unknown [limits] keys"),
    ({"socket": "/" + "x" * 120}, "107 bytes"),
    ({"socket": "a.sock", "format": 2}, "not valid TOML"),  # written twice by the helper
])
def test_bad_settings_are_one_line(short_dir: Path, values: dict[str, object],
                                   message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_agent_config(write_agent_toml(short_dir / "agent.toml", **values))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_peer_credentials_from_the_kernel() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        caller = identify(a, Names())
    assert (caller.pid, caller.uid, caller.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert caller.groups == frozenset(os.getgroups()) - {os.getgid()} or \
        caller.groups == frozenset(os.getgroups())
    assert caller.groups_from == "SO_PEERGROUPS"


def test_proc_fallback_trusts_only_the_same_uid_and_gid() -> None:
    me = os.getpid()
    assert _proc_groups(me, os.getuid(), os.getgid()) == frozenset(os.getgroups())
    assert _proc_groups(me, os.getuid() + 1, os.getgid()) == frozenset()  # pid reused
    assert _proc_groups(2 ** 22 + 12345, os.getuid(), os.getgid()) == frozenset()  # gone


def test_socket_created_with_its_mode_and_stale_socket_replaced(short_dir: Path) -> None:
    path = short_dir / "s.sock"
    sock = bind_socket(path, 0o660, None)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    with pytest.raises(ConfigError, match="another agent is listening"):
        bind_socket(path, 0o660, None)
    sock.close()  # the file stays, nobody listens: a stale socket
    bind_socket(path, 0o600, None).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    (short_dir / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a socket"):
        bind_socket(short_dir / "f", 0o660, None)
    with pytest.raises(ConfigError, match="not a group"):
        bind_socket(short_dir / "g.sock", 0o660, "no-such-group-xyz")
