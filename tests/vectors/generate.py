"""Generate the known-answer vectors in ``envelope.json`` (checked-in data; run by hand).

    .venv/bin/python tests/vectors/generate.py          # rewrites tests/vectors/envelope.json
    .venv/bin/python tests/vectors/generate.py --check  # exit 1 if the file differs

How the vectors are made
------------------------
The vectors are computed **independently of raftsso.envelope**: this script builds every
byte string from the formats written down in the envelope module's docstring, with the raw
AES-256-GCM primitive of ``cryptography`` (the standard, NIST-specified algorithm) and
``hashlib``. If raftsso.envelope ever drifts from its documented format, the unit tests that
compare its output with these vectors fail.

* sealed secret::

      0x01 | nonce (12) | AES-GCM(seal_key, secret)
      AAD = b"raftsso/seal/v1" 0x00 | cluster_id (UTF-8) | 0x00 | version (u64 big endian)

* client token::

      0x01 | key version (u32 big endian) | nonce (12) | AES-GCM(key, data)
      AAD = the first 5 bytes | associated data

* fingerprint: the first 16 hex digits of SHA-256(b"raftsso/fingerprint/v1" 0x00 | key).

Keys, secrets and nonces are fixed, derived from SHA-256 of a label so that nobody has to
trust a random-looking constant (``_fixed(label, n)``). Everything is hex in the JSON.
Tests load the JSON and compare byte for byte; they never call this script except to
check that it still reproduces the checked-in file.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

OUT = Path(__file__).with_name("envelope.json")


def _fixed(label: str, n: int) -> bytes:
    return hashlib.sha256(b"raftsso test vector/" + label.encode()).digest()[:n]


def _seal_aad(cluster_id: str, version: int) -> bytes:
    return b"raftsso/seal/v1\x00" + cluster_id.encode() + b"\x00" + struct.pack(">Q", version)


def _seal(key: bytes, secret: bytes, nonce: bytes, cluster_id: str, version: int) -> bytes:
    return b"\x01" + nonce + AESGCM(key).encrypt(nonce, secret, _seal_aad(cluster_id, version))


def _token(key: bytes, version: int, nonce: bytes, data: bytes, ad: bytes) -> bytes:
    header = b"\x01" + struct.pack(">I", version)
    return header + nonce + AESGCM(key).encrypt(nonce, data, header + ad)


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"raftsso/fingerprint/v1\x00" + key).hexdigest()[:16]


SEAL_CASES = [
    # (name, cluster_id, version)
    ("seal-v1", "c-0123456789ab", 1),
    ("seal-v2", "c-0123456789ab", 2),
    ("seal-other-cluster", "c-ba9876543210", 1),
    ("seal-max-u32", "c-0123456789ab", 0xFFFFFFFF),
    ("seal-empty-cluster-id", "", 7),
    ("seal-unicode-cluster-id", "clüster-ß", 3),
]

TOKEN_CASES = [
    # (name, version, data, associated data)
    ("token-empty", 1, b"", b""),
    ("token-short", 1, b"password", b""),
    ("token-with-ad", 2, b"password", b"app=payroll;user=alice"),
    ("token-empty-data-with-ad", 3, b"", b"config/port/1"),
    ("token-binary", 0xFFFFFFFF, bytes(range(256)), b"\x00\xff"),
    ("token-version-258", 258, b"x" * 100, b"ad"),
]


def build() -> dict[str, Any]:
    seal_key = _fixed("seal key", 32)
    seal_vectors = []
    for name, cluster_id, version in SEAL_CASES:
        secret = _fixed(f"{name}/secret", 32)
        nonce = _fixed(f"{name}/nonce", 12)
        seal_vectors.append({
            "name": name, "seal_key": seal_key.hex(), "secret": secret.hex(),
            "nonce": nonce.hex(), "cluster_id": cluster_id, "version": version,
            "sealed": _seal(seal_key, secret, nonce, cluster_id, version).hex(),
        })
    token_vectors = []
    for name, version, data, ad in TOKEN_CASES:
        key = _fixed(f"{name}/key", 32)
        nonce = _fixed(f"{name}/nonce", 12)
        token_vectors.append({
            "name": name, "key": key.hex(), "version": version, "nonce": nonce.hex(),
            "data": data.hex(), "associated_data": ad.hex(),
            "token": _token(key, version, nonce, data, ad).hex(),
        })
    fingerprints = [
        {"key": k.hex(), "fingerprint": _fingerprint(k)}
        for k in (bytes(32), b"\xff" * 32, _fixed("fingerprint", 32))
    ]
    return {
        "about": "Known-answer vectors for raftsso.envelope; made by tests/vectors/generate.py "
                 "from the documented formats with raw AES-256-GCM (see its docstring). "
                 "All byte strings are hex.",
        "seal": seal_vectors,
        "token": token_vectors,
        "fingerprint": fingerprints,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        same = OUT.read_text(encoding="utf-8") == text
        print("envelope.json is up to date" if same else "envelope.json differs")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
