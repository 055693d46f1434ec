"""When the leader starts a rotation on its own (pure): ``rotation_period`` and
``max_encryptions`` in node.toml, both off (0) by default.

* **period**: once the newest version is ``rotation_period`` seconds old;
* **encryptions**: once the primary has encrypted :data:`ROTATE_AT` of ``max_encryptions``
  messages (as clients reported them: reports lag by up to one resync interval, and the new
  version is first staged, so the rest of the budget covers the reports still to come and
  the promotion).

Either way the rotation is *staged* and then promoted by the normal rules (every recently
seen client has synced it, or ``rotation_grace`` passed). While a staged version waits for
promotion no further rotation starts, so a short period never piles up staged versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from raftsso.keyring import Keyring, KeyState

ROTATE_AT = 0.75


@dataclass(frozen=True)
class RotationPolicy:
    period: float = 0.0  # seconds; 0: off
    max_encryptions: int = 0  # messages per version; 0: off

    @property
    def enabled(self) -> bool:
        return self.period > 0 or self.max_encryptions > 0

    @property
    def encryption_threshold(self) -> int | None:
        """The primary's count at which a rotation starts (None: off)."""
        if self.max_encryptions <= 0:
            return None
        return max(1, int(self.max_encryptions * ROTATE_AT))

    def next_rotation(self, ring: Keyring) -> float | None:
        """When the period rotates next (None: off, or no version yet)."""
        if self.period <= 0 or not ring.versions:
            return None
        return max(v.created for v in ring.versions) + self.period


def rotation_due(now: float, ring: Keyring, policy: RotationPolicy,
                 encryptions: Mapping[int, int]) -> str | None:
    """``"rotation_period"`` or ``"max_encryptions"`` when a rotation should start, else
    None. ``encryptions``: the cluster-wide count per version
    (:class:`raftsso.encryption_counts.EncryptionLedger`)."""
    if not policy.enabled or ring.primary is None:
        return None
    if any(v.state is KeyState.STAGED for v in ring.versions):
        return None  # one staged rotation at a time: let it be promoted first
    due_at = policy.next_rotation(ring)
    if due_at is not None and now >= due_at:
        return "rotation_period"
    threshold = policy.encryption_threshold
    if threshold is not None and encryptions.get(ring.primary, 0) >= threshold:
        return "max_encryptions"
    return None
