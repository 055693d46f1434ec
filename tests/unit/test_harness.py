"""The test harness's own pieces that need no node process: port blocks and node options."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from raftsso.config import RaftTimings, load_node_config
from raftsso.deployment import init_deployment
from raftsso.errors import ConfigError
from tests.harness import NodeOptions, configure_node, reserve_ports
from tests.harness.ports import BLOCK, ephemeral_start, ports_free


def test_port_blocks_are_below_the_ephemeral_range_free_and_exclusive() -> None:
    a, b = reserve_ports(9), reserve_ports(BLOCK + 1)  # one block, then two
    try:
        assert b.base + 2 * BLOCK <= ephemeral_start() and a.base + BLOCK <= ephemeral_start()
        assert a.base + BLOCK <= b.base or b.base + 2 * BLOCK <= a.base
        assert ports_free(a.base, BLOCK) and ports_free(b.base, 2 * BLOCK)
        # Another process (another test run) cannot take a block this one holds.
        probe = (f"from tests.harness.ports import _lock; "
                 f"print(_lock({a.base}) is None, _lock({b.base + BLOCK}) is None)")
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             check=True)
        assert out.stdout.split() == ["True", "True"]
    finally:
        a.release()
        b.release()


@pytest.fixture
def node_toml(tmp_path: Path) -> Path:
    init_deployment(tmp_path / "d", nodes=1, base_port=17100)  # nothing listens
    return tmp_path / "d" / "node1" / "node.toml"


def test_node_options_are_written_as_typed_toml(node_toml: Path) -> None:
    before = tomllib.loads(node_toml.read_text())
    cfg = configure_node(node_toml, NodeOptions(
        raft=RaftTimings(log_compaction_min_entries=8), peer_tls=False, client_window=2.0,
        rotation_grace=3600.0))
    assert cfg.raft.log_compaction_min_entries == 8
    assert cfg.raft.election_timeout_max == RaftTimings().election_timeout_max
    assert (cfg.peer_tls, cfg.client_window, cfg.rotation_grace) == (False, 2.0, 3600.0)
    after = tomllib.loads(node_toml.read_text())
    assert after["peers"] == before["peers"] and after["node_id"] == "node1"
    assert node_toml.stat().st_mode & 0o777 == 0o600
    # Options left None keep what is there.
    assert configure_node(node_toml, NodeOptions()).client_window == 2.0
    assert load_node_config(node_toml) == cfg


def test_node_options_the_node_would_refuse_fail_at_once(node_toml: Path) -> None:
    with pytest.raises(ConfigError, match="election_timeout_min"):
        configure_node(node_toml, NodeOptions(raft=RaftTimings(election_timeout_min=9.0)))
    with pytest.raises(ConfigError, match="unknown"):
        configure_node(node_toml, NodeOptions(limits={"no_such_limit": 1}))
    assert load_node_config(node_toml).raft == RaftTimings()  # left as it was
