"""raftsso.node.tracking: SSO clients seen, per certificate, with no eviction inside the window."""

from __future__ import annotations

import pytest

from raftsso.node import tracking
from raftsso.node.tracking import ClientTracker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _seen(tracker: ClientTracker) -> dict[tuple[str, str], int]:
    return {(c.certificate, c.client_id): c.version for c in tracker.view().clients}


def test_the_same_id_under_two_certificates_is_two_clients() -> None:
    t = ClientTracker(window=60.0, clock=Clock())
    t.record("sso-a", "p1", 1)
    t.record("sso-b", "p1", 3)  # another certificate cannot speak for sso-a's p1
    t.record("sso-a", "p1", 0)  # an older answer never lowers what a client has
    assert _seen(t) == {("sso-a", "p1"): 1, ("sso-b", "p1"): 3}


def test_a_full_certificate_keeps_its_recent_ids_and_reports_the_overflow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "MAX_CLIENTS_PER_CERTIFICATE", 3)
    clock = Clock()
    t = ClientTracker(window=60.0, clock=clock)
    for i in range(3):
        t.record("sso-b", f"f{i}", 2)
    t.record("sso-a", "real", 1)
    t.record("sso-b", "f3", 2)  # full of recent ids: not recorded, nothing evicted
    assert ("sso-b", "f3") not in _seen(t) and ("sso-b", "f0") in _seen(t)
    assert t.view().overflowed
    clock.now = 61.0  # the window has passed: old ids make room, the overflow is history
    t.record("sso-b", "f4", 2)
    assert _seen(t) == {("sso-b", "f4"): 2}
    assert not t.view().overflowed


def test_the_total_cap_never_evicts_inside_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "MAX_TRACKED_CLIENTS", 4)
    t = ClientTracker(window=60.0, clock=Clock())
    for cert in ("a", "b", "c", "d"):
        t.record(cert, "p", 1)
    t.record("e", "p", 1)
    assert set(_seen(t)) == {(c, "p") for c in "abcd"} and t.view().overflowed


def test_a_view_too_long_to_send_is_sent_empty_and_overflowed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "MAX_VIEW_CLIENTS", 2)
    t = ClientTracker(window=60.0, clock=Clock())
    for i in range(3):
        t.record("sso-a", f"p{i}", 1)
    view = t.view()
    assert view.clients == () and view.overflowed


def test_tracking_for_counts_from_the_start() -> None:
    clock = Clock()
    clock.now = 100.0
    t = ClientTracker(window=60.0, clock=clock)
    clock.now = 130.0
    assert t.view().tracking_for == 30.0
