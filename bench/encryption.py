"""Encryption: SSOClient.encrypt/decrypt against raw AESGCM, in the same process and run.

The client is a real one (a cluster, one sync, background thread running). Raw AESGCM is
``cryptography``'s ``AESGCM.encrypt(nonce, data, aad)`` with the cipher object built once:
``raw`` reuses one nonce (the figure of DESIGN.md section 7, what AES-GCM itself costs) and
``raw+nonce`` draws ``os.urandom(12)`` per call (the least a correct encrypt must do). The
ratio of the target is client / raw. Each figure is the best of 3 runs of ``SECONDS``.
"""

from __future__ import annotations

import os
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.common import local_cluster, ops_per_second, print_table
from raftsso.client import SSOClient

SIZES = {"64 B": 64, "1 KiB": 1024, "64 KiB": 65536}
SECONDS = 1.0
AD = b"raftsso/cred/v1\x00payroll\x00alice"


def _measure(client: SSOClient, aead: AESGCM, nonce: bytes, data: bytes, token: bytes,
             raw_ct: bytes, seconds: float) -> dict[str, float]:
    return {
        "raw_encrypt": ops_per_second(lambda: aead.encrypt(nonce, data, AD), seconds),
        "raw_nonce_encrypt": ops_per_second(
            lambda: aead.encrypt(os.urandom(12), data, AD), seconds),
        "client_encrypt": ops_per_second(lambda: client.encrypt(data, AD), seconds),
        "raw_decrypt": ops_per_second(lambda: aead.decrypt(nonce, raw_ct, AD), seconds),
        "client_decrypt": ops_per_second(lambda: client.decrypt(token, AD), seconds),
    }


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    seconds = 0.05 if quick else SECONDS
    out: dict[str, Any] = {"config": {"seconds_per_figure": seconds, "best_of": 3,
                                      "associated_data_bytes": len(AD),
                                      "threads": 1}}
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
            r = _measure(client, aead, nonce, data, token, raw_ct, seconds)
            r["encrypt_ratio"] = r["client_encrypt"] / r["raw_encrypt"]
            r["encrypt_ratio_vs_raw_nonce"] = r["client_encrypt"] / r["raw_nonce_encrypt"]
            r["decrypt_ratio"] = r["client_decrypt"] / r["raw_decrypt"]
            out[label] = r
            rows.append([label, f"{r['raw_encrypt']:,.0f}", f"{r['raw_nonce_encrypt']:,.0f}",
                         f"{r['client_encrypt']:,.0f}", f"{r['encrypt_ratio']:.0%}",
                         f"{r['raw_decrypt']:,.0f}", f"{r['client_decrypt']:,.0f}",
                         f"{r['decrypt_ratio']:.0%}"])
    print_table("encryption (ops/s, one thread)",
                ["size", "raw enc", "raw+nonce enc", "client enc", "ratio", "raw dec",
                 "client dec", "ratio"], rows)
    return out
