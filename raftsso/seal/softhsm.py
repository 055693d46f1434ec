"""SoftHSM2 tokens for local deployments and tests: a token per node, in the node's own
directory, created through the PKCS#11 API (PINs never pass through a command line).

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
from raftsso.fsutil import atomic_write
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


def write_config(directory: Path) -> Path:
    """``directory/softhsm2.conf`` with its token directory ``directory/tokens`` (0700)."""
    directory = directory.resolve()
    for d in (directory, directory / "tokens"):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        d.chmod(0o700)
    conf = directory / "softhsm2.conf"
    atomic_write(conf, (f"directories.tokendir = {directory / 'tokens'}\n"
                        "objectstore.backend = file\nlog.level = ERROR\n"
                        "slots.removable = false\n").encode())
    return conf


def create_token(settings: Pkcs11Settings, user_pin: str) -> None:
    """Initialise a new token labelled ``settings.token_label`` with ``user_pin``."""
    if settings.softhsm2_conf is None:
        raise ConfigError("a SoftHSM token needs its softhsm2_conf")
    label = settings.token_label.encode()
    if not 0 < len(label) <= 32:
        raise ConfigError("a PKCS#11 token label is 1 to 32 bytes")
    with _MODULE.lock:
        lib = _MODULE.load(settings.module, settings.softhsm2_conf)
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
        lib = _MODULE.load(settings.module, settings.softhsm2_conf, reinitialize=True)
        with find_token(lib, settings).open(rw=True, so_pin=so_pin.decode()) as session:
            session.init_pin(user_pin)
