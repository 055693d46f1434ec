"""The command line exactly as an operator uses it (DESIGN.md section 5)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftsso.deployment import PORTS_PER_NODE
from tests.harness import cli, free_base_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "cluster"
    base = free_base_port(3 * PORTS_PER_NODE)
    r = cli("init", str(d), "--base-port", str(base))
    assert r.returncode == 0, r.stderr
    assert b"created cluster" in r.stdout
    try:
        yield d
    finally:
        cli("local", "down", str(d))


def _status(d: Path) -> tuple[int, dict[str, object]]:
    r = cli("-c", str(d / "admin.toml"), "status", "--json")
    return r.returncode, json.loads(r.stdout)


def test_local_up_status_rotate_down(deployment: Path) -> None:
    d = deployment
    up = cli("local", "up", str(d))
    assert up.returncode == 0, up.stderr
    code, status = _status(d)
    assert code == 0
    assert set(status) == {"cluster_id", "leader", "has_quorum", "primary_version",
                           "failure_tolerance", "nodes"}
    assert status["has_quorum"] is True
    nodes = status["nodes"]
    assert isinstance(nodes, list) and len(nodes) == 3
    assert all(n["reachable"] for n in nodes)
    assert [n["role"] for n in nodes].count("leader") == 1
    assert {n["primary_version"] for n in nodes} == {1}
    assert set(nodes[0]) >= {"id", "address", "reachable", "role", "term", "commit_index",
                             "primary_version"}

    table = cli("-c", str(d / "admin.toml"), "status")
    assert table.returncode == 0
    for column in (b"NODE", b"ADDRESS", b"REACHABLE", b"ROLE", b"TERM", b"COMMIT INDEX",
                   b"PRIMARY VERSION", b"LAST CONTACT"):
        assert column in table.stdout

    rot = cli("-c", str(d / "admin.toml"), "rotate", "--json")
    assert rot.returncode == 0, rot.stderr
    assert json.loads(rot.stdout) == {"version": 2, "state": "staged", "primary_version": 1}
    rot = cli("-c", str(d / "admin.toml"), "rotate", "--now", "--json")
    assert json.loads(rot.stdout) == {"version": 3, "state": "primary", "primary_version": 3}

    # `local up` again is harmless: the running nodes are kept.
    pids = sorted((d / f"node{i}" / "node.pid").read_text() for i in (1, 2, 3))
    assert cli("local", "up", str(d)).returncode == 0
    assert sorted((d / f"node{i}" / "node.pid").read_text() for i in (1, 2, 3)) == pids

    down = cli("local", "down", str(d))
    assert down.returncode == 0
    assert b"node1" in down.stdout
    code, status = _status(d)
    assert code == 3
    assert status["leader"] is None
    assert not any(n["reachable"] for n in status["nodes"])  # type: ignore[union-attr]


def test_without_quorum_status_and_rotate_exit_3(deployment: Path) -> None:
    d = deployment
    assert cli("local", "up", str(d)).returncode == 0
    import os
    import signal

    for i in (1, 2):
        os.kill(int((d / f"node{i}" / "node.pid").read_text()), signal.SIGKILL)
    _, status = wait_for(lambda: (r := _status(d))[0] == 3 and r,
                            what="status to report no quorum")
    assert status["has_quorum"] is False
    rot = cli("-c", str(d / "admin.toml"), "rotate", "--now", "--timeout", "3")
    assert rot.returncode == 3
    assert rot.stderr.startswith(b"error: ")
    assert b"Traceback" not in rot.stderr
    assert len(rot.stderr.strip().splitlines()) == 1


def test_errors_are_one_line_with_the_documented_exit_codes(tmp_path: Path,
                                                            deployment: Path) -> None:
    missing = cli("-c", str(tmp_path / "nope.toml"), "status")
    assert missing.returncode == 1
    assert b"does not exist" in missing.stderr and b"Traceback" not in missing.stderr

    client_rotates = cli("-c", str(deployment / "client.toml"), "rotate")
    assert client_rotates.returncode == 1
    assert b"admin" in client_rotates.stderr

    no_config = cli("status")
    assert no_config.returncode == 2

    again = cli("init", str(deployment))
    assert again.returncode == 1
    assert b"not empty" in again.stderr

    bad_option = cli("rotate", "--bogus")
    assert bad_option.returncode == 2

    nothing_running = cli("-c", str(deployment / "admin.toml"), "rotate", "--timeout", "2")
    assert nothing_running.returncode == 3
    assert b"Traceback" not in nothing_running.stderr
