"""raftsso.fsm and raftsso.keyring: the replicated state machine, with real sealing."""

from __future__ import annotations

import contextlib
import copy
import itertools
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from raftsso.envelope import SEALED_SIZE, fingerprint, new_key, seal, unseal
from raftsso.errors import DecodeError
from raftsso.fsm import (
    COMMAND_FORMAT,
    MAX_REMEMBERED,
    SNAPSHOT_FORMAT,
    KeyringStateMachine,
    Outcome,
    encode_command,
)
from raftsso.keyring import Keyring, KeyState, KeyVersion
from raftsso.wire import versioned

SEAL_KEY = bytes(range(32))
CLUSTER = "c-unit-test"
_counter = itertools.count(1)


def req() -> bytes:
    return next(_counter).to_bytes(16, "big")


def sealed_for(version: int, secret: bytes | None = None) -> tuple[bytes, str]:
    """Key material is made and sealed by the proposer, before the command exists."""
    secret = secret if secret is not None else new_key()
    return seal(SEAL_KEY, secret, cluster_id=CLUSTER, version=version), fingerprint(secret)


def bootstrap_cmd(created: float = 1000.0, rid: bytes | None = None) -> bytes:
    sealed, fp = sealed_for(1)
    return encode_command("bootstrap", rid or req(), sealed=sealed, fingerprint=fp,
                          created=created)


def rotate_cmd(version: int, expect: int | None, now: bool = False, created: float = 2000.0,
               rid: bytes | None = None) -> bytes:
    sealed, fp = sealed_for(version)
    return encode_command("rotate", rid or req(), version=version, sealed=sealed,
                          fingerprint=fp, created=created, expect_primary=expect, now=now)


def promote_cmd(version: int, at: float = 3000.0, rid: bytes | None = None) -> bytes:
    return encode_command("promote", rid or req(), version=version, at=at)


def states(fsm: KeyringStateMachine) -> dict[int, str]:
    return {v.id: v.state.value for v in fsm.keyring.versions}


def booted() -> KeyringStateMachine:
    fsm = KeyringStateMachine()
    outcome = fsm.apply(bootstrap_cmd())
    assert outcome.ok, outcome
    return fsm


def rotated(fsm: KeyringStateMachine, now: bool = False) -> Outcome:
    ring = fsm.keyring
    outcome = fsm.apply(rotate_cmd(ring.last_id + 1, ring.primary, now=now))
    assert outcome.ok, outcome
    return outcome


def assert_sealed_secrets_open(fsm: KeyringStateMachine) -> None:
    """Every version holds a sealed secret bound to its own version id and cluster."""
    for v in fsm.keyring.versions:
        assert v.sealed is not None and len(v.sealed) == SEALED_SIZE
        assert fingerprint(unseal(SEAL_KEY, v.sealed, cluster_id=CLUSTER, version=v.id)) \
            == v.fingerprint


# -- keyring (pure data) ----------------------------------------------------------------


def test_empty_keyring() -> None:
    ring = Keyring()
    assert ring.primary is None
    assert ring.last_id == 0
    assert not ring.bootstrapped
    assert ring.get(1) is None


def test_keyring_promote_rules() -> None:
    ring = Keyring()
    for i, state in ((1, KeyState.ACTIVE), (2, KeyState.PRIMARY), (3, KeyState.STAGED),
                     (4, KeyState.STAGED), (5, KeyState.STAGED), (6, KeyState.RETIRED)):
        ring = ring.with_version(KeyVersion(i, state, b"s", f"fp{i}", float(i)))
    out = ring.promote(4, 99.0)
    assert {v.id: v.state for v in out.versions} == {
        1: KeyState.ACTIVE, 2: KeyState.ACTIVE, 3: KeyState.ACTIVE, 4: KeyState.PRIMARY,
        5: KeyState.STAGED, 6: KeyState.RETIRED}
    assert out.get(4) is not None and out.get(4).promoted == 99.0  # type: ignore[union-attr]
    assert out.primary == 4
    assert ring.primary == 2  # immutable: the old view did not change


def test_keyring_with_version_keeps_ids_sorted_and_replaces() -> None:
    ring = Keyring()
    for i in (3, 1, 2):
        ring = ring.with_version(KeyVersion(i, KeyState.STAGED, b"s", "fp", 0.0))
    assert [v.id for v in ring.versions] == [1, 2, 3]
    ring = ring.with_version(KeyVersion(2, KeyState.RETIRED, None, "fp", 0.0))
    assert [v.id for v in ring.versions] == [1, 2, 3]
    assert ring.get(2).state is KeyState.RETIRED  # type: ignore[union-attr]
    assert ring.last_id == 3


def test_key_version_wire_round_trip_and_repr_hides_sealed() -> None:
    sealed, fp = sealed_for(4)
    kv = KeyVersion(4, KeyState.PRIMARY, sealed, fp, 12.5, promoted=13.0, backed_up=True)
    assert KeyVersion.from_wire(kv.to_wire()) == kv
    assert sealed.hex() not in repr(kv) and repr(sealed) not in repr(kv)


# -- bootstrap --------------------------------------------------------------------------


def test_bootstrap_exactly_once() -> None:
    fsm = KeyringStateMachine()
    cmd = bootstrap_cmd(created=1234.5)
    outcome = fsm.apply(cmd)
    assert outcome == Outcome(True, {"version": 1, "state": "primary", "primary_version": 1})
    v1 = fsm.keyring.get(1)
    assert v1 is not None and v1.state is KeyState.PRIMARY
    assert v1.created == 1234.5 and v1.promoted == 1234.5
    assert_sealed_secrets_open(fsm)

    before = fsm.keyring
    again = fsm.apply(bootstrap_cmd(created=9999.0))
    assert not again.ok
    assert again.code == "CONFLICT"
    assert fsm.keyring == before


def test_rotate_before_bootstrap_is_not_ready() -> None:
    fsm = KeyringStateMachine()
    outcome = fsm.apply(rotate_cmd(1, None))
    assert (outcome.ok, outcome.code) == (False, "NOT_READY")
    assert not fsm.keyring.bootstrapped


def test_barrier_reports_last_id() -> None:
    fsm = booted()
    rotated(fsm)
    outcome = fsm.apply(encode_command("barrier", req()))
    assert outcome == Outcome(True, {"last_id": 2})


# -- rotate -----------------------------------------------------------------------------


def test_rotate_assigns_strictly_increasing_versions() -> None:
    fsm = booted()
    seen = [1]
    for i in range(10):
        outcome = rotated(fsm, now=i % 3 == 0)
        assert outcome.data["version"] == seen[-1] + 1
        seen.append(outcome.data["version"])
        ids = [v.id for v in fsm.keyring.versions]
        assert ids == sorted(set(ids)) == seen
    assert_sealed_secrets_open(fsm)


def test_rotate_without_now_stages() -> None:
    fsm = booted()
    outcome = rotated(fsm, now=False)
    assert outcome.data == {"version": 2, "state": "staged", "primary_version": 1}
    assert states(fsm) == {1: "primary", 2: "staged"}


@pytest.mark.parametrize("expect", [None, 2, 3, 0xFFFF])
def test_rotate_with_stale_expect_primary_conflicts(expect: int | None) -> None:
    fsm = booted()
    rotated(fsm, now=True)  # primary is now 2
    before = fsm.keyring
    outcome = fsm.apply(rotate_cmd(3, expect if expect != 2 else 1))
    assert (outcome.ok, outcome.code) == (False, "CONFLICT")
    assert fsm.keyring == before


@pytest.mark.parametrize("version", [1, 2, 4, 5, 100])
def test_rotate_with_a_version_that_is_not_next_conflicts(version: int) -> None:
    fsm = booted()
    rotated(fsm)  # last is 2, primary 1
    before = fsm.keyring
    outcome = fsm.apply(rotate_cmd(version, 1))
    assert (outcome.ok, outcome.code) == (False, "CONFLICT")
    assert fsm.keyring == before


@pytest.mark.parametrize("now_a,now_b", [(False, False), (True, True), (True, False),
                                         (False, True)])
def test_concurrent_rotations_from_the_same_read_exactly_one_wins(now_a: bool,
                                                                  now_b: bool) -> None:
    fsm = booted()
    rotated(fsm, now=True)
    ring = fsm.keyring  # both proposers read this
    a = rotate_cmd(ring.last_id + 1, ring.primary, now=now_a)
    b = rotate_cmd(ring.last_id + 1, ring.primary, now=now_b)
    results = [fsm.apply(a), fsm.apply(b)]
    assert [r.ok for r in results] == [True, False]
    assert results[1].code == "CONFLICT"
    assert fsm.keyring.last_id == ring.last_id + 1
    winner = fsm.keyring.get(ring.last_id + 1)
    assert winner is not None
    assert winner.sealed == msgpack.unpackb(a[1:])["sealed"]


def test_rotate_now_promotes_at_once() -> None:
    fsm = booted()
    rotated(fsm)            # 2 staged
    rotated(fsm)            # 3 staged
    outcome = fsm.apply(rotate_cmd(4, 1, now=True, created=4444.0))
    assert outcome.data == {"version": 4, "state": "primary", "primary_version": 4}
    assert states(fsm) == {1: "active", 2: "active", 3: "active", 4: "primary"}
    v4 = fsm.keyring.get(4)
    assert v4 is not None and v4.promoted == 4444.0
    assert_sealed_secrets_open(fsm)


# -- promote ----------------------------------------------------------------------------


def test_promote_a_staged_version() -> None:
    fsm = booted()
    rotated(fsm)
    rotated(fsm)
    outcome = fsm.apply(promote_cmd(2, at=5000.0))
    assert outcome.data == {"version": 2, "state": "primary", "primary_version": 2}
    assert states(fsm) == {1: "active", 2: "primary", 3: "staged"}
    assert fsm.keyring.get(2).promoted == 5000.0  # type: ignore[union-attr]
    outcome = fsm.apply(promote_cmd(3))
    assert outcome.ok
    assert states(fsm) == {1: "active", 2: "active", 3: "primary"}


def test_promote_newer_staged_retires_older_staged_to_active() -> None:
    fsm = booted()
    rotated(fsm)
    rotated(fsm)
    assert fsm.apply(promote_cmd(3)).ok
    assert states(fsm) == {1: "active", 2: "active", 3: "primary"}
    before = fsm.keyring
    outcome = fsm.apply(promote_cmd(2))  # now active, older than the primary
    assert (outcome.ok, outcome.code) == (False, "CONFLICT")
    assert fsm.keyring == before


def test_promote_the_primary_is_a_no_op_success() -> None:
    fsm = booted()
    before = fsm.keyring
    outcome = fsm.apply(promote_cmd(1, at=7.0))
    assert outcome.ok and outcome.data["primary_version"] == 1
    assert fsm.keyring == before


def test_promote_a_former_primary_is_refused() -> None:
    fsm = booted()
    rotated(fsm, now=True)
    before = fsm.keyring
    outcome = fsm.apply(promote_cmd(1))
    assert (outcome.ok, outcome.code) == (False, "CONFLICT")
    assert fsm.keyring == before


def test_promote_a_staged_version_older_than_the_primary_is_refused() -> None:
    # Not reachable through rotate/promote (promotion turns older staged versions active),
    # but a restored state may hold it; the guard must still hold.
    s1, f1 = sealed_for(1)
    s2, f2 = sealed_for(2)
    s3, f3 = sealed_for(3)
    versions = [KeyVersion(1, KeyState.ACTIVE, s1, f1, 1.0),
                KeyVersion(2, KeyState.STAGED, s2, f2, 2.0),
                KeyVersion(3, KeyState.PRIMARY, s3, f3, 3.0, promoted=3.0)]
    fsm = KeyringStateMachine()
    fsm.restore(versioned(SNAPSHOT_FORMAT, {"versions": [v.to_wire() for v in versions],
                                            "requests": []}))
    before = fsm.keyring
    outcome = fsm.apply(promote_cmd(2))
    assert (outcome.ok, outcome.code) == (False, "CONFLICT")
    assert "older" in outcome.message
    assert fsm.keyring == before


def test_promote_unknown_version() -> None:
    fsm = booted()
    before = fsm.keyring
    outcome = fsm.apply(promote_cmd(9))
    assert (outcome.ok, outcome.code) == (False, "NOT_FOUND")
    assert fsm.keyring == before


# -- idempotent retries -----------------------------------------------------------------


def test_a_retried_command_returns_the_same_outcome_and_applies_once() -> None:
    fsm = booted()
    cmd = rotate_cmd(2, 1, now=False)
    first = fsm.apply(cmd)
    assert first.ok
    after_first = fsm.keyring
    second = fsm.apply(cmd)
    assert second == first
    assert fsm.keyring == after_first
    # Even after the state moved on, the retry gets the original answer, not a CONFLICT,
    # and no third version appears.
    rotated(fsm, now=True)
    after_more = fsm.keyring
    assert fsm.apply(cmd) == first
    assert fsm.keyring == after_more
    rid = msgpack.unpackb(cmd[1:])["req"]
    assert fsm.request_outcome(rid) == first


def test_a_retried_failure_returns_the_same_failure() -> None:
    fsm = booted()
    rid = req()
    failed = fsm.apply(rotate_cmd(5, 1, rid=rid))
    assert failed.code == "CONFLICT"
    rotated(fsm)
    rotated(fsm)
    rotated(fsm)  # version 5 would now be next: the retry must not apply anyway
    before = fsm.keyring
    assert fsm.apply(rotate_cmd(5, 1, rid=rid)) == failed
    assert fsm.keyring == before


def test_the_same_request_id_with_another_body_does_not_apply() -> None:
    fsm = booted()
    rid = req()
    first = fsm.apply(rotate_cmd(2, 1, rid=rid))
    before = fsm.keyring
    assert fsm.apply(promote_cmd(2, rid=rid)) == first
    assert fsm.keyring == before


def test_request_memory_is_bounded_and_forgets_the_oldest() -> None:
    fsm = booted()
    rids = [req() for _ in range(MAX_REMEMBERED + 1)]
    for rid in rids:
        assert fsm.apply(encode_command("barrier", rid)).ok
    assert fsm.request_outcome(rids[0]) is None
    assert fsm.request_outcome(rids[1]) is not None
    assert fsm.request_outcome(rids[-1]) is not None


def test_unknown_request_id() -> None:
    assert booted().request_outcome(b"\x00" * 16) is None


def test_encode_command_needs_a_16_byte_request_id() -> None:
    with pytest.raises(ValueError):
        encode_command("barrier", b"short")


# -- apply never raises -----------------------------------------------------------------


def _assert_bad_command(fsm: KeyringStateMachine, command: Any) -> Outcome:
    ring, snap = fsm.keyring, fsm.snapshot()
    outcome = fsm.apply(command)
    assert isinstance(outcome, Outcome)
    assert not outcome.ok
    assert outcome.code == "BAD_COMMAND", outcome
    assert outcome.message
    assert fsm.keyring == ring
    if not (isinstance(command, bytes) and len(command) > 1):
        assert fsm.snapshot() == snap
    return outcome


@settings(max_examples=500, deadline=None)
@given(blob=st.binary(max_size=200))
def test_apply_garbage_never_raises(blob: bytes) -> None:
    fsm = booted()
    snap = fsm.snapshot()
    _assert_bad_command(fsm, blob)
    _assert_bad_command(fsm, bytes([COMMAND_FORMAT]) + blob)
    assert fsm.snapshot() == snap  # nothing is remembered for an unreadable command


@pytest.mark.parametrize("command", [
    b"",
    b"\x00",
    b"\x01",
    b"\x02" + msgpack.packb({"op": "barrier", "req": b"r" * 16}),
    b"\xff" + msgpack.packb({"op": "barrier", "req": b"r" * 16}),
    b"\x01" + msgpack.packb([b"r" * 16, "barrier"]),
    b"\x01" + msgpack.packb("barrier"),
    b"\x01" + msgpack.packb(None),
    b"\x01" + msgpack.packb({"op": "barrier"}),
    b"\x01" + msgpack.packb({"op": "barrier", "req": b"r" * 15}),
    b"\x01" + msgpack.packb({"op": "barrier", "req": b"r" * 17}),
    b"\x01" + msgpack.packb({"op": "barrier", "req": "r" * 16}),
    b"\x01" + msgpack.packb({"op": "barrier", "req": 12345}),
    b"\x01" + msgpack.packb({"req": b"r" * 16}),
    b"\x01" + msgpack.packb({"op": 5, "req": b"r" * 16}),
    b"\x01" + msgpack.packb({"op": b"barrier", "req": b"r" * 16}),
    b"\x01" + msgpack.packb({"op": "barrier", "req": b"r" * 16}) + b"\x00",
    b"\x01" + msgpack.packb({"op": "barrier", "req": msgpack.ExtType(1, b"r" * 16)}),
    b"\x01" + msgpack.packb({1: 2}),
], ids=lambda b: b[:24].hex())
def test_apply_malformed_commands(command: bytes) -> None:
    _assert_bad_command(booted(), command)


def test_apply_unknown_op() -> None:
    fsm = booted()
    outcome = _assert_bad_command(fsm, encode_command("drop_everything", req()))
    assert "drop_everything" in outcome.message
    _assert_bad_command(fsm, encode_command("", req()))


def _valid_fields(op: str) -> dict[str, Any]:
    sealed, fp = sealed_for(2 if op == "rotate" else 1)
    table: dict[str, dict[str, Any]] = {
        "bootstrap": {"sealed": sealed, "fingerprint": fp, "created": 1.0},
        "rotate": {"version": 2, "sealed": sealed, "fingerprint": fp, "created": 2.0,
                   "expect_primary": 1, "now": False},
        "promote": {"version": 1, "at": 3.0},
    }
    return table[op]


msgpack_ints = st.integers(-(2**63), 2**64 - 1)
not_int = st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=5),
                    st.binary(max_size=5), st.lists(msgpack_ints, max_size=2),
                    st.dictionaries(st.text(max_size=2), msgpack_ints, max_size=2))
bad_version = not_int.filter(lambda v: v is not None) | st.integers(-(2**63), 0) \
    | st.integers(min_value=2**32, max_value=2**64 - 1)
bad_time = st.one_of(st.none(), st.text(max_size=5), st.binary(max_size=5),
                     st.lists(msgpack_ints, max_size=2),
                     st.floats(max_value=-1e-300), st.integers(-(2**63), -1),
                     st.sampled_from([float("nan"), float("inf"), float("-inf")]))
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "sealed": st.one_of(st.binary(max_size=100).filter(lambda b: len(b) != SEALED_SIZE),
                        st.text(min_size=SEALED_SIZE, max_size=SEALED_SIZE), not_int),
    "fingerprint": st.one_of(st.binary(max_size=20), msgpack_ints, st.none(), st.booleans(),
                             st.lists(st.text(max_size=3), max_size=2)),
    "created": bad_time,
    "at": bad_time,
    "version": bad_version,
    "expect_primary": bad_version,
    "now": st.one_of(st.none(), msgpack_ints, st.floats(), st.text(max_size=5),
                     st.binary(max_size=5)),
}


@settings(max_examples=300, deadline=None)
@given(data=st.data(), op=st.sampled_from(["bootstrap", "rotate", "promote"]))
def test_apply_wrong_field_types_is_a_bad_command(data: st.DataObject, op: str) -> None:
    fsm = KeyringStateMachine() if op == "bootstrap" else booted()
    fields = _valid_fields(op)
    name = data.draw(st.sampled_from(sorted(fields)))
    if data.draw(st.booleans()) and name != "expect_primary":
        del fields[name]
    else:
        fields[name] = data.draw(WRONG[name])
    _assert_bad_command(fsm, encode_command(op, req(), **fields))


def test_the_valid_fields_used_above_are_valid() -> None:
    assert KeyringStateMachine().apply(
        encode_command("bootstrap", req(), **_valid_fields("bootstrap"))).ok
    for op in ("rotate", "promote"):
        assert booted().apply(encode_command(op, req(), **_valid_fields(op))).ok


@pytest.mark.parametrize("op,name", [("bootstrap", "created"), ("rotate", "created"),
                                     ("promote", "at")])
def test_apply_boolean_times_are_a_bad_command(op: str, name: str) -> None:
    fsm = KeyringStateMachine() if op == "bootstrap" else booted()
    fields = _valid_fields(op)
    fields[name] = True
    _assert_bad_command(fsm, encode_command(op, req(), **fields))


# -- determinism, snapshots -------------------------------------------------------------


def _history() -> list[bytes]:
    return [bootstrap_cmd(), rotate_cmd(2, 1), rotate_cmd(3, 1), promote_cmd(2),
            rotate_cmd(4, 2, now=True), rotate_cmd(9, 4), b"garbage", promote_cmd(1),
            encode_command("barrier", req())]


def test_apply_is_deterministic() -> None:
    history = _history()
    a, b = KeyringStateMachine(), KeyringStateMachine()
    outcomes_a = [a.apply(c) for c in history]
    outcomes_b = [b.apply(c) for c in history]
    assert outcomes_a == outcomes_b
    assert a.snapshot() == b.snapshot()
    assert a.keyring == b.keyring


def test_snapshot_restore_round_trip() -> None:
    history = _history()
    fsm = KeyringStateMachine()
    outcomes = [fsm.apply(c) for c in history]
    blob = fsm.snapshot()
    assert blob[0] == SNAPSHOT_FORMAT

    copy_ = KeyringStateMachine()
    copy_.apply(bootstrap_cmd())  # state to be replaced
    copy_.restore(blob)
    assert copy_.keyring == fsm.keyring
    assert copy_.snapshot() == blob
    for cmd, outcome in zip(history, outcomes, strict=True):
        if cmd == b"garbage":
            continue
        rid = msgpack.unpackb(cmd[1:])["req"]
        assert copy_.request_outcome(rid) == outcome
        # the restored memory makes retries idempotent on the new replica as well
        assert copy_.apply(cmd) == outcome
    assert copy_.keyring == fsm.keyring
    assert_sealed_secrets_open(copy_)


def test_restore_of_an_empty_snapshot_resets_state() -> None:
    fsm = booted()
    fsm.restore(KeyringStateMachine().snapshot())
    assert fsm.keyring == Keyring()
    assert fsm.request_outcome(b"\x00" * 16) is None


def _snapshot_raw() -> dict[str, Any]:
    fsm = booted()
    rotated(fsm)
    raw: dict[str, Any] = msgpack.unpackb(fsm.snapshot()[1:])
    return raw


def _mutated(change: Any) -> bytes:
    raw = _snapshot_raw()
    change(raw)
    return versioned(SNAPSHOT_FORMAT, raw)


MALFORMED_SNAPSHOTS = {
    "empty": b"",
    "wrong-format": b"\x02" + versioned(SNAPSHOT_FORMAT, _snapshot_raw())[1:],
    "garbage": b"\x01\xc1\xc1",
    "truncated": versioned(SNAPSHOT_FORMAT, _snapshot_raw())[:-3],
    "list": versioned(SNAPSHOT_FORMAT, [1, 2]),
    "str": versioned(SNAPSHOT_FORMAT, "snapshot"),
    "nil": versioned(SNAPSHOT_FORMAT, None),
    "no-versions": _mutated(lambda r: r.pop("versions")),
    "no-requests": _mutated(lambda r: r.pop("requests")),
    "versions-int": _mutated(lambda r: r.update(versions=5)),
    "version-not-map": _mutated(lambda r: r["versions"].append("v3")),
    "bad-state": _mutated(lambda r: r["versions"][0].update(state="bogus")),
    "bad-id": _mutated(lambda r: r["versions"][0].update(id="one")),
    "no-fingerprint": _mutated(lambda r: r["versions"][0].pop("fingerprint")),
    "bad-created": _mutated(lambda r: r["versions"][0].update(created="yesterday")),
    "request-not-pair": _mutated(lambda r: r["requests"].append([b"r" * 16])),
    "request-bytes": _mutated(lambda r: r["requests"].append(b"r" * 16)),
    "request-outcome-missing": _mutated(lambda r: r["requests"].append([b"r" * 16, {}])),
    "request-data-int": _mutated(lambda r: r["requests"].append(
        [b"r" * 16, {"ok": True, "data": 5, "code": "", "message": ""}])),
    "request-key-str": _mutated(lambda r: r["requests"].append(
        ["r" * 16, {"ok": True, "data": {}, "code": "", "message": ""}])),
}


@pytest.mark.parametrize("blob", MALFORMED_SNAPSHOTS.values(), ids=MALFORMED_SNAPSHOTS.keys())
def test_restore_rejects_malformed_snapshots(blob: bytes) -> None:
    fsm = booted()
    rotated(fsm)
    before, snap = fsm.keyring, fsm.snapshot()
    with pytest.raises(DecodeError):
        fsm.restore(blob)
    assert fsm.keyring == before
    assert fsm.snapshot() == snap


def _two_primaries(raw: dict[str, Any]) -> None:
    raw["versions"][1]["state"] = "primary"


def _duplicate_ids(raw: dict[str, Any]) -> None:
    raw["versions"].append(copy.deepcopy(raw["versions"][1]))
    raw["versions"][-1]["state"] = "staged"


INCONSISTENT_SNAPSHOTS = {
    "two-primaries": _mutated(_two_primaries),
    "duplicate-version-ids": _mutated(_duplicate_ids),
    "sealed-not-bytes": _mutated(lambda r: r["versions"][0].update(sealed=12345)),
    "request-id-int": _mutated(lambda r: r["requests"].append(
        [5, {"ok": True, "data": {}, "code": "", "message": ""}])),
}


@pytest.mark.parametrize("blob", INCONSISTENT_SNAPSHOTS.values(),
                         ids=INCONSISTENT_SNAPSHOTS.keys())
def test_restore_rejects_inconsistent_snapshots(blob: bytes) -> None:
    with pytest.raises(DecodeError):
        KeyringStateMachine().restore(blob)


@settings(max_examples=500, deadline=None)
@given(blob=st.binary(max_size=200))
def test_fuzz_restore_raises_only_decode_error(blob: bytes) -> None:
    fsm = booted()
    for candidate in (blob, bytes([SNAPSHOT_FORMAT]) + blob):
        with contextlib.suppress(DecodeError):
            fsm.restore(candidate)


# -- every sequence keeps exactly one primary --------------------------------------------


class KeyringCommands(RuleBasedStateMachine):
    """Random command sequences against a tiny model of the documented rules."""

    def __init__(self) -> None:
        super().__init__()
        self.fsm = KeyringStateMachine()
        self.model: dict[int, str] = {}
        self.sent: list[tuple[bytes, Outcome]] = []
        self.clock = 0.0

    def _primary(self) -> int | None:
        return next((i for i, s in self.model.items() if s == "primary"), None)

    def _promote_model(self, version: int) -> None:
        for i, s in list(self.model.items()):
            if i == version:
                self.model[i] = "primary"
            elif s == "primary" or (s == "staged" and i < version):
                self.model[i] = "active"

    def _send(self, cmd: bytes) -> Outcome:
        self.clock += 1.0
        outcome = self.fsm.apply(cmd)
        self.sent.append((cmd, outcome))
        return outcome

    @initialize(first=st.sampled_from(["bootstrap"] * 9 + ["nothing"]))
    def start(self, first: str) -> None:
        if first == "bootstrap":
            self.bootstrap()

    @rule()
    def bootstrap(self) -> None:
        outcome = self._send(bootstrap_cmd(created=self.clock))
        if self.model:
            assert outcome.code == "CONFLICT"
        else:
            assert outcome.ok
            self.model[1] = "primary"

    @rule(now=st.booleans(), stale=st.sampled_from([False] * 4 + [True]),
          skew=st.sampled_from([0] * 6 + [1, -1, 2]))
    def rotate(self, now: bool, stale: bool, skew: int) -> None:
        primary = self._primary()
        expect = primary
        if stale:
            expect = None if primary is None else (primary - 1 or None)
        last = max(self.model, default=0)
        version = last + 1 + skew
        if version <= 0:
            return
        outcome = self._send(rotate_cmd(version, expect, now=now, created=self.clock))
        if not self.model:
            assert outcome.code == "NOT_READY"
        elif expect != primary or version != last + 1:
            assert outcome.code == "CONFLICT"
        else:
            assert outcome.ok
            self.model[version] = "staged"
            if now:
                self._promote_model(version)

    @rule(version=st.integers(1, 8))
    def promote(self, version: int) -> None:
        outcome = self._send(promote_cmd(version, at=self.clock))
        state = self.model.get(version)
        primary = self._primary()
        if state is None:
            assert outcome.code == "NOT_FOUND"
        elif state == "primary":
            assert outcome.ok
        elif state != "staged" or (primary is not None and version < primary):
            assert outcome.code == "CONFLICT"
        else:
            assert outcome.ok
            self._promote_model(version)

    @rule(i=st.integers(0, 10_000))
    def retry(self, i: int) -> None:
        if not self.sent:
            return
        cmd, outcome = self.sent[i % len(self.sent)]
        before = self.fsm.keyring
        assert self.fsm.apply(cmd) == outcome
        assert self.fsm.keyring == before

    @rule(blob=st.binary(max_size=30))
    def garbage(self, blob: bytes) -> None:
        before = self.fsm.keyring
        assert self.fsm.apply(blob).code == "BAD_COMMAND"
        assert self.fsm.keyring == before

    @rule()
    def move_to_a_restored_replica(self) -> None:
        replica = KeyringStateMachine()
        replica.restore(self.fsm.snapshot())
        assert replica.keyring == self.fsm.keyring
        self.fsm = replica

    @invariant()
    def exactly_one_primary_and_matches_the_model(self) -> None:
        ring = self.fsm.keyring
        primaries = [v.id for v in ring.versions if v.state is KeyState.PRIMARY]
        assert len(primaries) == (1 if ring.bootstrapped else 0)
        ids = [v.id for v in ring.versions]
        assert ids == sorted(set(ids))
        assert ids == list(range(1, len(ids) + 1))  # no gaps: rotations are consecutive
        assert states(self.fsm) == self.model
        assert ring.primary == self._primary()

    @invariant()
    def the_newest_sealed_secret_opens(self) -> None:
        if self.fsm.keyring.bootstrapped:
            v = self.fsm.keyring.versions[-1]
            assert v.sealed is not None
            assert fingerprint(unseal(SEAL_KEY, v.sealed, cluster_id=CLUSTER,
                                      version=v.id)) == v.fingerprint


TestKeyringCommands = KeyringCommands.TestCase
TestKeyringCommands.settings = settings(max_examples=100, stateful_step_count=50,
                                        deadline=None)
