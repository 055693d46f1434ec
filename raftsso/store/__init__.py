"""The SSO store (ENTSSO's SSO database): applications, credential mappings, config values.

::

    raftsso/store/
      __init__.py    the public API (this file): open_store, SSOStore and the model
      model.py       App, AppType, Entry, RowKind, RowKey, StoredRow, StoreReport, names,
                     associated data, token headers (pure)
      api.py         SSOStore: the store's operations over either backend
      backend.py     what a backend provides (transactions, one error translation)
      sqlite.py      one SQLite file per host (the default)
      postgresql.py  one PostgreSQL database shared by a group of hosts (psycopg 3 + pool)
      schema.py      the schema, its version table and forward migrations (both engines)
      appfile.py     the application-definition file (export / import, no secrets)
      rewrap.py      re-encryption under the primary version, batched and resumable

A store setting that is a path means SQLite; a ``postgresql://`` URI (never with a
password in it) means PostgreSQL.
"""

from __future__ import annotations

import os
from pathlib import Path

from raftsso.errors import AlreadyExists, InvalidToken, NotFound, StoreError
from raftsso.store.api import SSOStore
from raftsso.store.model import (
    GROUP_USER,
    App,
    AppType,
    Cipher,
    Entry,
    RowKey,
    RowKind,
    StoredRow,
    StoreReport,
    associated_data,
)
from raftsso.store.schema import SCHEMA_VERSION


def open_store(setting: str | os.PathLike[str], cipher: Cipher | None, *,
               password_file: Path | None = None, cluster_id: str | None = None,
               migrate: bool = True) -> SSOStore:
    """Open (creating or migrating if needed) the store named by ``setting``.

    A path is a SQLite file; ``postgresql://...`` a PostgreSQL database, whose password
    comes from ``password_file`` (0600) or libpq's passfile. With ``cluster_id``, a store
    of another cluster is refused and a new one is bound to this cluster.
    """
    return SSOStore(setting, cipher, password_file=password_file, cluster_id=cluster_id,
                    migrate=migrate)


__all__ = [
    "GROUP_USER",
    "SCHEMA_VERSION",
    "AlreadyExists",
    "App",
    "AppType",
    "Cipher",
    "Entry",
    "InvalidToken",
    "NotFound",
    "RowKey",
    "RowKind",
    "SSOStore",
    "StoreError",
    "StoreReport",
    "StoredRow",
    "associated_data",
    "open_store",
]
