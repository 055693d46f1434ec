"""raftsso.envelope: sealing master secrets and client tokens, with real AES-256-GCM."""

from __future__ import annotations

import base64
import json
import os
import runpy
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftsso import envelope
from raftsso.envelope import (
    KEY_SIZE,
    NONCE_SIZE,
    SEALED_SIZE,
    TOKEN_OVERHEAD,
    Envelope,
    fingerprint,
    new_key,
    seal,
    token_key_version,
    unseal,
)
from raftsso.errors import InvalidToken

VECTORS_DIR = Path(__file__).resolve().parent.parent / "vectors"
VECTORS: dict[str, Any] = json.loads((VECTORS_DIR / "envelope.json").read_text("utf-8"))

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SECRET = bytes(range(100, 132))
CLUSTER = "c-000000000001"


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


def _assert_invalid(fn: Any, *args: Any, **kwargs: Any) -> None:
    """The call must fail with exactly the one opaque InvalidToken, revealing nothing."""
    with pytest.raises(InvalidToken) as info:
        fn(*args, **kwargs)
    assert type(info.value) is InvalidToken
    assert str(info.value) == "invalid token"
    assert info.value.__cause__ is None


# -- known-answer vectors ---------------------------------------------------------------


def test_vector_file_has_cases() -> None:
    assert len(VECTORS["seal"]) >= 4
    assert len(VECTORS["token"]) >= 4
    assert len(VECTORS["fingerprint"]) >= 2


@pytest.mark.parametrize("vec", VECTORS["seal"], ids=lambda v: v["name"])
def test_seal_known_answer(vec: dict[str, Any]) -> None:
    sealed = seal(_h(vec["seal_key"]), _h(vec["secret"]), cluster_id=vec["cluster_id"],
                  version=vec["version"], _nonce=_h(vec["nonce"]))
    assert sealed == _h(vec["sealed"])
    assert len(sealed) == SEALED_SIZE
    assert unseal(_h(vec["seal_key"]), _h(vec["sealed"]), cluster_id=vec["cluster_id"],
                  version=vec["version"]) == _h(vec["secret"])


@pytest.mark.parametrize("vec", VECTORS["token"], ids=lambda v: v["name"])
def test_token_known_answer(vec: dict[str, Any]) -> None:
    env = Envelope(vec["version"], _h(vec["key"]))
    token = env.encrypt(_h(vec["data"]), _h(vec["associated_data"]), _nonce=_h(vec["nonce"]))
    assert token == _h(vec["token"])
    assert len(token) == TOKEN_OVERHEAD + len(_h(vec["data"]))
    assert token_key_version(token) == vec["version"]
    assert env.decrypt(_h(vec["token"]), _h(vec["associated_data"])) == _h(vec["data"])


@pytest.mark.parametrize("vec", VECTORS["fingerprint"], ids=lambda v: v["fingerprint"])
def test_fingerprint_known_answer(vec: dict[str, Any]) -> None:
    assert fingerprint(_h(vec["key"])) == vec["fingerprint"]


def test_vector_generator_reproduces_the_checked_in_file() -> None:
    # The generator documents how the data was made; it must still produce it exactly.
    module = runpy.run_path(str(VECTORS_DIR / "generate.py"))
    assert module["render"]() == (VECTORS_DIR / "envelope.json").read_text("utf-8")


# -- sealed secrets ---------------------------------------------------------------------


def test_seal_round_trip_with_fresh_keys() -> None:
    seal_key, secret = new_key(), new_key()
    sealed = seal(seal_key, secret, cluster_id=CLUSTER, version=5)
    assert len(sealed) == SEALED_SIZE
    assert sealed[0] == envelope.SEAL_FORMAT
    assert secret not in sealed
    assert unseal(seal_key, sealed, cluster_id=CLUSTER, version=5) == secret


def test_seal_uses_a_fresh_nonce_every_time() -> None:
    a = seal(KEY, SECRET, cluster_id=CLUSTER, version=1)
    b = seal(KEY, SECRET, cluster_id=CLUSTER, version=1)
    assert a != b
    assert a[1:1 + NONCE_SIZE] != b[1:1 + NONCE_SIZE]


def test_new_key_is_32_random_bytes() -> None:
    keys = {new_key() for _ in range(8)}
    assert len(keys) == 8
    assert all(len(k) == KEY_SIZE for k in keys)


@pytest.mark.parametrize("key,secret", [(KEY[:31], SECRET), (KEY, SECRET[:16]),
                                        (KEY + b"x", SECRET), (KEY, SECRET + b"x")])
def test_seal_refuses_wrong_sizes(key: bytes, secret: bytes) -> None:
    with pytest.raises(ValueError):
        seal(key, secret, cluster_id=CLUSTER, version=1)


SEALED = seal(KEY, SECRET, cluster_id=CLUSTER, version=3, _nonce=b"\x07" * NONCE_SIZE)


@pytest.mark.parametrize("pos", range(SEALED_SIZE))
def test_unseal_rejects_a_flipped_bit_anywhere(pos: int) -> None:
    for bit in (0x01, 0x80):
        tampered = bytearray(SEALED)
        tampered[pos] ^= bit
        _assert_invalid(unseal, KEY, bytes(tampered), cluster_id=CLUSTER, version=3)


def test_unseal_rejects_every_truncation_and_extension() -> None:
    for n in range(SEALED_SIZE):
        _assert_invalid(unseal, KEY, SEALED[:n], cluster_id=CLUSTER, version=3)
    _assert_invalid(unseal, KEY, SEALED + b"\x00", cluster_id=CLUSTER, version=3)


@pytest.mark.parametrize("version", [0, 2, 4, 3 + (1 << 32), 1 << 63])
def test_unseal_rejects_another_version_id(version: int) -> None:
    _assert_invalid(unseal, KEY, SEALED, cluster_id=CLUSTER, version=version)


@pytest.mark.parametrize("cluster_id", ["", "c-000000000002", CLUSTER + "\x00", CLUSTER[:-1],
                                        CLUSTER.upper()])
def test_unseal_rejects_another_cluster_id(cluster_id: str) -> None:
    _assert_invalid(unseal, KEY, SEALED, cluster_id=cluster_id, version=3)


def test_unseal_cluster_and_version_cannot_be_shifted_into_each_other() -> None:
    # AAD = prefix | cluster | 0x00 | u64 version: moving bytes between the two must fail.
    sealed = seal(KEY, SECRET, cluster_id="c-1", version=0x0100)
    _assert_invalid(unseal, KEY, sealed, cluster_id="c-1\x00", version=0x01)


@pytest.mark.parametrize("key", [OTHER_KEY, bytes(32), KEY[:31], KEY + b"\x00", b""])
def test_unseal_rejects_a_wrong_key(key: bytes) -> None:
    _assert_invalid(unseal, key, SEALED, cluster_id=CLUSTER, version=3)


@pytest.mark.parametrize("fmt", [0x00, 0x02, 0xFF])
def test_unseal_rejects_a_wrong_format_byte(fmt: int) -> None:
    _assert_invalid(unseal, KEY, bytes([fmt]) + SEALED[1:], cluster_id=CLUSTER, version=3)


# -- client tokens ----------------------------------------------------------------------

ENV = Envelope(7, KEY)
TOKEN = ENV.encrypt(b"the credential", b"app/user", _nonce=b"\x05" * NONCE_SIZE)


def test_token_round_trip_and_layout() -> None:
    token = ENV.encrypt(b"secret data", b"ad")
    assert token[0] == envelope.TOKEN_FORMAT
    assert token[1:5] == (7).to_bytes(4, "big")
    assert token_key_version(token) == 7
    assert b"secret data" not in token
    assert ENV.decrypt(token, b"ad") == b"secret data"


def test_encrypt_uses_a_fresh_nonce_every_time() -> None:
    assert ENV.encrypt(b"x") != ENV.encrypt(b"x")


@pytest.mark.parametrize("pos", range(len(TOKEN)))
def test_decrypt_rejects_a_flipped_bit_anywhere(pos: int) -> None:
    for bit in (0x01, 0x80):
        tampered = bytearray(TOKEN)
        tampered[pos] ^= bit
        _assert_invalid(ENV.decrypt, bytes(tampered), b"app/user")


def test_decrypt_rejects_every_truncation_and_extension() -> None:
    for n in range(len(TOKEN)):
        _assert_invalid(ENV.decrypt, TOKEN[:n], b"app/user")
    _assert_invalid(ENV.decrypt, TOKEN + b"\x00", b"app/user")


@pytest.mark.parametrize("ad", [b"", b"app/use", b"app/user\x00", b"APP/USER", b"app/user" * 2])
def test_decrypt_rejects_wrong_associated_data(ad: bytes) -> None:
    _assert_invalid(ENV.decrypt, TOKEN, ad)


def test_decrypt_rejects_a_wrong_key_with_the_same_version() -> None:
    _assert_invalid(Envelope(7, OTHER_KEY).decrypt, TOKEN, b"app/user")


@pytest.mark.parametrize("fmt", [0x00, 0x02, 0xFF])
def test_decrypt_rejects_a_wrong_format_byte(fmt: int) -> None:
    _assert_invalid(ENV.decrypt, bytes([fmt]) + TOKEN[1:], b"app/user")
    _assert_invalid(token_key_version, bytes([fmt]) + TOKEN[1:])


def test_decrypt_rejects_a_token_made_for_another_key_version() -> None:
    # Same key material, different version id: refused before and by authentication.
    _assert_invalid(Envelope(8, KEY).decrypt, TOKEN, b"app/user")
    # Even with the header rewritten to the other version, the version is in the AAD.
    relabelled = TOKEN[:1] + (8).to_bytes(4, "big") + TOKEN[5:]
    assert token_key_version(relabelled) == 8
    _assert_invalid(Envelope(8, KEY).decrypt, relabelled, b"app/user")


@pytest.mark.parametrize("token", [b"", b"\x01", b"\x01\x00\x00\x00\x07",
                                   b"\x01" + b"\x00" * (TOKEN_OVERHEAD - 2)])
def test_token_key_version_rejects_short_tokens(token: bytes) -> None:
    _assert_invalid(token_key_version, token)
    _assert_invalid(ENV.decrypt, token)


@pytest.mark.parametrize("version", [0, -1, envelope.MAX_KEY_VERSION + 1])
def test_envelope_refuses_out_of_range_versions(version: int) -> None:
    with pytest.raises(ValueError):
        Envelope(version, KEY)


@pytest.mark.parametrize("key", [b"", KEY[:16], KEY + b"x"])
def test_envelope_refuses_wrong_key_sizes(key: bytes) -> None:
    with pytest.raises(ValueError):
        Envelope(1, key)


def test_envelope_accepts_the_extreme_versions() -> None:
    for version in (1, envelope.MAX_KEY_VERSION):
        env = Envelope(version, KEY)
        assert token_key_version(env.encrypt(b"")) == version
        assert env.decrypt(env.encrypt(b"abc", b"d"), b"d") == b"abc"


# -- nothing leaks ----------------------------------------------------------------------


def _renderings(key: bytes) -> list[str]:
    return [key.hex(), key.hex().upper(), repr(key), base64.b64encode(key).decode(),
            key.hex()[:16], key.hex()[-16:]]


def test_fingerprint_is_stable_short_and_one_way() -> None:
    fp = fingerprint(KEY)
    assert fp == fingerprint(bytes(KEY))
    assert len(fp) == 16
    assert all(c in "0123456789abcdef" for c in fp)
    assert fp != fingerprint(OTHER_KEY)
    for text in _renderings(KEY):
        assert text not in fp
        assert fp not in text


def test_repr_of_an_envelope_shows_no_key() -> None:
    env = Envelope(3, KEY)
    text = repr(env) + str(env)
    assert text.startswith("Envelope(version=3")
    for rendering in _renderings(KEY):
        assert rendering not in text
    # __slots__: no instance __dict__ for a debugger or logger to dump the key from.
    assert not hasattr(env, "__dict__")


def test_errors_carry_no_detail() -> None:
    errors = []
    calls: list[Callable[[], bytes]] = [
        lambda: unseal(OTHER_KEY, SEALED, cluster_id=CLUSTER, version=3),
        lambda: unseal(KEY, SEALED[:-1], cluster_id=CLUSTER, version=3),
        lambda: ENV.decrypt(TOKEN, b"other"),
        lambda: ENV.decrypt(TOKEN[:10]),
    ]
    for call in calls:
        with pytest.raises(InvalidToken) as info:
            call()
        errors.append((type(info.value), info.value.args))
    assert len(set(errors)) == 1


# -- property tests ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2048), ad=st.binary(max_size=256),
       version=st.integers(1, envelope.MAX_KEY_VERSION))
def test_token_round_trip_property(data: bytes, ad: bytes, version: int) -> None:
    env = Envelope(version, KEY)
    token = env.encrypt(data, ad)
    assert len(token) == TOKEN_OVERHEAD + len(data)
    assert token_key_version(token) == version
    assert env.decrypt(token, ad) == data


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=256), ad=st.binary(max_size=64), ad2=st.binary(max_size=64))
def test_token_other_associated_data_property(data: bytes, ad: bytes, ad2: bytes) -> None:
    token = ENV.encrypt(data, ad)
    if ad2 == ad:
        assert ENV.decrypt(token, ad2) == data
    else:
        _assert_invalid(ENV.decrypt, token, ad2)


@settings(max_examples=100, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), cluster_id=st.text(max_size=40),
       version=st.integers(0, (1 << 64) - 1))
def test_seal_round_trip_property(secret: bytes, cluster_id: str, version: int) -> None:
    sealed = seal(KEY, secret, cluster_id=cluster_id, version=version)
    assert unseal(KEY, sealed, cluster_id=cluster_id, version=version) == secret
    _assert_invalid(unseal, KEY, sealed, cluster_id=cluster_id, version=version ^ 1)


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=128))
def test_unseal_of_arbitrary_bytes_only_raises_invalid_token(blob: bytes) -> None:
    _assert_invalid(unseal, KEY, blob, cluster_id=CLUSTER, version=3)
    _assert_invalid(ENV.decrypt, blob)


# -- nonces: unique across threads, forks and processes -----------------------------------


def _nonce_of(token: bytes) -> bytes:
    return token[5:5 + NONCE_SIZE]


def test_nonces_are_unique_across_threads() -> None:
    env = Envelope(7, KEY)
    per_thread = 20_000
    results: list[list[bytes]] = []
    go = threading.Barrier(8)

    def work() -> None:
        go.wait(timeout=30)
        results.append([_nonce_of(env.encrypt(b"x")) for _ in range(per_thread)])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 8
    everything = [n for batch in results for n in batch]
    assert len(set(everything)) == len(everything) == 8 * per_thread


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def test_a_forked_child_and_its_parent_never_share_a_nonce() -> None:
    # The envelope (and the nonce counter) exist before the fork, as in a pre-forking
    # server that builds its SSO client first: without the at-fork hook the child would
    # repeat the parent's sequence exactly.
    env = Envelope(7, KEY)
    before = {_nonce_of(env.encrypt(b"x")) for _ in range(100)}
    count = 5_000
    children = []
    for _ in range(3):
        go_r, go_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: wait for the start, encrypt, send the nonces, exit
            try:
                os.close(go_w)
                os.close(out_r)
                os.read(go_r, 1)
                nonces = b"".join(_nonce_of(env.encrypt(b"x")) for _ in range(count))
                with os.fdopen(out_w, "wb") as out:
                    out.write(nonces)
            finally:
                os._exit(0)
        os.close(go_r)
        os.close(out_w)
        children.append((pid, go_w, out_r))
    for _, go_w, _ in children:  # all start together, the parent with them
        os.write(go_w, b"!")
        os.close(go_w)
    parent = [_nonce_of(env.encrypt(b"x")) for _ in range(count)]
    seen = set(before) | set(parent)
    assert len(seen) == len(before) + count
    for pid, _, out_r in children:
        blob = _read_all(out_r)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert len(blob) == count * NONCE_SIZE
        child = {blob[i:i + NONCE_SIZE] for i in range(0, len(blob), NONCE_SIZE)}
        assert len(child) == count
        assert not child & seen, "a forked child repeated a nonce"
        seen |= child


def test_every_process_starts_its_nonces_at_a_random_point() -> None:
    code = "from raftsso.envelope import next_nonce; print(next_nonce().hex())"
    firsts = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, timeout=60).stdout.strip() for _ in range(3)}
    assert len(firsts) == 3
    assert all(len(bytes.fromhex(f)) == NONCE_SIZE for f in firsts)


def test_next_nonce_counts_up_within_a_process() -> None:
    a, b = envelope.next_nonce(), envelope.next_nonce()
    assert len(a) == len(b) == NONCE_SIZE
    assert int.from_bytes(b, "big") > int.from_bytes(a, "big")


# -- other buffers and large tokens --------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4096 - TOKEN_OVERHEAD - 1, 4096 - TOKEN_OVERHEAD,
                                  65536])
def test_tokens_of_every_size_round_trip_and_reject_tampering(size: int) -> None:
    data = os.urandom(size)
    token = ENV.encrypt(data, b"ad")
    assert ENV.decrypt(token, b"ad") == data
    assert ENV.decrypt(bytearray(token), b"ad") == data
    assert ENV.decrypt(memoryview(token), b"ad") == data
    tampered = bytearray(token)
    tampered[-1] ^= 1
    _assert_invalid(ENV.decrypt, bytes(tampered), b"ad")
    _assert_invalid(ENV.decrypt, token, b"other")


# -- Keyset: the client's lookup by token header -------------------------------------------


def test_keyset_opens_tokens_of_its_versions_and_declines_others() -> None:
    one, two = Envelope(1, KEY), Envelope(2, OTHER_KEY)
    keyset = envelope.Keyset([one, two])
    assert keyset.decrypt(one.encrypt(b"a", b"ad"), b"ad") == b"a"
    assert keyset.decrypt(two.encrypt(b"", b"ad"), b"ad") == b""  # empty, not None
    assert keyset.decrypt(two.encrypt(b"b" * 70_000)) == b"b" * 70_000
    # Another version, another format, not a token: not ours, the caller decides.
    assert keyset.decrypt(Envelope(3, KEY).encrypt(b"c")) is None
    assert keyset.decrypt(b"\x02" + one.encrypt(b"d")[1:]) is None
    for junk in (b"", b"\x01", b"\x01\x00\x00\x00"):
        assert keyset.decrypt(junk) is None
    assert keyset.decrypt(bytearray(one.encrypt(b"e"))) is None  # unhashable: caller decides
    assert keyset.decrypt(memoryview(one.encrypt(b"f"))) == b"f"


def test_keyset_rejects_a_token_of_its_version_that_does_not_open() -> None:
    one = Envelope(1, KEY)
    keyset = envelope.Keyset([one])
    token = one.encrypt(b"secret", b"ad")
    _assert_invalid(keyset.decrypt, token[:TOKEN_OVERHEAD - 1], b"ad")
    _assert_invalid(keyset.decrypt, token, b"other")
    for pos in range(5, len(token)):
        tampered = bytearray(token)
        tampered[pos] ^= 1
        _assert_invalid(keyset.decrypt, bytes(tampered), b"ad")
    # Same header, other key material (a version id reused in another cluster).
    _assert_invalid(envelope.Keyset([Envelope(1, OTHER_KEY)]).decrypt, token, b"ad")
