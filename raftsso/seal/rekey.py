"""Seal rekey primitives: a new generation's key, and re-sealing a version under it.

How a cluster rekeys its seal (the protocol the node and ``rekey-seal`` drive):

1. the operator's command makes the new key (:func:`new_seal_key`) and gives it to every
   node over admin mTLS, which :meth:`SealProvider.install`\\ s it as generation G+1
   (file: written to ``seal.key``; pkcs11: imported into the token as non-extractable;
   shamir: held in memory, and :func:`raftsso.seal.shares.make_shares` writes the new
   shares for the operators). The new key is never written to the Raft log: a log entry
   sealed under the old key would hand the new key to whoever holds the old one, which
   is exactly what a rekey after a suspected leak must prevent;
2. once every node holds G+1, the leader proposes every live version :func:`reseal`\\ ed
   under G+1 (one compare-and-set on the keyring), and from then on seals under G+1;
3. every node compacts its log and :meth:`SealProvider.forget`\\ s generation G.

Interrupted anywhere, the same command runs again: installing G+1 again replaces a key
under which nothing was sealed yet, and re-sealing a blob already of G+1 is a no-op.
"""

from __future__ import annotations

from raftsso import envelope
from raftsso.seal import blob
from raftsso.seal.base import SealProvider


def new_seal_key() -> bytes:
    """256 fresh random bits for a new seal generation."""
    return envelope.new_key()


def next_generation(provider: SealProvider) -> int:
    return max(provider.generations, default=0) + 1


def reseal(provider: SealProvider, sealed: bytes, *, cluster_id: str, version: int,
           generation: int) -> bytes:
    """``sealed`` opened with its own generation's key and sealed again under ``generation``
    (returned unchanged if it is a format-2 blob of that generation already)."""
    if not blob.is_legacy(sealed) and blob.generation_of(sealed) == generation:
        return sealed
    secret = provider.unwrap(sealed, cluster_id=cluster_id, version=version)
    return provider.wrap(secret, cluster_id=cluster_id, version=version, generation=generation)
