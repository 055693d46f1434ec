"""Rotation on a schedule and before an encryption limit (pure): the policy, and the
replicated ledger of encryption counts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftsso.encryption_counts import CLIENT_KEEP, EncryptionLedger, parse_counts
from raftsso.keyring import Keyring, KeyState, KeyVersion
from raftsso.rotation_policy import RotationPolicy, rotation_due

SEALED = b"\x01" * 61


def ring(*states: KeyState, created: float = 1000.0) -> Keyring:
    return Keyring(tuple(KeyVersion(i + 1, s, SEALED, f"f{i}", created + i)
                         for i, s in enumerate(states)))


P, A, S = KeyState.PRIMARY, KeyState.ACTIVE, KeyState.STAGED


def test_off_by_default() -> None:
    policy = RotationPolicy()
    assert not policy.enabled and policy.next_rotation(ring(P)) is None
    assert rotation_due(1e12, ring(P), policy, {1: 10**12}) is None


def test_period() -> None:
    policy = RotationPolicy(period=60)
    r = ring(A, P)  # newest created at 1001
    assert policy.next_rotation(r) == 1061
    assert rotation_due(1060.9, r, policy, {}) is None
    assert rotation_due(1061, r, policy, {}) == "rotation_period"


def test_no_rotation_while_one_is_staged() -> None:
    policy = RotationPolicy(period=1, max_encryptions=100)
    assert rotation_due(1e9, ring(P, S), policy, {1: 10**6}) is None
    assert rotation_due(1e9, ring(), policy, {}) is None  # no primary yet


def test_max_encryptions_rotates_before_the_limit() -> None:
    policy = RotationPolicy(max_encryptions=1000)
    assert policy.encryption_threshold == 750
    assert rotation_due(1e9, ring(A, P), policy, {2: 749, 1: 10**6}) is None
    assert rotation_due(1e9, ring(A, P), policy, {2: 750}) == "max_encryptions"


def test_ledger_counts_growth_once() -> None:
    live = frozenset({1, 2})
    led = EncryptionLedger().add_reports({"svc/a": {1: 10}}, at=1, live_versions=live)
    led = led.add_reports({"svc/a": {1: 10}}, at=2, live_versions=live)  # the same report
    led = led.add_reports({"svc/a": {1: 15, 2: 3}, "svc/b": {1: 1}}, at=3,
                          live_versions=live)
    assert (led.total(1), led.total(2)) == (16, 3)
    # An older report arriving late (from a former leader) adds nothing.
    led = led.add_reports({"svc/a": {1: 12}}, at=4, live_versions=live)
    assert led.total(1) == 16


def test_ledger_forgets_dead_versions_and_silent_clients() -> None:
    led = EncryptionLedger().add_reports({"a": {1: 5, 2: 5}}, at=0,
                                         live_versions=frozenset({1, 2}))
    led = led.add_reports({}, at=CLIENT_KEEP + 1, live_versions=frozenset({2}))
    assert dict(led.totals) == {2: 5} and dict(led.clients) == {}


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 3),
                          st.integers(0, 10**6)), max_size=40))
def test_totals_are_the_max_per_client_summed(reports: list[tuple[str, int, int]]) -> None:
    live = frozenset({1, 2, 3})
    led = EncryptionLedger()
    best: dict[tuple[str, int], int] = {}
    for t, (client, version, count) in enumerate(reports):
        led = led.add_reports({client: {version: count}}, at=float(t), live_versions=live)
        best[client, version] = max(best.get((client, version), 0), count)
        back = EncryptionLedger.from_wire(led.to_wire())
        assert dict(back.totals) == dict(led.totals)
    for version in live:
        assert led.total(version) == sum(n for (_, v), n in best.items() if v == version)


@pytest.mark.parametrize("raw", [[1], {"x": 1}, {"1": -1}, {"0": 1}, {"1": True},
                                 {"1": 1 << 63}])
def test_bad_counts(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_counts(raw)


def test_counts_accept_string_versions() -> None:
    assert parse_counts({"7": 3, 8: 4}) == {7: 3, 8: 4}
