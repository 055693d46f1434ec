"""raftsso.seal: the blob format, the file seal, rekey primitives, settings and init setup.

The blob format is checked against an independent AES-GCM computation spelled out here
(not through raftsso.envelope), so a change of format or AAD fails these tests.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from raftsso import envelope
from raftsso.config import format_secret_file
from raftsso.errors import ConfigError, InvalidToken
from raftsso.seal import KINDS, SealError, SealProvider, blob
from raftsso.seal.file_seal import FileSeal, read_keys, write_key_file
from raftsso.seal.keyed import KeyedSeal
from raftsso.seal.rekey import new_seal_key, next_generation, reseal
from raftsso.seal.settings import (
    Pkcs11Settings,
    open_seal,
    parse_seal_settings,
    read_pin,
)
from raftsso.seal.setup import SealPlan, setup_seal
from raftsso.seal.shamir_seal import ShamirSeal
from raftsso.seal.shares import Unsealer, read_share_file

KEY = bytes(range(32))
KEY2 = bytes(range(32, 64))
SECRET = bytes(range(100, 132))
CLUSTER = "c-000000000001"
NONCE = bytes(range(200, 212))


def _reference_blob(key: bytes, secret: bytes, generation: int, cluster_id: str,
                    version: int, nonce: bytes) -> bytes:
    head = bytes([2]) + struct.pack(">I", generation)
    aad = b"raftsso/seal/v2\x00" + head + cluster_id.encode() + b"\x00" + \
        struct.pack(">Q", version)
    return head + nonce + AESGCM(key).encrypt(nonce, secret, aad)


# -- the blob format -----------------------------------------------------------------------


def test_known_answer_blob_opens_and_names_its_generation() -> None:
    sealed = _reference_blob(KEY, SECRET, 7, CLUSTER, 3, NONCE)
    assert len(sealed) == blob.SIZE == 65
    assert sealed.hex().startswith("0200000007" + NONCE.hex())
    seal = KeyedSeal({7: KEY})
    assert blob.generation_of(sealed) == 7
    assert seal.unwrap(sealed, cluster_id=CLUSTER, version=3) == SECRET


def test_wrap_output_is_the_documented_format() -> None:
    seal = KeyedSeal({1: KEY, 4: KEY2})
    sealed = seal.wrap(SECRET, cluster_id=CLUSTER, version=9)  # the newest generation
    assert sealed[:5] == b"\x02\x00\x00\x00\x04"
    head, nonce, body = sealed[:5], sealed[5:17], sealed[17:]
    aad = b"raftsso/seal/v2\x00" + head + CLUSTER.encode() + b"\x00" + struct.pack(">Q", 9)
    assert AESGCM(KEY2).decrypt(nonce, body, aad) == SECRET
    assert blob.generation_of(seal.wrap(SECRET, cluster_id=CLUSTER, version=9,
                                        generation=1)) == 1


def test_legacy_format_one_blob_is_generation_one() -> None:
    legacy = envelope.seal(KEY, SECRET, cluster_id=CLUSTER, version=2)
    assert blob.generation_of(legacy) == 1
    assert KeyedSeal({1: KEY}).unwrap(legacy, cluster_id=CLUSTER, version=2) == SECRET


@pytest.mark.parametrize("change", ["cluster", "version", "generation", "bit", "truncate"])
def test_any_change_fails_with_the_one_opaque_error(change: str) -> None:
    seal = KeyedSeal({1: KEY, 2: KEY})  # the same key under two generations
    sealed = seal.wrap(SECRET, cluster_id=CLUSTER, version=5, generation=1)
    cluster, version = CLUSTER, 5
    if change == "cluster":
        cluster = "c-000000000002"
    elif change == "version":
        version = 6
    elif change == "generation":  # relabelled: the AAD binds the generation
        sealed = blob.header(2) + sealed[5:]
    elif change == "bit":
        sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
    else:
        sealed = sealed[:-1]
    with pytest.raises(InvalidToken) as info:
        seal.unwrap(sealed, cluster_id=cluster, version=version)
    assert type(info.value) is InvalidToken and info.value.__cause__ is None


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=80))
def test_arbitrary_bytes_never_open(data: bytes) -> None:
    seal = KeyedSeal({1: KEY})
    with pytest.raises((InvalidToken, SealError)):
        seal.unwrap(data, cluster_id=CLUSTER, version=1)


@settings(max_examples=50, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), version=st.integers(0, 2**64 - 1),
       generation=st.integers(1, 2**32 - 1))
def test_wrap_unwrap_round_trip(secret: bytes, version: int, generation: int) -> None:
    seal = KeyedSeal({generation: KEY})
    sealed = seal.wrap(secret, cluster_id=CLUSTER, version=version)
    assert blob.generation_of(sealed) == generation
    assert seal.unwrap(sealed, cluster_id=CLUSTER, version=version) == secret


def test_bad_arguments_are_refused() -> None:
    seal = KeyedSeal({1: KEY})
    with pytest.raises(ValueError):
        seal.wrap(b"short", cluster_id=CLUSTER, version=1)
    with pytest.raises(ValueError):
        seal.wrap(SECRET, cluster_id=CLUSTER, version=-1)
    with pytest.raises(ValueError):
        KeyedSeal({0: KEY})
    with pytest.raises(SealError, match="no seal key of generation 3"):
        seal.wrap(SECRET, cluster_id=CLUSTER, version=1, generation=3)


def test_providers_satisfy_the_protocol(tmp_path: Path) -> None:
    write_key_file(tmp_path / "seal.key", KEY)
    assert isinstance(FileSeal(tmp_path / "seal.key"), SealProvider)
    assert isinstance(ShamirSeal(CLUSTER), SealProvider)
    assert isinstance(KeyedSeal({1: KEY}), SealProvider)


# -- the file seal -------------------------------------------------------------------------


def test_file_seal_reads_the_seal_key_file_nodes_have_today(tmp_path: Path) -> None:
    path = tmp_path / "seal.key"
    path.write_bytes(format_secret_file(KEY, "seal"))
    path.chmod(0o600)
    seal = FileSeal(path)
    assert seal.generations == (1,) and not seal.sealed
    legacy = envelope.seal(KEY, SECRET, cluster_id=CLUSTER, version=1)
    assert seal.unwrap(legacy, cluster_id=CLUSTER, version=1) == SECRET
    assert KEY.hex() not in repr(seal) and "FileSeal" in repr(seal)
    # init writes the very same file for generation 1
    write_key_file(tmp_path / "new.key", KEY)
    assert (tmp_path / "new.key").read_bytes() == path.read_bytes()
    assert (tmp_path / "new.key").stat().st_mode & 0o777 == 0o600


def test_file_seal_refuses_an_open_or_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "seal.key"
    write_key_file(path, KEY)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        FileSeal(path)
    for text in ("nonsense\n", "raftsso-seal-key v2\n1 AAAA\n", "raftsso-seal-key v2\n",
                 "raftsso-seal-key v2\n0 " + "A" * 44 + "\n"):
        path.write_text(text)
        path.chmod(0o600)
        with pytest.raises(ConfigError) as info:
            FileSeal(path)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        FileSeal(tmp_path / "missing.key")


def test_file_rekey_old_blobs_no_longer_open(tmp_path: Path) -> None:
    path = tmp_path / "seal.key"
    write_key_file(path, KEY)
    seal = FileSeal(path)
    old = {v: seal.wrap(SECRET, cluster_id=CLUSTER, version=v) for v in (1, 2)}
    legacy = envelope.seal(KEY, SECRET, cluster_id=CLUSTER, version=3)
    generation = next_generation(seal)
    new_key = new_seal_key()
    seal.install(generation, new_key)
    assert generation == 2 and FileSeal(path).generations == (1, 2)  # durable
    assert path.read_text().startswith("raftsso-seal-key v2\n")
    resealed = {v: reseal(seal, b, cluster_id=CLUSTER, version=v, generation=2)
                for v, b in old.items()}
    resealed[3] = reseal(seal, legacy, cluster_id=CLUSTER, version=3, generation=2)
    assert reseal(seal, resealed[1], cluster_id=CLUSTER, version=1,
                  generation=2) == resealed[1]  # a second run changes nothing
    seal.forget(1)
    reopened = FileSeal(path)
    assert reopened.generations == (2,)
    for v, b in resealed.items():
        assert blob.generation_of(b) == 2
        assert reopened.unwrap(b, cluster_id=CLUSTER, version=v) == SECRET
    for v, b in old.items():
        with pytest.raises(SealError, match="no seal key of generation 1"):
            reopened.unwrap(b, cluster_id=CLUSTER, version=v)
        # and relabelled as generation 2, the new key does not open it either
        with pytest.raises(InvalidToken):
            reopened.unwrap(blob.header(2) + b[5:], cluster_id=CLUSTER, version=v)
    with pytest.raises(SealError, match="only seal key"):
        reopened.forget(2)
    assert read_keys(path) == {2: new_key}


# -- settings --------------------------------------------------------------------------------


def test_settings_of_each_kind(tmp_path: Path) -> None:
    where = tmp_path / "node.toml"
    file = parse_seal_settings({"seal_key_file": "seal.key"}, tmp_path, where)
    assert (file.kind, file.key_file) == ("file", tmp_path / "seal.key")
    shamir = parse_seal_settings({"seal": "shamir", "shamir": {"threshold": 2, "shares": 3}},
                                 tmp_path, where)
    assert (shamir.kind, shamir.threshold, shamir.shares) == ("shamir", 2, 3)
    p11 = parse_seal_settings({"seal": "pkcs11", "pkcs11": {
        "module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "t",
        "pin_file": "../pins/n1.pin", "softhsm_tokendir": "softhsm"}}, tmp_path, where)
    assert p11.pkcs11 == Pkcs11Settings(Path("/usr/lib/softhsm/libsofthsm2.so"), "t",
                                        pin_file=tmp_path / "../pins/n1.pin",
                                        softhsm_tokendir=tmp_path / "softhsm")
    assert set(KINDS) == {"file", "pkcs11", "shamir"}


@pytest.mark.parametrize(("data", "expect"), [
    ({"seal": "tpm"}, "must be one of"),
    ({}, "missing required key 'seal_key_file'"),
    ({"seal": "shamir", "seal_key_file": "seal.key"}, "keeps no seal key file"),
    ({"seal": "shamir", "shamir": {"threshold": 0}}, "threshold must be"),
    ({"seal": "shamir", "shamir": {"quorum": 2}}, "unknown"),
    ({"seal": "file", "seal_key_file": "k", "pkcs11": {}}, "is set but"),
    ({"seal": "pkcs11", "pkcs11": {"module": "m", "token_label": "t"}}, "exactly one of"),
    ({"seal": "pkcs11", "pkcs11": {"module": "m", "token_label": "t", "pin_file": "p",
                                   "pin_credential": "c"}}, "exactly one of"),
    ({"seal": "pkcs11", "pkcs11": {"module": "m", "token_label": "t",
                                   "pin_credential": "../etc/pin"}}, "not a path"),
    ({"seal": "pkcs11", "pkcs11": {"token_label": "t", "pin_file": "p"}}, "'module'"),
    ({"seal": "pkcs11", "pkcs11": {"module": "m", "token_label": "t", "pin_file": "p",
                                   "pin": "1234"}}, "unknown"),
])
def test_bad_settings_are_one_clear_error(tmp_path: Path, data: dict[str, Any],
                                          expect: str) -> None:
    with pytest.raises(ConfigError, match=expect) as info:
        parse_seal_settings(data, tmp_path, tmp_path / "node.toml")
    assert "\n" not in str(info.value)


def test_pin_from_a_file_or_a_systemd_credential(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("s3cret-pin\n")
    pin_file.chmod(0o600)
    settings_ = Pkcs11Settings(Path("m"), "t", pin_file=pin_file)
    assert read_pin(settings_) == "s3cret-pin"
    pin_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        read_pin(settings_)
    assert "s3cret" not in str(info.value)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "raftsso-pin").write_text("cred-pin")
    (creds / "raftsso-pin").chmod(0o400)
    by_credential = Pkcs11Settings(Path("m"), "t", pin_credential="raftsso-pin")
    assert read_pin(by_credential, {"CREDENTIALS_DIRECTORY": str(creds)}) == "cred-pin"
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        read_pin(by_credential, {})
    (creds / "raftsso-pin").chmod(0o600)
    (creds / "raftsso-pin").write_text("\n")
    with pytest.raises(ConfigError, match="on one line"):
        read_pin(by_credential, {"CREDENTIALS_DIRECTORY": str(creds)})


# -- init ----------------------------------------------------------------------------------


def _node_dirs(root: Path, count: int = 3) -> dict[str, Path]:
    dirs = {f"node{i}": root / f"node{i}" for i in range(1, count + 1)}
    for d in dirs.values():
        d.mkdir(parents=True)
    return dirs


def test_setup_file_puts_one_key_in_every_node(tmp_path: Path) -> None:
    dirs = _node_dirs(tmp_path)
    result = setup_seal(SealPlan("file"), directory=tmp_path, cluster_id=CLUSTER,
                        node_dirs=dirs)
    keys = [read_keys(d / "seal.key") for d in dirs.values()]
    assert keys[0] == keys[1] == keys[2] and list(keys[0]) == [1]
    seals = [open_seal(parse_seal_settings(result.node_settings[n], d, d / "node.toml"),
                       CLUSTER) for n, d in dirs.items()]
    sealed = seals[0].wrap(SECRET, cluster_id=CLUSTER, version=1)
    assert seals[2].unwrap(sealed, cluster_id=CLUSTER, version=1) == SECRET


def test_setup_shamir_writes_shares_and_no_key(tmp_path: Path) -> None:
    dirs = _node_dirs(tmp_path)
    result = setup_seal(SealPlan("shamir", shares=5, threshold=3), directory=tmp_path,
                        cluster_id=CLUSTER, node_dirs=dirs)
    assert not any(any(d.iterdir()) for d in dirs.values())  # nothing on the nodes
    assert len(result.share_files) == 5
    share_dir = result.share_files[0].parent
    assert share_dir.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in result.share_files)
    assert result.node_settings["node1"] == {"seal": "shamir",
                                             "shamir": {"threshold": 3, "shares": 5}}
    shares = [read_share_file(p) for p in result.share_files]
    keys = set()
    for subset in itertools.combinations(shares, 3):
        unsealer = Unsealer(CLUSTER, generation=1)
        for share in subset:
            progress, key = unsealer.submit(share)
        assert progress.done and key is not None
        keys.add(key)
    assert len(keys) == 1
    with pytest.raises(ConfigError, match="not empty"):  # never overwrite shares
        setup_seal(SealPlan("shamir"), directory=tmp_path, cluster_id=CLUSTER,
                   node_dirs=dirs)


@pytest.mark.parametrize(("plan", "expect"), [
    (SealPlan("hsm"), "must be one of"),
    (SealPlan("shamir", shares=3, threshold=4), "--threshold"),
    (SealPlan("shamir", shares=5, threshold=1), "whole seal key"),
    (SealPlan("file", pkcs11_token_label="x"), "need --seal pkcs11"),
])
def test_bad_seal_plans(tmp_path: Path, plan: SealPlan, expect: str) -> None:
    with pytest.raises(ConfigError, match=expect):
        setup_seal(plan, directory=tmp_path, cluster_id=CLUSTER, node_dirs={})
