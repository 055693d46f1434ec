"""Re-encrypt every stored value under the primary version (ENTSSO's re-encryption after
``-generateSecret``), in batches, resumable and crash-safe.

Each batch reads up to ``batch`` rows whose token header is not the primary's, decrypts and
re-encrypts them with the SSO client, and writes them back in one transaction, each row
only if it still holds the token that was read (compare-and-set): a concurrent ``cred set``
always wins, and a row is never written back with a value older than one a writer stored
meanwhile. A run killed at any moment leaves every row either as it was or rewrapped; the
next run finds the rows still to do by their headers and finishes them. Rows that cannot be
decrypted (a retired or foreign version, a damaged row) are left as they are and listed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from raftsso.envelope import token_key_version
from raftsso.errors import InvalidToken
from raftsso.store.api import SSOStore
from raftsso.store.model import RowKey, StoredRow, StoreReport, token_problem

DEFAULT_BATCH = 2000
# The associated data of the probe that finds the version the client encrypts under.
_PROBE_AD = b"raftsso/rewrap-probe/v1"


@dataclass(frozen=True)
class Progress:
    done: int  # rows looked at so far (rewrapped, taken by a writer, or left)
    todo: int  # rows not under the primary when the run started


@dataclass(frozen=True)
class Unreadable:
    key: RowKey
    reason: str  # "version N unknown to the cluster or altered", or what is damaged

    def __str__(self) -> str:
        return f"{self.key} ({self.reason})"


@dataclass(frozen=True)
class RewrapResult:
    primary: int
    todo: int  # rows not under the primary at the start
    rewrapped: int  # rows this run re-encrypted
    overtaken: int  # rows a concurrent writer changed first (already fresh: left alone)
    unreadable: list[Unreadable]
    report: StoreReport  # the store's versions in use, counted after the run


def rewrap(store: SSOStore, *, batch: int = DEFAULT_BATCH,
           progress: Callable[[Progress], None] | None = None) -> RewrapResult:
    """Bring every row of ``store`` under the version its cipher encrypts with now."""
    if batch < 1:
        raise ValueError("batch must be positive")
    cipher = store.cipher
    # The version new tokens get, whatever shape the client's state takes.
    primary = token_key_version(cipher.encrypt(b"", _PROBE_AD))
    todo = store.count_not_under(primary)
    done = rewrapped = 0
    unreadable: list[Unreadable] = []
    after: RowKey | None = None
    if progress is not None:
        progress(Progress(0, todo))
    while True:
        rows = store.rows_not_under(primary, after=after, limit=batch)
        if not rows:
            break
        updates: list[tuple[StoredRow, bytes]] = []
        for row in rows:
            problem = token_problem(row.token)
            if problem is not None:
                unreadable.append(Unreadable(row.key, f"damaged: {problem}"))
                continue
            ad = row.associated_data
            try:
                plain = cipher.decrypt(row.token, ad)
            except InvalidToken:
                unreadable.append(Unreadable(row.key, f"version {row.key_version} unknown "
                                                      "to the cluster, or altered"))
                continue
            updates.append((row, cipher.encrypt(plain, ad)))
        changed = store.replace_tokens(updates) if updates else 0
        rewrapped += changed
        done += len(rows)
        after = rows[-1].key
        if progress is not None:
            progress(Progress(done, todo))
    return RewrapResult(primary, todo, rewrapped, done - rewrapped - len(unreadable),
                        unreadable, store.report())
