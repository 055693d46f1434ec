"""The SSO store's data model: applications, rows, names, associated data, reports.

Pure values and checks; no database, no network, no key. Every backend and the rewrap job
share these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from raftsso.envelope import TOKEN_FORMAT, TOKEN_OVERHEAD, token_key_version
from raftsso.errors import StoreError

MAX_NAME = 256
MAX_DESCRIPTION = 1024
MAX_GROUP = 64

GROUP_USER = "@group"
"""The one credential mapping of a GROUP application is stored under this user name."""

_CRED_AD = b"raftsso/cred/v1\x00"
_CONFIG_AD = b"raftsso/config/v1\x00"
# A Unix group name as useradd/groupadd accept it (portable characters, plus a trailing $
# for Samba machine accounts), never starting with '-'.
_GROUP_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")


class Cipher(Protocol):
    """What the store needs from the SSO client."""

    def encrypt(self, data: bytes, associated_data: bytes = b"") -> bytes: ...

    def decrypt(self, token: bytes, associated_data: bytes = b"") -> bytes: ...


@runtime_checkable
class WriteReporter(Protocol):
    """A cipher that also reports to the cluster which versions it wrote into a store
    (:class:`raftsso.client.SSOClient`: batched, sent at most once per resync)."""

    def store_written(self, store_id: str, kind: str, versions: Mapping[int, int]) -> None:
        ...


class AppType(StrEnum):
    """ENTSSO's affiliate application types."""

    INDIVIDUAL = "individual"  # one credential mapping per user
    GROUP = "group"  # one mapping shared by the users group, stored under GROUP_USER
    CONFIG = "config"  # configuration values only (no credential mappings)


class RowKind(StrEnum):
    CREDENTIAL = "credential"
    CONFIG = "config"


@dataclass(frozen=True)
class App:
    """An affiliate application; the groups are Unix group names (None: nobody)."""

    name: str
    description: str
    created: float
    type: AppType = AppType.INDIVIDUAL
    enabled: bool = True
    users_group: str | None = None
    admins_group: str | None = None


@dataclass(frozen=True)
class Entry:
    """A credential mapping or configuration value, without its secret.

    ``key_version`` is read from the token header, never from a column that could lie.
    """

    app: str
    name: str
    key_version: int
    updated: float


@dataclass(frozen=True, order=True)
class RowKey:
    """Where a row lives; ordered, so a batch job can resume after the last one it did."""

    kind: RowKind
    app: str
    name: str  # the user of a credential, the name of a config value

    def __str__(self) -> str:
        return f"{self.kind}:{self.app}/{self.name}"


@dataclass(frozen=True)
class StoredRow:
    """One encrypted row as stored (the token is ciphertext, safe to hold).

    ``token`` is whatever the database returned: a row damaged outside raftsso may hold
    text instead of bytes; :func:`token_problem` says what is wrong with it.
    """

    key: RowKey
    token: bytes = field(repr=False)

    @property
    def associated_data(self) -> bytes:
        return associated_data(self.key.kind, self.key.app, self.key.name)

    @property
    def key_version(self) -> int | None:
        """The version in the token header (None for a damaged row)."""
        return None if token_problem(self.token) else token_key_version(self.token)


@dataclass(frozen=True)
class StoreReport:
    """Which key versions a store still uses, counted from token headers, and when.

    What ``rewrap`` returns and what a store reports to the cluster (``retire`` needs every
    known store to report zero rows under the version it destroys).
    """

    store_id: str
    kind: str
    counted_at: float
    versions_in_use: dict[int, int]
    damaged_rows: int = 0  # rows whose token has no readable header (no version opens them)

    def as_json(self) -> dict[str, object]:
        """The shape of ``raftsso stores --json`` (DESIGN.md section 5), for the report a
        store will send the cluster (the cluster side is not built yet)."""
        return {"id": self.store_id, "kind": self.kind, "reported_at": self.counted_at,
                "versions_in_use": {str(v): n for v, n in sorted(self.versions_in_use.items())},
                "damaged_rows": self.damaged_rows}


def associated_data(kind: RowKind, app: str, name: str) -> bytes:
    """The associated data that binds a token to its row.

    ``credential: b"raftsso/cred/v1\\x00" + app + b"\\x00" + user`` and
    ``config: b"raftsso/config/v1\\x00" + app + b"\\x00" + name`` (UTF-8); names hold no
    NUL, which keeps the encoding unambiguous.
    """
    prefix = _CRED_AD if kind is RowKind.CREDENTIAL else _CONFIG_AD
    return prefix + app.encode() + b"\x00" + name.encode()


def token_header(version: int) -> bytes:
    """The first bytes of every token made under ``version`` (format byte, u32 BE)."""
    return bytes([TOKEN_FORMAT]) + version.to_bytes(4, "big")


HEADER_SIZE = len(token_header(1))


def header_version(header: object) -> int | None:
    """The version in a token header (its first HEADER_SIZE bytes); None if malformed."""
    if not isinstance(header, bytes) or len(header) != HEADER_SIZE \
            or header[0] != TOKEN_FORMAT:
        return None
    return int.from_bytes(header[1:], "big")


def token_problem(token: object) -> str | None:
    """Why a stored token cannot be a client token, or None if its shape is right.

    Shape only: whether it decrypts is the cipher's business (one opaque InvalidToken).
    """
    if not isinstance(token, bytes):
        return f"its token is {type(token).__name__}, not bytes"
    if len(token) < TOKEN_OVERHEAD:
        return f"its token is {len(token)} bytes, shorter than any raftsso token"
    if token[0] != TOKEN_FORMAT:
        return f"its token has format byte {token[0]:#04x}, not {TOKEN_FORMAT:#04x}"
    return None


def check_name(what: str, value: object) -> str:
    """A name of an application, user or setting: non-empty text without NUL."""
    if not isinstance(value, str) or not value:
        raise StoreError(f"the {what} name must not be empty")
    if "\x00" in value:
        raise StoreError(f"the {what} name must not contain NUL characters")
    if len(value) > MAX_NAME:
        raise StoreError(f"the {what} name is longer than {MAX_NAME} characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise StoreError(f"the {what} name is not valid text") from None
    return value


def check_description(value: object) -> str:
    if not isinstance(value, str):
        raise StoreError("the description must be text")
    if len(value) > MAX_DESCRIPTION or "\x00" in value:
        raise StoreError(f"the description must be text of at most {MAX_DESCRIPTION} "
                         "characters without NUL")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise StoreError("the description is not valid text") from None
    return value


def check_group(what: str, value: object) -> str | None:
    """A Unix group name, or None for "no group"."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise StoreError(f"the {what} must be a Unix group name")
    if len(value) > MAX_GROUP or not _GROUP_RE.fullmatch(value):
        raise StoreError(f"the {what} {value[:MAX_GROUP]!r} is not a valid Unix group name "
                         f"(letters, digits, '_', '.', '-', at most {MAX_GROUP})")
    return value


def check_type(value: object) -> AppType:
    try:
        return AppType(value)  # type: ignore[arg-type]  # checked right here
    except ValueError:
        raise StoreError(f"unknown application type {value!r}; use one of "
                         f"{', '.join(t.value for t in AppType)}") from None
