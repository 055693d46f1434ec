"""SSOClient on an injected keyring source and clock: real AES-GCM, no network, no sleeps.

The seam is :class:`raftsso.client.KeyringSource`: :class:`tests.fakes.FakeSource` answers
the ``keyring`` operation per node from dictionaries shaped exactly like a node's answer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from typing import Any

import pytest

from raftsso import envelope
from raftsso.client import SSOClient, parse_keyring
from raftsso.errors import (
    ClusterUnavailable,
    ConfigError,
    DecodeError,
    InvalidToken,
    RaftssoError,
    StaleSecret,
)
from tests.fakes import CLUSTER, KEYS, FakeClock, FakeSource, make_client, ring
from tests.harness import wait_for

# -- start -------------------------------------------------------------------------------


def test_start_fails_when_no_node_answers(clock: FakeClock) -> None:
    src = FakeSource()
    with pytest.raises(ClusterUnavailable) as exc:
        make_client(src, clock)
    assert "node1: connection refused" in str(exc.value)
    assert src.closed


def test_start_uses_the_first_node_that_answers(clock: FakeClock) -> None:
    src = FakeSource()
    src.answers["node3"] = ring({1: "primary"}, index=5, node="node3")
    with make_client(src, clock) as c:
        assert src.calls == ["node1", "node2", "node3"]
        st = c.state()
        assert st.node == "node3" and st.primary == 1 and st.stale is False
        assert st.last_sync_age == 0.0 and st.last_error is None


def test_bad_settings_are_refused(source: FakeSource, clock: FakeClock) -> None:
    with pytest.raises(ConfigError):
        make_client(source, clock, resync_interval=10.0, max_staleness=10.0)
    with pytest.raises(ConfigError):
        make_client(source, clock, resync_interval=0.0)
    assert source.closed


# -- envelopes -----------------------------------------------------------------------------


def test_round_trip_under_the_primary(client: SSOClient) -> None:
    token = client.encrypt(b"hunter2", b"ad")
    assert token[0] == envelope.TOKEN_FORMAT
    assert envelope.token_key_version(token) == 1
    assert client.decrypt(token, b"ad") == b"hunter2"
    # The same bytes open with the raw envelope of version 1: nothing client-specific.
    assert envelope.Envelope(1, KEYS[1]).decrypt(token, b"ad") == b"hunter2"


def test_decrypts_any_cached_version_and_never_encrypts_with_a_staged_one(
        source: FakeSource, clock: FakeClock) -> None:
    source.set_all(ring({1: "active", 2: "primary", 3: "staged"}, index=9))
    with make_client(source, clock) as c:
        old = envelope.Envelope(1, KEYS[1]).encrypt(b"old")
        staged = envelope.Envelope(3, KEYS[3]).encrypt(b"staged")
        assert c.decrypt(old) == b"old"
        assert c.decrypt(staged) == b"staged"
        for _ in range(20):
            assert envelope.token_key_version(c.encrypt(b"x")) == 2


@pytest.mark.parametrize("damage", ["format", "version", "nonce", "body", "tag", "truncate",
                                    "empty", "extend"])
def test_every_bad_token_is_the_one_opaque_error(client: SSOClient, damage: str) -> None:
    token = bytearray(client.encrypt(b"secret", b"row"))
    if damage == "format":
        token[0] ^= 0xFF
    elif damage == "version":
        token[4] ^= 0x01  # version 0: never valid, and no resync for it
    elif damage == "nonce":
        token[6] ^= 0x01
    elif damage == "body":
        token[17] ^= 0x01
    elif damage == "tag":
        token[-1] ^= 0x01
    elif damage == "truncate":
        token = token[:-1]
    elif damage == "empty":
        token = bytearray()
    elif damage == "extend":
        token += b"\x00"
    with pytest.raises(InvalidToken) as exc:
        client.decrypt(bytes(token), b"row")
    assert str(exc.value) == "invalid token"


def test_wrong_associated_data_is_rejected(client: SSOClient) -> None:
    token = client.encrypt(b"secret", b"raftsso/cred/v1\x00app\x00alice")
    with pytest.raises(InvalidToken):
        client.decrypt(token, b"raftsso/cred/v1\x00app\x00bob")
    with pytest.raises(InvalidToken):
        client.decrypt(token)



@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview,
                                  lambda b: memoryview(bytearray(b))])
def test_decrypt_takes_any_bytes_like_token(client: SSOClient, kind: Any) -> None:
    for size in (0, 100, 70_000):  # small and large (a memoryview inside) tokens
        data = os.urandom(size)
        token = client.encrypt(data, b"ad")
        assert client.decrypt(kind(token), b"ad") == data
        damaged = bytearray(token)
        damaged[-1] ^= 1
        with pytest.raises(InvalidToken):
            client.decrypt(kind(bytes(damaged)), b"ad")


def test_threads_encrypting_through_one_client_never_share_a_nonce(
        client: SSOClient) -> None:
    tokens: list[list[bytes]] = []
    go = threading.Barrier(4)

    def work() -> None:
        go.wait(timeout=30)
        tokens.append([client.encrypt(b"x") for _ in range(10_000)])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    nonces = [t[5:5 + envelope.NONCE_SIZE] for batch in tokens for t in batch]
    assert len(nonces) == 40_000 and len(set(nonces)) == 40_000

# -- staleness (injected clock) ------------------------------------------------------------


def test_encrypt_is_refused_exactly_past_max_staleness(
        client: SSOClient, source: FakeSource, clock: FakeClock) -> None:
    token = client.encrypt(b"before")
    source.set_all(None)  # every node down from now on
    clock.now += 19.75  # (binary fractions: the arithmetic below is exact)
    with pytest.raises(ClusterUnavailable):
        client.sync()
    assert client.state().stale is False
    client.encrypt(b"still fresh")  # 19.75 s < 20 s
    clock.now += 0.25  # exactly max_staleness: no longer younger than it
    with pytest.raises(StaleSecret) as exc:
        client.encrypt(b"too old")
    message = str(exc.value)
    assert "max_staleness" in message and "status" in message and "decryption still works" \
        in message
    st = client.state()
    assert st.stale is True and st.last_sync_age == 20.0
    assert "connection refused" in st.last_error
    # Decryption never depends on freshness.
    assert client.decrypt(token) == b"before"
    clock.now += 3600
    assert client.decrypt(token) == b"before"
    # A node comes back: the next sync makes the cache fresh again.
    source.answers["node2"] = ring({1: "primary"}, index=5, node="node2")
    client.sync()
    assert client.state().stale is False and client.state().node == "node2"
    assert client.decrypt(client.encrypt(b"again")) == b"again"


def test_default_max_staleness_is_twice_the_resync_interval(source: FakeSource,
                                                            clock: FakeClock) -> None:
    with SSOClient(source, resync_interval=7.0, clock=clock, background=False) as c:
        assert c.max_staleness == 14.0
        clock.now += 13.5
        c.encrypt(b"x")
        clock.now += 0.5
        with pytest.raises(StaleSecret):
            c.encrypt(b"x")


# -- never go back, move on ------------------------------------------------------------------


def test_an_older_keyring_is_ignored_and_the_next_node_tried(
        client: SSOClient, source: FakeSource) -> None:
    source.answers["node1"] = ring({1: "active", 2: "primary"}, index=10)
    client.sync()
    assert client.state().commit_index == 10
    source.answers["node1"] = ring({1: "primary"}, index=5, node="node1")  # behind
    source.answers["node2"] = ring({1: "active", 2: "primary"}, index=12, node="node2")
    client.sync()
    st = client.state()
    assert (st.node, st.commit_index, st.primary) == ("node2", 12, 2)


def test_when_every_node_is_behind_the_cache_is_kept(
        client: SSOClient, source: FakeSource, clock: FakeClock) -> None:
    source.set_all(ring({1: "active", 2: "primary"}, index=10))
    client.sync()
    source.set_all(ring({1: "primary"}, index=6))
    clock.now += 1
    with pytest.raises(ClusterUnavailable) as exc:
        client.sync()
    assert "older keyring" in str(exc.value)
    st = client.state()
    assert st.commit_index == 10 and st.primary == 2
    assert st.last_sync_age == 1.0  # an older answer is not a successful sync
    assert envelope.token_key_version(client.encrypt(b"x")) == 2


def test_a_higher_term_does_not_make_an_older_keyring_newer(
        client: SSOClient, source: FakeSource) -> None:
    # A follower cut off from the others raises its term in failed elections but has
    # not applied the newer entries: its keyring is older whatever its term says.
    source.set_all(ring({1: "active", 2: "primary"}, index=10, term=3))
    client.sync()
    source.answers["node1"] = ring({1: "primary"}, index=8, term=9)
    source.answers["node2"] = ring({1: "active", 2: "primary"}, index=10, term=3,
                                   node="node2")
    client.sync()
    st = client.state()
    assert (st.node, st.primary, st.term) == ("node2", 2, 3)


def test_another_cluster_or_a_keyring_without_primary_is_refused(
        client: SSOClient, source: FakeSource) -> None:
    source.answers["node1"] = ring({1: "primary"}, index=50, cluster="someone-else")
    source.answers["node2"] = ring({}, index=60, node="node2")
    source.answers["node3"] = None
    with pytest.raises(ClusterUnavailable) as exc:
        client.sync()
    assert "someone-else" in str(exc.value) and "no primary" in str(exc.value)
    assert client.state().commit_index == 5


def test_moves_to_another_node_and_sticks_to_it(client: SSOClient,
                                                source: FakeSource) -> None:
    source.answers["node1"] = None  # killed
    source.answers["node2"] = ring({1: "primary"}, index=6, node="node2")
    source.calls.clear()
    client.sync()
    assert source.calls == ["node1", "node2"]
    assert client.state().node == "node2"
    source.calls.clear()
    client.sync()
    assert source.calls == ["node2"]


def test_malformed_answers_count_as_failures(client: SSOClient, source: FakeSource) -> None:
    bad_fp = ring({1: "primary"}, index=7)
    bad_fp["versions"][0]["fingerprint"] = "0" * 16
    source.answers["node1"] = bad_fp
    source.answers["node2"] = {"versions": "nope"}
    source.answers["node3"] = RaftssoError("SEAL_MISMATCH")
    with pytest.raises(ClusterUnavailable) as exc:
        client.sync()
    assert "fingerprint" in str(exc.value)
    with pytest.raises(DecodeError):
        parse_keyring(ring({1: "primary", 2: "primary"}, index=1))


# -- on-demand resync ---------------------------------------------------------------------


def test_an_unknown_newer_version_triggers_one_resync(
        client: SSOClient, source: FakeSource, clock: FakeClock) -> None:
    source.set_all(ring({1: "active", 2: "primary"}, index=8))
    token = envelope.Envelope(2, KEYS[2]).encrypt(b"new", b"ad")
    source.calls.clear()
    assert client.decrypt(token, b"ad") == b"new"
    assert source.calls == ["node1"]
    assert client.state().primary == 2


def test_an_on_demand_resync_goes_on_past_a_node_that_lacks_the_version(
        client: SSOClient, source: FakeSource) -> None:
    token = envelope.Envelope(2, KEYS[2]).encrypt(b"new")
    source.answers["node1"] = ring({1: "primary"}, index=5)  # a lagging follower
    source.answers["node2"] = ring({1: "active", 2: "primary"}, index=9)
    source.calls.clear()
    assert client.decrypt(token) == b"new"
    assert source.calls == ["node1", "node2"]


def test_on_demand_resyncs_are_rate_limited(
        client: SSOClient, source: FakeSource, clock: FakeClock) -> None:
    unknown = envelope.Envelope(4, KEYS[4]).encrypt(b"x")
    source.calls.clear()
    with pytest.raises(InvalidToken):
        client.decrypt(unknown)
    # One on-demand resync asks every node in turn (a lagging one may lack the version).
    assert source.calls == ["node1", "node2", "node3"]
    for _ in range(50):
        with pytest.raises(InvalidToken):
            client.decrypt(unknown)
    assert len(source.calls) == 3  # at most one round per second
    clock.now += 1.0
    source.set_all(ring({1: "active", 4: "primary"}, index=30))
    assert client.decrypt(unknown) == b"x"
    assert len(source.calls) == 4


def test_a_retired_version_does_not_trigger_a_resync(
        client: SSOClient, source: FakeSource) -> None:
    old = envelope.Envelope(1, KEYS[1]).encrypt(b"old")
    source.set_all(ring({2: "active", 3: "primary"}, index=40))  # 1 retired
    client.sync()
    source.calls.clear()
    with pytest.raises(InvalidToken):
        client.decrypt(old)
    assert source.calls == []


def test_an_unknown_version_with_every_node_down_is_the_opaque_error(
        client: SSOClient, source: FakeSource) -> None:
    source.set_all(None)
    with pytest.raises(InvalidToken):
        client.decrypt(envelope.Envelope(3, KEYS[3]).encrypt(b"x"))
    assert client.state().last_error is not None


# -- secrecy, lifecycle, threads ----------------------------------------------------------------


def test_no_key_material_in_repr_state_or_logs(source: FakeSource, clock: FakeClock,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="raftsso")
    source.set_all(ring({1: "active", 2: "primary", 3: "staged"}, index=9))
    with make_client(source, clock) as c:
        source.answers["node1"] = None
        c.sync()
        source.set_all(None)
        clock.now += 100
        with pytest.raises(ClusterUnavailable):
            c.sync()
        with pytest.raises(ClusterUnavailable):
            c.sync()
        texts = [repr(c), str(c.state()), repr(c.state()), caplog.text,
                 repr(parse_keyring(ring({1: "primary"}, index=1)))]
    for text in texts:
        for key in KEYS.values():
            assert key.hex() not in text
            assert repr(key)[2:-1] not in text
    assert "cannot resync" in caplog.text


def test_close_stops_everything(source: FakeSource, clock: FakeClock) -> None:
    c = make_client(source, clock, background=True, resync_interval=0.02,
                    max_staleness=1.0)
    token = c.encrypt(b"x")
    c.close()
    c.close()  # idempotent
    assert source.closed
    with pytest.raises(RaftssoError, match="closed"):
        c.encrypt(b"x")
    with pytest.raises(RaftssoError, match="closed"):
        c.decrypt(token)
    assert c.state().closed is True and c.state().versions == ()


def test_background_thread_resyncs_and_picks_up_a_rotation(source: FakeSource) -> None:
    with SSOClient(source, cluster_id=CLUSTER, resync_interval=0.02,
                   max_staleness=5.0) as c:
        source.set_all(ring({1: "active", 2: "primary"}, index=20))
        wait_for(lambda: envelope.token_key_version(c.encrypt(b"x")) == 2, timeout=10,
                 what="the rotation to reach the client")
        syncs = c.state().syncs
        wait_for(lambda: c.state().syncs >= syncs + 3, timeout=10, what="more resyncs")


def test_background_thread_keeps_trying_after_failures(source: FakeSource) -> None:
    with SSOClient(source, cluster_id=CLUSTER, resync_interval=0.02,
                   max_staleness=5.0) as c:
        source.set_all(None)
        wait_for(lambda: c.state().consecutive_failures >= 3, timeout=10,
                 what="failed resyncs")
        source.answers["node3"] = ring({1: "primary"}, index=5, node="node3")
        wait_for(lambda: c.state().node == "node3", timeout=10, what="a resync to node3")
        assert c.state().consecutive_failures == 0


def test_concurrent_use_while_keyrings_change(source: FakeSource, clock: FakeClock) -> None:
    errors: list[BaseException] = []
    done = threading.Event()
    with make_client(source, clock) as c:

        def worker() -> None:
            try:
                while not done.is_set():
                    ad = os.urandom(4)
                    assert c.decrypt(c.encrypt(b"payload", ad), ad) == b"payload"
            except BaseException as exc:  # collected below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            for index, versions in enumerate(
                    [{1: "primary", 2: "staged"}, {1: "active", 2: "primary"},
                     {1: "active", 2: "active", 3: "primary"}], start=10):
                source.set_all(ring(versions, index=index))
                for _ in range(20):
                    c.sync()
        finally:
            done.set()
            for t in threads:
                t.join()
    assert errors == []


def test_state_is_typed_and_its_json_view_keeps_the_old_keys() -> None:
    source = FakeSource(1)
    source.answers["node1"] = ring({1: "primary"}, index=1)
    with SSOClient(source, background=False) as client:
        st = client.state()
        assert st.primary == 1 and st.versions[0].state == "primary"
        view = st.to_dict()
        assert set(view) == {
            "cluster_id", "node", "term", "commit_index", "primary", "versions", "last_sync",
            "last_sync_age", "stale", "resync_interval", "max_staleness", "last_attempt",
            "last_error", "last_error_at", "consecutive_failures", "syncs", "closed"}
        assert view["versions"] == [{"id": 1, "state": "primary",
                                     "fingerprint": st.versions[0].fingerprint}]
        json.dumps(view)
        with pytest.raises(dataclasses.FrozenInstanceError):
            st.primary = 2  # type: ignore[misc]
