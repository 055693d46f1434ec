"""The one small interface every seal provider implements, its status and its errors.

A *seal provider* holds the cluster's seal key (one key per *generation*) and wraps and
unwraps master secrets with it. The node never sees the seal key itself; it only calls
:meth:`SealProvider.wrap` before proposing a new version and :meth:`SealProvider.unwrap`
to serve the keyring. Errors (all under :class:`raftsso.errors.RaftssoError`)::

    RaftssoError
    ├── ConfigError        a provider cannot start: missing key file, wrong PIN, no token
    └── SealError          the seal cannot do what was asked (e.g. no key of that generation)
        ├── Sealed         no seal key yet: a shamir node waits for unseal shares
        └── InvalidShare   a share is malformed, altered, of another cluster or generation,
                           or the shares supplied do not reconstruct the seal key

A blob that fails authentication raises the one opaque :class:`raftsso.errors.InvalidToken`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from raftsso.errors import RaftssoError

KINDS = ("file", "pkcs11", "shamir")


class SealError(RaftssoError):
    """The seal provider cannot wrap or unwrap as asked."""


class Sealed(SealError):
    """The node holds no seal key yet (a shamir node before enough shares are supplied)."""


class InvalidShare(SealError):
    """An unseal share is malformed, altered, of another cluster or generation, or the
    shares supplied together do not reconstruct the cluster's seal key."""


@dataclass(frozen=True)
class SealStatus:
    """What ``status`` shows about a node's seal; never key material."""

    kind: str
    sealed: bool
    generations: tuple[int, ...]
    # Shamir only: shares supplied so far and shares needed (``None`` otherwise).
    progress: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "sealed": self.sealed,
                               "generations": list(self.generations)}
        if self.progress is not None:
            out["progress"] = {"supplied": self.progress[0], "threshold": self.progress[1]}
        return out


@runtime_checkable
class SealProvider(Protocol):
    """Where the seal key lives and how master secrets are wrapped with it.

    ``wrap`` seals under ``generation`` (default: the newest this provider holds; a node
    passes the cluster's current generation from the replicated state so that no node
    seals under a key its peers do not have yet). ``unwrap`` opens a blob of any
    generation the provider still holds; the blob names its generation.
    """

    kind: str

    @property
    def sealed(self) -> bool: ...

    @property
    def generations(self) -> tuple[int, ...]: ...

    def status(self) -> SealStatus: ...

    def wrap(self, secret: bytes, *, cluster_id: str, version: int,
             generation: int | None = None) -> bytes: ...

    def unwrap(self, blob: bytes, *, cluster_id: str, version: int) -> bytes: ...

    def install(self, generation: int, key: bytes) -> None:
        """Add the seal key of a new generation (seal rekey); the key is not kept by
        the caller afterwards. pkcs11 imports it into the token as non-extractable."""

    def forget(self, generation: int) -> None:
        """Destroy a generation's key once nothing is sealed under it any more."""

    def close(self) -> None: ...
