"""A node's seal settings, as ``node.toml`` gives them, and :func:`open_seal`.

::

    seal = "file"                 # or "pkcs11" or "shamir"; "file" when absent
    seal_key_file = "seal.key"    # file only

    [pkcs11]                      # pkcs11 only
    module = "/usr/lib/softhsm/libsofthsm2.so"
    token_label = "raftsso-node1"
    pin_file = "/etc/raftsso/node1.pin"    # a 0600 file, or:
    # pin_credential = "raftsso-pkcs11-pin"  # a systemd credential ($CREDENTIALS_DIRECTORY)
    softhsm_tokendir = "softhsm"  # SoftHSM only: the node's own token directory

    [shamir]                      # shamir only (for the progress shown before a share)
    threshold = 3
    shares = 5

Relative paths are resolved against the directory of ``node.toml``. The PIN is never a
setting itself, nor a command-line argument: it is read from its file when the node
starts, and only the login keeps it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftsso.errors import ConfigError
from raftsso.fsutil import read_private
from raftsso.seal.base import KINDS, SealProvider
from raftsso.seal.shamir import MAX_SHARES

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


@dataclass(frozen=True)
class Pkcs11Settings:
    module: Path
    token_label: str
    pin_file: Path | None = None
    pin_credential: str | None = None
    softhsm_tokendir: Path | None = None

    @property
    def pin_source(self) -> str:
        """Where the PIN comes from, for messages (never the PIN)."""
        if self.pin_file is not None:
            return str(self.pin_file)
        return f"systemd credential {self.pin_credential!r}"

    def as_toml(self) -> dict[str, Any]:
        return {"module": str(self.module), "token_label": self.token_label,
                "pin_file": None if self.pin_file is None else str(self.pin_file),
                "pin_credential": self.pin_credential,
                "softhsm_tokendir": None if self.softhsm_tokendir is None
                else str(self.softhsm_tokendir)}


@dataclass(frozen=True)
class SealSettings:
    kind: str = "file"
    key_file: Path | None = None
    pkcs11: Pkcs11Settings | None = None
    threshold: int | None = None
    shares: int | None = None


def read_pin(settings: Pkcs11Settings, environ: Mapping[str, str] = os.environ) -> str:
    """The token's user PIN from its 0600 file or systemd credential (never logged)."""
    if settings.pin_file is not None:
        path = settings.pin_file
    else:
        directory = environ.get(CREDENTIALS_ENV)
        if not directory or settings.pin_credential is None:
            raise ConfigError(f"the PKCS#11 PIN is the systemd credential "
                              f"{settings.pin_credential!r}, but ${CREDENTIALS_ENV} is not "
                              "set (start the node from its unit with LoadCredential= or "
                              "LoadCredentialEncrypted=)")
        path = Path(directory) / settings.pin_credential
    try:
        raw = read_private(path, limit=1024)
    except ConfigError as exc:
        raise ConfigError(f"no PKCS#11 user PIN for token {settings.token_label!r} ({exc}); "
                          "the node cannot use its seal key without it") from None
    try:
        pin = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"the PKCS#11 PIN in {path} is not UTF-8 text") from None
    if not pin or "\n" in pin:
        raise ConfigError(f"{path} must hold the PKCS#11 user PIN on one line")
    return pin


def _str(table: Mapping[str, Any], key: str, where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}: missing required key {key!r}")
        return default
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key!r} must be a non-empty string")
    return value


def _table(data: Mapping[str, Any], key: str, where: str, known: set[str]) -> Mapping[str, Any]:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"{where}: unknown [{key}] keys: {', '.join(sorted(unknown))}")
    return table


def parse_seal_settings(data: Mapping[str, Any], base: Path, where: Path) -> SealSettings:
    """The seal part of ``node.toml``: ``seal``, ``seal_key_file``, ``[pkcs11]``, ``[shamir]``."""
    kind = data.get("seal", "file")
    if kind not in KINDS:
        raise ConfigError(f"{where}: 'seal' must be one of {', '.join(KINDS)} (got {kind!r})")

    def path(value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else base / p

    for other in {"pkcs11", "shamir"} - {kind}:
        if other in data:
            raise ConfigError(f"{where}: [{other}] is set but seal = {kind!r}")
    if kind == "file":
        return SealSettings("file", key_file=path(_str(data, "seal_key_file", str(where))))
    if "seal_key_file" in data:
        raise ConfigError(f"{where}: seal = {kind!r} keeps no seal key file; remove "
                          "seal_key_file (and the seal.key it names)")
    if kind == "shamir":
        table = _table(data, "shamir", str(where), {"threshold", "shares"})
        threshold, shares = table.get("threshold"), table.get("shares")
        for name, value in (("threshold", threshold), ("shares", shares)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= MAX_SHARES):
                raise ConfigError(f"{where}: [shamir] {name} must be an integer from 1 to "
                                  f"{MAX_SHARES}")
        return SealSettings("shamir", threshold=threshold, shares=shares)
    table = _table(data, "pkcs11", str(where),
                   {"module", "token_label", "pin_file", "pin_credential", "softhsm_tokendir"})
    w = f"{where}: [pkcs11]"
    pin_file = _str(table, "pin_file", w, None)
    credential = _str(table, "pin_credential", w, None)
    if (pin_file is None) == (credential is None):
        raise ConfigError(f"{w} needs exactly one of pin_file (a 0600 file) or "
                          "pin_credential (a systemd credential name)")
    if credential is not None and ("/" in credential or credential in (".", "..")):
        raise ConfigError(f"{w} pin_credential is a credential name, not a path")
    tokendir = _str(table, "softhsm_tokendir", w, None)
    return SealSettings("pkcs11", pkcs11=Pkcs11Settings(
        module=path(_str(table, "module", w)), token_label=_str(table, "token_label", w),
        pin_file=None if pin_file is None else path(pin_file), pin_credential=credential,
        softhsm_tokendir=None if tokendir is None else path(tokendir)))


def open_seal(settings: SealSettings, cluster_id: str,
              environ: Mapping[str, str] = os.environ) -> SealProvider:
    """The node's seal provider (pkcs11: logged in to its token; shamir: sealed)."""
    if settings.kind == "file":
        from raftsso.seal.file_seal import FileSeal

        if settings.key_file is None:
            raise ConfigError("the file seal needs seal_key_file")
        return FileSeal(settings.key_file)
    if settings.kind == "pkcs11":
        from raftsso.seal.pkcs11_seal import Pkcs11Seal

        if settings.pkcs11 is None:
            raise ConfigError("the pkcs11 seal needs a [pkcs11] table")
        return Pkcs11Seal(settings.pkcs11, cluster_id, environ=environ)
    from raftsso.seal.shamir_seal import ShamirSeal

    return ShamirSeal(cluster_id, threshold=settings.threshold)
