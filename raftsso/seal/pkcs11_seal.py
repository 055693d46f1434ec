"""The ``pkcs11`` seal: the seal key is a non-extractable AES-256 key inside a PKCS#11 token.

The node logs in to its token with a PIN read from a 0600 file or a systemd credential,
and seals and opens master secrets *inside the token* with ``CKM_AES_GCM`` (same blob
format and AAD as the other providers, :mod:`raftsso.seal.blob`). The seal key never
enters this process: the token refuses to reveal a key that is ``CKA_SENSITIVE`` and not
``CKA_EXTRACTABLE``, and this provider refuses to use a seal key that is either.

Why AES-GCM in the token rather than AES key wrap (``CKM_AES_KEY_WRAP``): GCM takes the
AAD that binds a sealed secret to its cluster, version and seal generation, as every
other provider does; key wrap has no AAD, and would need master secrets imported into
the token as key objects first. SoftHSM2 and common HSMs offer ``CKM_AES_GCM``.

Key objects are labelled ``raftsso-seal:CLUSTER:gGENERATION`` so one token can hold the
generations of a seal rekey (and keys of other clusters, which are ignored).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.mechanisms import GCMParams

from raftsso import envelope
from raftsso.errors import ConfigError, InvalidToken
from raftsso.seal import blob
from raftsso.seal.base import SealError, SealStatus
from raftsso.seal.keyed import check_secret, check_version
from raftsso.seal.settings import Pkcs11Settings, read_pin

LABEL_PREFIX = "raftsso-seal:"
SOFTHSM_ENV = "SOFTHSM2_CONF"
_TAG_BITS = envelope.TAG_SIZE * 8


def key_label(cluster_id: str, generation: int) -> str:
    return f"{LABEL_PREFIX}{cluster_id}:g{generation}"


# -- the module: one per process, as PKCS#11 libraries are -----------------------------


class _Module:
    """The loaded PKCS#11 library. SoftHSM reads its configuration when it initialises,
    so another token directory (init's key ceremony over several node tokens, tests)
    means finalising and initialising again, which closes every session: refused while a
    provider is open.

    For SoftHSM the node names only its token directory (relative to node.toml, so a
    deployment can move); the configuration SoftHSM wants is written to a private
    temporary file for the moment of initialisation and removed at once.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.lib: Any = None
        self.path: str | None = None
        self.tokendir: Path | None = None
        self.sessions = 0

    def load(self, module: Path, tokendir: Path | None, *, reinitialize: bool = False) -> Any:
        with self.lock:
            if self.lib is not None and self.path != str(module):
                raise ConfigError(f"this process uses the PKCS#11 module {self.path} already; "
                                  f"it cannot also load {module}")
            if self.lib is not None and not reinitialize and tokendir in (None, self.tokendir):
                return self.lib
            if self.sessions:
                raise SealError("cannot switch the SoftHSM token directory while a token "
                                "session is open")
            if tokendir is not None and not tokendir.is_dir():
                raise ConfigError(f"the SoftHSM token directory {tokendir} does not exist")
            if self.lib is None and not module.is_file():
                raise ConfigError(f"the PKCS#11 module {module} does not exist "
                                  "(for SoftHSM2: apt-get install softhsm2)")
            with _softhsm_config(tokendir):
                try:
                    if self.lib is None:
                        self.lib = pkcs11.lib(str(module))
                        self.path = str(module)
                    else:
                        self.lib.reinitialize()
                except (OSError, RuntimeError) as exc:  # PKCS11Error is a RuntimeError
                    raise ConfigError(f"the PKCS#11 module {module} failed to initialise "
                                      f"({type(exc).__name__}); check its configuration"
                                      + (f" (token directory {tokendir})" if tokendir else "")
                                      ) from None
            self.tokendir = tokendir
            return self.lib


@contextlib.contextmanager
def _softhsm_config(tokendir: Path | None) -> Iterator[None]:
    """``SOFTHSM2_CONF`` pointing at a private configuration naming ``tokendir``."""
    if tokendir is None:
        yield
        return
    old = os.environ.get(SOFTHSM_ENV)
    with tempfile.TemporaryDirectory(prefix="raftsso-softhsm-") as tmp:
        conf = Path(tmp) / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {tokendir.resolve()}\n"
                        "objectstore.backend = file\nlog.level = ERROR\n"
                        "slots.removable = false\n")
        os.environ[SOFTHSM_ENV] = str(conf)
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(SOFTHSM_ENV, None)
            else:
                os.environ[SOFTHSM_ENV] = old


_MODULE = _Module()


def load_module(settings: Pkcs11Settings) -> Any:
    return _MODULE.load(settings.module, settings.softhsm_tokendir)


def find_token(lib: Any, settings: Pkcs11Settings) -> Any:
    label = settings.token_label
    try:
        return lib.get_token(token_label=label)
    except p11e.NoSuchToken:
        raise ConfigError(f"no PKCS#11 token labelled {label!r} in {settings.module}"
                          + (f" (token directory {settings.softhsm_tokendir})"
                             if settings.softhsm_tokendir else "")
                          + "; list them with: softhsm2-util --show-slots") from None
    except p11e.MultipleTokensReturned:
        raise ConfigError(f"several PKCS#11 tokens are labelled {label!r}; give each its "
                          "own label") from None


def _login(lib: Any, settings: Pkcs11Settings, pin: str) -> Any:
    token = find_token(lib, settings)
    where = f"PKCS#11 token {settings.token_label!r}"
    try:
        return token.open(rw=True, user_pin=pin)
    except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
        raise ConfigError(f"the PIN from {settings.pin_source} is not the user PIN of {where}; "
                          "no seal key was used") from None
    except p11e.PinLocked:
        raise ConfigError(f"the user PIN of {where} is locked (too many wrong PINs); the "
                          "token's security officer must reset it") from None
    except p11e.UserPinNotInitialized:
        raise ConfigError(f"{where} has no user PIN yet (initialise the token)") from None
    except p11e.PKCS11Error as exc:
        raise ConfigError(f"cannot log in to {where}: {type(exc).__name__}") from None


# -- the provider -----------------------------------------------------------------------


class Pkcs11Seal:
    """Seal keys that stay inside a PKCS#11 token; thread-safe (one session, one lock)."""

    kind = "pkcs11"

    def __init__(self, settings: Pkcs11Settings, cluster_id: str, *,
                 environ: Mapping[str, str] = os.environ, require_key: bool = True) -> None:
        self.settings = settings
        self.cluster_id = cluster_id
        self._lock = threading.Lock()
        pin = read_pin(settings, environ)
        with _MODULE.lock:
            lib = load_module(settings)
            self._session: Any = _login(lib, settings, pin)
            _MODULE.sessions += 1
        del pin
        self._closed = False
        try:
            self._keys: dict[int, Any] = self._find_keys()
            if require_key and not self._keys:
                raise ConfigError(
                    f"PKCS#11 token {settings.token_label!r} holds no seal key of cluster "
                    f"{cluster_id} (label {key_label(cluster_id, 1)!r}); run the key "
                    "ceremony (raftsso init --seal pkcs11) or restore the token")
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return (f"Pkcs11Seal(token={self.settings.token_label!r}, "
                f"generations={list(self.generations)})")

    def _find_keys(self) -> dict[int, Any]:
        prefix = f"{LABEL_PREFIX}{self.cluster_id}:g"
        keys: dict[int, Any] = {}
        for obj in self._session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                              Attribute.KEY_TYPE: KeyType.AES}):
            label = obj[Attribute.LABEL]
            if not isinstance(label, str) or not label.startswith(prefix):
                continue
            try:
                generation = blob.check_generation(int(label[len(prefix):]))
            except ValueError:
                continue
            if not obj[Attribute.SENSITIVE] or obj[Attribute.EXTRACTABLE]:
                raise ConfigError(f"the seal key {label!r} in PKCS#11 token "
                                  f"{self.settings.token_label!r} can be extracted; refusing "
                                  "to use it (import it again as sensitive, non-extractable)")
            if generation in keys:
                raise ConfigError(f"PKCS#11 token {self.settings.token_label!r} holds two "
                                  f"keys labelled {label!r}; remove one")
            keys[generation] = obj
        return keys

    @property
    def sealed(self) -> bool:
        return not self._keys

    @property
    def generations(self) -> tuple[int, ...]:
        return tuple(sorted(self._keys))

    def status(self) -> SealStatus:
        return SealStatus(self.kind, self.sealed, self.generations)

    def _key(self, generation: int | None) -> tuple[int, Any]:
        if self._closed:
            raise SealError("the PKCS#11 seal is closed")
        if generation is None and self._keys:
            generation = max(self._keys)
        key = None if generation is None else self._keys.get(generation)
        if generation is None or key is None:
            raise SealError(f"PKCS#11 token {self.settings.token_label!r} holds no seal key "
                            f"of generation {generation} (it holds "
                            f"{', '.join(map(str, self.generations)) or 'none'})")
        return generation, key

    def wrap(self, secret: bytes, *, cluster_id: str, version: int,
             generation: int | None = None) -> bytes:
        check_secret(secret)
        check_version(version)
        nonce = os.urandom(envelope.NONCE_SIZE)
        with self._lock:
            generation, key = self._key(generation)
            head = blob.header(generation)
            try:
                body = key.encrypt(bytes(secret), mechanism=Mechanism.AES_GCM,
                                   mechanism_param=GCMParams(
                                       nonce, blob.aad(head, cluster_id, version), _TAG_BITS))
            except p11e.PKCS11Error as exc:
                raise SealError(f"PKCS#11 token {self.settings.token_label!r} failed to seal "
                                f"({type(exc).__name__})") from None
        if len(body) != envelope.KEY_SIZE + envelope.TAG_SIZE:
            raise SealError("the PKCS#11 token returned a sealed secret of the wrong size")
        return head + nonce + bytes(body)

    def unwrap(self, sealed: bytes, *, cluster_id: str, version: int) -> bytes:
        check_version(version)
        if blob.is_legacy(sealed):
            # Format 1 (the file seal's generation 1): the same key imported into the
            # token opens it, so a cluster can move from the file seal to a token.
            body, aad = sealed[1:], envelope.seal_aad(cluster_id, version)
        else:
            head, body = blob.split(sealed)
            aad = blob.aad(head, cluster_id, version)
        nonce, data = body[:envelope.NONCE_SIZE], body[envelope.NONCE_SIZE:]
        with self._lock:
            _, key = self._key(blob.generation_of(sealed))
            try:
                secret = key.decrypt(data, mechanism=Mechanism.AES_GCM,
                                     mechanism_param=GCMParams(nonce, aad, _TAG_BITS))
            except (p11e.SessionHandleInvalid, p11e.SessionClosed, p11e.DeviceRemoved,
                    p11e.DeviceError, p11e.TokenNotPresent, p11e.UserNotLoggedIn) as exc:
                raise SealError(f"PKCS#11 token {self.settings.token_label!r} failed "
                                f"({type(exc).__name__})") from None
            except p11e.PKCS11Error:
                # A wrong tag is CKR_ENCRYPTED_DATA_INVALID in the standard, but SoftHSM
                # answers CKR_GENERAL_ERROR: every other failure is the opaque error.
                raise InvalidToken() from None
        if len(secret) != envelope.KEY_SIZE:
            raise InvalidToken()
        return bytes(secret)

    def install(self, generation: int, key: bytes) -> None:
        """Import ``key`` as the sensitive, non-extractable key of ``generation``.

        A key of that generation already in the token is destroyed first (a rekey run
        again after an interruption installs its new key again; nothing is sealed under
        a generation before every node has it)."""
        blob.check_generation(generation)
        check_secret(key)
        with self._lock:
            if self._closed:
                raise SealError("the PKCS#11 seal is closed")
            old = self._keys.pop(generation, None)
            try:
                if old is not None:
                    old.destroy()
                self._keys[generation] = self._session.create_object(
                    _key_template(self.cluster_id, generation, key))
            except p11e.PKCS11Error as exc:
                raise SealError(f"PKCS#11 token {self.settings.token_label!r} refused the "
                                f"seal key ({type(exc).__name__})") from None

    def forget(self, generation: int) -> None:
        """Destroy a generation's key in the token (never the last one)."""
        with self._lock:
            if generation not in self._keys:
                return
            if len(self._keys) == 1:
                raise SealError(f"generation {generation} is the only seal key in PKCS#11 "
                                f"token {self.settings.token_label!r}; refusing to destroy it")
            try:
                self._keys[generation].destroy()
            except p11e.PKCS11Error as exc:
                raise SealError(f"PKCS#11 token {self.settings.token_label!r} did not destroy "
                                f"the seal key ({type(exc).__name__})") from None
            del self._keys[generation]

    def close(self) -> None:
        with _MODULE.lock:
            if getattr(self, "_closed", True):
                return
            self._closed = True
            self._keys = {}
            with contextlib.suppress(p11e.PKCS11Error):
                self._session.close()
            _MODULE.sessions -= 1


def _key_template(cluster_id: str, generation: int, key: bytes) -> dict[Attribute, Any]:
    return {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.VALUE: bytes(key),
        Attribute.LABEL: key_label(cluster_id, generation),
        Attribute.ID: generation.to_bytes(4, "big"),
        Attribute.TOKEN: True,        # persistent
        Attribute.PRIVATE: True,      # visible only after login
        Attribute.SENSITIVE: True,    # the value can never be read
        Attribute.EXTRACTABLE: False,  # nor wrapped out of the token
        Attribute.ENCRYPT: True,
        Attribute.DECRYPT: True,
        Attribute.WRAP: False,
        Attribute.UNWRAP: False,
        Attribute.SIGN: False,
        Attribute.VERIFY: False,
        Attribute.DERIVE: False,
        Attribute.MODIFIABLE: False,  # nobody turns the flags above around later
    }
