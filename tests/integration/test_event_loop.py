"""The service loop (issue 16.3): asyncio's own by default, uvloop's with
``RAFTSSO_EVENT_LOOP=uvloop`` (the ``fast`` extra installed); either way the node serves
keyring fetches and stops cleanly."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

import pytest

from raftsso.client import SSOClient
from raftsso.runner import EVENT_LOOP_ENV
from tests.harness import running_cluster, wait_for

pytestmark = pytest.mark.integration


def _loop_line(root: Path, node_id: str) -> str:
    lines = [line for line in (root / node_id / "node.log").read_text().splitlines()
             if "event loop: " in line]
    return lines[-1] if lines else ""


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None,
                    reason="uvloop is not installed (pip install -e '.[fast]')")
def test_the_node_serves_on_uvloop_when_told_and_on_asyncio_by_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "uvloop")
    with running_cluster(tmp_path / "c") as c:
        for node_id in c.ids:
            assert "event loop: uvloop" in _loop_line(c.root, node_id)
        expect = c.keyring(c.leader())
        with SSOClient.from_config(c.client_toml) as client:
            token = client.encrypt(b"over uvloop")
            assert client.decrypt(token) == b"over uvloop"
        # node1 again, on asyncio's loop (the default): the same keyring, and every node
        # stops on SIGTERM (exit 0).
        c.signal("node1", signal.SIGTERM)
        assert c.wait("node1") == 0
        monkeypatch.delenv(EVENT_LOOP_ENV)
        c.start("node1")
        wait_for(lambda: "event loop: asyncio" in _loop_line(c.root, "node1"),
                 what="node1 on asyncio's loop")
        wait_for(lambda: c.keyring("node1") == expect, what="node1 to serve the keyring")
        for node_id in c.ids:
            c.signal(node_id, signal.SIGTERM)
            assert c.wait(node_id) == 0
