"""Where the cluster's seal key lives: a file, a PKCS#11 token, or Shamir unseal shares.

One interface, :class:`SealProvider` (``raftsso.seal.base``), three providers:

* ``file`` (:mod:`raftsso.seal.file_seal`): the key in ``seal.key`` (0600), the default;
* ``pkcs11`` (:mod:`raftsso.seal.pkcs11_seal`): a non-extractable AES key in a token;
* ``shamir`` (:mod:`raftsso.seal.shamir_seal`): no key on disk; a node is sealed until
  ``threshold`` shares (:mod:`raftsso.seal.shares`) rebuild the key in its memory.

Every sealed secret names its seal *generation* (:mod:`raftsso.seal.blob`); a seal rekey
(:mod:`raftsso.seal.rekey`) adds a generation, re-seals every version under it and
destroys the old key. :mod:`raftsso.seal.settings` reads a node's seal settings and opens
its provider; :mod:`raftsso.seal.setup` writes what ``raftsso init --seal`` needs.

This package imports no provider module eagerly: a node with the file seal never loads
a PKCS#11 library.
"""

from __future__ import annotations

from raftsso.seal.base import KINDS, InvalidShare, Sealed, SealError, SealProvider, SealStatus

__all__ = ["KINDS", "InvalidShare", "SealError", "SealProvider", "SealStatus", "Sealed"]
