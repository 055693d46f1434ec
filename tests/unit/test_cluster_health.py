"""raftsso.cluster_health: failure tolerance and per-node health (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftsso.cluster_health import (
    MAX_LAG,
    MAX_LAST_CONTACT,
    NodeHealth,
    failure_tolerance,
    lag,
    node_health,
    quorum,
    tolerance_of,
)


@pytest.mark.parametrize(("voters", "healthy", "tolerance"), [
    (1, 1, 0), (3, 3, 1), (3, 2, 0), (3, 1, 0), (3, 0, 0), (5, 5, 2), (5, 4, 1), (5, 3, 0),
    (4, 4, 1), (7, 7, 3),
])
def test_failure_tolerance(voters: int, healthy: int, tolerance: int) -> None:
    assert failure_tolerance(voters, healthy) == tolerance


@given(st.integers(1, 99), st.data())
def test_losing_tolerance_plus_one_loses_the_quorum(voters: int, data: st.DataObject) -> None:
    healthy = data.draw(st.integers(0, voters))
    t = failure_tolerance(voters, healthy)
    assert healthy - t >= quorum(voters) or t == 0
    assert healthy - (t + 1) < quorum(voters)


@pytest.mark.parametrize(("voters", "healthy"), [(3, 4), (3, -1), (0, 0)])
def test_impossible_counts(voters: int, healthy: int) -> None:
    with pytest.raises(ValueError):
        failure_tolerance(voters, healthy)


def test_lag() -> None:
    assert lag(10, 7) == 3 and lag(10, 12) == 0
    assert lag(None, 3) is None and lag(3, None) is None


def test_a_follower_needs_contact_and_little_lag() -> None:
    ok = node_health("n2", reachable=True, leader=False, lag=0, last_contact=0.05)
    assert ok.healthy
    assert not node_health("n2", reachable=False, leader=False, lag=0, last_contact=0.0).healthy
    assert not node_health("n2", reachable=True, leader=False, lag=MAX_LAG + 1,
                           last_contact=0.0).healthy
    assert not node_health("n2", reachable=True, leader=False, lag=0,
                           last_contact=MAX_LAST_CONTACT + 0.1).healthy
    assert not node_health("n2", reachable=True, leader=False, lag=None,
                           last_contact=0.0).healthy
    assert not node_health("n2", reachable=True, leader=False, lag=0,
                           last_contact=None).healthy


def test_the_leader_is_healthy_when_it_answers() -> None:
    assert node_health("n1", reachable=True, leader=True, lag=None, last_contact=None).healthy
    row = node_health("n1", reachable=False, leader=True, lag=None, last_contact=None)
    assert not row.healthy
    assert row.to_dict() == {"id": "n1", "reachable": False, "lag": None,
                             "last_contact": None, "healthy": False}


def test_tolerance_of_three_nodes() -> None:
    def three(down: int) -> list[NodeHealth]:
        return [node_health(f"n{i}", reachable=i >= down, leader=i == 2, lag=0,
                            last_contact=0.0) for i in range(3)]

    assert tolerance_of(three(0), has_leader=True) == 1
    assert tolerance_of(three(1), has_leader=True) == 0
    assert tolerance_of(three(0), has_leader=False) == 0
    assert tolerance_of([], has_leader=True) == 0
