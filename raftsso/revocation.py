"""The certificates the cluster knows of, and the revoked ones (replicated; pure).

Certificates made by ``certs issue`` are *registered* when the cluster is reachable
(serial, name, role, expiry); ``certs revoke NAME|SERIAL`` *revokes* every registered
certificate of a name, or one serial (registered or not: ``init``'s own certificates and
those issued while the cluster was down are revoked by serial). The registry lives in the
state machine (:mod:`raftsso.fsm`), so it is in the Raft log and in snapshots: it survives
restarts, and a new member receives it like the keyring.

Pure: no clock, no I/O. Times come in the commands. A record whose certificate expired more
than :data:`EXPIRED_KEEP` seconds ago is dropped when a later command is applied (TLS refuses
an expired certificate anyway), which keeps the registry bounded by the live certificates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from raftsso.protocol.record import record  # (cheap to define: see there)

MAX_RECORDS = 100_000
EXPIRED_KEEP = 7 * 86400.0
MAX_NAME = 64


def canonical_serial(text: str | int) -> str:
    """One spelling of a serial number: ``openssl``'s ``serial=0A1B``, ``0a:1b``, ``0x0a1b``
    and the int 2587 all become ``a1b``. :class:`ValueError` for anything else."""
    if isinstance(text, bool):
        raise ValueError("a serial number is not a boolean")
    if isinstance(text, int):
        value = text
    else:
        cleaned = text.strip().lower().removeprefix("serial=").removeprefix("0x")
        cleaned = cleaned.replace(":", "")
        if not cleaned or len(cleaned) > 64 or any(c not in "0123456789abcdef" for c in cleaned):
            raise ValueError(f"{text!r} is not a certificate serial number (hexadecimal)")
        value = int(cleaned, 16)
    if not 0 < value < 1 << 256:
        raise ValueError("certificate serial numbers are positive, at most 256 bits")
    return format(value, "x")


@record
class CertRecord:
    serial: str
    name: str
    role: str
    registered: float  # when the cluster learnt of it (0: only revoked, never registered)
    not_after: float | None  # None: unknown (revoked by serial alone)
    revoked: float | None = None
    revoked_by: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"serial": self.serial, "name": self.name, "role": self.role,
                "registered": self.registered, "not_after": self.not_after,
                "revoked": self.revoked, "revoked_by": self.revoked_by}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> CertRecord:
        """From a snapshot or an answer; :class:`ValueError` / :class:`TypeError` /
        :class:`KeyError` if malformed."""
        def number(value: Any, optional: bool = False) -> float | None:
            if value is None and optional:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not value == value or value in (float("inf"), float("-inf")):
                raise ValueError("a time must be a finite number")
            return float(value)

        for key in ("name", "role", "revoked_by"):
            if not isinstance(raw[key], str) or len(raw[key]) > MAX_NAME:
                raise ValueError(f"{key} must be a short string")
        serial = raw["serial"]
        if not isinstance(serial, str) or canonical_serial(serial) != serial:
            raise ValueError("a serial must be canonical hexadecimal")
        registered = number(raw["registered"])
        assert registered is not None
        return cls(serial, raw["name"], raw["role"], registered,
                   number(raw["not_after"], True), number(raw["revoked"], True),
                   raw["revoked_by"])


class RegistryError(ValueError):
    """A registration or revocation that cannot apply (the message says why)."""


class CertRegistry:
    """An immutable map serial -> :class:`CertRecord`; changes return a new registry."""

    __slots__ = ("_records", "_revoked")

    def __init__(self, records: Iterable[CertRecord] = ()) -> None:
        by_serial = {r.serial: r for r in records}
        self._records: Mapping[str, CertRecord] = MappingProxyType(by_serial)
        self._revoked = frozenset(s for s, r in by_serial.items() if r.revoked is not None)

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"CertRegistry({len(self._records)} records, {len(self._revoked)} revoked)"

    @property
    def revoked(self) -> frozenset[str]:
        """Every revoked serial (what the handshake checks)."""
        return self._revoked

    def get(self, serial: str) -> CertRecord | None:
        return self._records.get(serial)

    def records(self) -> list[CertRecord]:
        """Every record, by name then registration time."""
        return sorted(self._records.values(), key=lambda r: (r.name, r.registered, r.serial))

    def resolve(self, target: str) -> list[str]:
        """The serials ``certs revoke TARGET`` means: every certificate registered under
        that name, or else the serial TARGET spells. :class:`RegistryError` if neither."""
        named = sorted(r.serial for r in self._records.values() if r.name == target)
        if named:
            return named
        try:
            return [canonical_serial(target)]
        except ValueError:
            raise RegistryError(
                f"no certificate named {target!r} is registered with the cluster, and it is "
                "not a serial number; revoke by serial (openssl x509 -noout -serial -in "
                "FILE) or with --cert FILE") from None

    def register(self, record: CertRecord, at: float) -> CertRegistry:
        current = self._records.get(record.serial)
        if current is not None:
            if current.registered and (current.name, current.role) != (record.name,
                                                                       record.role):
                raise RegistryError(f"serial {record.serial} is registered already, as "
                                    f"{current.role} {current.name!r}")
            # Revoked before it was registered (by serial): keep the revocation.
            record = replace(record, revoked=current.revoked, revoked_by=current.revoked_by)
        pruned = self._pruned(at)
        if len(pruned) >= MAX_RECORDS and record.serial not in pruned:
            raise RegistryError(f"the cluster already knows {MAX_RECORDS} live certificates")
        return CertRegistry([*(r for r in pruned.values() if r.serial != record.serial),
                             record])

    def revoke(self, serials: Iterable[str], *, at: float, by: str,
               names: Mapping[str, str] | None = None) -> tuple[CertRegistry, list[str]]:
        """Revoke ``serials`` at ``at``; returns the registry and the serials newly revoked
        (a serial already revoked keeps its first revocation). ``names`` may name a serial
        not registered (from ``--cert FILE``)."""
        records = dict(self._pruned(at))
        newly = []
        for serial in serials:
            current = records.get(serial)
            if current is None:
                current = CertRecord(serial, (names or {}).get(serial, ""), "", 0.0, None)
            if current.revoked is None:
                records[serial] = replace(current, revoked=at, revoked_by=by)
                newly.append(serial)
        if len(records) > MAX_RECORDS:
            raise RegistryError(f"the cluster already knows {MAX_RECORDS} certificates")
        return CertRegistry(records.values()), newly

    def _pruned(self, at: float) -> Mapping[str, CertRecord]:
        expired = [s for s, r in self._records.items()
                   if r.not_after is not None and r.not_after + EXPIRED_KEEP < at]
        if not expired:
            return self._records
        return {s: r for s, r in self._records.items() if s not in set(expired)}

    def to_wire(self) -> list[dict[str, Any]]:
        return [r.to_wire() for r in self.records()]

    @classmethod
    def from_wire(cls, raw: Any) -> CertRegistry:
        if not isinstance(raw, list | tuple):
            raise TypeError("the certificate registry must be a list")
        if len(raw) > MAX_RECORDS:
            raise ValueError("the certificate registry is too large")
        records = [CertRecord.from_wire(r) for r in raw]
        if len({r.serial for r in records}) != len(records):
            raise ValueError("the certificate registry repeats a serial")
        return cls(records)
