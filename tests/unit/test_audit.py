"""raftsso.audit and raftsso.telemetry: line format, aggregation, no secrets, file handling."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from raftsso import events
from raftsso.audit import MAX_PEERS_PER_WINDOW, AuditLog, audited_args, audited_outcome
from raftsso.metrics import NodeMetrics
from raftsso.server import Caller, Observed
from raftsso.telemetry import RequestTelemetry
from tests.fakes import FakeClock

KEY = bytes(range(100, 132))
T0 = 1_699_999_980.0  # a whole minute (divisible by 60)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def audit(tmp_path: Path, clock: FakeClock) -> AuditLog:
    log = AuditLog(tmp_path / "data" / "audit.jsonl", "node1", clock=clock, background=False)
    yield log
    log.close()


def test_request_line_format(audit: AuditLog) -> None:
    audit.request(cn="admin-1", role="admin", op="rotate", peer="10.0.0.5:4242", code=None,
                  args={"request_id": b"\x01" * 16, "now": True},
                  result={"version": 2, "state": "staged", "primary_version": 1},
                  admin=True)
    (line,) = _lines(audit.path)
    assert line == {
        "v": 1, "ts": "2023-11-14T22:13:00.000Z", "node": "node1", "kind": "request",
        "who": {"cn": "admin-1", "role": "admin"}, "op": "rotate", "peer": "10.0.0.5:4242",
        "result": "ok", "code": None, "args": {"request_id": "01" * 16, "now": True},
        "outcome": {"version": 2, "state": "staged", "primary_version": 1}}


def test_refusal_line(audit: AuditLog) -> None:
    audit.request(cn="client-1", role="client", op="rotate", peer="p:1", code="FORBIDDEN")
    (line,) = _lines(audit.path)
    assert line["result"] == "error" and line["code"] == "FORBIDDEN"
    assert "args" not in line and "outcome" not in line


def test_no_secret_material_reaches_the_file(audit: AuditLog) -> None:
    audit.request(
        cn="admin-1", role="admin", op="restore", peer="p:1", code=None,
        args={"password": "hunter2", "versions": [{"id": 1, "key": KEY}], "blob": KEY,
              "version": KEY, "request_id": KEY * 4},
        result={"key": KEY, "versions": [{"id": 1, "key": KEY}], "sealed": KEY,
                "backup": KEY, "note": KEY, "added": [1, 2]}, admin=True)
    raw = audit.path.read_bytes()
    text = raw.decode()
    assert KEY not in raw and KEY.hex() not in text and "hunter2" not in text
    (line,) = _lines(audit.path)
    assert line.get("args", {}) == {}
    assert line.get("outcome", {}) == {}  # lists, bytes and key-named fields: dropped


def test_audited_args_and_outcome_allow_lists() -> None:
    assert audited_args({"now": False, "version": 3, "node_id": "node4",
                         "address": "10.0.0.14:7100", "secret": "x"}) == {
        "now": False, "version": 3, "node_id": "node4", "address": "10.0.0.14:7100"}
    assert audited_args({"versions": [1, 2, 3]}) == {"versions": [1, 2, 3]}
    assert audited_args({"versions": [1, b"x"]}) == {}
    assert audited_outcome({"version": 3, "state": "primary", "key": "text-key"}) == {
        "version": 3, "state": "primary"}
    assert audited_outcome(["not", "a", "map"]) == {}


def test_reads_are_aggregated_per_client_per_minute(audit: AuditLog, clock: FakeClock) -> None:
    for i in range(5):
        audit.read(cn="sso-a", role="client", op="keyring", peer=f"10.0.0.7:{5000 + i}",
                   code=None)
    audit.read(cn="sso-a", role="client", op="keyring", peer="10.0.0.7:6000",
               code="SEAL_MISMATCH")
    audit.read(cn="sso-b", role="client", op="keyring", peer="10.0.0.8:1", code=None)
    audit.read(cn="sso-a", role="client", op="status", peer="10.0.0.7:1", code=None)
    assert not audit.path.read_text()  # the minute is not over
    clock.now += 61
    audit.read(cn="sso-a", role="client", op="keyring", peer="10.0.0.7:1", code=None)
    lines = _lines(audit.path)  # the new minute's first read wrote the closed windows
    assert len(lines) == 3
    a = next(x for x in lines if x["who"]["cn"] == "sso-a" and x["op"] == "keyring")
    assert a["kind"] == "reads" and a["count"] == 6 and a["ok"] == 5
    assert a["errors"] == {"SEAL_MISMATCH": 1} and a["result"] == "error"
    assert a["window_start"] == "2023-11-14T22:13:00.000Z"
    assert a["window_end"] == "2023-11-14T22:14:00.000Z"
    assert len(a["peers"]) == 6
    b = next(x for x in lines if x["who"]["cn"] == "sso-b")
    assert b["count"] == 1 and b["errors"] == {} and b["result"] == "ok"
    audit.flush_windows(everything=True)
    assert _lines(audit.path)[-1]["window_start"] == "2023-11-14T22:14:00.000Z"


def test_peer_list_is_capped(audit: AuditLog) -> None:
    for i in range(50):
        audit.read(cn="c", role="client", op="keyring", peer=f"h:{i}", code=None)
    audit.flush_windows(everything=True)
    (line,) = _lines(audit.path)
    assert line["count"] == 50 and len(line["peers"]) == MAX_PEERS_PER_WINDOW


def test_file_is_private_and_append_only(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier": true}\n')
    path.chmod(0o644)
    old = os.umask(0)
    try:
        log = AuditLog(path, "n", clock=clock, background=False)
    finally:
        os.umask(old)
    log.request(cn="a", role="admin", op="rotate", peer="p", code=None, admin=True)
    log.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _lines(path)[0] == {"earlier": True}
    assert len(_lines(path)) == 2
    fresh = tmp_path / "new" / "audit.jsonl"
    AuditLog(fresh, "n", clock=clock, background=False).close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_reopens_after_logrotate(tmp_path: Path, audit: AuditLog) -> None:
    audit.request(cn="a", role="admin", op="rotate", peer="p", code=None)
    audit.path.rename(tmp_path / "audit.jsonl.1")
    audit._reopen_if_rotated()
    audit.request(cn="a", role="admin", op="retire", peer="p", code=None)
    assert [x["op"] for x in _lines(audit.path)] == ["retire"]
    assert [x["op"] for x in _lines(tmp_path / "audit.jsonl.1")] == ["rotate"]


def test_a_failed_write_is_counted_not_raised(audit: AuditLog) -> None:
    failures: list[int] = []
    audit.on_write_error = lambda: failures.append(1)
    os.close(audit._fd)
    audit._fd = os.open(os.devnull, os.O_RDONLY)  # writes fail with EBADF
    audit.request(cn="a", role="admin", op="rotate", peer="p", code=None)
    assert audit.write_errors == 1 and failures == [1]


# -- telemetry: what goes where -------------------------------------------------------

ADMIN = frozenset({"admin"})
READ = frozenset({"client", "admin"})


def _seen(op: str, role: str, code: str | None = None, result: Any = None,
          roles: frozenset[str] = READ, args: dict[str, Any] | None = None) -> Observed:
    return Observed(Caller(role, f"{role}-1", "127.0.0.1:9"), op, args or {}, roles, code,
                    result, 0.002)


def test_telemetry_routes_requests(audit: AuditLog, caplog: pytest.LogCaptureFixture) -> None:
    metrics = NodeMetrics()
    tele = RequestTelemetry(audit, metrics)
    with caplog.at_level(logging.INFO, logger=events.LOGGER_NAME):
        tele(_seen("keyring", "client", result={"primary": 1, "versions": []}))
        tele(_seen("keyring", "client", code="SEAL_MISMATCH"))
        tele(_seen("keyring", "admin", result={"primary": 1, "versions": [{"key": KEY}]}))
        tele(_seen("rotate", "client", code="FORBIDDEN", roles=ADMIN))
        tele(_seen("rotate", "admin", result={"version": 2, "state": "primary",
                                               "primary_version": 2}, roles=ADMIN,
                   args={"request_id": b"\x02" * 16, "now": True}))
        tele(_seen("retire", "admin", result={"version": 1}, roles=ADMIN))
        tele(_seen("restore", "admin", code="CONFLICT", roles=ADMIN))
        tele(_seen("status", "admin"))
    audit.flush_windows(everything=True)
    lines = _lines(audit.path)
    requests = [(x["op"], x["who"]["role"], x["code"]) for x in lines
                if x["kind"] == "request"]
    assert requests == [("keyring", "admin", None), ("rotate", "client", "FORBIDDEN"),
                        ("rotate", "admin", None), ("retire", "admin", None),
                        ("restore", "admin", "CONFLICT")]
    export = next(x for x in lines if x["op"] == "keyring" and x["kind"] == "request")
    assert "outcome" not in export
    reads = {(x["op"], x["who"]["role"]): x["count"] for x in lines if x["kind"] == "reads"}
    assert reads == {("keyring", "client"): 2, ("status", "admin"): 1}
    assert KEY not in audit.path.read_bytes()
    names = [json.loads(r.getMessage())["event"] for r in caplog.records
             if r.name == events.LOGGER_NAME]
    assert names == ["secret_unavailable", "request_refused", "rotation_promoted",
                     "version_retired", "backup_failed"]
    assert metrics.clients.ages().keys() == {"client-1"}
    text = metrics.render().decode()
    assert 'raftsso_request_errors_total{code="FORBIDDEN",op="rotate"} 1.0' in text
    assert 'raftsso_keyring_fetches_total{result="error"} 1.0' in text
    assert "raftsso_keyring_fetch_seconds_count 3.0" in text
