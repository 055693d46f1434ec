"""Fixtures of the SSO client's tests (unit, store): a fake clock and keyring source
(:mod:`tests.fakes`) and a client over them with no background thread. Registered for the
whole suite by ``tests/conftest.py`` (``pytest_plugins``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from raftsso.client import SSOClient
from tests.fakes import FakeClock, FakeSource, make_client, ring


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def source() -> FakeSource:
    """Every node answers version 1 as primary at commit index 5."""
    s = FakeSource()
    s.set_all(ring({1: "primary"}, index=5))
    return s


@pytest.fixture
def client(source: FakeSource, clock: FakeClock) -> Iterator[SSOClient]:
    """Resyncs every 10 s, stale after 20 s (on ``clock``)."""
    with make_client(source, clock) as c:
        yield c
