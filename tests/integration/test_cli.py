"""The command line exactly as an operator uses it (DESIGN.md section 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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


def _click_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    """The same command line through click (raftsso_cli.main), not the console script's
    click-free status path."""
    code = (f"import sys\nsys.argv = ['raftsso', *{list(args)!r}]\n"
            "from raftsso_cli.main import main\nmain()")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          check=False)


def _shape(out: bytes) -> list[list[str]]:
    # Every cell but the ones that move between two calls (last contact, lag, term).
    lines = out.decode().splitlines()
    rows = [line.split() for line in lines[1:]]
    return [lines[0].split()] + [r[:4] + r[5:7] for r in rows]


def test_plain_status_without_click_says_what_click_says(tmp_path: Path,
                                                          deployment: Path) -> None:
    d = deployment
    admin = str(d / "admin.toml")
    assert cli("local", "up", str(d)).returncode == 0
    wait_for(lambda: _status(d)[0] == 0, what="a healthy cluster")
    # Every spelling of a plain status goes the click-free way; both ways agree.
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys\nsys.argv = ['raftsso', '-c', "
         f"{admin!r}, 'status']\nfrom raftsso_cli.launch import main\n"
         "try:\n    main()\nexcept SystemExit:\n    pass\n"
         "print('click' in sys.modules, file=sys.stderr)"],
        capture_output=True, timeout=60, check=False)
    assert loaded.stderr.splitlines()[-1] == b"False", loaded.stderr
    theirs = _click_cli("-c", admin, "status")
    assert theirs.returncode == 0, theirs.stderr
    for argv in (["-c", admin, "status"], ["--config", admin, "status"],
                 [f"--config={admin}", "status"]):
        ours = cli(*argv)
        assert ours.returncode == 0, ours.stderr
        assert _shape(ours.stdout) == _shape(theirs.stdout)
        assert ours.stderr == theirs.stderr  # the never-backed-up warning

    # Without a quorum: exit 3 and the same two lines on stderr.
    for i in (1, 2):
        os.kill(int((d / f"node{i}" / "node.pid").read_text()), signal.SIGKILL)
    wait_for(lambda: _status(d)[0] == 3, what="status to report no quorum")
    ours, theirs = cli("-c", admin, "status"), _click_cli("-c", admin, "status")
    assert ours.returncode == theirs.returncode == 3
    assert ours.stderr == theirs.stderr and b"no leader with a quorum" in ours.stderr

    # A missing file: one error line, exit 1, both ways.
    missing = str(tmp_path / "nope.toml")
    ours, theirs = cli("-c", missing, "status"), _click_cli("-c", missing, "status")
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr == theirs.stderr and ours.stderr.startswith(b"error: ")
