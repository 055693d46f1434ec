"""raftsso.events: line format, no bytes ever, rate limiting, the documented catalogue."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from pathlib import Path

import pytest

from raftsso import events

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
NOW = dt.datetime(2025, 1, 2, 3, 4, 5, 678_000, tzinfo=dt.UTC)


def test_line_has_the_documented_fields() -> None:
    line = events.format_event(events.ROTATION_STAGED, "version 4 staged", node="node1",
                               now=NOW, version=4, by="admin-1")
    assert "\n" not in line
    assert json.loads(line) == {
        "ts": "2025-01-02T03:04:05.678Z", "event_id": 1201, "event": "rotation_staged",
        "level": "info", "node": "node1", "message": "version 4 staged",
        "version": 4, "by": "admin-1"}


def test_default_message_is_the_summary() -> None:
    record = json.loads(events.format_event(events.QUORUM_LOST, node="n", now=NOW))
    assert record["message"] == events.QUORUM_LOST.summary
    assert record["level"] == "warning"


def test_bytes_are_never_written() -> None:
    key = bytes(range(32))
    line = events.format_event(events.LEADER_ELECTED, node="n", now=NOW, key=key,
                               keys=[key, 1], nested={"k": key}, view=memoryview(key),
                               mixed=(key,), ba=bytearray(key))
    record = json.loads(line)
    assert record["key"] == "<32 bytes withheld>"
    assert record["keys"] == ["<32 bytes withheld>", 1]
    assert record["nested"] == "<dict withheld>"
    assert record["view"] == "<32 bytes withheld>"
    assert record["mixed"] == ["<32 bytes withheld>"]
    assert record["ba"] == "<32 bytes withheld>"
    for form in (key.hex(), repr(key), "\\x00\\x01"):
        assert form not in line


def test_field_names_cannot_shadow_or_inject() -> None:
    record = json.loads(events.format_event(
        events.LEADER_ELECTED, node="n", now=NOW, event_id=7, **{"Bad Name": 1}))
    assert record["event_id"] == 1100
    assert record["field_event_id"] == 7
    assert record["field_bad_name"] == 1


def test_odd_values_are_made_safe() -> None:
    record = json.loads(events.format_event(
        events.LEADER_ELECTED, node="n", now=NOW, nan=float("nan"), big="x" * 10_000,
        many=list(range(1000)), path=Path("/tmp/x")))
    assert record["nan"] == "nan"
    assert len(record["big"]) <= 520
    assert len(record["many"]) == 64
    assert record["path"] == "/tmp/x"


def test_emit_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    class Evil:
        def __str__(self) -> str:
            raise RuntimeError("boom")

    events.emit(events.LEADER_ELECTED, value=Evil())
    events.emit(99999)  # an unknown id is dropped, not raised


def test_emit_logs_on_the_events_logger_and_tells_listeners(
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[events.EventType] = []
    events.add_listener(seen.append)
    try:
        with caplog.at_level(logging.INFO, logger=events.LOGGER_NAME):
            events.emit(events.PEER_UNREACHABLE, peer="node2")
    finally:
        events.remove_listener(seen.append)
    assert seen == [events.PEER_UNREACHABLE]
    (rec,) = [r for r in caplog.records if r.name == events.LOGGER_NAME]
    assert rec.levelno == logging.WARNING
    assert json.loads(rec.getMessage())["peer"] == "node2"


def test_configure_writes_bare_lines_through_a_queue() -> None:
    stream = io.StringIO()
    events.configure("nodeX", stream)
    try:
        events.emit(events.NODE_STARTED, "up")
    finally:
        events.shutdown()
        events.set_node("")
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["node"] == "nodeX"
    assert line.startswith("{")


def test_rate_limiter_holds_back_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    limiter = events.RateLimiter(60.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger=events.LOGGER_NAME):
        assert limiter.emit("a", events.REQUEST_REFUSED, op="rotate")
        assert not limiter.emit("a", events.REQUEST_REFUSED, op="rotate")
        assert not limiter.emit("a", events.REQUEST_REFUSED, op="rotate")
        assert limiter.emit("b", events.REQUEST_REFUSED, op="rotate")  # another key
        now[0] += 60.0
        assert limiter.emit("a", events.REQUEST_REFUSED, op="rotate")
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == events.LOGGER_NAME]
    assert len(lines) == 3
    assert "suppressed" not in lines[0]
    assert lines[2]["suppressed"] == 2


def test_catalogue_ids_and_names_are_unique_and_stable() -> None:
    cat = events.catalogue()
    assert len({e.id for e in cat}) == len(cat)
    assert len({e.name for e in cat}) == len(cat)
    assert all(e.level in ("info", "warning", "error") for e in cat)
    # A few ids that operators alert on: they must never change.
    assert events.by_id(1110) is events.QUORUM_LOST
    assert events.by_id(1400).entsso.startswith("10532")
    assert "10783" in events.by_id(1401).entsso


def test_docs_list_every_event_as_the_code_defines_it() -> None:
    doc = DOC.read_text()
    for row in events.as_markdown_rows():
        assert row in doc, f"docs/events.md is out of date; expected the row:\n{row}"
