"""The stores known to the cluster: the replicated table, its commands and snapshots, the
retire rule, the service messages, and a writing client's increments (no network)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from raftsso.client_reports import MAX_PENDING_STORES, StoreWriteReports
from raftsso.errors import BadRequest, ClusterUnavailable, PermissionDenied
from raftsso.fsm import KeyringStateMachine, encode_command
from raftsso.keyring import Keyring, KeyState, KeyVersion
from raftsso.known_stores import (
    MAX_REPORTED_VERSIONS,
    MAX_STORES,
    KnownStore,
    demoted_at,
    retire_blocker,
)
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.commands import StoreForget, StoreReport, decode_command
from raftsso.protocol.ids import RequestId
from raftsso.protocol.messages import (
    StoreForgetRequest,
    StoreReportRequest,
    StoresRequest,
    StoresResult,
)
from raftsso.store import RowKind, open_store
from tests.fakes import FakeClock, FakeSource, make_client
from tests.fakes import ring as fake_ring

_ids = itertools.count(1)


def rid() -> RequestId:
    return RequestId(next(_ids).to_bytes(16, "big"))


def report(store: str, counts: dict[int, int], *, full: bool, at: float = 100.0,
           kind: str = "sqlite") -> bytes:
    return StoreReport(rid(), store, kind, at, counts, full).encode()


def ring(*versions: tuple[int, KeyState, float | None]) -> Keyring:
    return Keyring(tuple(KeyVersion(i, state, b"s" * 60, f"fp{i}", 1.0, promoted=promoted)
                         for i, state, promoted in versions))


# -- the replicated table ---------------------------------------------------------------------


def test_a_full_count_replaces_and_an_increment_only_adds() -> None:
    fsm = KeyringStateMachine()
    assert fsm.apply(report("a", {1: 3}, full=False, at=10.0)).ok
    assert fsm.stores()["a"] == KnownStore("a", "sqlite", 10.0, None, {1: 3})
    assert fsm.apply(report("a", {1: 2, 2: 1}, full=False, at=20.0)).ok
    assert fsm.stores()["a"] == KnownStore("a", "sqlite", 20.0, None, {1: 5, 2: 1})
    # An increment dated earlier (a slow clock) never moves the report time back.
    fsm.apply(report("a", {2: 1}, full=False, at=15.0))
    assert fsm.stores()["a"].reported_at == 20.0
    out = fsm.apply(report("a", {2: 7, 1: 0}, full=True, at=30.0))
    assert out.ok and out.data["versions_in_use"] == {"2": 7}
    assert fsm.stores()["a"] == KnownStore("a", "sqlite", 30.0, 30.0, {2: 7})
    # An increment after a full count keeps the count's time: only a count lets retire by.
    fsm.apply(report("a", {3: 1}, full=False, at=40.0))
    assert fsm.stores()["a"] == KnownStore("a", "sqlite", 40.0, 30.0, {2: 7, 3: 1})


def test_the_table_is_capped_and_forget_makes_room() -> None:
    fsm = KeyringStateMachine()
    for i in range(MAX_STORES):
        assert fsm.apply(report(f"s{i}", {1: 1}, full=False)).ok
    refused = fsm.apply(report("one-more", {1: 1}, full=True))
    assert refused.code is ErrorCode.TOO_MANY_STORES and "one-more" not in fsm.stores()
    assert fsm.apply(report("s0", {1: 2}, full=True)).ok  # a known store still reports
    assert fsm.apply(StoreForget(rid(), "s1").encode()).ok
    assert fsm.apply(report("one-more", {1: 1}, full=True)).ok
    missing = fsm.apply(StoreForget(rid(), "s1").encode())
    assert missing.code is ErrorCode.NOT_FOUND


def test_stores_are_in_snapshots_and_a_snapshot_without_stores_keeps_its_bytes() -> None:
    fsm = KeyringStateMachine()
    empty = fsm.snapshot()
    assert b"stores" not in empty
    fsm.apply(report("a", {1: 3}, full=True, kind="postgresql"))
    fsm.apply(report("b", {2: 1}, full=False))
    other = KeyringStateMachine()
    other.restore(fsm.snapshot())
    assert other.stores() == fsm.stores() and other.snapshot() == fsm.snapshot()
    other.restore(empty)
    assert other.stores() == {}


@pytest.mark.parametrize("fields", [
    {"store_id": "", "kind": "sqlite", "counted_at": 1.0, "versions_in_use": {}, "full": True},
    {"store_id": "a b", "kind": "sqlite", "counted_at": 1.0, "versions_in_use": {},
     "full": True},
    {"store_id": "a", "kind": "x" * 33, "counted_at": 1.0, "versions_in_use": {},
     "full": True},
    {"store_id": "a", "kind": "sqlite", "counted_at": -1.0, "versions_in_use": {},
     "full": True},
    {"store_id": "a", "kind": "sqlite", "counted_at": 1.0, "versions_in_use": {"0": 1},
     "full": True},
    {"store_id": "a", "kind": "sqlite", "counted_at": 1.0, "versions_in_use": {"1": -1},
     "full": True},
    {"store_id": "a", "kind": "sqlite", "counted_at": 1.0, "versions_in_use": {"1": True},
     "full": True},
    {"store_id": "a", "kind": "sqlite", "counted_at": 1.0,
     "versions_in_use": {str(i): 1 for i in range(1, MAX_REPORTED_VERSIONS + 2)},
     "full": True},
    {"store_id": "a", "kind": "sqlite", "counted_at": 1.0, "versions_in_use": {},
     "full": "yes"},
])
def test_a_malformed_report_is_a_bad_command_that_changes_nothing(fields: Any) -> None:
    fsm = KeyringStateMachine()
    out = fsm.apply(encode_command("store_report", rid(), **fields))
    assert out.code is ErrorCode.BAD_COMMAND and fsm.stores() == {}


def test_commands_round_trip() -> None:
    for command in (StoreReport(rid(), "3f2a-id", "postgresql", 5.0, {1: 2, 9: 0}, True),
                    StoreForget(rid(), "3f2a-id")):
        assert decode_command(command.encode()) == command


# -- the retire rule ------------------------------------------------------------------------


def test_retire_needs_no_rows_and_a_full_count_after_the_version_stopped_being_primary() -> None:
    keys = ring((1, KeyState.ACTIVE, 10.0), (2, KeyState.ACTIVE, 50.0),
                (3, KeyState.PRIMARY, 90.0))
    assert demoted_at(keys, 1) == 50.0 and demoted_at(keys, 2) == 90.0
    assert demoted_at(keys, 3) is None
    clean = KnownStore("a", "sqlite", 60.0, 60.0, {2: 4, 3: 1})
    assert retire_blocker({"a": clean}, keys, 1) is None
    assert "reports 4 row(s) under version 2" in (retire_blocker({"a": clean}, keys, 2) or "")
    stale = KnownStore("b", "postgresql", 95.0, 40.0, {3: 1})
    message = retire_blocker({"a": clean, "b": stale}, keys, 1) or ""
    assert "postgresql store b has not counted its rows since version 1" in message
    never = KnownStore("c", "sqlite", 95.0, None, {})
    assert "(never)" in (retire_blocker({"c": never}, keys, 1) or "")
    assert retire_blocker({}, keys, 1) is None


# -- the service messages --------------------------------------------------------------------


def test_messages_round_trip_and_refuse_malformed_arguments() -> None:
    req = StoreReportRequest("s-1", "sqlite", 12.5, {1: 3}, full=True)
    assert StoreReportRequest.from_wire(req.to_wire()) == req
    forget = StoreForgetRequest("s-1")
    assert StoreForgetRequest.from_wire(forget.to_wire()) == forget
    view = StoresResult((KnownStore("s-1", "sqlite", 3.0, None, {2: 1}),))
    assert StoresRequest().decode_result(view.to_wire()) == view
    with pytest.raises(BadRequest, match="store_id"):
        StoreReportRequest.from_wire({**req.to_wire(), "store_id": "../x"})
    with pytest.raises(BadRequest, match="versions_in_use"):
        StoreReportRequest.from_wire({**req.to_wire(), "versions_in_use": {"x": 1}})


# -- a writing client's increments ----------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.sent: list[StoreReportRequest] = []
        self.fail: Exception | None = None

    def __call__(self, request: StoreReportRequest) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append(request)


def test_increments_are_merged_sent_once_and_kept_when_the_cluster_is_away() -> None:
    sink = Sink()
    reports = StoreWriteReports(sink, lambda: 7.0)
    reports.flush()
    assert sink.sent == []
    reports.add("a", "sqlite", {1: 2})
    reports.add("a", "sqlite", {1: 1, 2: 1})
    sink.fail = ClusterUnavailable("no node")
    reports.flush()
    assert reports.pending and sink.sent == []
    reports.add("a", "sqlite", {2: 1})
    sink.fail = None
    reports.flush()
    assert [(r.store_id, dict(r.versions_in_use), r.full, r.counted_at)
            for r in sink.sent] == [("a", {1: 3, 2: 2}, False, 7.0)]
    assert not reports.pending
    # A refusal (an old node without the op, a cap) is not retried forever.
    sink.fail = PermissionDenied("no")
    reports.add("b", "postgresql", {1: 1})
    reports.flush()
    assert not reports.pending


def test_pending_stores_are_bounded() -> None:
    reports = StoreWriteReports(Sink(), lambda: 1.0)
    for i in range(MAX_PENDING_STORES + 5):
        reports.add(f"s{i}", "sqlite", {1: 1})
    sink = Sink()
    reports._send = sink  # the same object, now recording
    reports.flush()
    assert len(sink.sent) == MAX_PENDING_STORES


class ReportingSource(FakeSource):
    """A keyring source that also takes store reports (as ClusterSource does)."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[StoreReportRequest] = []

    def report_store(self, request: StoreReportRequest) -> None:
        self.reports.append(request)


def test_a_store_written_with_an_sso_client_reports_the_versions_of_its_tokens(
        tmp_path: Path) -> None:
    source = ReportingSource()
    source.set_all(fake_ring({1: "primary"}, index=5))
    client = make_client(source, FakeClock())
    with open_store(tmp_path / "sso.db", client) as store:
        store.add_app("payroll")
        store.set_credential("payroll", "alice", b"pw")
        store.put_many(RowKind.CREDENTIAL, "payroll", [("bob", b"1"), ("carol", b"2")])
        store_id = store.store_id
        assert source.reports == []  # nothing sent on the write path itself
    client.close()  # a closing client sends what it holds
    assert [(r.store_id, r.kind, dict(r.versions_in_use), r.full) for r in source.reports] \
        == [(store_id, "sqlite", {1: 3}, False)]
