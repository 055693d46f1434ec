"""SoftHSM2 tokens for local deployments and tests: a token per node, in the node's own
directory (``nodeN/softhsm/``), created through the PKCS#11 API (PINs never pass through
a command line, as they would with ``softhsm2-util --init-token``).

A SoftHSM token is a directory of files encrypted under a key derived from its PINs:
a copy of it without the user PIN reveals no key object (``test_seal_pkcs11`` searches
the files for the key). The security officer PIN is random and forgotten at once:
nobody can reset the user PIN, so a lost PIN means a new token and a seal rekey.
"""

from __future__ import annotations

import ctypes
import secrets
from pathlib import Path

from raftsso.errors import ConfigError
from raftsso.seal.base import SealError
from raftsso.seal.pkcs11_seal import _MODULE, find_token
from raftsso.seal.settings import Pkcs11Settings

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
_TOKEN_INITIALIZED = 0x400  # CKF_TOKEN_INITIALIZED


def find_module() -> Path | None:
    """SoftHSM2's PKCS#11 module, if installed (Debian: softhsm2)."""
    return next((Path(p) for p in MODULE_CANDIDATES if Path(p).is_file()), None)


def is_softhsm(module: Path) -> bool:
    return "softhsm" in module.name.lower()


def make_tokendir(directory: Path) -> Path:
    """A new, private (0700) SoftHSM token directory."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    return directory.resolve()


def create_token(settings: Pkcs11Settings, user_pin: str) -> None:
    """Initialise a new token labelled ``settings.token_label`` with ``user_pin``."""
    if settings.softhsm_tokendir is None:
        raise ConfigError("a SoftHSM token needs its softhsm_tokendir")
    label = settings.token_label.encode()
    if not 0 < len(label) <= 32:
        raise ConfigError("a PKCS#11 token label is 1 to 32 bytes")
    with _MODULE.lock:
        lib = _MODULE.load(settings.module, settings.softhsm_tokendir)
        if any(t.label == settings.token_label for t in lib.get_tokens()):
            raise ConfigError(f"a PKCS#11 token labelled {settings.token_label!r} exists "
                              "already")
        slot = next((s for s in lib.get_slots(token_present=True)
                     if not s.get_token().flags & _TOKEN_INITIALIZED), None)
        if slot is None:
            raise SealError("SoftHSM offers no free slot")
        so_pin = secrets.token_hex(16).encode()
        init_token = ctypes.CDLL(str(settings.module)).C_InitToken
        init_token.argtypes = [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong,
                               ctypes.c_char_p]
        init_token.restype = ctypes.c_ulong
        rv = init_token(slot.slot_id, so_pin, len(so_pin), label.ljust(32, b" "))
        if rv != 0:
            raise SealError(f"SoftHSM could not initialise the token (CKR 0x{rv:x})")
        # SoftHSM lists the new token (and a new free slot) after initialising again.
        lib = _MODULE.load(settings.module, settings.softhsm_tokendir, reinitialize=True)
        with find_token(lib, settings).open(rw=True, so_pin=so_pin.decode()) as session:
            session.init_pin(user_pin)
