"""The keyring: versioned master secrets with exactly one primary (pure data, no I/O).

Version states (Tink's model, ENTSSO's lifecycle):

* ``staged``  distributed to clients and usable for decryption, not yet for encryption;
* ``primary`` the one version new data is encrypted under;
* ``active``  a former primary, still decryptable;
* ``retired`` key material destroyed; the id and fingerprint stay for the record.

Key material is held *sealed* (see :mod:`raftsso.envelope`); this module never sees a
plaintext secret.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class KeyState(StrEnum):
    STAGED = "staged"
    PRIMARY = "primary"
    ACTIVE = "active"
    RETIRED = "retired"


@dataclass(frozen=True)
class KeyVersion:
    id: int
    state: KeyState
    sealed: bytes | None = field(repr=False)
    fingerprint: str
    created: float
    promoted: float | None = None
    backed_up: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "state": self.state.value, "sealed": self.sealed,
            "fingerprint": self.fingerprint, "created": self.created,
            "promoted": self.promoted, "backed_up": self.backed_up,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> KeyVersion:
        return cls(
            id=int(data["id"]), state=KeyState(data["state"]), sealed=data["sealed"],
            fingerprint=str(data["fingerprint"]), created=float(data["created"]),
            promoted=None if data.get("promoted") is None else float(data["promoted"]),
            backed_up=bool(data.get("backed_up", False)),
        )


_UNKNOWN = -1  # Keyring._primary not looked up yet (version ids start at 1)


@dataclass(frozen=True)
class Keyring:
    """An immutable view of the replicated keyring; every change makes a new one."""

    versions: tuple[KeyVersion, ...] = ()
    # The seal generation new versions are sealed under (raftsso.seal): 1 until the first
    # seal rekey, then raised by each ``reseal`` command, which re-seals every live version.
    seal_generation: int = 1
    # The primary's id, found once per keyring (every change makes a new keyring): a rotate
    # reads it several times (the leader's build, apply's compare-and-set, the answer), and
    # a walk over every version each time grew with history (issue 16.4).
    _primary: int | None = field(default=_UNKNOWN, init=False, repr=False, compare=False)

    @property
    def primary(self) -> int | None:
        primary = self._primary
        if primary == _UNKNOWN:
            primary = next((v.id for v in self.versions if v.state is KeyState.PRIMARY), None)
            object.__setattr__(self, "_primary", primary)  # a cache, not a change
        return primary

    @property
    def last_id(self) -> int:
        return self.versions[-1].id if self.versions else 0

    @property
    def bootstrapped(self) -> bool:
        return bool(self.versions)

    def get(self, version: int) -> KeyVersion | None:
        # Versions are kept sorted by id (with_version): a binary search, not a walk.
        versions = self.versions
        i = bisect_left(versions, version, key=_version_id)
        if i < len(versions) and versions[i].id == version:
            return versions[i]
        # Not there, or a keyring built unsorted by hand (tests): the walk decides.
        return next((v for v in versions if v.id == version), None)

    def with_version(self, new: KeyVersion) -> Keyring:
        """Add a version (ids strictly increasing) or replace the one with the same id."""
        versions = self.versions
        if not versions or new.id > versions[-1].id:
            # A rotation: the next id goes last. One tuple copy, no walk and no sort, so a
            # rotate's apply does not grow with the number of versions.
            ring = replace(self, versions=(*versions, new))
            if new.state is KeyState.PRIMARY:
                object.__setattr__(ring, "_primary", new.id)
            elif self._primary != _UNKNOWN:
                object.__setattr__(ring, "_primary", self._primary)  # unchanged
            return ring
        kept = [v for v in versions if v.id != new.id]
        kept.append(new)
        kept.sort(key=_version_id)
        return replace(self, versions=tuple(kept))

    def promote(self, version: int, at: float) -> Keyring:
        """Make ``version`` primary; the former primary and older staged versions go active."""
        out: list[KeyVersion] = []
        for v in self.versions:
            if v.id == version:
                out.append(replace(v, state=KeyState.PRIMARY, promoted=at))
            elif v.state is KeyState.PRIMARY or (v.state is KeyState.STAGED and v.id < version):
                out.append(replace(v, state=KeyState.ACTIVE))
            else:
                out.append(v)
        return replace(self, versions=tuple(out))

    def retire(self, version: int) -> Keyring:
        """Destroy a version's key material; its id and fingerprint stay for the record."""
        return replace(self, versions=tuple(
            replace(v, state=KeyState.RETIRED, sealed=None) if v.id == version else v
            for v in self.versions))

    def live(self) -> tuple[KeyVersion, ...]:
        """The versions that still hold a sealed key (every state but retired)."""
        return tuple(v for v in self.versions if v.sealed is not None)

    def resealed(self, generation: int, sealed: dict[int, bytes]) -> Keyring:
        """Every live version's key replaced by its re-sealed blob (one per live version),
        and new versions sealed under ``generation`` from now on."""
        return Keyring(tuple(replace(v, sealed=sealed[v.id]) if v.sealed is not None else v
                             for v in self.versions), seal_generation=generation)

    def mark_backed_up(self, fingerprints: dict[int, str]) -> tuple[Keyring, list[int]]:
        """Flag the versions whose id and fingerprint match a backup's."""
        marked = []
        out = []
        for v in self.versions:
            if fingerprints.get(v.id) == v.fingerprint and v.sealed is not None:
                out.append(replace(v, backed_up=True))
                marked.append(v.id)
            else:
                out.append(v)
        return replace(self, versions=tuple(out)), marked


def _version_id(v: KeyVersion) -> int:
    return v.id
