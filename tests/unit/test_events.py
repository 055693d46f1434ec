"""raftsso.events and raftsso.logs: line format, no bytes ever, rate limiting, the log queue,
the documented catalogue."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from pathlib import Path

import pytest

from raftsso import events, logs
from tests.fakes import FakeClock

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
    clock = FakeClock(100.0)
    limiter = events.RateLimiter(60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger=events.LOGGER_NAME):
        assert limiter.emit("a", events.REQUEST_REFUSED, op="rotate")
        assert not limiter.emit("a", events.REQUEST_REFUSED, op="rotate")
        assert not limiter.emit("a", events.REQUEST_REFUSED, op="rotate")
        assert limiter.emit("b", events.REQUEST_REFUSED, op="rotate")  # another key
        clock.now += 60.0
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


# -- raftsso.logs: what event lines, audit lines and the node log share ------------------


def test_json_scalar_keeps_scalars_and_hands_everything_else_over() -> None:
    def other(value: object) -> str:
        return f"<{type(value).__name__}>"

    for value in (None, True, 0, -7, 1.5, "text"):
        assert logs.json_scalar(value, 10, other) == value
    assert logs.json_scalar("x" * 12, 10, other) == "x" * 10 + "…"
    for value in (b"key", bytearray(b"k"), [1], {"a": 1}, float("nan"), float("inf"),
                  object()):
        assert logs.json_scalar(value, 10, other) == other(value)


def test_utc_timestamp_from_posix_time_and_datetime() -> None:
    assert logs.utc_timestamp(0.0) == "1970-01-01T00:00:00.000Z"
    aware = dt.datetime(2025, 1, 1, 13, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert logs.utc_timestamp(aware) == "2025-01-01T12:00:00.123Z"


def test_rate_limited_log_lines_say_how_many_were_held_back(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(0.0)
    limiter = logs.RateLimiter(1.0, clock=clock, max_keys=2)
    logger = logging.getLogger("raftsso.test.ratelimit")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        assert limiter.log("peer-a", logger, logging.WARNING, "refused a")
        assert not limiter.log("peer-a", logger, logging.WARNING, "refused a")
        assert not limiter.log("peer-a", logger, logging.WARNING, "refused a")
        clock.now = 1.0
        assert limiter.log("peer-a", logger, logging.WARNING, "refused a")
        assert limiter.log("peer-b", logger, logging.WARNING, "refused b")
        assert limiter.log("peer-c", logger, logging.WARNING, "refused c")  # forgets all
        assert limiter.log("peer-a", logger, logging.WARNING, "refused a")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a", "refused a (2 more like it suppressed)", "refused b", "refused c",
        "refused a"]


def test_queued_logging_flushes_on_stop_and_stops_once() -> None:
    logger = logging.getLogger("raftsso.test.queue")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.propagate = False
    try:
        stop = logs.log_through_queue(logger, handler, logging.INFO)
        for i in range(100):
            logger.info("line %d", i)
        stop()
        stop()  # and once more at exit: harmless
        assert stream.getvalue().splitlines() == [f"line {i}" for i in range(100)]
    finally:
        logger.handlers[:] = []
        logger.propagate = True
