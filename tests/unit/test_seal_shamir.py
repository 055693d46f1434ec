"""raftsso.seal.shamir, .shares and .shamir_seal: GF(256) secret sharing, share files and
unsealing, with known answers and hypothesis round-trips."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftsso.errors import ConfigError
from raftsso.seal import InvalidShare, Sealed
from raftsso.seal.file_seal import FileSeal, write_key_file
from raftsso.seal.shamir import combine, gf_inv, gf_mul, interpolate, split
from raftsso.seal.shamir_seal import ShamirSeal
from raftsso.seal.shares import (
    Share,
    Unsealer,
    key_check,
    make_shares,
    parse_share,
    read_share_file,
    write_share_file,
)

KEY = bytes(range(32))
CLUSTER = "c-000000000001"


def _slow_mul(a: int, b: int) -> int:
    """Reference: carry-less product, then reduction by x^8 + x^4 + x^3 + x + 1."""
    product = 0
    for i in range(8):
        if b >> i & 1:
            product ^= a << i
    for bit in range(14, 7, -1):
        if product >> bit & 1:
            product ^= 0x11B << (bit - 8)
    return product


# -- the field ----------------------------------------------------------------------------


def test_gf_mul_known_answers_from_fips_197() -> None:
    assert gf_mul(0x57, 0x83) == 0xC1  # FIPS-197 section 4.2
    assert gf_mul(0x57, 0x13) == 0xFE  # section 4.2.1
    assert gf_mul(0x53, 0xCA) == 0x01  # {53} and {ca} are inverses (section 5.1.1)
    assert gf_inv(0x53) == 0xCA


def test_gf_mul_matches_the_reference_for_every_pair() -> None:
    for a in range(256):
        for b in range(256):
            assert gf_mul(a, b) == _slow_mul(a, b)


def test_every_nonzero_element_has_its_inverse() -> None:
    for a in range(1, 256):
        assert gf_mul(a, gf_inv(a)) == 1
    with pytest.raises(ZeroDivisionError):
        gf_inv(0)


# -- splitting and combining -------------------------------------------------------------


def test_split_known_answer() -> None:
    # f(x) = 0x2a + x + x^2: f(1) = 0x2a, f(2) = 0x2a ^ 2 ^ 4, f(3) = 0x2a ^ 3 ^ 5.
    shares = split(b"\x2a", 3, 3, random_bytes=lambda n: b"\x01" * n)
    assert shares == [(1, b"\x2a"), (2, b"\x2c"), (3, b"\x2c")]
    # f(x) = 0x2a + 7x: f(1) = 0x2d, f(2) = 0x2a ^ 0x0e, f(3) = 0x2a ^ 0x09.
    shares = split(b"\x2a", 3, 2, random_bytes=lambda n: b"\x07" * n)
    assert shares == [(1, b"\x2d"), (2, b"\x24"), (3, b"\x23")]
    for pair in itertools.combinations(shares, 2):
        assert combine(list(pair)) == b"\x2a"


def test_threshold_one_shares_are_the_secret() -> None:
    assert split(KEY, 3, 1) == [(1, KEY), (2, KEY), (3, KEY)]


@pytest.mark.parametrize(("shares", "threshold"), [(0, 0), (3, 0), (2, 3), (256, 2)])
def test_split_refuses_impossible_counts(shares: int, threshold: int) -> None:
    with pytest.raises(ValueError):
        split(KEY, shares, threshold)


def test_combine_refuses_bad_points() -> None:
    with pytest.raises(ValueError):
        combine([(1, b"ab"), (1, b"cd")])
    with pytest.raises(ValueError):
        combine([(1, b"ab"), (2, b"c")])
    with pytest.raises(ValueError):
        combine([(0, b"ab")])


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=1, max_size=32), n=st.integers(1, 8), data=st.data())
def test_any_threshold_shares_recover_the_secret(secret: bytes, n: int,
                                                 data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    shares = split(secret, n, t)
    subset = data.draw(st.lists(st.sampled_from(shares), min_size=t, max_size=n, unique=True))
    assert combine(subset) == secret


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), other=st.binary(min_size=32, max_size=32),
       n=st.integers(2, 8), data=st.data())
def test_fewer_than_threshold_shares_fit_every_secret(secret: bytes, other: bytes, n: int,
                                                      data: st.DataObject) -> None:
    """t-1 shares reveal nothing: for *any* candidate secret there is a t-th share that
    completes them to it, so no candidate can be ruled out (or checked) from them."""
    t = data.draw(st.integers(2, n))
    shares = split(secret, n, t)
    known = data.draw(st.lists(st.sampled_from(shares), min_size=t - 1, max_size=t - 1,
                               unique=True))
    unused_x = 200  # beyond every real share
    forged = (unused_x, interpolate([(0, other), *known], unused_x))
    assert combine([*known, forged]) == other


# -- share files --------------------------------------------------------------------------


def _shares(n: int = 5, t: int = 3, generation: int = 1, key: bytes = KEY) -> list[Share]:
    return make_shares(key, cluster_id=CLUSTER, generation=generation, shares=n, threshold=t)


def test_share_file_round_trip_and_mode(tmp_path: Path) -> None:
    share = _shares()[2]
    path = tmp_path / "share-3.txt"
    write_share_file(path, share)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_share_file(path) == share
    text = path.read_text()
    assert text.startswith("raftsso-seal-share v1\n")
    assert f"cluster_id = {CLUSTER}\n" in text and "index = 3\n" in text


def test_share_repr_shows_no_value() -> None:
    share = _shares()[0]
    assert share.value.hex() not in repr(share)
    assert "value" not in repr(share)


def test_share_file_too_open_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "share.txt"
    write_share_file(path, _shares()[0])
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_share_file(path)


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("mutate", "expect"), [
    (lambda t: t.replace("index = 2", "index = 4"), "checksum"),
    (lambda t: t.replace("value = ", "value = A"), "checksum"),
    (lambda t: t.replace("raftsso-seal-share v1", "raftsso-seal-share v9"), "not a raftsso"),
    (lambda t: "\n".join(line for line in t.splitlines() if not line.startswith("shares")),
     "in that order"),
    (lambda t: t[:40], "in that order"),
    (lambda t: "", "not a raftsso"),
])
def test_a_damaged_share_is_one_clear_error(mutate: object, expect: str) -> None:
    text = _shares()[1].encode().decode()
    assert callable(mutate)
    with pytest.raises(InvalidShare, match=expect) as info:
        parse_share(mutate(text).encode(), "share-2.txt")
    assert KEY.hex() not in _one_line(info)


def test_binary_garbage_is_not_a_share() -> None:
    with pytest.raises(InvalidShare, match="not text"):
        parse_share(os.urandom(64) + b"\xff")
    with pytest.raises(InvalidShare, match="too large"):
        parse_share(b"x" * 5000)


# -- unsealing ------------------------------------------------------------------------------


def test_unsealer_reports_progress_and_rebuilds_the_key() -> None:
    shares = _shares()
    unsealer = Unsealer(CLUSTER, generation=1)
    assert unsealer.progress == (0, None)
    progress, key = unsealer.submit(shares[4])
    assert (progress.supplied, progress.threshold, progress.done, key) == (1, 3, False, None)
    progress, key = unsealer.submit(shares[0])
    assert (progress.supplied, progress.done, key) == (2, False, None)
    assert unsealer.progress == (2, 3)
    progress, key = unsealer.submit(shares[2])
    assert progress.done and key == KEY
    assert unsealer.progress == (0, None)  # shares are dropped once used
    assert "value" not in repr(unsealer) and KEY.hex() not in repr(unsealer)


def test_unsealer_refuses_wrong_shares_with_one_line_each() -> None:
    unsealer = Unsealer(CLUSTER, generation=2)
    with pytest.raises(InvalidShare, match="generation 1; this cluster's seal key is "
                                           "generation 2") as info:
        unsealer.submit(_shares(generation=1)[0])
    _one_line(info)
    other_cluster = make_shares(KEY, cluster_id="c-other", generation=2, shares=3,
                                threshold=2)[0]
    with pytest.raises(InvalidShare, match="of cluster c-other"):
        unsealer.submit(other_cluster)
    first = _shares(generation=2)
    unsealer.submit(first[0])
    with pytest.raises(InvalidShare, match="supplied already"):
        unsealer.submit(first[0])
    another_set = _shares(generation=2, key=bytes(32))
    with pytest.raises(InvalidShare, match="another set of shares"):
        unsealer.submit(another_set[1])
    assert unsealer.progress == (1, 3)


def test_an_altered_share_with_a_fixed_checksum_fails_the_key_check() -> None:
    """Someone who recomputes the checksum still cannot make the shares rebuild a key of
    their choosing: the key check catches it and every share is discarded."""
    shares = _shares(n=3, t=3)
    bad = Share(**{**shares[1].__dict__, "value": bytes(32)})
    unsealer = Unsealer(CLUSTER)
    unsealer.submit(shares[0])
    unsealer.submit(parse_share(bad.encode()))
    with pytest.raises(InvalidShare, match="do not rebuild the seal key"):
        unsealer.submit(shares[2])
    assert unsealer.progress == (0, None)
    for share in shares:  # a fresh start with the right shares works
        _, key = unsealer.submit(share)
    assert key == KEY


def test_key_check_depends_on_key_cluster_and_generation() -> None:
    base = key_check(KEY, CLUSTER, 1)
    assert len(base) == 16
    assert key_check(bytes(32), CLUSTER, 1) != base
    assert key_check(KEY, "c-other", 1) != base
    assert key_check(KEY, CLUSTER, 2) != base


# -- the shamir seal -------------------------------------------------------------------------


def test_shamir_seal_is_sealed_until_threshold_shares(tmp_path: Path) -> None:
    seal = ShamirSeal(CLUSTER, threshold=3, generation=1)
    assert seal.sealed
    assert seal.status().progress == (0, 3)
    with pytest.raises(Sealed):
        seal.wrap(KEY, cluster_id=CLUSTER, version=1)
    shares = _shares()
    seal.submit(shares[1])
    seal.submit(shares[3])
    assert seal.sealed and seal.status().as_dict()["progress"] == {"supplied": 2,
                                                                    "threshold": 3}
    with pytest.raises(Sealed):
        seal.unwrap(b"\x02" + bytes(64), cluster_id=CLUSTER, version=1)
    progress = seal.submit(shares[0])
    assert progress.done and not seal.sealed
    assert seal.status().progress is None and seal.generations == (1,)
    # The rebuilt key is the one the shares were made from: a file seal of it agrees.
    write_key_file(tmp_path / "seal.key", KEY)
    file_seal = FileSeal(tmp_path / "seal.key")
    sealed = seal.wrap(b"s" * 32, cluster_id=CLUSTER, version=4)
    assert file_seal.unwrap(sealed, cluster_id=CLUSTER, version=4) == b"s" * 32
    seal.seal()
    assert seal.sealed
    with pytest.raises(Sealed):
        seal.unwrap(sealed, cluster_id=CLUSTER, version=4)
