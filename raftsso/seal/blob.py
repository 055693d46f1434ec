"""The sealed-secret format every provider writes (and the one legacy format it reads).

Format 2, 65 bytes::

    0x02 | generation (u32, big endian) | nonce (12) | AES-256-GCM(seal key, secret) (32 + 16)
    AAD = b"raftsso/seal/v2" | 0x00 | the first 5 bytes | cluster_id | 0x00 | version (u64 BE)

The generation names which seal key sealed the blob, so a node in the middle of a seal
rekey knows which key opens it, and a blob of an old generation is recognised as such.
The header is authenticated through the AAD, so a blob relabelled with another
generation, cluster or version fails to open. The body is exactly what
:func:`raftsso.envelope.aead_encrypt` makes, and what a PKCS#11 token makes with
``CKM_AES_GCM`` (ciphertext then a 128-bit tag), so a blob does not say, and need not say,
which provider sealed it.

Format 1 (:func:`raftsso.envelope.seal`, 61 bytes) is what nodes sealed before seal
providers existed; the file provider reads it as generation 1.
"""

from __future__ import annotations

import struct

from raftsso import envelope
from raftsso.errors import InvalidToken

FORMAT = 2
LEGACY_FORMAT = envelope.SEAL_FORMAT  # 1
LEGACY_GENERATION = 1
MAX_GENERATION = 0xFFFFFFFF
_HEADER = struct.Struct(">BI")
HEADER_SIZE = _HEADER.size
SIZE = HEADER_SIZE + envelope.NONCE_SIZE + envelope.KEY_SIZE + envelope.TAG_SIZE
SIZES = (envelope.SEALED_SIZE, SIZE)  # what a replicated sealed field may measure
_AAD_PREFIX = b"raftsso/seal/v2\x00"


def check_generation(generation: int) -> int:
    if isinstance(generation, bool) or not isinstance(generation, int) or \
            not 0 < generation <= MAX_GENERATION:
        raise ValueError("a seal generation is an integer from 1 to 2**32-1")
    return generation


def header(generation: int) -> bytes:
    return _HEADER.pack(FORMAT, check_generation(generation))


def aad(head: bytes, cluster_id: str, version: int) -> bytes:
    """What the seal binds besides the secret: format, generation, cluster and version."""
    return _AAD_PREFIX + head + cluster_id.encode() + b"\x00" + struct.pack(">Q", version)


def generation_of(blob: bytes) -> int:
    """The generation a blob names (unauthenticated until it is opened).

    :class:`InvalidToken` for anything that is not a sealed blob of a known format.
    """
    if len(blob) == envelope.SEALED_SIZE and blob[0] == LEGACY_FORMAT:
        return LEGACY_GENERATION
    if len(blob) != SIZE or blob[0] != FORMAT:
        raise InvalidToken()
    generation = int(_HEADER.unpack_from(blob)[1])
    if generation == 0:
        raise InvalidToken()
    return generation


def split(blob: bytes) -> tuple[bytes, bytes]:
    """``(header, nonce | ciphertext | tag)`` of a format-2 blob (lengths checked)."""
    if len(blob) != SIZE or blob[0] != FORMAT:
        raise InvalidToken()
    return blob[:HEADER_SIZE], blob[HEADER_SIZE:]


def is_legacy(blob: bytes) -> bool:
    return len(blob) == envelope.SEALED_SIZE and blob[0] == LEGACY_FORMAT
