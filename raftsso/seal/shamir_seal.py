"""The ``shamir`` seal: no seal key on disk; a node starts sealed until operators supply
``threshold`` unseal shares (``raftsso unseal NODE --share-file F``).

A sealed node can take part in Raft (it stores and replicates sealed blobs, which it
cannot open) but can neither wrap nor unwrap: every call raises :class:`Sealed`. Once
unsealed it holds the seal key in memory only; a restart seals it again.
"""

from __future__ import annotations

from raftsso.seal.base import SealStatus
from raftsso.seal.keyed import KeyedSeal
from raftsso.seal.shares import Progress, Share, Unsealer


class ShamirSeal(KeyedSeal):
    kind = "shamir"

    def __init__(self, cluster_id: str, threshold: int | None = None,
                 generation: int | None = None) -> None:
        super().__init__()
        self.cluster_id = cluster_id
        self._threshold = threshold
        self._unsealer = Unsealer(cluster_id, generation)

    def expect_generation(self, generation: int | None) -> None:
        """The generation unseal shares must be of (the cluster's current one)."""
        self._unsealer.generation = generation

    def submit(self, share: Share) -> Progress:
        """One unseal share; unsealed (and shares discarded) once enough were supplied."""
        progress, key = self._unsealer.submit(share)
        if key is not None:
            self.install(share.generation, key)
        return progress

    def seal(self) -> None:
        """Forget every seal key and share (as if the node had restarted)."""
        self._unsealer.reset()
        self.close()

    def status(self) -> SealStatus:
        supplied, threshold = self._unsealer.progress
        threshold = threshold or self._threshold
        return SealStatus(self.kind, self.sealed, self.generations,
                          None if threshold is None or not self.sealed
                          else (supplied, threshold))
