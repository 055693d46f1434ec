"""The SSO store (ENTSSO's SSO database): applications, credential mappings, config values.

One class, :class:`SSOStore`, over either backend: a path is a SQLite file
(:mod:`raftsso.store.sqlite`), a ``postgresql://`` URI a shared PostgreSQL database
(:mod:`raftsso.store.postgresql`). Nothing is ever stored in plaintext: every credential and
every configuration value is a client token (:mod:`raftsso.envelope`) made by the *cipher*
the store is given, normally a :class:`raftsso.client.SSOClient`, with associated data that
binds it to its row (:func:`raftsso.store.model.associated_data`), so a token copied into
another row fails to decrypt. The store itself never touches the network of the cluster
or a key.

Key versions are always read from the token header (the first five bytes), never from a
column: ``versions_in_use`` and ``rows_not_under`` (what ``retire`` and ``rewrap`` build
on) look at the tokens themselves. A row damaged outside raftsso (a token stored as text,
a number column holding text) is refused with one line that names the row.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any

from raftsso.envelope import token_key_version
from raftsso.errors import AlreadyExists, NotFound, StoreError
from raftsso.store import appfile
from raftsso.store.backend import Backend, Tx, store_location
from raftsso.store.model import (
    GROUP_USER,
    HEADER_SIZE,
    App,
    AppType,
    Cipher,
    Entry,
    RowKey,
    RowKind,
    StoredRow,
    StoreReport,
    WriteReporter,
    associated_data,
    check_description,
    check_group,
    check_name,
    check_type,
    header_version,
    token_header,
    token_problem,
)
from raftsso.store.schema import ensure_schema

_TABLE = {RowKind.CREDENTIAL: ("credentials", '"user"'),
          RowKind.CONFIG: ("config_values", "name")}
_APP_COLUMNS = "name, description, created, type, enabled, users_group, admins_group"
_APP_COLUMNS_A = ", ".join("a." + c for c in _APP_COLUMNS.split(", "))


def _what(kind: RowKind) -> str:
    return "credential mapping for user" if kind is RowKind.CREDENTIAL else "setting"


class SSOStore:
    """The SSO database; thread-safe, safe across processes (and hosts, on PostgreSQL).

    ``setting`` is a path (SQLite) or a ``postgresql://`` URI without a password
    (``password_file``: a 0600 file holding it). ``cipher`` may be ``None`` for
    administrative use that never touches a secret (applications, listings, the rewrap
    primitives); reading or writing a secret then fails. With ``cluster_id`` the store is
    bound to that cluster on first use, and a store bound to another cluster is refused.
    ``migrate=False`` refuses an older schema instead of migrating it.
    """

    def __init__(self, setting: str | os.PathLike[str], cipher: Cipher | None = None, *,
                 password_file: Path | None = None, cluster_id: str | None = None,
                 migrate: bool = True) -> None:
        self._cipher = cipher
        # A writing SSO client tells the cluster which versions it wrote (raftsso.client).
        self._reporter = cipher if isinstance(cipher, WriteReporter) else None
        self._backend = _backend(setting, password_file)
        try:
            self.schema_found, self.schema_version = ensure_schema(self._backend,
                                                                   migrate=migrate)
            self.store_id, self.cluster_id = self._info()
            if cluster_id is not None:
                self.bind_cluster(cluster_id)
        except BaseException:
            self._backend.close()
            raise

    # lifecycle -------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self._backend.kind

    @property
    def where(self) -> str:
        return self._backend.where

    @property
    def path(self) -> Path | None:
        """The SQLite file (None on PostgreSQL)."""
        return Path(self.where) if self.kind == "sqlite" else None

    @property
    def cipher(self) -> Cipher:
        """The SSO client the store encrypts with (StoreError if opened without one)."""
        if self._cipher is None:
            raise StoreError("this SSO store was opened without an SSO client; secrets "
                             "cannot be read or written")
        return self._cipher

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> SSOStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SSOStore({self.where!r}, kind={self.kind!r}, id={self.store_id!r})"

    def _info(self) -> tuple[str, str | None]:
        with self._backend.read() as tx:
            rows = tx.execute("SELECT store_id, cluster_id FROM store_info").fetchall()
        if len(rows) != 1 or not isinstance(rows[0][0], str) \
                or not isinstance(rows[0][1], str | None):
            raise StoreError(f"{self.where}: the store_info table of the SSO store is damaged")
        return rows[0][0], rows[0][1]

    def bind_cluster(self, cluster_id: str, *, adopt: bool = False) -> None:
        """Record the cluster whose keys encrypt this store; refuse another cluster's store.

        ``adopt`` re-binds a store of another cluster (after a disaster recovery restored
        that cluster's keys into a new one: ``raftsso sso join --adopt``).
        """
        if not cluster_id or not isinstance(cluster_id, str):
            raise StoreError("a cluster id is needed to bind the SSO store")
        if self.cluster_id is not None and not adopt:
            self._check_cluster(cluster_id)  # bound already: no write on every open
            return
        with self._backend.transaction() as tx:
            if adopt:
                tx.execute("UPDATE store_info SET cluster_id = ?", (cluster_id,))
            else:
                tx.execute("UPDATE store_info SET cluster_id = ? WHERE cluster_id IS NULL",
                           (cluster_id,))
        self.store_id, self.cluster_id = self._info()
        self._check_cluster(cluster_id)

    def _check_cluster(self, cluster_id: str) -> None:
        if self.cluster_id != cluster_id:
            raise StoreError(
                f"the SSO store {self.where} (id {self.store_id}) belongs to cluster "
                f"{self.cluster_id}, not to cluster {cluster_id} of this configuration; use "
                "the store of this cluster (after restoring another cluster's keys: "
                "raftsso sso join --adopt)")

    # applications ----------------------------------------------------------------------

    def _app_row(self, tx: Tx, name: str) -> App:
        row = tx.execute(f"SELECT {_APP_COLUMNS} FROM apps WHERE name = ?",  # noqa: S608
                         (name,)).fetchone()
        if row is None:
            raise NotFound(f"no affiliate application {name!r} in the SSO store; create it "
                           f"first (raftsso sso app add {name})")
        return self._app(row)

    def _app(self, row: Sequence[Any]) -> App:
        name, description, created, kind, enabled, users, admins = row
        try:
            if not isinstance(name, str) or not isinstance(description, str):
                raise ValueError("text columns hold other types")
            return App(name, description, _real(created), AppType(kind),
                       _flag(enabled), check_group("users group", users),
                       check_group("administrators group", admins))
        except (ValueError, TypeError, StoreError) as exc:
            raise StoreError(f"the SSO store's application row {name!r} is damaged "
                             f"({exc}); fix or remove it (raftsso sso app remove)") from None

    def add_app(self, name: str, description: str = "", *, type: AppType = AppType.INDIVIDUAL,
                enabled: bool = True, users_group: str | None = None,
                admins_group: str | None = None) -> App:
        app = App(check_name("application", name), check_description(description),
                  time.time(), check_type(type), _bool(enabled, "enabled"),
                  check_group("users group", users_group),
                  check_group("administrators group", admins_group))
        with self._backend.transaction() as tx:
            self._insert_app(tx, app)
        return app

    def _insert_app(self, tx: Tx, app: App) -> None:
        if tx.execute("SELECT 1 FROM apps WHERE name = ?", (app.name,)).fetchone():
            raise AlreadyExists(f"the application {app.name!r} exists already")
        tx.execute(f"INSERT INTO apps ({_APP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                   (app.name, app.description, app.created, app.type.value, app.enabled,
                    app.users_group, app.admins_group))

    def app(self, name: str) -> App:
        """The application NAME (:class:`NotFound` if unknown)."""
        with self._backend.read() as tx:
            return self._app_row(tx, name)

    def update_app(self, name: str, *, description: str | None = None,
                   enabled: bool | None = None,
                   users_group: str | EllipsisType | None = ...,
                   admins_group: str | EllipsisType | None = ...) -> App:
        """Change an application's definition: None leaves description and flag as they
        are; for the groups, ``...`` leaves them and None clears them. Its type is fixed
        (mappings made for one type mean something else under another)."""
        with self._backend.transaction() as tx:
            app = self._app_row(tx, name)
            changed = App(
                app.name,
                app.description if description is None else check_description(description),
                app.created, app.type,
                app.enabled if enabled is None else _bool(enabled, "enabled"),
                app.users_group if users_group is ... else
                check_group("users group", users_group),
                app.admins_group if admins_group is ... else
                check_group("administrators group", admins_group))
            self._write_app(tx, changed)
        return changed

    @staticmethod
    def _write_app(tx: Tx, app: App) -> None:
        tx.execute("UPDATE apps SET description = ?, enabled = ?, users_group = ?, "
                   "admins_group = ? WHERE name = ?",
                   (app.description, app.enabled, app.users_group, app.admins_group,
                    app.name))

    def list_apps(self) -> list[App]:
        with self._backend.read() as tx:
            rows = tx.execute(f"SELECT {_APP_COLUMNS} FROM apps ORDER BY name").fetchall()  # noqa: S608
        return [self._app(r) for r in rows]

    def app_usage(self) -> dict[str, tuple[int, int]]:
        """(credential mappings, config values) per application."""
        usage: dict[str, list[int]] = {}
        with self._backend.read() as tx:
            for i, kind in enumerate((RowKind.CREDENTIAL, RowKind.CONFIG)):
                table, _ = _TABLE[kind]
                for app, n in tx.execute(f"SELECT app, count(*) FROM {table} "  # noqa: S608
                                         "GROUP BY app"):
                    usage.setdefault(str(app), [0, 0])[i] = int(n)
        return {app: (c[0], c[1]) for app, c in usage.items()}

    def remove_app(self, name: str) -> tuple[int, int]:
        """Remove an application with its mappings and values; returns how many of each."""
        with self._backend.transaction() as tx:
            self._app_row(tx, name)
            creds = tx.execute("DELETE FROM credentials WHERE app = ?", (name,)).rowcount
            values = tx.execute("DELETE FROM config_values WHERE app = ?", (name,)).rowcount
            tx.execute("DELETE FROM apps WHERE name = ?", (name,))
        return int(creds), int(values)

    def export_apps(self) -> dict[str, Any]:
        """The application definitions as the documented JSON document (no secrets)."""
        return appfile.export_doc(self.list_apps())

    def import_apps(self, doc: object, *, replace: bool = False) -> list[str]:
        """Create the applications of an exported document, in one transaction; returns
        the names created or changed. An application that exists already with another
        definition is refused unless ``replace`` (its type can never change)."""
        apps = appfile.parse_doc(doc, time.time())
        done: list[str] = []
        with self._backend.transaction() as tx:
            for app in apps:
                try:
                    have = self._app_row(tx, app.name)
                except NotFound:
                    self._insert_app(tx, app)
                    done.append(app.name)
                    continue
                if appfile.same_definition(have, app):
                    continue
                if not replace:
                    raise AlreadyExists(f"the application {app.name!r} exists already with "
                                        "another definition; import with --replace to "
                                        "change it")
                if have.type is not app.type:
                    raise StoreError(f"the application {app.name!r} is of type {have.type}; "
                                     f"an import cannot make it {app.type}")
                self._write_app(tx, app)
                done.append(app.name)
        return done

    # credentials and configuration values -----------------------------------------------

    @staticmethod
    def _check_use(app: App, kind: RowKind, name: str, writing: bool) -> None:
        if kind is RowKind.CREDENTIAL:
            if app.type is AppType.CONFIG and writing:
                raise StoreError(f"the application {app.name!r} is a configuration store "
                                 "(type config): it holds configuration values, no "
                                 "credential mappings")
            if app.type is AppType.GROUP and name != GROUP_USER:
                raise StoreError(f"the application {app.name!r} is a group application: "
                                 f"its one credential mapping is under user {GROUP_USER!r}")
            if app.type is AppType.INDIVIDUAL and name == GROUP_USER:
                raise StoreError(f"the user name {GROUP_USER!r} is reserved for group "
                                 "applications")
        if not writing and not app.enabled:
            raise StoreError(f"the application {app.name!r} is disabled; enable it with "
                             f"raftsso sso app set {app.name} --enable")

    def put(self, kind: RowKind, app: str, name: str, secret: bytes) -> int:
        """Encrypt and store a credential or configuration value; returns the key version."""
        return self._upsert(kind, app, [(name, secret)])[0]

    def put_many(self, kind: RowKind, app: str, items: Iterable[tuple[str, bytes]]) -> int:
        """Encrypt and store many values of one application in one transaction (a bulk
        load: one commit instead of one per row); returns how many."""
        return len(self._upsert(kind, app, items))

    def _upsert(self, kind: RowKind, app: str,
                items: Iterable[tuple[str, bytes]]) -> list[int]:
        check_name("application", app)
        what = "user" if kind is RowKind.CREDENTIAL else "setting"
        cipher = self.cipher
        now = time.time()
        # Encrypt first (no lock held meanwhile), then write in one transaction.
        rows = []
        for name, secret in items:
            check_name(what, name)
            if not isinstance(secret, bytes | bytearray | memoryview):
                raise TypeError("secrets are bytes")
            rows.append((app, name, cipher.encrypt(bytes(secret),
                                                   associated_data(kind, app, name)), now))
        table, column = _TABLE[kind]
        with self._backend.transaction() as tx:
            meta = self._app_row(tx, app)
            for _, name, _, _ in rows:
                self._check_use(meta, kind, name, writing=True)
            tx.executemany(
                f"INSERT INTO {table} (app, {column}, token, updated) "  # noqa: S608
                f"VALUES (?, ?, ?, ?) ON CONFLICT (app, {column}) DO UPDATE SET "
                "token = excluded.token, updated = excluded.updated", rows)
        versions = [token_key_version(token) for _, _, token, _ in rows]
        if self._reporter is not None and versions:
            self._reporter.store_written(self.store_id, self.kind, Counter(versions))
        return versions

    def get(self, kind: RowKind, app: str, name: str) -> bytes:
        """A credential or configuration value in plaintext (:class:`NotFound`,
        :class:`raftsso.errors.InvalidToken`)."""
        table, column = _TABLE[kind]
        cipher = self.cipher
        with self._backend.read() as tx:
            row = tx.execute(
                f"SELECT {_APP_COLUMNS_A}, t.token FROM apps a LEFT JOIN {table} t "  # noqa: S608
                f"ON t.app = a.name AND t.{column} = ? WHERE a.name = ?",
                (name, app)).fetchone()
        if row is None:
            raise NotFound(f"no affiliate application {app!r} in the SSO store; create it "
                           f"first (raftsso sso app add {app})")
        self._check_use(self._app(row[:-1]), kind, name, writing=False)
        token = row[-1]
        if token is None:
            raise NotFound(f"no {_what(kind)} {name!r} in application {app!r}")
        _check_row(RowKey(kind, app, name), token)
        return cipher.decrypt(token, associated_data(kind, app, name))

    def delete(self, kind: RowKind, app: str, name: str) -> None:
        table, column = _TABLE[kind]
        with self._backend.transaction() as tx:
            self._app_row(tx, app)
            gone = tx.execute(f"DELETE FROM {table} WHERE app = ? AND {column} = ?",  # noqa: S608
                              (app, name)).rowcount
            if not gone:
                raise NotFound(f"no {_what(kind)} {name!r} in application {app!r}")

    def entries(self, kind: RowKind, app: str) -> list[Entry]:
        """The names in ``app`` with key version and time of change (never the secrets)."""
        table, column = _TABLE[kind]
        with self._backend.read() as tx:
            self._app_row(tx, app)
            rows = tx.execute(f"SELECT {column}, token, updated FROM {table} "  # noqa: S608
                              f"WHERE app = ? ORDER BY {column}", (app,)).fetchall()
        out = []
        for name, token, updated in rows:
            key = RowKey(kind, app, str(name))
            _check_row(key, token)
            try:
                out.append(Entry(app, key.name, token_key_version(token), _real(updated)))
            except (TypeError, ValueError) as exc:
                raise _damaged(key, str(exc)) from None
        return out

    def set_credential(self, app: str, user: str, credential: bytes) -> int:
        """Encrypt and store the credential of ``user`` in ``app``; returns the key version."""
        return self.put(RowKind.CREDENTIAL, app, user, credential)

    def get_credential(self, app: str, user: str) -> bytes:
        return self.get(RowKind.CREDENTIAL, app, user)

    def delete_credential(self, app: str, user: str) -> None:
        self.delete(RowKind.CREDENTIAL, app, user)

    def list_credentials(self, app: str) -> list[Entry]:
        return self.entries(RowKind.CREDENTIAL, app)

    def set_config(self, app: str, name: str, value: bytes) -> int:
        """Encrypt and store a configuration value of ``app``; returns the key version."""
        return self.put(RowKind.CONFIG, app, name, value)

    def get_config(self, app: str, name: str) -> bytes:
        return self.get(RowKind.CONFIG, app, name)

    def delete_config(self, app: str, name: str) -> None:
        self.delete(RowKind.CONFIG, app, name)

    def list_config(self, app: str) -> list[Entry]:
        return self.entries(RowKind.CONFIG, app)

    # key versions, and the primitives of rewrap and retire ------------------------------------

    def versions_in_use(self) -> dict[int, int]:
        """How many rows each key version encrypts, counted from the token headers
        (``retire`` needs zero). A damaged row is refused with its name."""
        counts, damaged = self._count_versions()
        if damaged:
            with self._backend.read() as tx:
                raise self._first_damaged(tx)
        return counts

    key_versions = versions_in_use  # the name of raftsso 0.1

    def report(self) -> StoreReport:
        """What this store tells the cluster: its id, kind, and versions in use now
        (damaged rows, which no version can decrypt, counted apart)."""
        counted_at = time.time()
        counts, damaged = self._count_versions()
        return StoreReport(self.store_id, self.kind, counted_at, counts, damaged)

    def _count_versions(self) -> tuple[dict[int, int], int]:
        counts: dict[int, int] = {}
        damaged = 0
        with self._backend.read() as tx:
            for kind in RowKind:
                table, _ = _TABLE[kind]
                for header, n in tx.execute(
                        f"SELECT substr(token, 1, {HEADER_SIZE}), count(*) "  # noqa: S608
                        f"FROM {table} GROUP BY substr(token, 1, {HEADER_SIZE})"):
                    version = header_version(header)
                    if version is None:
                        damaged += int(n)
                    else:
                        counts[version] = counts.get(version, 0) + int(n)
        return counts, damaged

    def _first_damaged(self, tx: Tx) -> StoreError:
        for kind in RowKind:
            table, column = _TABLE[kind]
            for app, name, token in tx.execute(
                    f"SELECT app, {column}, token FROM {table}"):  # noqa: S608
                problem = token_problem(token)
                if problem is None and header_version(token[:HEADER_SIZE]) is None:
                    problem = "its token header is malformed"
                if problem is not None:
                    return _damaged(RowKey(kind, str(app), str(name)), problem)
        return StoreError(f"the SSO store {self.where} changed while it was counted; "
                          "run the command again")

    def count_not_under(self, version: int) -> int:
        """How many rows hold a token not made under ``version`` (damaged ones included)."""
        total = 0
        with self._backend.read() as tx:
            for kind in RowKind:
                table, _ = _TABLE[kind]
                total += int(tx.execute(
                    f"SELECT count(*) FROM {table} "  # noqa: S608
                    f"WHERE substr(token, 1, {HEADER_SIZE}) <> ?",
                    (token_header(version),)).fetchone()[0])
        return total

    def rows_not_under(self, version: int, *, after: RowKey | None = None,
                       limit: int = 100) -> list[StoredRow]:
        """Up to ``limit`` rows whose token header is not ``version``'s, in
        :class:`RowKey` order, strictly after ``after`` (so a batch job can resume where it
        stopped). Damaged rows are included: the caller decides what to do with them."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        header = token_header(version)
        found: list[StoredRow] = []
        with self._backend.read() as tx:
            for kind in sorted(RowKind):  # the order of RowKey
                if after is not None and kind < after.kind:
                    continue
                table, column = _TABLE[kind]
                query = (f"SELECT app, {column}, token FROM {table} "  # noqa: S608
                         f"WHERE substr(token, 1, {HEADER_SIZE}) <> ?")
                params: tuple[object, ...] = (header,)
                if after is not None and kind == after.kind:
                    # A row value lets the engine seek to the resume point in the primary
                    # key instead of scanning from the start for every batch.
                    query += f" AND (app, {column}) > (?, ?)"
                    params += (after.app, after.name)
                query += f" ORDER BY app, {column} LIMIT ?"
                params += (limit - len(found),)
                for app, name, token in tx.execute(query, params):
                    found.append(StoredRow(RowKey(kind, str(app), str(name)), token))
                if len(found) >= limit:
                    break
        return found

    def replace_tokens(self, updates: Sequence[tuple[StoredRow, bytes]]) -> int:
        """Replace the tokens of rows in one transaction, each only if it still holds the
        token it was read with (compare-and-set: a concurrent write wins); returns how many
        changed. The caller makes each new token with ``row.associated_data``."""
        for _, new_token in updates:
            token_key_version(new_token)  # InvalidToken for anything but a token
        now = time.time()
        changed = 0
        with self._backend.transaction() as tx:
            for kind in RowKind:
                table, column = _TABLE[kind]
                params = [(new, now, row.key.app, row.key.name, row.token)
                          for row, new in updates if row.key.kind is kind]
                if params:
                    changed += tx.executemany(
                        f"UPDATE {table} SET token = ?, updated = ? "  # noqa: S608
                        f"WHERE app = ? AND {column} = ? AND token = ?", params)
        return changed


def _backend(setting: str | os.PathLike[str], password_file: Path | None) -> Backend:
    where = store_location(setting)
    if isinstance(where, str):
        from raftsso.store.postgresql import PostgresBackend  # psycopg only when needed

        return PostgresBackend(where, password_file=password_file)
    if password_file is not None:
        raise StoreError("store_password_file applies only to a postgresql:// store")
    from raftsso.store.sqlite import SQLiteBackend

    return SQLiteBackend(where)


def _damaged(key: RowKey, problem: str) -> StoreError:
    return StoreError(f"the SSO store row {key} is damaged ({problem}); set it again or "
                      "delete it")


def _check_row(key: RowKey, token: object) -> None:
    problem = token_problem(token)
    if problem is not None:
        raise _damaged(key, problem)


def _real(value: object) -> float:
    if type(value) not in (int, float):
        raise ValueError(f"a time column holds {type(value).__name__}")
    return float(value)  # type: ignore[arg-type]


def _flag(value: object) -> bool:
    if type(value) is bool or value in (0, 1):
        return bool(value)
    raise ValueError("the enabled column is not a flag")


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise StoreError(f"{what} must be true or false")
    return value
