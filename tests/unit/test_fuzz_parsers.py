"""Fuzzing every parser that bytes from outside or from a file reach (hypothesis).

This complements the fuzz tests next to each module (``test_wire``, ``test_envelope``,
``test_backup``, ``test_fsm``): those feed mostly *random bytes*; the tests here feed
*structured* inputs that get past the first checks (valid msgpack of every shape, commands
with every op and field, snapshot maps, journal files made of valid records and damage,
pickles of arbitrary objects, node answers to the SSO client). For each parser:

* no crash: only the documented error class escapes (listed per test);
* no hang: every input is bounded and every test has a deadline;
* what is accepted satisfies the parser's invariants (one primary, ids increasing, only
  string map keys, only allowed pickle globals, ...).

``RAFTSSO_FUZZ_SCALE`` multiplies every example count (default 1; CI keeps the whole file
well under 30 s).
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftsso import envelope, wire
from raftsso.client import SSOClient, parse_keyring
from raftsso.config import Endpoint, format_secret_file, read_secret_file
from raftsso.errors import (
    ClusterUnavailable,
    ConfigError,
    DecodeError,
    InvalidToken,
    StorageError,
)
from raftsso.fsm import COMMAND_FORMAT, SNAPSHOT_FORMAT, KeyringStateMachine, Outcome
from raftsso.keyring import KeyState
from raftsso.raft import RaftNode, storage
from raftsso.raft.hardening import restricted_loads
from raftsso.raft.journal import _HEADER, DurableJournal, encode_record
from raftsso.raft.snapshot import SNAPSHOT_FILE_FORMAT, read_snapshot_file
from raftsso.runner import raft_config

SCALE = float(os.environ.get("RAFTSSO_FUZZ_SCALE", "1"))


def examples(n: int) -> Any:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


# -- value strategies ----------------------------------------------------------------------

ints = st.one_of(st.integers(-(2**63), 2**64 - 1),
                 st.sampled_from([0, 1, 2, 3, 2**31, 2**32 - 1, 2**32, 2**63, -1]))
scalars = st.one_of(st.none(), st.booleans(), ints,
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=24),
                    st.binary(max_size=64))
# Everything msgpack can carry, including what the decoders must refuse: extension types,
# timestamps, non-string map keys.
exotic = st.one_of(
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    st.builds(msgpack.Timestamp, st.integers(0, 2**32), st.integers(0, 999_999_999)))
keys = st.one_of(st.text(max_size=12), ints, st.binary(max_size=4), st.booleans())


_TEXT_KEYS = st.text(max_size=12)


def values(leaves: Any = scalars, dict_keys: Any = _TEXT_KEYS) -> Any:
    return st.recursive(leaves, lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(dict_keys, children, max_size=5)),
        max_leaves=20)


any_msgpack = values(st.one_of(scalars, exotic), keys)


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, strict_types=False)  # type: ignore[no-any-return]


def _walk(obj: Any) -> Iterator[Any]:
    yield obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(k)
            yield from _walk(v)
    elif isinstance(obj, list):
        for item in obj:
            yield from _walk(item)


# -- wire: frames and requests -----------------------------------------------------------


@examples(400)
@given(obj=any_msgpack)
def test_decode_body_of_any_msgpack_value(obj: Any) -> None:
    try:
        message = wire.decode_body(bytes([wire.WIRE_FORMAT]) + packb(obj))
    except DecodeError:
        return
    assert isinstance(message, dict)
    for item in _walk(message):
        assert not isinstance(item, msgpack.ExtType | msgpack.Timestamp)
        if isinstance(item, dict):
            assert all(type(k) is str for k in item)


@pytest.mark.parametrize("blob", [
    b"\x91" * 200_000,  # an array in an array in an array ...
    b"\x81\xa1a" * 100_000,  # a map in a map ...
    b"\xdd\xff\xff\xff\xff",  # an array announcing 2**32 - 1 items
    b"\xdf\xff\xff\xff\xff",  # a map announcing 2**32 - 1 pairs
    b"\xc6\xff\xff\xff\xff",  # bin 32 announcing 4 GiB
    b"\xdb\xff\xff\xff\xff",  # str 32 announcing 4 GiB
], ids=["deep-arrays", "deep-maps", "huge-array", "huge-map", "huge-bin", "huge-str"])
def test_decode_body_bombs_are_refused_quickly(blob: bytes) -> None:
    with pytest.raises(DecodeError):
        wire.decode_body(bytes([wire.WIRE_FORMAT]) + blob)


request_args = st.dictionaries(
    st.sampled_from(["request_id", "now", "expect_primary", "version", "client_id",
                     "require_leader", "node_id", "fingerprints"]), values(), max_size=4)
requests = st.one_of(
    values(),
    st.fixed_dictionaries({"id": st.one_of(ints, scalars), "op": st.one_of(st.text(max_size=70),
                                                                          scalars),
                           "args": st.one_of(request_args, values())}))


@examples(300)
@given(message=requests)
def test_parse_request_of_decoded_messages(message: Any) -> None:
    try:
        decoded = wire.decode_body(bytes([wire.WIRE_FORMAT]) + packb(message))
    except DecodeError:
        return
    try:
        rid, op, args = wire.parse_request(decoded)
    except DecodeError:
        return
    assert isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < 2**63
    assert isinstance(op, str) and 0 < len(op) <= 64
    assert isinstance(args, dict)


# -- envelope tokens, through the SSO client ----------------------------------------------


class _Source:
    def __init__(self, ring: dict[str, Any]) -> None:
        self.endpoints = [Endpoint("node1", "127.0.0.1:1")]
        self.ring = ring
        self.fetches = 0

    def fetch(self, endpoint: Endpoint) -> Any:
        self.fetches += 1
        return self.ring

    def close(self) -> None:
        pass


KEYS = {1: os.urandom(32), 2: os.urandom(32)}
RING = {"cluster_id": "c", "node_id": "node1", "term": 1, "commit_index": 5, "primary": 2,
        "versions": [{"id": v, "state": "primary" if v == 2 else "active", "key": k,
                      "fingerprint": envelope.fingerprint(k)} for v, k in KEYS.items()]}


@pytest.fixture(scope="module")
def sso_client() -> Iterator[SSOClient]:
    client = SSOClient(_Source(RING), background=False, resync_interval=60.0)
    yield client
    client.close()


def _token_mutations() -> Any:
    valid = envelope.Envelope(2, KEYS[2]).encrypt(b"secret data", b"ad")

    def mutate(data: st.DataObject) -> bytes:
        token = bytearray(valid)
        for _ in range(data.draw(st.integers(1, 3))):
            kind = data.draw(st.sampled_from(["flip", "cut", "extend", "version"]))
            if kind == "flip" and token:
                i = data.draw(st.integers(0, len(token) - 1))
                token[i] ^= data.draw(st.integers(1, 255))
            elif kind == "cut":
                del token[data.draw(st.integers(0, len(token))):]
            elif kind == "extend":
                token += data.draw(st.binary(min_size=1, max_size=8))
            elif len(token) >= 5:
                token[1:5] = struct.pack(">I", data.draw(st.sampled_from([0, 1, 3, 2**32 - 1])))
        return bytes(token)

    return mutate


_mutate = _token_mutations()


@examples(500)
@given(data=st.data(), ad=st.sampled_from([b"ad", b"", b"other"]))
def test_client_decrypt_of_mutated_tokens(sso_client: SSOClient, data: st.DataObject,
                                          ad: bytes) -> None:
    token = _mutate(data)
    try:
        plaintext = sso_client.decrypt(token, ad)
    except InvalidToken:
        return
    # Only the untouched token under its own associated data opens (GCM's guarantee).
    assert plaintext == b"secret data" and ad == b"ad"


@examples(500)
@given(token=st.binary(max_size=80), ad=st.binary(max_size=8))
def test_client_decrypt_of_arbitrary_bytes(sso_client: SSOClient, token: bytes,
                                           ad: bytes) -> None:
    with pytest.raises(InvalidToken):
        sso_client.decrypt(token, ad)


@examples(300)
@given(token=st.binary(max_size=64))
def test_token_key_version_of_arbitrary_bytes(token: bytes) -> None:
    try:
        version = envelope.token_key_version(token)
    except InvalidToken:
        assert len(token) < envelope.TOKEN_OVERHEAD or token[0] != envelope.TOKEN_FORMAT
        return
    assert 0 <= version <= envelope.MAX_KEY_VERSION


# -- a node's keyring answer, as the SSO client parses it ---------------------------------


def _version_entry() -> Any:
    key = st.sampled_from([KEYS[1], KEYS[2], b"", os.urandom(31)])
    return st.fixed_dictionaries({}, optional={
        "id": st.one_of(ints, scalars), "state": st.one_of(
            st.sampled_from(["primary", "active", "staged", "retired"]), scalars),
        "key": st.one_of(key, scalars),
        "fingerprint": st.one_of(st.sampled_from([envelope.fingerprint(KEYS[1]),
                                                  envelope.fingerprint(KEYS[2])]), scalars),
    })


keyring_answers = st.one_of(values(), st.fixed_dictionaries({}, optional={
    "cluster_id": st.one_of(st.just("c"), scalars), "node_id": st.one_of(st.just("n"), scalars),
    "term": st.one_of(ints, scalars), "commit_index": st.one_of(ints, scalars),
    "primary": st.one_of(st.sampled_from([None, 1, 2, 3]), scalars),
    "versions": st.one_of(st.lists(_version_entry(), max_size=4), scalars)}))


@examples(400)
@given(answer=keyring_answers)
def test_parse_keyring_of_arbitrary_answers(answer: Any) -> None:
    try:
        ring = parse_keyring(answer)
    except DecodeError:
        return
    primaries = [v.id for v in ring.versions.values() if v.state == "primary"]
    assert primaries == ([] if ring.primary is None else [ring.primary])
    for vid, version in ring.versions.items():
        assert 0 < vid <= envelope.MAX_KEY_VERSION
        assert version.state in ("primary", "active", "staged")


@examples(200)
@given(answer=keyring_answers)
def test_sso_client_survives_any_answer(answer: Any) -> None:
    """A node answering garbage is a failed sync (ClusterUnavailable), nothing else."""
    try:
        client = SSOClient(_Source(answer), background=False, resync_interval=60.0)
    except ClusterUnavailable:
        return
    client.close()


# -- the state machine: structured commands -----------------------------------------------

SEALED = envelope.seal(os.urandom(32), os.urandom(32), cluster_id="c", version=1)
OPS = ["bootstrap", "rotate", "promote", "barrier", "retire", "backed_up", "restore",
       "member", "unknown"]
restored_version = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.integers(0, 6), ints, scalars), "sealed": st.one_of(st.just(SEALED),
                                                                            scalars),
    "fingerprint": st.one_of(st.text(max_size=8), scalars),
    "created": st.one_of(st.floats(0, 1e10), scalars)})
field_values = {
    "version": st.one_of(st.integers(0, 8), ints, scalars),
    "expect_primary": st.one_of(st.integers(0, 8), st.none(), scalars),
    "primary": st.one_of(st.integers(0, 8), st.none(), scalars),
    "sealed": st.one_of(st.just(SEALED), scalars),
    "fingerprint": st.one_of(st.text(max_size=8), scalars),
    "created": st.one_of(st.floats(0, 1e10), scalars),
    "at": st.one_of(st.floats(0, 1e10), scalars),
    "now": st.one_of(st.booleans(), scalars),
    "replace_new": st.one_of(st.booleans(), scalars),
    "removed": st.one_of(st.booleans(), scalars),
    "fingerprints": st.one_of(st.dictionaries(st.one_of(st.sampled_from(["1", "2", "99"]),
                                                        st.text(max_size=3)),
                                              st.one_of(st.text(max_size=8), scalars),
                                              max_size=3), values()),
    "versions": st.one_of(st.lists(restored_version, max_size=3), values()),
    "node_id": st.one_of(st.text(max_size=70), scalars),
    "raft_address": st.one_of(st.text(max_size=20), scalars),
    "service_address": st.one_of(st.text(max_size=20), scalars),
}
commands = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from(OPS), scalars),
     "req": st.one_of(st.binary(min_size=16, max_size=16), scalars)},
    optional=field_values)


def _invariants(fsm: KeyringStateMachine) -> None:
    ring = fsm.keyring
    ids = [v.id for v in ring.versions]
    assert ids == sorted(set(ids)), ids
    assert all(0 < i < 2**32 for i in ids)
    primaries = [v.id for v in ring.versions if v.state is KeyState.PRIMARY]
    assert len(primaries) <= 1, primaries
    if ring.bootstrapped:
        assert len(primaries) == 1, [(v.id, v.state.value) for v in ring.versions]
    for v in ring.versions:
        assert (v.sealed is None) == (v.state is KeyState.RETIRED)


@examples(300)
@given(cmds=st.lists(commands, max_size=8), bootstrap=st.booleans())
def test_apply_of_structured_commands(cmds: list[dict[str, Any]], bootstrap: bool) -> None:
    first = KeyringStateMachine()
    second = KeyringStateMachine()
    blobs = []
    if bootstrap:
        blobs.append(wire.versioned(COMMAND_FORMAT, {
            "op": "bootstrap", "req": b"\x00" * 16, "sealed": SEALED, "fingerprint": "f",
            "created": 1.0}))
    blobs += [wire.versioned(COMMAND_FORMAT, c) for c in cmds]
    for index, blob in enumerate(blobs, start=1):
        outcome = first.apply(blob, index=index)  # must never raise
        assert isinstance(outcome, Outcome)
        assert outcome.ok or outcome.code
        assert outcome.code != "INTERNAL", outcome
        assert second.apply(blob, index=index) == outcome  # deterministic
        _invariants(first)
    assert first.snapshot() == second.snapshot()
    third = KeyringStateMachine()
    third.restore(first.snapshot())
    assert third.snapshot() == first.snapshot()


# -- the state machine: structured snapshots ----------------------------------------------

snapshot_version = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.integers(0, 5), scalars),
    "state": st.one_of(st.sampled_from(["primary", "active", "staged", "retired"]), scalars),
    "sealed": st.one_of(st.just(SEALED), st.none(), scalars),
    "fingerprint": st.one_of(st.text(max_size=4), scalars),
    "created": st.one_of(st.floats(0, 1e10), scalars),
    "promoted": st.one_of(st.none(), st.floats(0, 1e10), scalars),
    "backed_up": st.one_of(st.booleans(), scalars)})
outcome_wire = st.fixed_dictionaries({}, optional={
    "ok": st.one_of(st.booleans(), scalars), "data": st.one_of(values(), st.just({})),
    "code": st.one_of(st.text(max_size=4), scalars),
    "message": st.one_of(st.text(max_size=4), scalars)})
snapshots = st.fixed_dictionaries({}, optional={
    "index": st.one_of(st.integers(0, 100), scalars),
    "versions": st.one_of(st.just([]), st.lists(snapshot_version, max_size=4), scalars),
    "requests": st.one_of(st.just([]), st.lists(st.one_of(
        st.tuples(st.binary(min_size=16, max_size=16), outcome_wire).map(list), values()),
        max_size=3), scalars),
    # Only maps here: a "directory" that is not a map is a known bug (AttributeError),
    # see test_restore_of_a_snapshot_whose_directory_is_not_a_map below.
    "directory": st.dictionaries(st.text(max_size=5), st.one_of(
        st.fixed_dictionaries({"raft_address": st.text(max_size=5),
                               "service_address": st.text(max_size=5),
                               "removed": st.booleans()}), values()), max_size=2),
})


@examples(400)
@given(snapshot=snapshots)
def test_restore_of_structured_snapshots(snapshot: dict[str, Any]) -> None:
    fsm = KeyringStateMachine()
    try:
        fsm.restore(wire.versioned(SNAPSHOT_FORMAT, snapshot))
    except DecodeError:
        return
    ids = [v.id for v in fsm.keyring.versions]
    assert ids == sorted(set(ids))
    assert sum(v.state is KeyState.PRIMARY for v in fsm.keyring.versions) <= 1
    again = KeyringStateMachine()
    again.restore(fsm.snapshot())
    assert again.snapshot() == fsm.snapshot()


@pytest.mark.parametrize("version_id", [float("inf"), float("-inf")])
def test_restore_of_a_snapshot_with_an_infinite_id(version_id: float) -> None:
    fsm = KeyringStateMachine()
    with pytest.raises(DecodeError):
        fsm.restore(wire.versioned(SNAPSHOT_FORMAT, {
            "versions": [{"id": version_id, "state": "primary", "sealed": SEALED,
                          "fingerprint": "f", "created": 1.0}], "requests": []}))


@pytest.mark.parametrize("directory", [None, [], "x", 1])
def test_restore_of_a_snapshot_whose_directory_is_not_a_map(directory: Any) -> None:
    fsm = KeyringStateMachine()
    with pytest.raises(DecodeError):
        fsm.restore(wire.versioned(SNAPSHOT_FORMAT, {"versions": [], "requests": [],
                                                     "directory": directory}))


def test_a_snapshot_file_with_a_malformed_directory_stops_the_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from raftsso.config import load_node_config
    from raftsso.deployment import init_deployment

    failures: list[str] = []
    monkeypatch.setattr(storage, "on_storage_failure", failures.append)
    init_deployment(tmp_path / "d", nodes=1, base_port=41000)
    cfg = load_node_config(tmp_path / "d" / "node1" / "node.toml")
    fsm_blob = wire.versioned(SNAPSHOT_FORMAT, {"versions": [], "requests": [],
                                                "index": 3, "directory": []})
    snapshot = cfg.data_dir / "raft.snapshot"
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    node = RaftNode(raft_config(cfg), KeyringStateMachine())  # built before the snapshot exists
    snapshot.write_bytes(wire.versioned(SNAPSHOT_FILE_FORMAT, {
        "fsm": fsm_blob, "last": [b"\x01", 3, 1], "prev": [b"\x01", 2, 1],
        "cluster": ["127.0.0.1:41000"]}))
    # Received from a leader at run time: the node stops.
    with pytest.raises(DecodeError):
        node._snapshots.deserialize(str(snapshot))
    assert failures and "loading snapshot" in failures[0]
    # Found at start: the node refuses to start, with a message.
    with pytest.raises(StorageError, match="cannot start"):
        RaftNode(raft_config(cfg), KeyringStateMachine())
    assert failures, "the node did not stop on an unreadable snapshot"


# -- files: snapshot file, journal, journal meta, secret files ---------------------------


@examples(400)
@given(raw=st.one_of(any_msgpack, st.fixed_dictionaries({}, optional={
    "fsm": st.one_of(st.binary(max_size=8), scalars),
    "last": st.one_of(st.lists(st.one_of(st.binary(max_size=4), ints), max_size=4), scalars),
    "prev": st.one_of(st.lists(st.one_of(st.binary(max_size=4), ints), max_size=4), scalars),
    "cluster": st.one_of(st.lists(st.one_of(st.text(max_size=4), scalars), max_size=3),
                         scalars)})),
    version=st.sampled_from([SNAPSHOT_FILE_FORMAT, 0, 2]))
def test_read_snapshot_file_of_arbitrary_content(tmp_path_factory: pytest.TempPathFactory,
                                                 raw: Any, version: int) -> None:
    path = tmp_path_factory.mktemp("snap") / "raft.snapshot"
    path.write_bytes(bytes([version]) + packb(raw))
    try:
        fsm_blob, last, prev, cluster = read_snapshot_file(path)
    except DecodeError:
        return
    assert isinstance(fsm_blob, bytes)
    assert all(isinstance(c, str) for c in cluster)
    for entry in (last, prev):
        assert isinstance(entry[0], bytes) and isinstance(entry[1], int)


def _record(cmd: bytes, idx: int, term: int, starts_group: bool = True) -> bytes:
    return encode_record(cmd, idx, term, starts_group)


@pytest.fixture
def no_exit(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    failures: list[str] = []
    monkeypatch.setattr(storage, "on_storage_failure", failures.append)
    return failures


@examples(500)
@given(n=st.integers(0, 6), data=st.data())
def test_journal_recovery_of_damaged_files(tmp_path_factory: pytest.TempPathFactory,
                                           no_exit: list[str], n: int,
                                           data: st.DataObject) -> None:
    """Whatever the damage, the journal opens with a *prefix* of what was written, or
    refuses to start with StorageError; it never invents or reorders entries."""
    written = [(data.draw(st.binary(max_size=24)), i + 1, 1 + i // 2) for i in range(n)]
    good = _HEADER + b"".join(_record(c, i, t) for c, i, t in written)
    damage = data.draw(st.sampled_from(["truncate", "flip", "append", "overwrite", "none"]))
    blob = bytearray(good)
    if damage == "truncate":
        del blob[data.draw(st.integers(0, len(blob))):]
    elif damage == "flip":
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] ^= data.draw(st.integers(1, 255))
    elif damage == "append":
        blob += data.draw(st.binary(min_size=1, max_size=40))
    elif damage == "overwrite":
        pos = data.draw(st.integers(0, len(blob)))
        chunk = data.draw(st.binary(min_size=1, max_size=24))
        blob[pos:pos + len(chunk)] = chunk
    path = tmp_path_factory.mktemp("jnl") / "raft.journal"
    path.write_bytes(bytes(blob))
    try:
        journal = DurableJournal(str(path))
    except StorageError:
        return
    try:
        got = [tuple(journal[i]) for i in range(len(journal))]
        assert got == written[:len(got)], "entries that were never written"
        if damage == "none":
            assert len(got) == n
        # Whatever was cut is gone from the file too: reopening gives the same entries.
        reopened = DurableJournal(str(path))
        assert [tuple(reopened[i]) for i in range(len(reopened))] == got
        reopened._destroy()
    finally:
        journal._destroy()
    assert not no_exit


@examples(500)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_a_torn_last_write_group_is_a_tail_never_corruption(
        tmp_path_factory: pytest.TempPathFactory, no_exit: list[str], sizes: list[int],
        data: st.DataObject) -> None:
    """Group commit: only the last write group (appended since the last flush) can be torn
    by a crash, in any of its bytes, in any order. The journal then opens (it never takes
    that for corruption) with every entry of the earlier, flushed groups and a prefix of
    the last one."""
    written: list[tuple[bytes, int, int]] = []
    blob = bytearray(_HEADER)
    last_group_at = len(blob)
    for g, size in enumerate(sizes):
        last_group_at = len(blob)
        for k in range(size):
            entry = (data.draw(st.binary(max_size=24)), len(written) + 1, 1 + g)
            written.append(entry)
            blob += _record(*entry, starts_group=k == 0)
    flushed = len(written) - sizes[-1]
    # Damage only the last group: a page that never reached the disk reads back as zeros
    # or as what was there before, any page of the group may be the one, and the file
    # may end anywhere in it.
    tail = len(blob) - last_group_at
    start = last_group_at + data.draw(st.integers(0, tail - 1))
    stop = data.draw(st.integers(start + 1, len(blob)))
    fill = data.draw(st.sampled_from([b"\x00", b"\xff", b"junk"]))
    blob[start:stop] = (fill * (stop - start))[:stop - start]
    del blob[data.draw(st.integers(stop, len(blob))):]
    path = tmp_path_factory.mktemp("jnl") / "raft.journal"
    path.write_bytes(bytes(blob))
    journal = DurableJournal(str(path))
    try:
        got = [tuple(journal[i]) for i in range(len(journal))]
        assert got == written[:len(got)]
        assert len(got) >= flushed, "a flushed write group was lost"
    finally:
        journal._destroy()
    assert not no_exit


@examples(300)
@given(raw=st.one_of(st.binary(max_size=40), any_msgpack.map(lambda o: b"\x01" + packb(o))))
def test_journal_meta_of_arbitrary_content(tmp_path_factory: pytest.TempPathFactory,
                                           no_exit: list[str], raw: bytes) -> None:
    directory = tmp_path_factory.mktemp("meta")
    (directory / "raft.journal.meta").write_bytes(raw)
    try:
        journal = DurableJournal(str(directory / "raft.journal"))
    except StorageError:
        return
    try:
        # Whatever was accepted reads back as the types Raft needs.
        assert isinstance(journal.getCurrentTerm(), int)
        voted = journal.getVotedForNodeId()
        assert voted is None or isinstance(voted, str)
        assert isinstance(journal.getRaftCommitIndex(), int)
    finally:
        journal._destroy()


@examples(400)
@given(raw=st.one_of(st.binary(max_size=120), st.text(max_size=80).map(str.encode),
                     st.binary(min_size=0, max_size=40).map(
                         lambda b: format_secret_file(os.urandom(32), "seal")[:20] + b)))
def test_read_secret_file_of_arbitrary_content(tmp_path_factory: pytest.TempPathFactory,
                                               raw: bytes) -> None:
    path = tmp_path_factory.mktemp("secret") / "seal.key"
    path.write_bytes(raw)
    path.chmod(0o600)
    try:
        secret = read_secret_file(path, "seal")
    except ConfigError:
        return
    assert len(secret) == 32


# -- peer bytes: the restricted unpickler ------------------------------------------------

picklable = values(st.one_of(scalars, st.builds(bytearray, st.binary(max_size=4)),
                             st.builds(set, st.lists(st.integers(), max_size=3)),
                             st.builds(frozenset, st.lists(st.integers(), max_size=3)),
                             st.builds(complex, st.floats(allow_nan=False),
                                       st.floats(allow_nan=False)),
                             st.sampled_from([ValueError("x"), Path("/etc"), range(3),
                                              Exception, os.system, print])),
                   st.one_of(st.text(max_size=4), st.integers()))
# Built-in containers that pickle has opcodes of their own for (no global involved):
# bytearray (protocol 5), set and frozenset (protocol 4). Anything needing a global
# (complex, exceptions, paths, functions, classes) must be refused.
_ALLOWED_RESULT = (type(None), bool, int, float, str, bytes, bytearray, list, tuple, dict,
                   set, frozenset)


@examples(600)
@given(obj=picklable, protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_restricted_loads_of_arbitrary_pickles(obj: Any, protocol: int) -> None:
    """Only plain data comes out; any global but the allowed ones is refused."""
    blob = pickle.dumps(obj, protocol=protocol)
    try:
        loaded = restricted_loads(blob)
    except pickle.UnpicklingError:
        return
    for item in _walk(loaded):
        if isinstance(item, tuple):
            for x in item:
                assert isinstance(x, _ALLOWED_RESULT) or x is None
        assert isinstance(item, _ALLOWED_RESULT), type(item)


@examples(500)
@given(blob=st.binary(max_size=120))
def test_restricted_loads_of_arbitrary_bytes(blob: bytes) -> None:
    """Garbage fails with an exception (pysyncobj drops the connection on any), never by
    running code; what loads is plain data."""
    try:
        loaded = restricted_loads(blob)
    except Exception:  # pysyncobj drops the link on any exception (bare except)
        return
    for item in _walk(loaded):
        assert isinstance(item, _ALLOWED_RESULT), type(item)
