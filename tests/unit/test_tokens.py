"""The C token path (raftsso._tokens) against the pure-Python one: same tokens, same answers.

raftsso.envelope picks the C module when it was built (``pip install -e .`` with gcc) and
falls back to Python without it (or with RAFTSSO_PURE_PYTHON=1 in the environment: run
tests/unit/test_envelope.py and test_client.py that way too). Here both run side by side:
Envelope and Keyset built with ``envelope._accel`` set to None take the Python path.
"""

from __future__ import annotations

import gc
import itertools
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from raftsso import envelope
from raftsso.envelope import NONCE_SIZE, TOKEN_OVERHEAD, Envelope, Keyset
from raftsso.errors import InvalidToken

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

accel = envelope._accel
needs_c = pytest.mark.skipif(accel is None, reason="raftsso._tokens is not built")


@pytest.fixture
def pure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Envelopes and keysets built while this is active take the pure-Python path."""
    monkeypatch.setattr(envelope, "_accel", None)


def _python_envelope(version: int, key: bytes) -> Envelope:
    saved, envelope._accel = envelope._accel, None
    try:
        return Envelope(version, key)
    finally:
        envelope._accel = saved


def _python_keyset(envelopes: list[Envelope]) -> Keyset:
    saved, envelope._accel = envelope._accel, None
    try:
        return Keyset(envelopes)
    finally:
        envelope._accel = saved


def test_the_accelerator_is_built_here() -> None:
    # pip install -e . compiles it with gcc (setup.py); a silent fallback would hide a
    # broken build, so the test environment insists on it unless told otherwise.
    if os.environ.get("RAFTSSO_PURE_PYTHON"):
        assert accel is None
    else:
        assert accel is not None, ("raftsso._tokens is not built: pip install -e . (./dev "
                                   "test does) needs gcc and the Python headers")


@needs_c
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1024, 4096, 70_000])
@pytest.mark.parametrize("ad_type", [bytes, bytearray, memoryview])
def test_c_and_python_make_the_same_token_bytes(size: int, ad_type: Any) -> None:
    assert accel is not None
    data = os.urandom(size)
    ad = ad_type(b"raftsso/cred/v1\x00app\x00user" * (size % 3))
    c_env, py_env = Envelope(9, KEY), _python_envelope(9, KEY)
    start = int.from_bytes(os.urandom(NONCE_SIZE), "big") >> 8
    try:
        accel.reseed(start.to_bytes(NONCE_SIZE, "big"))
        first, second = c_env.encrypt(data, ad), c_env.seal(bytearray(data), ad)
    finally:
        envelope._reseed_accelerator()  # back to a random start
    nonce = start.to_bytes(NONCE_SIZE, "big")
    assert first == py_env.encrypt(data, ad, _nonce=nonce)
    assert second == py_env.encrypt(data, ad, _nonce=(start + 1).to_bytes(NONCE_SIZE, "big"))
    assert type(first) is bytes and len(first) == size + TOKEN_OVERHEAD
    # Each opens the other's.
    assert py_env.decrypt(first, ad) == data == c_env.decrypt(first, ad)


@needs_c
def test_the_c_nonce_counter_carries_into_its_high_word() -> None:
    assert accel is not None
    try:
        accel.reseed(bytes([0, 0, 0, 7]) + b"\xff" * 8)
        a, b, c = accel.next_nonce(), accel.next_nonce(), accel.next_nonce()
    finally:
        envelope._reseed_accelerator()
    assert a == bytes([0, 0, 0, 7]) + b"\xff" * 8
    assert b == bytes([0, 0, 0, 8]) + bytes(8)
    assert c == bytes([0, 0, 0, 8]) + bytes(7) + b"\x01"
    with pytest.raises(ValueError):
        accel.reseed(b"short")


def _answers(open_: Callable[[Any, Any], bytes | None], token: Any, ad: Any) -> object:
    try:
        return open_(token, ad)
    except envelope.TokenDoesNotOpen:
        return "does not open"


@needs_c
def test_c_and_python_keyset_open_give_the_same_answers() -> None:
    one, two = Envelope(1, KEY), Envelope(2, OTHER_KEY)
    c_keys, py_keys = Keyset([one, two]), _python_keyset([one, two])
    assert c_keys.open is not py_keys.open
    token = one.encrypt(b"secret", b"ad")
    big = two.encrypt(b"x" * 70_000)
    tampered = bytearray(token)
    tampered[-1] ^= 1
    cases: list[tuple[Any, Any]] = [
        (token, b"ad"), (token, bytearray(b"ad")), (token, memoryview(b"ad")),
        (big, b""), (two.encrypt(b""), b""),
        (token, b"other"), (bytes(tampered), b"ad"),            # ours, does not open
        (Envelope(3, KEY).encrypt(b"c"), b""),                  # another version
        (b"\x02" + token[1:], b"ad"),                           # another format
        (token[:TOKEN_OVERHEAD - 1], b"ad"), (b"", b""),        # too short
        (bytearray(token), b"ad"), (memoryview(token), b"ad"),  # not bytes: the slow path
        ("not bytes", b""), (None, b""),
    ]
    for tok, ad in cases:
        assert _answers(c_keys.open, tok, ad) == _answers(py_keys.open, tok, ad), (tok, ad)
    assert c_keys.open(token, b"ad") == b"secret"
    with pytest.raises(TypeError):
        c_keys.open(token, "not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        py_keys.open(token, "not bytes")  # type: ignore[arg-type]


def test_pure_python_envelopes_round_trip(pure: None) -> None:
    env = Envelope(4, KEY)
    assert env.seal == env._seal_py
    token = env.encrypt(b"hello", b"ad")
    assert env.decrypt(token, b"ad") == b"hello"
    keyset = Keyset([env])
    assert keyset.open(token, b"ad") == b"hello"
    assert keyset.decrypt(token, b"ad") == b"hello"


@pytest.mark.parametrize("path", ["c", "python"])
def test_nonces_stay_unique_across_threads_and_a_fork(path: str) -> None:
    if path == "c" and accel is None:
        pytest.skip("raftsso._tokens is not built")
    env = Envelope(7, KEY) if path == "c" else _python_envelope(7, KEY)
    assert (env.seal == env._seal_py) == (path == "python")
    seen: list[list[bytes]] = []
    go = threading.Barrier(4)

    def work() -> None:
        go.wait(timeout=30)
        seen.append([env.encrypt(b"x" * 1024)[5:17] for _ in range(5_000)])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    parent = {n for batch in seen for n in batch}
    assert len(parent) == 4 * 5_000
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its nonces, then exit without running pytest's teardown
        try:
            os.close(r)
            with os.fdopen(w, "wb") as out:
                out.write(b"".join(env.encrypt(b"x")[5:17] for _ in range(2_000)))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as inp:
        blob = inp.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = {blob[i:i + NONCE_SIZE] for i in range(0, len(blob), NONCE_SIZE)}
    after = {env.encrypt(b"x")[5:17] for _ in range(2_000)}
    assert len(child) == len(after) == 2_000
    assert not child & (parent | after), "a forked child repeated a nonce"


# -- ClientCore: SSOClient's encrypt/decrypt, in C or in Python ---------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _core_classes() -> list[Any]:
    classes: list[Any] = [envelope._PyClientCore]
    if accel is not None:
        classes.append(accel.ClientCore)
    return classes


@pytest.fixture(params=_core_classes(), ids=lambda c: c.__module__)
def core(request: pytest.FixtureRequest) -> Any:
    class Client(request.param):  # type: ignore[misc]
        def __init__(self) -> None:
            self.slow: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

        # SSOClient's signatures; the records normalise the default argument
        def _encrypt_slow(self, data: bytes, associated_data: bytes = b"") -> bytes:
            self.slow.append(("encrypt", data, associated_data))
            return b"slow"

        def _decrypt_slow(self, token: bytes, associated_data: bytes = b"") -> bytes:
            self.slow.append(("decrypt", token, associated_data))
            return b"slow"

    return Client()


def test_a_disarmed_core_hands_every_call_to_the_slow_methods(core: Any) -> None:
    assert core.encrypt(b"data") == b"slow"
    assert core.decrypt(b"token", b"ad") == b"slow"
    assert core.encrypt(b"data", associated_data=b"ad") == b"slow"
    assert core.slow == [("encrypt", b"data", b""), ("decrypt", b"token", b"ad"),
                         ("encrypt", b"data", b"ad")]


def test_an_armed_core_encrypts_while_fresh_and_counts(core: Any) -> None:
    clock, uses = _Clock(), itertools.count()
    one = Envelope(1, KEY)
    envelope.arm_client(core, clock, 130.0, uses, one, Keyset([one]))
    token = core.encrypt(b"data", b"ad")
    assert one.decrypt(token, b"ad") == b"data"
    assert one.decrypt(core.encrypt(b""), b"") == b""
    assert core.decrypt(token, b"ad") == b"data"
    assert core.slow == []
    assert next(uses) == 2  # two encryptions counted
    # Keyword arguments: the C core hands them to the slow method, the Python one takes
    # them itself; either way the same answer. A wrong number of arguments: TypeError.
    for result in (core.encrypt(b"data", associated_data=b"ad"),
                   core.encrypt(data=b"data", associated_data=b"ad")):
        assert result == b"slow" or one.decrypt(result, b"ad") == b"data"
    assert core.decrypt(token, associated_data=b"ad") in (b"slow", b"data")
    assert all(s[2] == b"ad" for s in core.slow)
    for bad in ((), (b"a", b"b", b"c")):
        with pytest.raises(TypeError):
            core.encrypt(*bad)
        with pytest.raises(TypeError):
            core.decrypt(*bad)
    # Stale by the client's clock: the slow method decides (it raises StaleSecret).
    core.slow.clear()
    counted = next(uses)
    clock.now = 130.0
    assert core.encrypt(b"data", b"ad") == b"slow"
    assert core.slow == [("encrypt", b"data", b"ad")]
    assert next(uses) == counted + 1  # not counted
    # Not a token of an armed version, or not bytes: the slow method too.
    core.slow.clear()
    other = Envelope(2, OTHER_KEY).encrypt(b"x")
    assert core.decrypt(other) == b"slow"
    assert core.decrypt(bytearray(token), b"ad") == b"slow"
    assert [s[0] for s in core.slow] == ["decrypt", "decrypt"]


def test_an_armed_core_refuses_a_token_that_does_not_open(core: Any) -> None:
    one = Envelope(1, KEY)
    envelope.arm_client(core, _Clock(), 130.0, itertools.count(), one, Keyset([one]))
    token = one.encrypt(b"secret", b"ad")
    for bad, ad in ((token, b"other"), (token[:-1] + bytes([token[-1] ^ 1]), b"ad")):
        with pytest.raises(InvalidToken) as info:
            core.decrypt(bad, ad)
        assert type(info.value) is InvalidToken and str(info.value) == "invalid token"
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__ or info.value.__context__ is None
    assert core.slow == []


def test_arming_without_a_primary_and_disarming(core: Any) -> None:
    one = Envelope(1, KEY)
    token = one.encrypt(b"secret")
    envelope.arm_client(core, _Clock(), 130.0, itertools.count(), None, Keyset([one]))
    assert core.encrypt(b"data") == b"slow"  # no primary: the slow method says why
    assert core.decrypt(token) == b"secret"
    envelope.disarm_client(core)
    assert core.decrypt(token) == b"slow"
    assert [s[0] for s in core.slow] == ["encrypt", "decrypt"]


def test_the_c_core_reads_time_monotonic_itself() -> None:
    if accel is None:
        pytest.skip("raftsso._tokens is not built")
    import time

    class Client(accel.ClientCore):  # type: ignore[misc, name-defined]
        def _encrypt_slow(self, data: bytes, associated_data: bytes = b"") -> bytes:
            return b"slow"

    client, one = Client(), Envelope(1, KEY)
    envelope.arm_client(client, time.monotonic, time.monotonic() + 3600, itertools.count(),
                        one, Keyset([one]))
    assert one.decrypt(client.encrypt(b"x")) == b"x"
    envelope.arm_client(client, time.monotonic, time.monotonic() - 1, itertools.count(),
                        one, Keyset([one]))
    assert client.encrypt(b"x") == b"slow"


def test_a_core_in_a_reference_cycle_is_collected(core: Any) -> None:
    client = type(core)()  # not the fixture's: pytest holds that one
    one = Envelope(1, KEY)
    envelope.arm_client(client, _Clock(), 130.0, itertools.count(), one, Keyset([one]))
    client.me = client  # a cycle through the instance dict
    ref = weakref.ref(client)
    del client
    gc.collect()
    assert ref() is None


def test_the_pure_python_path_is_chosen_by_the_environment() -> None:
    code = ("from raftsso import envelope, client; "
            "print(envelope._accel, client.SSOClient.__mro__[1].__name__)")
    env = dict(os.environ, RAFTSSO_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, env=env).stdout.split()
    assert out == ["None", "_PyClientCore"]


# -- security review regressions (raftsso/_tokens.c) ---------------------------------------


@needs_c
def test_a_callee_that_keeps_a_buffer_fails_the_call_and_cannot_reach_freed_memory() -> None:
    # A memoryview kept past the call pointed into the returned token (a bytes object that
    # could then be changed) and, once the token was freed, at freed memory.
    assert accel is not None
    one = Envelope(1, KEY)
    kept: list[memoryview] = []

    def keeps_out(nonce: Any, data: Any, ad: Any, buf: Any) -> int:
        kept.append(memoryview(buf))
        return one._encrypt_into(nonce, data, ad, buf)

    def keeps_in(nonce: Any, body: Any, ad: Any, buf: Any) -> int:
        kept.extend((memoryview(body), memoryview(buf)))
        return one._decrypt_into(nonce, body, ad, buf)

    with pytest.raises(BufferError):
        accel.seal(keeps_out, one.header, b"x" * 64, b"")
    token = one.encrypt(b"y" * 64)
    with pytest.raises(BufferError):
        accel.open({1: keeps_in}, token, b"")
    gc.collect()
    for view in kept:  # the memory is still owned (by the window), so this is no UAF
        if not view.readonly:
            view[:4] = b"EVIL"
        assert len(bytes(view)) == view.nbytes
    assert one.decrypt(token) == b"y" * 64
    kept.clear()
    assert accel.open({1: one._decrypt_into}, token, b"") == b"y" * 64  # windows reused


@needs_c
def test_the_c_core_refuses_a_counter_that_is_not_an_iterator() -> None:
    # encrypt's PyIter_Next(uses) called a NULL tp_iternext for a list: a segfault.
    assert accel is not None
    core: Any = accel.ClientCore()
    one = Envelope(1, KEY)
    with pytest.raises(TypeError):
        core._arm_encrypt(None, 1e18, [1, 2], one._encrypt_into, one.header)


@needs_c
def test_the_c_nonce_counter_stops_at_2_96_rather_than_wrap() -> None:
    assert accel is not None
    try:
        accel.reseed(b"\xff" * 11 + b"\xfe")
        assert accel.next_nonce() == b"\xff" * 11 + b"\xfe"
        assert accel.next_nonce() == b"\xff" * 12
        for _ in range(2):  # as the Python path's int.to_bytes(2**96, 12)
            with pytest.raises(OverflowError):
                accel.next_nonce()
        with pytest.raises(OverflowError):
            Envelope(1, KEY).encrypt(b"x")
    finally:
        envelope._reseed_accelerator()
    assert len(accel.next_nonce()) == NONCE_SIZE


@needs_c
def test_a_c_fork_without_the_python_hook_fails_closed() -> None:
    # A child forked by C code (no os.register_at_fork hooks) must not continue the parent's
    # nonce run: the C counter forgets itself in a pthread_atfork child handler.
    assert accel is not None
    code = ("import ctypes, os\n"
            "from raftsso import envelope\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "pid = libc.fork()\n"
            "if pid == 0:\n"
            "    try:\n"
            "        envelope._accel.next_nonce()\n"
            "        os._exit(1)\n"
            "    except RuntimeError:\n"
            "        envelope._reseed_accelerator()\n"
            "        envelope._accel.next_nonce()\n"
            "        os._exit(7)\n"
            "_, status = os.waitpid(pid, 0)\n"
            "print(os.waitstatus_to_exitcode(status), len(envelope._accel.next_nonce()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == ["7", "12"]


def test_a_wrong_associated_data_raises_type_error_on_both_paths(core: Any) -> None:
    one = Envelope(1, KEY)
    envelope.arm_client(core, _Clock(), 130.0, itertools.count(), one, Keyset([one]))
    token = one.encrypt(b"x", b"ad")
    strided = memoryview(b"abcdef")[::2]  # not contiguous: BufferError from the C buffer
    for ad in (strided, "str", None):
        with pytest.raises(TypeError):
            core.encrypt(b"data", ad)
        with pytest.raises(TypeError):
            core.encrypt(strided, ad)  # the associated data is checked first on both paths
        with pytest.raises(TypeError):
            core.decrypt(token, ad)
    with pytest.raises(BufferError):
        core.encrypt(strided, b"ad")


def test_invalid_token_hides_the_callers_handled_exception_too(core: Any) -> None:
    one = Envelope(1, KEY)
    envelope.arm_client(core, _Clock(), 130.0, itertools.count(), one, Keyset([one]))
    token = one.encrypt(b"secret", b"ad")
    try:
        raise KeyError("the caller's own")
    except KeyError:
        with pytest.raises(InvalidToken) as info:
            core.decrypt(token, b"other")
    assert info.value.__suppress_context__ and info.value.__cause__ is None


@needs_c
def test_malformed_tokens_get_the_same_answers_on_both_paths() -> None:
    # A bounded differential fuzz (~1 s): truncations, bit flips, random bytes, header
    # fields at their extremes, trailing bytes, other types.
    import random
    import time
    rng = random.Random(80)
    envs = [Envelope(1, KEY), Envelope(2, OTHER_KEY), Envelope(0xFFFFFFFF, KEY)]
    c_keys, py_keys = Keyset(envs), _python_keyset(envs)
    deadline = time.monotonic() + 1.0
    rounds = 0
    while time.monotonic() < deadline or rounds < 200:
        rounds += 1
        tok = bytearray(rng.choice(envs).encrypt(rng.randbytes(rng.choice([0, 1, 40])), b"a"))
        kind = rng.randrange(6)
        if kind == 0:
            tok = tok[:rng.randrange(len(tok) + 1)]
        elif kind == 1:
            tok[rng.randrange(len(tok))] ^= 1 << rng.randrange(8)
        elif kind == 2:
            tok = bytearray(rng.randbytes(rng.randrange(80)))
        elif kind == 3:
            tok[1:5] = rng.choice([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x80\0\0\0"])
        elif kind == 4:
            tok += rng.randbytes(rng.randrange(1, 50))
        token: Any = bytes(tok) if rng.random() < 0.9 else rng.choice([tok, str(tok), None])
        ad: Any = rng.choice([b"a", b"a", bytearray(b"a"), b"", memoryview(b"a")])
        assert _answers(c_keys.open, token, ad) == _answers(py_keys.open, token, ad), token
