"""Two agents (two hosts) sharing one real PostgreSQL store, beside real nodes: what one
writes the other reads, a disabled application is refused by both, and while PostgreSQL
is down both keep encrypting and decrypting with the definitions they last read."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftsso.agent.errors import ApiError
from raftsso.errors import ClusterUnavailable
from tests.agent.conftest import agent_beside
from tests.harness import Cluster, wait_for
from tests.pgserver import PostgresServer, find_bin_dir, postgres_server

pytestmark = pytest.mark.integration


@pytest.fixture
def pg() -> Iterator[PostgresServer]:
    if find_bin_dir() is None:
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql; .ci/run "
                    "installs it)")
    with postgres_server(fsync=False) as server:
        yield server


@pytest.fixture
def two_dirs() -> Iterator[tuple[Path, Path]]:
    dirs = [Path(tempfile.mkdtemp(prefix="rsa-", dir="/tmp")) for _ in range(2)]
    try:
        yield dirs[0], dirs[1]
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def test_two_agents_share_a_postgresql_store(cluster: Cluster, pg: PostgresServer,
                                              two_dirs: tuple[Path, Path]) -> None:
    store = {"store": pg.uri + "?connect_timeout=2",
             "store_password_file": str(pg.password_file), "app_cache_ttl": 0.5}
    with agent_beside(cluster, two_dirs[0], **store) as host1, \
            agent_beside(cluster, two_dirs[1], **store, config_name="agent-2.toml",
                         audit_log="agent-2-audit.jsonl") as host2, \
            host1.client() as a, host2.client() as b:
        a.add_app("payroll", users_group="root")
        a.set_credential("payroll", "alice", b"Pa55-shared")
        assert b.get_credential("payroll", "alice") == b"Pa55-shared"
        token = a.encrypt("payroll", b"made on host 1", b"row-1")
        assert b.decrypt("payroll", token, b"row-1") == b"made on host 1"

        a.update_app("payroll", enabled=False)  # through host 1: host 2 follows within ttl

        def refused_on_host2() -> bool:
            try:
                b.encrypt("payroll", b"x")
            except ApiError as exc:
                return exc.code == "APP_DISABLED"
            return False

        wait_for(refused_on_host2, what="host 2 to see the application disabled")
        a.update_app("payroll", enabled=True)
        wait_for(lambda: b.encrypt("payroll", b"x"), what="host 2 to see it enabled again")

        pg.stop()  # the shared store is down: the applications go on
        try:
            for client in (a, b):
                assert client.decrypt("payroll", token, b"row-1") == b"made on host 1"
                assert client.decrypt("payroll", client.encrypt("payroll", b"y")) == b"y"
            with pytest.raises(ClusterUnavailable, match="SSO store"):
                b.get_credential("payroll", "alice")  # the store itself: 503
        finally:
            pg.start()
        wait_for(lambda: b.get_credential("payroll", "alice") == b"Pa55-shared",
                 timeout=60, what="the store to be back")
        assert host1.alive() and host2.alive()
