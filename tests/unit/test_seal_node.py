"""The seal in the replicated state and in the node: the reseal command, the seal
generation in the keyring and its snapshots, the unseal cache, freed-memory scrubbing."""

from __future__ import annotations

import os

from raftsso import envelope
from raftsso.fsm import KeyringStateMachine
from raftsso.memscrub import MARK, TCACHE_OFF, scrubbing_environment
from raftsso.node.sealing import NodeSeal, scrub
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.commands import Bootstrap, Reseal, Retire, Rotate, decode_command
from raftsso.protocol.ids import VersionId, new_request_id
from raftsso.seal import blob
from raftsso.seal.keyed import KeyedSeal

CLUSTER = "c-0123456789ab"
SEAL = KeyedSeal({1: os.urandom(32), 2: os.urandom(32)})


def _machine() -> tuple[KeyringStateMachine, dict[int, bytes]]:
    fsm = KeyringStateMachine()
    keys = {1: envelope.new_key(), 2: envelope.new_key()}
    fsm.apply(Bootstrap(new_request_id(), envelope.seal(SEAL._key(1)[1], keys[1],
                                                        cluster_id=CLUSTER, version=1),
                        "fp1", 1.0).encode(), index=1)
    fsm.apply(Rotate(new_request_id(), VersionId(2),
                     SEAL.wrap(keys[2], cluster_id=CLUSTER, version=2, generation=1),
                     "fp2", 2.0, VersionId(1), True).encode(), index=2)
    return fsm, keys


def _resealed(fsm: KeyringStateMachine, generation: int) -> dict[VersionId, bytes]:
    return {VersionId(v.id): SEAL.wrap(SEAL.unwrap(v.sealed, cluster_id=CLUSTER, version=v.id),
                                       cluster_id=CLUSTER, version=v.id, generation=generation)
            for v in fsm.keyring.live() if v.sealed is not None}


def test_reseal_replaces_every_live_blob_and_moves_the_generation() -> None:
    fsm, keys = _machine()
    versions = _resealed(fsm, 2)
    cmd = Reseal(new_request_id(), 1, 2, versions)
    assert decode_command(cmd.encode()) == cmd
    assert "versions" not in repr(cmd)  # blobs stay out of reprs
    outcome = fsm.apply(cmd.encode(), index=3)
    assert outcome.ok and outcome.data == {"generation": 2, "versions": [1, 2]}
    assert fsm.keyring.seal_generation == 2 and fsm.last_drop == 3
    for v in fsm.keyring.versions:
        assert v.sealed is not None and blob.generation_of(v.sealed) == 2
        assert SEAL.unwrap(v.sealed, cluster_id=CLUSTER, version=v.id) == keys[v.id]
    # The snapshot carries the generation; a restore gets it back.
    other = KeyringStateMachine()
    other.restore(fsm.snapshot())
    assert other.keyring == fsm.keyring


def test_reseal_is_a_compare_and_set() -> None:
    fsm, _ = _machine()
    stale = Reseal(new_request_id(), 2, 3, _resealed(fsm, 2))
    assert fsm.apply(stale.encode(), index=3).code is ErrorCode.CONFLICT
    missing = dict(_resealed(fsm, 2))
    missing.pop(VersionId(1))
    assert fsm.apply(Reseal(new_request_id(), 1, 2, missing).encode(),
                     index=4).code is ErrorCode.CONFLICT
    assert fsm.keyring.seal_generation == 1
    # A rotation sealed under generation 1 after the reseal to 2 is refused.
    fsm.apply(Reseal(new_request_id(), 1, 2, _resealed(fsm, 2)).encode(), index=5)
    late = Rotate(new_request_id(), VersionId(3),
                  SEAL.wrap(envelope.new_key(), cluster_id=CLUSTER, version=3, generation=1),
                  "fp3", 3.0, VersionId(2), True)
    refused = fsm.apply(late.encode(), index=6)
    assert refused.code is ErrorCode.CONFLICT and "generation" in refused.message


def test_retire_records_the_drop_index() -> None:
    fsm, _ = _machine()
    assert fsm.last_drop == 0
    fsm.apply(Retire(new_request_id(), VersionId(1)).encode(), index=3)
    assert fsm.last_drop == 3
    fsm.apply(Retire(new_request_id(), VersionId(1)).encode(), index=4)  # no change
    assert fsm.last_drop == 3


def test_a_snapshot_before_any_rekey_has_no_generation_key() -> None:
    fsm, _ = _machine()
    assert b"seal_generation" not in fsm.snapshot()


def test_the_unseal_cache_drops_and_overwrites_retired_secrets() -> None:
    fsm, keys = _machine()
    seal = NodeSeal(SEAL, CLUSTER)
    ring = fsm.keyring
    opened = {v.id: seal.unwrap(v.id, v.sealed) for v in ring.versions if v.sealed}
    assert opened == keys and seal.cached_versions() == {1, 2}
    held = opened.pop(1)  # someone still holds version 1's key: not overwritten under it
    fsm.apply(Retire(new_request_id(), VersionId(1)).encode(), index=3)
    assert seal.prune(fsm.keyring) == [1]
    assert seal.cached_versions() == {2}
    assert held == keys[1]


def test_scrub_overwrites_only_an_unshared_bytes_object() -> None:
    secret = os.urandom(32)
    assert scrub(secret) and secret == bytes(32)
    shared = os.urandom(32)
    alias = shared
    assert not scrub(shared) and alias == shared and shared != bytes(32)


def test_scrubbing_environment() -> None:
    env = scrubbing_environment({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7:x.y=1"})
    assert env is not None
    assert env["PYTHONMALLOC"] == "malloc" and env["MALLOC_PERTURB_"]
    assert env["GLIBC_TUNABLES"] == f"x.y=1:{TCACHE_OFF}"
    assert scrubbing_environment(env) is None  # once: no loop
    assert scrubbing_environment({MARK: "1"}) is None
