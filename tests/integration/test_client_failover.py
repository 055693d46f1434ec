"""SSOClient against real node processes: leader SIGKILL, every node down, rotation.

Everything waits by polling a condition with a deadline; nothing sleeps to synchronise and
nothing asserts on how long a step took.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from raftsso import pki
from raftsso.client import SSOClient
from raftsso.config import load_remote_config
from raftsso.envelope import token_key_version
from raftsso.errors import StaleSecret
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.integration


class Worker:
    """Encrypts and decrypts in a loop (fresh and older tokens) and records every failure."""

    def __init__(self, client: SSOClient) -> None:
        self.client = client
        self.ops = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sso-worker", daemon=True)

    def _run(self) -> None:
        old: list[tuple[bytes, bytes, bytes]] = []
        while not self._stop.is_set():
            data, ad = os.urandom(64), os.urandom(8)
            try:
                token = self.client.encrypt(data, ad)
                if self.client.decrypt(token, ad) != data:
                    self.failures.append("round trip returned other bytes")
                if old:
                    d, a, t = old[self.ops % len(old)]
                    if self.client.decrypt(t, a) != d:
                        self.failures.append("an older token returned other bytes")
                if len(old) < 1000:
                    old.append((data, ad, token))
            except Exception as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.ops += 1

    def __enter__(self) -> Worker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_zero_failures_while_the_leader_is_killed(cluster: Cluster) -> None:
    cfg = load_remote_config(cluster.client_toml)
    leader = cluster.leader()
    # The leader first in the list: the client syncs from it and must move when it dies.
    nodes = sorted(cfg.nodes, key=lambda n: n.id != leader)
    ctx = pki.client_context(cfg.ca_cert, cfg.cert, cfg.key)
    with SSOClient.connect(nodes, ctx, cluster_id=cfg.cluster_id, timeout=cfg.timeout,
                           resync_interval=0.2, max_staleness=5.0) as client, \
            Worker(client) as worker:
        assert client.state()["node"] == leader
        wait_for(lambda: worker.ops > 200, what="operations before the kill")
        cluster.kill(leader)
        killed_at = time.time()
        new_leader = cluster.leader(exclude=(leader,))
        assert new_leader != leader

        def moved() -> bool:
            st = client.state()
            return st["node"] != leader and st["last_sync"] > killed_at
        wait_for(moved, what="a resync from a surviving node")
        after = worker.ops
        wait_for(lambda: worker.ops > after + 200, what="operations after the failover")

        # The new leader's writes reach the client that moved.
        new = cluster.rotate(now=True)["version"]
        wait_for(lambda: token_key_version(client.encrypt(b"x")) == new,
                 what="encryption under the version rotated after the failover")
        after = worker.ops
        wait_for(lambda: worker.ops > after + 200, what="operations after the rotation")
    assert worker.failures == []
    assert worker.ops > 600


def test_every_node_down_decrypt_works_and_encrypt_goes_stale(cluster: Cluster) -> None:
    max_staleness = 2.0
    with SSOClient.from_config(cluster.client_toml, resync_interval=0.5,
                               max_staleness=max_staleness) as client:
        before = client.encrypt(b"written while the cluster was up", b"row")
        primary = client.state()["primary"]
        cluster.kill()  # SIGKILL every node, reaped when this returns
        killed_at = time.time()
        last_ok: dict[str, float] = {}

        def stale() -> bool:
            try:
                token = client.encrypt(b"probe", b"row")
            except StaleSecret:
                return True
            last_ok["age"] = client.state()["last_sync_age"]
            assert client.decrypt(token, b"row") == b"probe"
            return False
        wait_for(stale, what="encryption to be refused as stale")
        st = client.state()
        # Refused only once the last successful sync (before the kill) is max_staleness old.
        assert st["stale"] is True
        assert st["last_sync"] <= killed_at
        assert st["last_sync_age"] >= max_staleness
        assert last_ok.get("age", 0.0) < max_staleness
        assert st["consecutive_failures"] > 0 and "connection refused" in st["last_error"]
        # Decryption keeps working with every node down.
        assert client.decrypt(before, b"row") == b"written while the cluster was up"
        with pytest.raises(StaleSecret, match="max_staleness"):
            client.encrypt(b"still refused")

        # The resync thread kept trying: once the nodes are back, encryption resumes.
        cluster.start()

        def fresh() -> bool:
            try:
                client.encrypt(b"probe")
            except StaleSecret:
                return False
            return True
        wait_for(fresh, what="encryption to resume after the restart")
        st = client.state()
        assert st["primary"] == primary and st["stale"] is False
        assert client.decrypt(before, b"row") == b"written while the cluster was up"


def test_rotation_reaches_running_clients(cluster: Cluster) -> None:
    with SSOClient.from_config(cluster.client_toml, resync_interval=0.5) as running, \
            SSOClient.from_config(cluster.client_toml) as idle:  # resyncs every 60 s
        old = running.state()["primary"]
        old_token = running.encrypt(b"under the old primary")

        # A staged version is distributed for decryption, never used to encrypt.
        staged = cluster.rotate(now=False)
        assert staged["state"] == "staged"

        def has_staged() -> bool:
            return any(v["id"] == staged["version"] and v["state"] == "staged"
                       for v in running.state()["versions"])
        wait_for(has_staged, what="the staged version to reach the client")
        assert token_key_version(running.encrypt(b"x")) == old

        # --now: every running client encrypts under the new primary within a resync.
        new = cluster.rotate(now=True)["version"]
        assert new > staged["version"] > old
        wait_for(lambda: token_key_version(running.encrypt(b"x")) == new,
                 what="encryption under the new primary")
        token = running.encrypt(b"under the new primary", b"ad")

        # The idle client has not synced since: it resyncs on demand and decrypts.
        assert idle.state()["primary"] == old
        assert idle.decrypt(token, b"ad") == b"under the new primary"
        assert idle.state()["primary"] == new
        assert token_key_version(idle.encrypt(b"x")) == new
        # The former primary stays decryptable for both.
        assert idle.decrypt(old_token) == b"under the old primary"
        assert running.decrypt(old_token) == b"under the old primary"


def test_rotate_now_never_breaks_a_running_client_reading_another_ones_tokens(
        cluster: Cluster) -> None:
    """A writer encrypts under each new primary the moment it learns it; a reader that has
    not synced yet meets the version first in a token and must resync on demand, past any
    follower that has not applied the rotation yet."""
    opts = {"resync_interval": 0.3, "max_staleness": 30.0}
    with SSOClient.from_config(cluster.client_toml, **opts) as writer, \
            SSOClient.from_config(cluster.client_toml, **opts) as reader:
        tokens: list[tuple[bytes, bytes]] = []
        failures: list[str] = []
        for round_ in range(5):
            version = cluster.rotate(now=True)["version"]
            wait_for(lambda v=version: writer.sync() or writer.state()["primary"] == v,
                     what="the writer to learn the new primary")
            data = f"round {round_}".encode()
            token = writer.encrypt(data)
            assert token_key_version(token) == version
            tokens.append((data, token))
            try:
                assert reader.decrypt(token) == data
            except Exception as exc:
                failures.append(f"version {version}: {type(exc).__name__}: {exc}")
        assert failures == []
        assert all(reader.decrypt(t) == d for d, t in tokens)
