"""The application-definition file (ENTSSO's ``ssomanage -createapps`` model), as JSON.

::

    {"format": 1,
     "applications": [
       {"name": "payroll", "description": "the payroll system", "type": "individual",
        "enabled": true, "users_group": "payroll-users", "admins_group": "payroll-admins"}]}

``name`` is required; the other keys default to ``""``, ``"individual"``, ``true``, ``null``,
``null``. Unknown keys, duplicate names and wrong types are refused with one line naming the
entry. The file holds definitions only: no credential, no configuration value, no key
version, so it can be kept in version control and applied to every store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raftsso.errors import StoreError
from raftsso.store.model import (
    App,
    AppType,
    check_description,
    check_group,
    check_name,
    check_type,
)

FORMAT = 1
KEYS = ("name", "description", "type", "enabled", "users_group", "admins_group")


def export_doc(apps: Sequence[App]) -> dict[str, Any]:
    return {"format": FORMAT,
            "applications": [{"name": a.name, "description": a.description,
                              "type": a.type.value, "enabled": a.enabled,
                              "users_group": a.users_group, "admins_group": a.admins_group}
                             for a in apps]}


def parse_doc(doc: object, created: float) -> list[App]:
    """Validate a whole document before anything is written."""
    if not isinstance(doc, dict):
        raise StoreError("an application file is a JSON object with \"format\" and "
                         "\"applications\"")
    unknown = set(doc) - {"format", "applications"}
    if unknown:
        raise StoreError(f"unknown key(s) in the application file: {', '.join(sorted(unknown))}")
    if doc.get("format") != FORMAT:
        raise StoreError(f"the application file has format {doc.get('format')!r}; this "
                         f"raftsso reads format {FORMAT}")
    entries = doc.get("applications")
    if not isinstance(entries, list):
        raise StoreError("\"applications\" in the application file must be a list")
    apps: list[App] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        try:
            app = _parse_entry(entry, created)
        except StoreError as exc:
            raise StoreError(f"applications[{i}] of the application file: {exc}") from None
        if app.name in seen:
            raise StoreError(f"applications[{i}] of the application file: {app.name!r} "
                             "appears twice")
        seen.add(app.name)
        apps.append(app)
    return apps


def _parse_entry(entry: object, created: float) -> App:
    if not isinstance(entry, dict):
        raise StoreError("each application is a JSON object")
    unknown = set(entry) - set(KEYS)
    if unknown:
        raise StoreError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise StoreError("\"enabled\" must be true or false")
    return App(check_name("application", entry.get("name")),
               check_description(entry.get("description", "")), created,
               check_type(entry.get("type", AppType.INDIVIDUAL.value)), enabled,
               check_group("users group", entry.get("users_group")),
               check_group("administrators group", entry.get("admins_group")))


def same_definition(a: App, b: App) -> bool:
    """Equal but for the creation time."""
    return (a.name, a.description, a.type, a.enabled, a.users_group, a.admins_group) == \
        (b.name, b.description, b.type, b.enabled, b.users_group, b.admins_group)
