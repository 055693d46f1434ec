"""The SSO stores known to the cluster and which key versions each still uses (pure).

Part of the replicated state (:mod:`raftsso.fsm` applies the ``store_report`` and
``store_forget`` commands here, and snapshots the table). ``retire`` consults it on the
leader, past the barrier (:func:`retire_blocker`).

A store is known once anything reports on it. Two kinds of report:

* a **full count** (``full``): every row of the store counted from its token headers at
  ``counted_at`` (``rewrap``, ``retire --store``). It *replaces* the counts and moves the
  store's ``counted_at``. Only an admin certificate may send one: it is what lets a
  retirement through.
* an **increment**: rows an SSO client wrote since its last report, by the version it
  encrypted them under. Added to the counts, never lowering any, and ``counted_at`` is
  unchanged; any certificate of the cluster (role ``client`` or ``admin``) may send one.
  The counts are thus an upper bound between two full counts (an overwritten row is
  counted under its old and its new version), which only makes ``retire`` more careful.

``retire VERSION`` is refused while a known store has rows under VERSION, or has no full
count made after VERSION stopped being primary (a client still on the old keyring may
have written under it after an earlier count).

Pure: no I/O, clock or randomness (times come in the commands); imports nothing of
raftsso but the keyring and the protocol's field reader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from raftsso.keyring import Keyring
from raftsso.protocol.fields import Fields

#: Stores the cluster keeps at once (a deployment has a handful: one per SQLite host, one
#: per shared PostgreSQL database). A report of a new store past it is refused; forget
#: stores that are gone (``raftsso stores forget``).
MAX_STORES = 256
#: Versions one report may carry (a store holds rows under a few; retired ones included).
MAX_REPORTED_VERSIONS = 4096
#: Rows under one version: more than any store holds, and exact in a JSON double.
MAX_ROWS = 2**53
MAX_STORE_ID = 64
MAX_KIND = 32
STORE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def store_id_problem(value: object) -> str | None:
    """Why ``value`` is not a store id (None if it is one)."""
    if not isinstance(value, str) or not STORE_ID_RE.fullmatch(value):
        return (f"a store id is 1 to {MAX_STORE_ID} letters, digits, '.', '_' or '-', "
                "starting with a letter or digit")
    return None


def counts_problem(counts: Mapping[int, int]) -> str | None:
    """Why ``counts`` (version -> rows) is not a valid report (None if it is)."""
    if len(counts) > MAX_REPORTED_VERSIONS:
        return f"a report holds at most {MAX_REPORTED_VERSIONS} versions"
    for version, rows in counts.items():
        if type(version) is not int or not 0 < version < 2**32:
            return "versions are integers from 1 to 2**32 - 1"
        if type(rows) is not int or not 0 <= rows <= MAX_ROWS:
            return f"row counts are integers from 0 to {MAX_ROWS}"
    return None


@dataclass(frozen=True)
class KnownStore:
    """What the cluster knows of one store.

    ``reported_at``: when the last report (of either kind) was counted; ``counted_at``:
    when the last full count was made (None: never, so it blocks every retirement).
    Times are the reporter's clock (the leader dates a report from the future as now).
    """

    id: str
    kind: str
    reported_at: float
    counted_at: float | None
    versions_in_use: Mapping[int, int] = field(default_factory=dict)

    def rows_under(self, version: int) -> int:
        return self.versions_in_use.get(version, 0)

    def to_wire(self) -> dict[str, Any]:
        """The ``stores --json`` shape (DESIGN.md section 5), plus ``counted_at``."""
        return {"id": self.id, "kind": self.kind, "reported_at": self.reported_at,
                "counted_at": self.counted_at,
                "versions_in_use": {str(v): n for v, n in sorted(self.versions_in_use.items())
                                    if n}}

    @classmethod
    def from_wire(cls, raw: Any) -> KnownStore:
        """From a snapshot or an answer; raises ``TypeError``/``ValueError``/``KeyError``."""
        if not isinstance(raw, Mapping):
            raise TypeError("a known store must be a map")
        sid, kind = raw["id"], raw["kind"]
        if store_id_problem(sid) or not isinstance(kind, str) or len(kind) > MAX_KIND:
            raise ValueError("malformed store id or kind")
        raw_counts = raw["versions_in_use"]
        if not isinstance(raw_counts, Mapping):
            raise TypeError("versions_in_use must be a map")
        counts = {int(str(k)): v for k, v in raw_counts.items()}
        problem = counts_problem(counts)
        if problem:
            raise ValueError(problem)
        counted = raw.get("counted_at")
        return cls(sid, kind, _time(raw["reported_at"]),
                   None if counted is None else _time(counted), counts)


def _time(value: Any) -> float:
    if type(value) not in (int, float) or not 0 <= value < float("inf"):
        raise ValueError("a time is a finite number of at least 0")
    return float(value)


def reported(current: KnownStore | None, store_id: str, kind: str, counted_at: float,
             counts: Mapping[int, int], full: bool) -> KnownStore:
    """The store after one report (see the module docstring)."""
    clean = {v: n for v, n in counts.items() if n}
    if full:
        return KnownStore(store_id, kind, counted_at, counted_at, clean)
    if current is None:
        return KnownStore(store_id, kind, counted_at, None, clean)
    merged = dict(current.versions_in_use)
    for version, rows in clean.items():
        merged[version] = min(MAX_ROWS, merged.get(version, 0) + rows)
    return KnownStore(store_id, current.kind, max(current.reported_at, counted_at),
                      current.counted_at, merged)


def demoted_at(ring: Keyring, version: int) -> float | None:
    """When ``version`` stopped being (or could no longer become) primary: the promotion of
    the first later version promoted; None while no later version has been promoted."""
    times = [v.promoted for v in ring.versions if v.id > version and v.promoted is not None]
    return min(times) if times else None


def retire_blocker(stores: Mapping[str, KnownStore], ring: Keyring,
                   version: int) -> str | None:
    """Why retiring ``version`` would destroy data a known store may still hold, naming the
    store; None when every known store has a full count, made after ``version`` stopped
    being primary, with no row under it since."""
    since = demoted_at(ring, version)
    for store in sorted(stores.values(), key=lambda s: s.id):
        rows = store.rows_under(version)
        if rows:
            return (f"the {store.kind} store {store.id} reports {rows} row(s) under version "
                    f"{version}; rewrap it (raftsso -c admin.toml rewrap --store ...) first")
        if since is not None and (store.counted_at is None or store.counted_at < since):
            last = "never" if store.counted_at is None else "last before then"
            return (f"the {store.kind} store {store.id} has not counted its rows since "
                    f"version {version} stopped being primary ({last}); rewrap it (raftsso "
                    "-c admin.toml rewrap --store ...), or forget it if it is gone "
                    "(raftsso stores forget ID)")
    return None


def decode_counts(f: Fields, name: str) -> dict[int, int]:
    """``{"<version id>": rows}`` (msgpack map keys are strings), bounded."""
    out: dict[int, int] = {}
    raw = f.mapping(name)
    if len(raw) > MAX_REPORTED_VERSIONS:
        raise f.fail(f"{name!r} holds more than {MAX_REPORTED_VERSIONS} versions")
    for key, value in raw.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 10):
            raise f.fail(f"{name!r} must map version ids to row counts")
        out[int(key)] = value  # type: ignore[assignment]  # checked just below
    problem = counts_problem(out)
    if problem:
        raise f.fail(f"{name!r}: {problem}")
    return out
