"""raftsso.fsm: the lifecycle commands retire, backed_up and restore, with real sealing."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from raftsso.envelope import SEALED_SIZE, fingerprint, new_key, seal, unseal
from raftsso.fsm import SNAPSHOT_FORMAT, KeyringStateMachine, Outcome, encode_command
from raftsso.keyring import Keyring, KeyState, KeyVersion
from raftsso.wire import versioned

SEAL_KEY = bytes(range(32, 64))
CLUSTER = "c-lifecycle-unit"
_counter = itertools.count(1)
_DROP = object()  # "leave this field out"


def req() -> bytes:
    return (0xF00D << 64 | next(_counter)).to_bytes(16, "big")


def sealed_for(version: int, secret: bytes | None = None) -> tuple[bytes, str]:
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


def retire_cmd(version: Any, rid: bytes | None = None) -> bytes:
    return encode_command("retire", rid or req(), version=version)


def backed_up_cmd(fingerprints: dict[int, str], rid: bytes | None = None) -> bytes:
    return encode_command("backed_up", rid or req(),
                          fingerprints={str(k): v for k, v in fingerprints.items()})


Backup = tuple[list[dict[str, Any]], int | None]


def entry(v: KeyVersion) -> dict[str, Any]:
    """A version as a restore command carries it (re-sealed by the node; here the same)."""
    assert v.sealed is not None
    return {"id": v.id, "sealed": v.sealed, "fingerprint": v.fingerprint, "created": v.created}


def fresh_entry(version: int, created: float = 500.0) -> dict[str, Any]:
    sealed, fp = sealed_for(version)
    return {"id": version, "sealed": sealed, "fingerprint": fp, "created": created}


def backup_of(fsm: KeyringStateMachine) -> Backup:
    """What a backup taken now holds: every non-retired version, and the primary."""
    ring = fsm.keyring
    return [entry(v) for v in ring.versions if v.sealed is not None], ring.primary


def restore_cmd(versions: list[dict[str, Any]], primary: int | None, *,
                replace_new: bool = False, at: float = 9000.0,
                rid: bytes | None = None) -> bytes:
    return encode_command("restore", rid or req(), versions=versions, primary=primary,
                          replace_new=replace_new, at=at)


def states(fsm: KeyringStateMachine) -> dict[int, str]:
    return {v.id: v.state.value for v in fsm.keyring.versions}


def ok(fsm: KeyringStateMachine, command: bytes, index: int | None = None) -> Outcome:
    outcome = fsm.apply(command, index)
    assert outcome.ok, outcome
    return outcome


def booted() -> KeyringStateMachine:
    fsm = KeyringStateMachine()
    ok(fsm, bootstrap_cmd())
    return fsm


def rotated(fsm: KeyringStateMachine, now: bool = False) -> Outcome:
    ring = fsm.keyring
    return ok(fsm, rotate_cmd(ring.last_id + 1, ring.primary, now=now))


def with_versions(n: int, primary: int) -> KeyringStateMachine:
    """Versions 1..n, ``primary`` primary, older ones active, newer ones staged."""
    fsm = booted()
    for v in range(2, n + 1):
        rotated(fsm, now=v <= primary)
    assert fsm.keyring.primary == primary
    return fsm


def replica_of(fsm: KeyringStateMachine) -> KeyringStateMachine:
    copy_ = KeyringStateMachine()
    copy_.restore(fsm.snapshot())
    return copy_


def assert_refused(fsm: KeyringStateMachine, command: bytes, code: str) -> Outcome:
    before = fsm.keyring
    outcome = fsm.apply(command)
    assert (outcome.ok, outcome.code) == (False, code), outcome
    assert outcome.message
    assert fsm.keyring == before
    return outcome


def assert_sealed_secrets_open(fsm: KeyringStateMachine) -> None:
    for v in fsm.keyring.versions:
        if v.state is KeyState.RETIRED:
            assert v.sealed is None
            continue
        assert v.sealed is not None and len(v.sealed) == SEALED_SIZE
        assert fingerprint(unseal(SEAL_KEY, v.sealed, cluster_id=CLUSTER, version=v.id)) \
            == v.fingerprint


# -- retire -----------------------------------------------------------------------------


@pytest.mark.parametrize("target,state", [(1, "active"), (2, "active"), (4, "staged")])
def test_retire_a_non_primary_version(target: int, state: str) -> None:
    fsm = with_versions(4, primary=3)
    before = fsm.keyring
    old = before.get(target)
    assert old is not None and old.state.value == state
    outcome = ok(fsm, retire_cmd(target))
    assert outcome.data == {"version": target, "state": "retired", "primary_version": 3}
    new = fsm.keyring.get(target)
    assert new is not None
    assert new.state is KeyState.RETIRED
    assert new.sealed is None
    assert (new.fingerprint, new.created, new.promoted) == \
        (old.fingerprint, old.created, old.promoted)
    # nothing else moved
    assert [v for v in fsm.keyring.versions if v.id != target] == \
        [v for v in before.versions if v.id != target]
    assert fsm.keyring.primary == 3
    assert fsm.keyring.last_id == 4
    assert_sealed_secrets_open(fsm)


def test_retire_the_primary_conflicts() -> None:
    fsm = with_versions(3, primary=2)
    outcome = assert_refused(fsm, retire_cmd(2), "CONFLICT")
    assert "primary" in outcome.message


@pytest.mark.parametrize("target", [4, 5, 1000, 2**32 - 1])
def test_retire_an_unknown_version(target: int) -> None:
    assert_refused(with_versions(3, primary=2), retire_cmd(target), "NOT_FOUND")


def test_retire_before_bootstrap_is_not_found() -> None:
    assert_refused(KeyringStateMachine(), retire_cmd(1), "NOT_FOUND")


def test_retire_twice_is_fine() -> None:
    fsm = with_versions(2, primary=2)
    first = ok(fsm, retire_cmd(1))
    after = fsm.keyring
    second = ok(fsm, retire_cmd(1))  # another request id: applied again, a no-op
    assert second.data == first.data == {"version": 1, "state": "retired", "primary_version": 2}
    assert fsm.keyring == after


def test_a_retired_version_cannot_be_promoted() -> None:
    fsm = with_versions(2, primary=1)  # 2 staged
    ok(fsm, retire_cmd(2))
    assert_refused(fsm, promote_cmd(2), "CONFLICT")


def test_rotation_after_retiring_the_newest_still_moves_forward() -> None:
    fsm = with_versions(3, primary=2)  # 3 staged
    ok(fsm, retire_cmd(3))
    assert rotated(fsm).data["version"] == 4
    assert states(fsm) == {1: "active", 2: "primary", 3: "retired", 4: "staged"}


@pytest.mark.parametrize("bad", [0, -1, 2**32, True, False, None, "2", 2.0, b"\x02"])
def test_retire_with_a_bad_version_is_a_bad_command(bad: Any) -> None:
    assert_refused(with_versions(2, primary=2), retire_cmd(bad), "BAD_COMMAND")


# -- backed_up --------------------------------------------------------------------------


def backed(fsm: KeyringStateMachine) -> dict[int, bool]:
    return {v.id: v.backed_up for v in fsm.keyring.versions}


def test_backed_up_marks_only_matching_fingerprints() -> None:
    fsm = with_versions(3, primary=2)
    ring = fsm.keyring
    assert backed(fsm) == {1: False, 2: False, 3: False}
    fps = {v.id: v.fingerprint for v in ring.versions}
    outcome = ok(fsm, backed_up_cmd({1: fps[1], 2: "0" * 16, 3: fps[2]}))
    assert outcome.data == {"marked": [1]}
    assert backed(fsm) == {1: True, 2: False, 3: False}
    # nothing but the flag changed
    assert [replace(v, backed_up=False) for v in fsm.keyring.versions] == list(ring.versions)
    outcome = ok(fsm, backed_up_cmd(fps))
    assert outcome.data == {"marked": [1, 2, 3]}
    assert backed(fsm) == {1: True, 2: True, 3: True}


def test_backed_up_ignores_unknown_ids_and_retired_versions() -> None:
    fsm = with_versions(3, primary=3)
    fps = {v.id: v.fingerprint for v in fsm.keyring.versions}
    ok(fsm, retire_cmd(1))
    outcome = ok(fsm, backed_up_cmd({**fps, 4: "feedface00000000", 99: fps[2], 0: fps[3]}))
    assert outcome.data == {"marked": [2, 3]}
    assert backed(fsm) == {1: False, 2: True, 3: True}
    assert fsm.keyring.get(1).sealed is None  # type: ignore[union-attr]


def test_backed_up_with_nothing_matching() -> None:
    fsm = booted()
    before = fsm.keyring
    assert ok(fsm, backed_up_cmd({})).data == {"marked": []}
    assert ok(fsm, backed_up_cmd({7: "x"})).data == {"marked": []}
    assert fsm.keyring == before


@pytest.mark.parametrize("fingerprints", [
    None, [], "1", 5, True,
    {"one": "fp"}, {"-1": "fp"}, {"1.0": "fp"}, {"": "fp"}, {" 1": "fp"},
    {"\N{ARABIC-INDIC DIGIT ONE}": "fp"}, {"\N{SUPERSCRIPT ONE}": "fp"},
    {"1": 5}, {"1": None}, {"1": b"fp"},
], ids=repr)
def test_backed_up_malformed_is_a_bad_command(fingerprints: Any) -> None:
    fsm = booted()
    command = encode_command("backed_up", req(), fingerprints=fingerprints)
    assert_refused(fsm, command, "BAD_COMMAND")


# -- restore: merging into the cluster the backup came from --------------------------------


def test_restore_adds_missing_versions() -> None:
    fsm = with_versions(1, primary=1)
    replica = replica_of(fsm)  # a cluster that only ever had version 1 ...
    rotated(fsm, now=True)
    rotated(fsm)
    versions, primary = backup_of(fsm)  # ... and a later backup with 1 (active), 2, 3
    assert primary == 2
    outcome = ok(replica, restore_cmd(versions, primary, at=4242.0))
    assert outcome.data == {"added": [2, 3], "revived": [], "replaced": [],
                            "primary_version": 2}
    assert states(replica) == {1: "active", 2: "primary", 3: "active"}
    for v in replica.keyring.versions:
        src = fsm.keyring.get(v.id)
        assert src is not None
        assert (v.sealed, v.fingerprint, v.created) == (src.sealed, src.fingerprint, src.created)
        assert v.backed_up
    assert replica.keyring.get(2).promoted == 4242.0  # type: ignore[union-attr]
    assert_sealed_secrets_open(replica)


def test_restore_keeps_existing_equal_versions() -> None:
    fsm = with_versions(3, primary=2)
    versions, _ = backup_of(fsm)
    versions = [{**v, "created": 1.0} for v in versions]  # same key, other metadata
    before = fsm.keyring
    outcome = ok(fsm, restore_cmd(versions, 2))
    assert outcome.data == {"added": [], "revived": [], "replaced": [], "primary_version": 2}
    for old, new in zip(before.versions, fsm.keyring.versions, strict=True):
        assert new == replace(old, backed_up=True)


def test_restore_marks_restored_versions_backed_up_but_not_others() -> None:
    fsm = with_versions(3, primary=3)
    versions, _ = backup_of(fsm)
    ok(fsm, restore_cmd(versions[:2], None))
    assert backed(fsm) == {1: True, 2: True, 3: False}


def test_restore_never_overwrites_a_different_version() -> None:
    fsm = with_versions(3, primary=2)
    mine, _ = backup_of(fsm)
    foreign = fresh_entry(2)
    snap = fsm.snapshot()
    outcome = assert_refused(fsm, restore_cmd([mine[0], foreign, fresh_entry(4)], 4),
                             "CONFLICT")
    assert "2" in outcome.message
    # nothing of the command was applied, not even the non-conflicting parts
    replica = KeyringStateMachine()
    replica.restore(snap)
    assert fsm.keyring == replica.keyring


def test_restore_never_drops_versions() -> None:
    fsm = with_versions(4, primary=3)
    before = fsm.keyring
    ok(fsm, restore_cmd([fresh_entry(5)], None))  # only adds
    for v in before.versions:
        now = fsm.keyring.get(v.id)
        assert now is not None and now.fingerprint == v.fingerprint and now.sealed == v.sealed


def test_restore_revives_a_retired_version_with_the_same_fingerprint() -> None:
    fsm = with_versions(3, primary=3)
    versions, _ = backup_of(fsm)
    ok(fsm, retire_cmd(1))
    ok(fsm, retire_cmd(2))
    assert fsm.keyring.get(1).sealed is None  # type: ignore[union-attr]
    outcome = ok(fsm, restore_cmd(versions[:1], None))
    assert outcome.data == {"added": [], "revived": [1], "replaced": [], "primary_version": 3}
    v1 = fsm.keyring.get(1)
    assert v1 is not None
    assert v1.state is KeyState.ACTIVE and v1.sealed == versions[0]["sealed"] and v1.backed_up
    assert states(fsm) == {1: "active", 2: "retired", 3: "primary"}
    assert_sealed_secrets_open(fsm)


def test_restore_does_not_revive_a_retired_version_with_another_fingerprint() -> None:
    fsm = with_versions(2, primary=2)
    ok(fsm, retire_cmd(1))
    assert_refused(fsm, restore_cmd([fresh_entry(1)], None), "CONFLICT")
    assert fsm.keyring.get(1).state is KeyState.RETIRED  # type: ignore[union-attr]


def test_the_backups_primary_becomes_primary_when_it_is_newer() -> None:
    fsm = with_versions(3, primary=1)  # 2, 3 staged
    versions, _ = backup_of(fsm)
    ok(fsm, restore_cmd(versions, 2, at=77.0))
    assert states(fsm) == {1: "active", 2: "primary", 3: "staged"}
    assert fsm.keyring.get(2).promoted == 77.0  # type: ignore[union-attr]
    ok(fsm, restore_cmd([fresh_entry(4)], 4))
    assert states(fsm) == {1: "active", 2: "active", 3: "active", 4: "primary"}


def test_the_backups_primary_does_not_replace_a_newer_primary() -> None:
    fsm = with_versions(1, primary=1)
    old = replica_of(fsm)
    rotated(fsm, now=True)
    rotated(fsm, now=True)  # primary 3 now
    versions, primary = backup_of(old)  # an old backup: primary 1
    before = fsm.keyring
    outcome = ok(fsm, restore_cmd(versions, primary))
    assert outcome.data["primary_version"] == 3
    assert states(fsm) == {1: "active", 2: "active", 3: "primary"}
    assert fsm.keyring.get(3) == before.get(3)


def test_an_older_version_restored_with_its_primary_stays_active() -> None:
    fsm = with_versions(3, primary=3)
    versions, _ = backup_of(fsm)
    ok(fsm, retire_cmd(1))
    ok(fsm, restore_cmd(versions[:1], 1))
    assert states(fsm) == {1: "active", 2: "active", 3: "primary"}


def test_restore_into_an_empty_state_machine() -> None:
    versions, primary = backup_of(with_versions(3, primary=2))
    fsm = KeyringStateMachine()
    outcome = ok(fsm, restore_cmd(versions, primary))
    assert outcome.data == {"added": [1, 2, 3], "revived": [], "replaced": [],
                            "primary_version": 2}
    assert fsm.keyring.bootstrapped
    assert_refused(fsm, bootstrap_cmd(), "CONFLICT")


def test_restore_without_a_primary_never_leaves_none() -> None:
    versions, _ = backup_of(with_versions(3, primary=2))
    fsm = KeyringStateMachine()
    outcome = ok(fsm, restore_cmd(versions, None))
    assert outcome.data["primary_version"] == 3
    assert fsm.keyring.primary == 3


# -- restore: replacing the first secret of a brand-new cluster ----------------------------


def test_replace_new_installs_the_backup_into_a_brand_new_cluster() -> None:
    lost = with_versions(4, primary=3)
    ok(lost, retire_cmd(1))
    versions, primary = backup_of(lost)  # 2, 3, 4: v1 was retired before the backup
    new = booted()  # its own v1, never backed up
    outcome = ok(new, restore_cmd([fresh_entry(1), *versions], primary, replace_new=True))
    assert outcome.data["replaced"] == [1]
    assert outcome.data["added"] == [1, 2, 3, 4]
    assert outcome.data["primary_version"] == 3
    assert states(new) == {1: "active", 2: "active", 3: "primary", 4: "active"}
    assert all(v.backed_up for v in new.keyring.versions)
    for v in versions:
        assert new.keyring.get(v["id"]).sealed == v["sealed"]  # type: ignore[union-attr]


def test_replace_new_drops_the_new_clusters_first_secret() -> None:
    versions, primary = backup_of(with_versions(2, primary=2))
    new = booted()
    own = new.keyring.get(1)
    assert own is not None
    outcome = ok(new, restore_cmd(versions, primary, replace_new=True))
    assert outcome.data == {"added": [1, 2], "revived": [], "replaced": [1],
                            "primary_version": 2}
    v1 = new.keyring.get(1)
    assert v1 is not None and v1.fingerprint != own.fingerprint
    assert v1.fingerprint == versions[0]["fingerprint"]
    assert_sealed_secrets_open(new)


def test_replace_new_without_a_conflict_merges() -> None:
    new = booted()
    outcome = ok(new, restore_cmd([fresh_entry(2), fresh_entry(3)], 3, replace_new=True))
    assert outcome.data == {"added": [2, 3], "revived": [], "replaced": [],
                            "primary_version": 3}
    assert states(new) == {1: "active", 2: "active", 3: "primary"}


def test_a_brand_new_cluster_without_replace_new_conflicts() -> None:
    versions, primary = backup_of(with_versions(2, primary=2))
    assert_refused(booted(), restore_cmd(versions, primary), "CONFLICT")


@pytest.mark.parametrize("how", ["rotated", "rotated-now", "backed-up", "restored"])
def test_replace_new_into_a_cluster_that_is_not_new_conflicts(how: str) -> None:
    fsm = booted()
    if how == "rotated":
        rotated(fsm)
    elif how == "rotated-now":
        rotated(fsm, now=True)
    elif how == "backed-up":
        ok(fsm, backed_up_cmd({1: fsm.keyring.versions[0].fingerprint}))
    else:
        ok(fsm, restore_cmd(backup_of(fsm)[0], 1))  # a restore marks v1 backed up
    versions, primary = backup_of(with_versions(2, primary=2))
    assert_refused(fsm, restore_cmd(versions, primary, replace_new=True), "CONFLICT")


def test_replace_new_into_a_cluster_whose_v1_was_retired_conflicts() -> None:
    fsm = with_versions(2, primary=2)
    ok(fsm, retire_cmd(1))
    versions, primary = backup_of(with_versions(2, primary=2))
    assert_refused(fsm, restore_cmd(versions, primary, replace_new=True), "CONFLICT")


# -- restore: malformed commands ----------------------------------------------------------


def _restore_fields() -> dict[str, Any]:
    return {"versions": [fresh_entry(2), fresh_entry(3)], "primary": 3,
            "replace_new": False, "at": 9.0}


def _changed(**changes: Any) -> dict[str, Any]:
    fields = _restore_fields()
    for name, value in changes.items():
        if value is _DROP:
            del fields[name]
        else:
            fields[name] = value
    return fields


def _entry_changed(**changes: Any) -> dict[str, Any]:
    fields = _restore_fields()
    bad = fields["versions"][1]
    for name, value in changes.items():
        if value is _DROP:
            del bad[name]
        else:
            bad[name] = value
    return fields


MALFORMED_RESTORES: dict[str, Any] = {
    "no-versions": _changed(versions=[]),
    "versions-missing": _changed(versions=_DROP),
    "versions-map": _changed(versions={"2": fresh_entry(2)}),
    "versions-nil": _changed(versions=None),
    "version-not-map": _changed(versions=[fresh_entry(2), [3]]),
    "primary-not-among": _changed(primary=4),
    "primary-bool": _changed(primary=True),
    "primary-zero": _changed(primary=0),
    "primary-text": _changed(primary="3"),
    "replace-new-missing": _changed(replace_new=_DROP),
    "replace-new-int": _changed(replace_new=1),
    "replace-new-nil": _changed(replace_new=None),
    "at-missing": _changed(at=_DROP),
    "at-bool": _changed(at=True),
    "at-nan": _changed(at=float("nan")),
    "at-negative": _changed(at=-1.0),
    "sealed-short": _entry_changed(sealed=b"\x01" * (SEALED_SIZE - 1)),
    "sealed-long": _entry_changed(sealed=b"\x01" * (SEALED_SIZE + 1)),
    "sealed-empty": _entry_changed(sealed=b""),
    "sealed-text": _entry_changed(sealed="s" * SEALED_SIZE),
    "sealed-missing": _entry_changed(sealed=_DROP),
    "sealed-nil": _entry_changed(sealed=None),
    "id-bool": _entry_changed(id=True),
    "id-zero": _entry_changed(id=0),
    "id-too-big": _entry_changed(id=2**32),
    "id-float": _entry_changed(id=3.0),
    "id-missing": _entry_changed(id=_DROP),
    "fingerprint-bytes": _entry_changed(fingerprint=b"fp"),
    "fingerprint-missing": _entry_changed(fingerprint=_DROP),
    "created-bool": _entry_changed(created=False),
    "created-text": _entry_changed(created="now"),
    "created-inf": _entry_changed(created=float("inf")),
}


@pytest.mark.parametrize("fields", MALFORMED_RESTORES.values(), ids=MALFORMED_RESTORES.keys())
@pytest.mark.parametrize("start", ["booted", "empty", "three"])
def test_malformed_restore_is_a_bad_command(fields: dict[str, Any], start: str) -> None:
    fsm = KeyringStateMachine() if start == "empty" else \
        booted() if start == "booted" else with_versions(3, primary=2)
    assert_refused(fsm, encode_command("restore", req(), **fields), "BAD_COMMAND")


def test_the_valid_restore_fields_used_above_are_valid() -> None:
    assert ok(booted(), encode_command("restore", req(), **_restore_fields())).data == {
        "added": [2, 3], "revived": [], "replaced": [], "primary_version": 3}


@pytest.mark.parametrize("start", ["booted", "empty"])
def test_restore_with_duplicate_ids_is_a_bad_command(start: str) -> None:
    fsm = booted() if start == "booted" else KeyringStateMachine()
    command = restore_cmd([fresh_entry(2), fresh_entry(2)], 2)
    assert_refused(fsm, command, "BAD_COMMAND")


# -- idempotence under the request id -----------------------------------------------------


def _idempotence_cases() -> dict[str, Any]:
    def retire(fsm: KeyringStateMachine, rid: bytes) -> bytes:
        return retire_cmd(1, rid=rid)

    def backed_up(fsm: KeyringStateMachine, rid: bytes) -> bytes:
        return backed_up_cmd({v.id: v.fingerprint for v in fsm.keyring.versions}, rid=rid)

    def restore(fsm: KeyringStateMachine, rid: bytes) -> bytes:
        return restore_cmd([fresh_entry(4)], 4, rid=rid)

    def restore_conflict(fsm: KeyringStateMachine, rid: bytes) -> bytes:
        return restore_cmd([fresh_entry(1)], 1, rid=rid)

    def replace(fsm: KeyringStateMachine, rid: bytes) -> bytes:
        return restore_cmd([fresh_entry(1), fresh_entry(2)], 2, replace_new=True, rid=rid)

    def retire_primary(fsm: KeyringStateMachine, rid: bytes) -> bytes:
        return retire_cmd(fsm.keyring.primary, rid=rid)

    def malformed(fsm: KeyringStateMachine, rid: bytes) -> bytes:
        return restore_cmd([], None, rid=rid)

    return {"retire": retire, "backed_up": backed_up, "restore": restore,
            "restore-conflict": restore_conflict, "replace-new": replace,
            "retire-primary": retire_primary, "malformed-restore": malformed}


@pytest.mark.parametrize("make", _idempotence_cases().values(),
                         ids=_idempotence_cases().keys())
@pytest.mark.parametrize("start", ["new", "three"])
def test_every_lifecycle_command_is_idempotent_under_its_request_id(make: Any,
                                                                     start: str) -> None:
    fsm = booted() if start == "new" else with_versions(3, primary=2)
    rid = req()
    command = make(fsm, rid)
    first = fsm.apply(command)
    after = fsm.keyring
    assert fsm.apply(command) == first
    assert fsm.keyring == after
    # the state moves on (so the command would now do something else) ...
    ring = fsm.keyring
    ok(fsm, rotate_cmd(ring.last_id + 1, ring.primary, now=True))
    ok(fsm, retire_cmd(ring.primary))
    moved = fsm.keyring
    # ... and a retry still returns the first answer and changes nothing, here and on a
    # replica restored from a snapshot
    assert fsm.apply(command) == first
    assert fsm.keyring == moved
    assert fsm.request_outcome(rid) == first
    replica = replica_of(fsm)
    assert replica.apply(command) == first
    assert replica.keyring == moved


# -- view() and the Raft index -------------------------------------------------------------


def test_view_reports_the_index_of_the_last_applied_command() -> None:
    fsm = KeyringStateMachine()
    assert fsm.view() == (Keyring(), 0)
    ok(fsm, bootstrap_cmd(), index=3)
    ring, index = fsm.view()
    assert (ring, index) == (fsm.keyring, 3)
    ok(fsm, rotate_cmd(2, 1), index=4)
    assert fsm.view() == (fsm.keyring, 4)
    ok(fsm, encode_command("barrier", req()))  # no index given: unchanged
    assert fsm.view()[1] == 4
    assert_refused(fsm, retire_cmd(1), "CONFLICT")
    fsm.apply(retire_cmd(1), 7)  # a refused command still has its place in the log
    assert fsm.view()[1] == 7
    ok(fsm, retire_cmd(2), index=5)  # never goes back
    assert fsm.view() == (fsm.keyring, 7)


def test_a_retried_command_advances_the_index() -> None:
    fsm = booted()
    command = retire_cmd(1)
    fsm.apply(command, 10)
    assert fsm.view()[1] == 10
    fsm.apply(command, 12)  # committed a second time at 12, answered from memory
    assert fsm.view()[1] == 12


def test_snapshot_round_trip_preserves_everything() -> None:
    fsm = KeyringStateMachine()
    history = [bootstrap_cmd(), rotate_cmd(2, 1, now=True), rotate_cmd(3, 2),
               retire_cmd(1), backed_up_cmd({}), restore_cmd([fresh_entry(4)], 4),
               retire_cmd(2), promote_cmd(3), b"\x01garbage"]
    outcomes = [fsm.apply(c, i) for i, c in enumerate(history, start=20)]
    ok(fsm, backed_up_cmd({v.id: v.fingerprint for v in fsm.keyring.versions}), index=30)
    ring, index = fsm.view()
    assert index == 30
    assert [o.ok for o in outcomes] == [True] * 7 + [False, False]
    assert states(fsm) == {1: "retired", 2: "retired", 3: "active", 4: "primary"}
    blob = fsm.snapshot()
    assert blob[0] == SNAPSHOT_FORMAT

    replica = booted()  # state to be replaced
    ok(replica, rotate_cmd(2, 1), index=99)
    replica.restore(blob)
    assert replica.view() == (ring, 30)
    assert replica.keyring == ring
    assert replica.snapshot() == blob
    for v_old, v_new in zip(ring.versions, replica.keyring.versions, strict=True):
        assert v_old.to_wire() == v_new.to_wire()  # sealed, backed_up, promoted, created
    for command, outcome in zip(history, outcomes, strict=True):
        if command == b"\x01garbage":
            continue
        rid = msgpack.unpackb(command[1:])["req"]
        assert replica.request_outcome(rid) == outcome
    assert_sealed_secrets_open(replica)


def test_a_snapshot_without_an_index_restores_index_zero() -> None:
    fsm = booted()
    raw = msgpack.unpackb(fsm.snapshot()[1:])
    del raw["index"]
    replica = KeyringStateMachine()
    replica.restore(versioned(SNAPSHOT_FORMAT, raw))
    assert replica.view() == (fsm.keyring, 0)


# -- any sequence keeps the keyring well formed ---------------------------------------------


class LifecycleCommands(RuleBasedStateMachine):
    """Random sequences of bootstrap, rotate, promote, retire, backed_up and restore."""

    def __init__(self) -> None:
        super().__init__()
        self.fsm = KeyringStateMachine()
        self.sent: list[tuple[bytes, Outcome]] = []
        self.backups: list[Backup] = []
        self.fingerprints: dict[int, str] = {}  # every version ever seen, until replaced
        self.highest_primary = 0
        self.clock = 0.0
        self.index = 0

    @property
    def ring(self) -> Keyring:
        return self.fsm.keyring

    def _send(self, command: bytes) -> Outcome:
        self.clock += 1.0
        self.index += 1
        outcome = self.fsm.apply(command, self.index)
        self.sent.append((command, outcome))
        assert self.fsm.view()[1] == self.index
        return outcome

    @initialize(first=st.sampled_from(["bootstrap"] * 4 + ["nothing"]))
    def start(self, first: str) -> None:
        if first == "bootstrap":
            self.bootstrap()

    def _pick(self, i: int) -> int:
        """Mostly an existing version id; sometimes one that does not exist."""
        ids = [v.id for v in self.ring.versions]
        if ids and i < 24:
            return ids[i % len(ids)]
        return self.ring.last_id + 1 + i % 3

    @precondition(lambda self: not self.ring.bootstrapped or len(self.sent) % 5 == 0)
    @rule()
    def bootstrap(self) -> None:
        was = self.ring.bootstrapped
        outcome = self._send(bootstrap_cmd(created=self.clock))
        assert outcome.ok != was
        if was:
            assert outcome.code == "CONFLICT"

    @rule(now=st.booleans())
    def rotate(self, now: bool) -> None:
        ring = self.ring
        outcome = self._send(rotate_cmd(ring.last_id + 1, ring.primary, now=now,
                                        created=self.clock))
        assert outcome.ok == ring.bootstrapped
        if outcome.ok:
            assert self.ring.last_id == ring.last_id + 1

    @rule(i=st.integers(0, 30))
    def promote(self, i: int) -> None:
        version = self._pick(i)
        outcome = self._send(promote_cmd(version, at=self.clock))
        if outcome.ok:
            assert self.ring.primary == version

    @rule(i=st.integers(0, 30))
    def retire(self, i: int) -> None:
        version = self._pick(i)
        before = self.ring
        old = before.get(version)
        outcome = self._send(retire_cmd(version))
        if old is None:
            assert outcome.code == "NOT_FOUND"
        elif old.state is KeyState.PRIMARY:
            assert outcome.code == "CONFLICT"
        else:
            assert outcome.ok
            new = self.ring.get(version)
            assert new is not None
            assert (new.state, new.sealed, new.fingerprint) == \
                (KeyState.RETIRED, None, old.fingerprint)
        if not outcome.ok:
            assert self.ring == before

    @rule(data=st.data())
    def backed_up(self, data: st.DataObject) -> None:
        before = self.ring
        ids = {self._pick(i) for i in data.draw(st.lists(st.integers(0, 30), max_size=6))}
        claimed = {}
        for i in sorted(ids):
            v = before.get(i)
            right = v is not None and data.draw(st.sampled_from([True, True, False]))
            claimed[i] = v.fingerprint if right and v is not None else f"{i:016x}"
        outcome = self._send(backed_up_cmd(claimed))
        expected = [v.id for v in before.versions
                    if claimed.get(v.id) == v.fingerprint and v.sealed is not None]
        assert outcome.data == {"marked": expected}
        for v in self.ring.versions:
            old = before.get(v.id)
            assert old is not None
            assert v.backed_up == (old.backed_up or v.id in expected)

    @rule()
    def take_backup(self) -> None:
        if self.ring.bootstrapped:
            self.backups.append(backup_of(self.fsm))

    def _restore(self, versions: list[dict[str, Any]], primary: int | None,
                 replace_new: bool) -> None:
        before = self.ring
        outcome = self._send(restore_cmd(versions, primary, replace_new=replace_new,
                                         at=self.clock))
        conflicts = [v["id"] for v in versions
                     if (cur := before.get(v["id"])) and cur.fingerprint != v["fingerprint"]]
        new = len(before.versions) == 1 and before.versions[0].id == 1 and \
            not before.versions[0].backed_up
        if conflicts and not (replace_new and new):
            assert outcome.code == "CONFLICT"
            assert self.ring == before
            return
        assert outcome.ok, outcome
        base = Keyring() if conflicts else before
        assert outcome.data["replaced"] == ([1] if conflicts else [])
        if conflicts:
            self.fingerprints.clear()
        ring = self.ring
        incoming = {v["id"] for v in versions}
        assert sorted(outcome.data["added"]) == sorted(incoming - {v.id for v in base.versions})
        assert sorted(outcome.data["revived"]) == sorted(
            v.id for v in base.versions if v.id in incoming and v.state is KeyState.RETIRED)
        for e in versions:
            now = ring.get(e["id"])
            assert now is not None and now.fingerprint == e["fingerprint"]
            assert now.sealed is not None and now.backed_up
        for v in base.versions:
            now = ring.get(v.id)
            assert now is not None and now.fingerprint == v.fingerprint
            if v.id not in incoming:
                assert (now.sealed, now.backed_up) == (v.sealed, v.backed_up)
        old = base.primary
        if primary is not None and (old is None or primary > old):
            expected = primary
        else:
            expected = old if old is not None else max(incoming)
        assert ring.primary == expected == outcome.data["primary_version"]

    @rule(i=st.integers(0, 1000), replace_new=st.booleans())
    def restore_an_own_backup(self, i: int, replace_new: bool) -> None:
        if self.backups:
            self._restore(*self.backups[i % len(self.backups)], replace_new)

    @rule(ids=st.lists(st.integers(1, 6), min_size=1, max_size=4, unique=True),
          pick=st.integers(-1, 3), replace_new=st.booleans())
    def restore_a_foreign_backup(self, ids: list[int], pick: int, replace_new: bool) -> None:
        primary = None if pick < 0 else ids[pick % len(ids)]
        self._restore([fresh_entry(i, created=self.clock) for i in ids], primary,
                      replace_new)

    @precondition(lambda self: bool(self.backups) and len(self.ring.versions) > 1)
    @rule()
    def disaster_and_a_brand_new_cluster(self) -> None:
        """Every node lost: a new cluster (its own v1) where the old backups may go."""
        self.fsm = KeyringStateMachine()
        self.sent.clear()
        self.fingerprints.clear()
        self.highest_primary = 0
        self.bootstrap()

    @rule(i=st.integers(0, 10_000))
    def retry(self, i: int) -> None:
        if self.sent:
            command, outcome = self.sent[i % len(self.sent)]
            before = self.ring
            assert self.fsm.apply(command) == outcome
            assert self.ring == before

    @rule()
    def move_to_a_restored_replica(self) -> None:
        replica = replica_of(self.fsm)
        assert replica.view() == self.fsm.view()
        assert replica.snapshot() == self.fsm.snapshot()
        self.fsm = replica

    @invariant()
    def well_formed(self) -> None:
        ring = self.ring
        primaries = [v.id for v in ring.versions if v.state is KeyState.PRIMARY]
        assert len(primaries) == (1 if ring.bootstrapped else 0)
        assert ring.primary == (primaries[0] if primaries else None)
        ids = [v.id for v in ring.versions]
        assert ids == sorted(set(ids))
        assert all(0 < i < 2**32 for i in ids)
        for v in ring.versions:
            assert (v.sealed is None) == (v.state is KeyState.RETIRED)

    @invariant()
    def versions_are_never_dropped_or_changed(self) -> None:
        ring = self.ring
        for vid, fp in self.fingerprints.items():
            v = ring.get(vid)
            assert v is not None, f"version {vid} disappeared"
            assert v.fingerprint == fp, f"version {vid} changed"
        self.fingerprints.update({v.id: v.fingerprint for v in ring.versions})

    @invariant()
    def the_primary_never_goes_back(self) -> None:
        primary = self.ring.primary or 0
        assert primary >= self.highest_primary
        self.highest_primary = primary

    @invariant()
    def every_sealed_secret_opens(self) -> None:
        assert_sealed_secrets_open(self.fsm)


TestLifecycleCommands = LifecycleCommands.TestCase
TestLifecycleCommands.settings = settings(max_examples=80, stateful_step_count=40,
                                          deadline=None)
