"""Encryption: SSOClient.encrypt/decrypt against raw AESGCM, in the same process and run.

The client is a real one (a cluster, one sync, background thread running). Raw AESGCM is
``cryptography``'s ``AESGCM.encrypt(nonce, data, aad)`` with the cipher object built once:
``raw`` reuses one nonce (the figure of DESIGN.md section 7, what AES-GCM itself costs) and
``raw+nonce`` draws ``os.urandom(12)`` per call (what a random nonce costs). ``floor`` is
the least *Python* that makes (or opens) the same token bytes: a counter nonce, the 5-byte
header and the two concatenations inline, no checks, no method call; the pure-Python client
(RAFTSSO_PURE_PYTHON=1, or no C compiler at install) cannot be faster than it. The C token
path (raftsso._tokens, the default) is not bound by it: it writes the ciphertext into the
token with ``encrypt_into`` and reads it in place with ``decrypt_into``, so it copies less
than ``floor`` and, past a few KiB, less than raw ``encrypt`` + concatenation would. The
ratio of the target is client / raw; ``config.token_path`` says which path ran.

All figures of one size are measured in turns, ``ROUNDS`` short slots of ``SLOT`` seconds
each, and each figure keeps its best slot: a burst of load elsewhere on the machine then
hits every figure alike instead of the one that happened to run during it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.common import local_cluster, ops_per_second, print_table
from raftsso import envelope
from raftsso.client import SSOClient

SIZES = {"64 B": 64, "1 KiB": 1024, "64 KiB": 65536}
SLOT = 0.1
ROUNDS = 15
AD = b"raftsso/cred/v1\x00payroll\x00alice"
HEADER = b"\x01\x00\x00\x00\x01"  # the token header: format 1, key version 1


def token_path() -> str:
    """Which token path SSOClient runs here: C (raftsso._tokens) or pure Python."""
    return "pure Python" if envelope._accel is None else "C token path (raftsso._tokens)"


def _figures(client: SSOClient, aead: AESGCM, nonce: bytes, data: bytes, token: bytes,
             raw_ct: bytes) -> dict[str, Callable[[], object]]:
    enc, dec = aead.encrypt, aead.decrypt
    nonces = map(int.to_bytes, itertools.count(int.from_bytes(os.urandom(8))),
                 itertools.repeat(12))
    floor_token = HEADER + nonce + enc(nonce, data, HEADER + AD)

    def floor_encrypt() -> bytes:
        n = next(nonces)
        return HEADER + n + enc(n, data, HEADER + AD)

    return {
        "raw_encrypt": lambda: enc(nonce, data, AD),
        "raw_nonce_encrypt": lambda: enc(os.urandom(12), data, AD),
        "floor_encrypt": floor_encrypt,
        "client_encrypt": lambda: client.encrypt(data, AD),
        "raw_decrypt": lambda: dec(nonce, raw_ct, AD),
        "floor_decrypt": lambda: dec(floor_token[5:17], floor_token[17:], HEADER + AD),
        "client_decrypt": lambda: client.decrypt(token, AD),
    }


def _measure(figures: dict[str, Callable[[], object]], seconds: float,
             rounds: int) -> dict[str, float]:
    best = dict.fromkeys(figures, 0.0)
    for _ in range(rounds):
        for name, fn in figures.items():
            best[name] = max(best[name], ops_per_second(fn, seconds, repeats=1))
    return best


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    seconds, rounds = (0.02, 3) if quick else (SLOT, ROUNDS)
    out: dict[str, Any] = {"config": {"seconds_per_slot": seconds, "best_of": rounds,
                                      "interleaved": True,
                                      "associated_data_bytes": len(AD),
                                      "threads": 1,
                                      "token_path": token_path()}}
    rows = []
    with local_cluster("encryption") as cluster, \
            SSOClient.from_config(cluster.client_toml) as client:
        key = os.urandom(32)
        aead = AESGCM(key)
        nonce = os.urandom(12)
        for label, size in SIZES.items():
            data = os.urandom(size)
            token = client.encrypt(data, AD)
            raw_ct = aead.encrypt(nonce, data, AD)
            r = _measure(_figures(client, aead, nonce, data, token, raw_ct), seconds,
                         rounds)
            r["encrypt_ratio"] = r["client_encrypt"] / r["raw_encrypt"]
            r["encrypt_ratio_vs_raw_nonce"] = r["client_encrypt"] / r["raw_nonce_encrypt"]
            r["encrypt_floor_ratio"] = r["floor_encrypt"] / r["raw_encrypt"]
            r["decrypt_ratio"] = r["client_decrypt"] / r["raw_decrypt"]
            r["decrypt_floor_ratio"] = r["floor_decrypt"] / r["raw_decrypt"]
            out[label] = r
            rows.append([label, f"{r['raw_encrypt']:,.0f}", f"{r['raw_nonce_encrypt']:,.0f}",
                         f"{r['floor_encrypt']:,.0f}", f"{r['client_encrypt']:,.0f}",
                         f"{r['encrypt_ratio']:.0%}", f"{r['raw_decrypt']:,.0f}",
                         f"{r['floor_decrypt']:,.0f}", f"{r['client_decrypt']:,.0f}",
                         f"{r['decrypt_ratio']:.0%}"])
    print_table(f"encryption (ops/s, one thread; ratio = client / raw; {token_path()})",
                ["size", "raw enc", "raw+urandom", "floor enc", "client enc", "ratio",
                 "raw dec", "floor dec", "client dec", "ratio"], rows)
    return out
