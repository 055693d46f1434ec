"""TEMPORARY ADAPTER -- REMOVE AT MERGE with the ``store`` branch.

Maps the agreed store API (briefs/STORE_API.md: ``open_store``, ``SSOStore`` with
application types, enabled flag and groups, ``App``, ``AppType``, ``GROUP_USER``) onto
the single-file ``raftsso/store.py`` of today, so the agent can be built and tested
before the store package lands. Application metadata that today's schema lacks is kept
in a side table of the same SQLite file. Once ``raftsso.store`` provides these names,
this module becomes ``from raftsso.store import ...``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any

from raftsso.errors import AlreadyExists, NotFound, StoreError
from raftsso.store import Cipher, Entry, RowKind, SSOStore, associated_data

GROUP_USER = "@group"
_GROUP_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")


class AppType(StrEnum):
    INDIVIDUAL = "individual"
    GROUP = "group"
    CONFIG = "config"


@dataclass(frozen=True)
class App:
    name: str
    description: str
    created: float
    type: AppType = AppType.INDIVIDUAL
    enabled: bool = True
    users_group: str | None = None
    admins_group: str | None = None


def _group(what: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64 or not _GROUP_RE.fullmatch(value):
        raise StoreError(f"the {what} must be a Unix group name")
    return value


class CompatStore:
    def __init__(self, setting: str | os.PathLike[str], cipher: Cipher | None) -> None:
        if str(setting).startswith("postgresql://"):
            raise StoreError("PostgreSQL stores arrive with the store package")
        self._s = SSOStore(setting, cipher)
        self.kind = "sqlite"
        self.store_id = "compat"
        with self._s._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS agent_compat_apps (name TEXT PRIMARY KEY, "
                       "type TEXT, enabled INTEGER, users_group TEXT, admins_group TEXT)")

    def close(self) -> None:
        self._s.close()

    def __enter__(self) -> CompatStore:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def add_app(self, name: str, description: str = "", *, type: AppType = AppType.INDIVIDUAL,
                enabled: bool = True, users_group: str | None = None,
                admins_group: str | None = None) -> App:
        app = App(name, description, time.time(), AppType(type), bool(enabled),
                  _group("users group", users_group), _group("administrators group",
                                                              admins_group))
        self._s.add_app(name, description)
        with self._s._transaction() as db:
            db.execute("INSERT OR REPLACE INTO agent_compat_apps VALUES (?, ?, ?, ?, ?)",
                       (name, app.type.value, int(app.enabled), app.users_group,
                        app.admins_group))
        return self.app(name)

    def app(self, name: str) -> App:
        for a in self.list_apps():
            if a.name == name:
                return a
        raise NotFound(f"no affiliate application {name!r} in the SSO store; create it "
                       f"first (raftsso sso app add {name})")

    def list_apps(self) -> list[App]:
        with self._s._read() as db:
            meta = {r[0]: r[1:] for r in db.execute("SELECT * FROM agent_compat_apps")}
        out = []
        for a in self._s.list_apps():
            t, en, ug, ag = meta.get(a.name, ("individual", 1, None, None))
            out.append(App(a.name, a.description, a.created, AppType(t), bool(en), ug, ag))
        return out

    def update_app(self, name: str, *, description: str | None = None,
                   enabled: bool | None = None,
                   users_group: str | EllipsisType | None = ...,
                   admins_group: str | EllipsisType | None = ...) -> App:
        a = self.app(name)
        new = App(a.name, a.description if description is None else description, a.created,
                  a.type, a.enabled if enabled is None else bool(enabled),
                  a.users_group if users_group is ... else _group("users group", users_group),
                  a.admins_group if admins_group is ... else
                  _group("administrators group", admins_group))
        with self._s._transaction() as db:
            db.execute("INSERT OR REPLACE INTO agent_compat_apps VALUES (?, ?, ?, ?, ?)",
                       (name, new.type.value, int(new.enabled), new.users_group,
                        new.admins_group))
            if description is not None:
                db.execute("UPDATE apps SET description = ? WHERE name = ?",
                           (description, name))
        return new

    def remove_app(self, name: str) -> tuple[int, int]:
        result = self._s.remove_app(name)
        with self._s._transaction() as db:
            db.execute("DELETE FROM agent_compat_apps WHERE name = ?", (name,))
        return result

    def _use(self, kind: RowKind, app: str, name: str, writing: bool) -> None:
        a = self.app(app)
        if kind is RowKind.CREDENTIAL:
            if a.type is AppType.CONFIG and writing:
                raise StoreError(f"the application {app!r} is a configuration store")
            if a.type is AppType.GROUP and name != GROUP_USER:
                raise StoreError(f"the application {app!r} is a group application")
            if a.type is AppType.INDIVIDUAL and name == GROUP_USER:
                raise StoreError(f"the user name {GROUP_USER!r} is reserved")

    def set_credential(self, app: str, user: str, credential: bytes) -> int:
        self._use(RowKind.CREDENTIAL, app, user, True)
        return self._s.set_credential(app, user, credential)

    def get_credential(self, app: str, user: str) -> bytes:
        self._use(RowKind.CREDENTIAL, app, user, False)
        return self._s.get_credential(app, user)

    def delete_credential(self, app: str, user: str) -> None:
        self._s.delete_credential(app, user)

    def list_credentials(self, app: str) -> list[Entry]:
        return self._s.list_credentials(app)

    def set_config(self, app: str, name: str, value: bytes) -> int:
        return self._s.set_config(app, name, value)

    def get_config(self, app: str, name: str) -> bytes:
        return self._s.get_config(app, name)

    def delete_config(self, app: str, name: str) -> None:
        self._s.delete_config(app, name)

    def list_config(self, app: str) -> list[Entry]:
        return self._s.list_config(app)

    def export_apps(self) -> dict[str, Any]:
        return {"format": 1, "applications": [
            {"name": a.name, "description": a.description, "type": a.type.value,
             "enabled": a.enabled, "users_group": a.users_group,
             "admins_group": a.admins_group} for a in self.list_apps()]}

    def import_apps(self, doc: dict[str, Any], *, replace: bool = False) -> list[str]:
        if not isinstance(doc, dict) or doc.get("format") != 1 \
                or not isinstance(doc.get("applications"), list):
            raise StoreError("not an application definition file (format 1)")
        done = []
        for item in doc["applications"]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise StoreError("every application needs a name")
            try:
                self.app(item["name"])
            except NotFound:
                self.add_app(item["name"], str(item.get("description", "")),
                             type=AppType(item.get("type", "individual")),
                             enabled=bool(item.get("enabled", True)),
                             users_group=item.get("users_group"),
                             admins_group=item.get("admins_group"))
                done.append(item["name"])
                continue
            if not replace:
                raise AlreadyExists(f"the application {item['name']!r} exists already")
            self.update_app(item["name"], description=str(item.get("description", "")),
                            enabled=bool(item.get("enabled", True)),
                            users_group=item.get("users_group"),
                            admins_group=item.get("admins_group"))
            done.append(item["name"])
        return done


SSOStoreLike = CompatStore


def open_store(setting: str | Path, cipher: Cipher | None, *,
               password_file: Path | None = None, cluster_id: str | None = None) -> CompatStore:
    return CompatStore(setting, cipher)


__all__ = ["GROUP_USER", "App", "AppType", "CompatStore", "Entry", "RowKind", "SSOStoreLike",
           "associated_data", "open_store"]
