"""What ``raftsso init DIR --seal file|pkcs11|shamir`` writes for the seal.

* ``file``: one new key, ``nodeN/seal.key`` (0600) in every node directory.
* ``shamir``: one new key, split into ``--shares`` shares (any ``--threshold`` rebuild it)
  written as ``DIR/seal-shares/share-K.txt`` (0600, directory 0700). No node holds the
  key; hand each file to its key holder and remove it from DIR. The key itself is
  forgotten when ``init`` exits.
* ``pkcs11`` (the key ceremony): one new key, imported into every node's token as a
  sensitive, non-extractable AES key, then forgotten. With SoftHSM2 and no token of the
  given label, ``init`` creates one token per node in ``nodeN/softhsm/`` with a random
  user PIN in ``DIR/pkcs11-pins/nodeN.pin``: *outside* the node directory, so that a
  copy of ``nodeN/`` alone cannot log in to its token. Move each PIN file to its host's
  credential store (systemd ``LoadCredentialEncrypted=``) and point ``pin_credential``
  at it. With a real HSM the tokens exist already: ``--pkcs11-token-label`` and
  ``--pkcs11-pin-file`` name them; nodes that share a token (a network HSM) get the key
  once.

Key-ceremony threat model (why import, not generate-in-one-token-and-wrap-out): the key
is made by ``init`` from the OS CSPRNG and exists in plaintext only in that one process's
memory, on the operator's machine, for the duration of ``init``. Generating it inside a
ceremony token instead would need it extractable under some wrapping key shared by every
node's token (there is none between independent SoftHSM tokens) and the ceremony token
destroyed afterwards; importing the same bytes into each token as non-extractable gives
the same end state with less machinery. Python cannot promise to erase memory: run
``init`` on a trusted machine, as for any key ceremony. After it, no file holds the key.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftsso import envelope
from raftsso.errors import ConfigError
from raftsso.fsutil import atomic_write
from raftsso.seal.base import KINDS
from raftsso.seal.file_seal import write_key_file
from raftsso.seal.shamir import MAX_SHARES
from raftsso.seal.shares import ensure_share_dir, make_shares, write_share_file

GENERATION = 1
SHARE_DIR = "seal-shares"
PIN_DIR = "pkcs11-pins"


@dataclass(frozen=True)
class SealPlan:
    """The ``--seal`` options of ``init``."""

    kind: str = "file"
    shares: int = 5
    threshold: int = 3
    pkcs11_module: Path | None = None        # None: SoftHSM2's, if installed
    pkcs11_token_label: str | None = None    # None: one SoftHSM token per node
    pkcs11_pin_file: Path | None = None      # None: a random PIN per node (SoftHSM)

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"--seal must be one of {', '.join(KINDS)} (got {self.kind!r})")
        if self.kind == "shamir" and not 1 <= self.threshold <= self.shares <= MAX_SHARES:
            raise ConfigError(f"--threshold must be from 1 to --shares, and --shares at most "
                              f"{MAX_SHARES} (got {self.threshold} of {self.shares})")
        if self.kind == "shamir" and self.threshold == 1 and self.shares > 1:
            raise ConfigError("--threshold 1 makes every share the whole seal key; use 2 or "
                              "more (or --shares 1 for a test deployment)")
        if self.kind != "pkcs11" and (self.pkcs11_module or self.pkcs11_token_label
                                      or self.pkcs11_pin_file):
            raise ConfigError("--pkcs11-* options need --seal pkcs11")


@dataclass(frozen=True)
class SealSetup:
    """What ``init`` writes into each node.toml, and what to tell the operator."""

    node_settings: dict[str, dict[str, Any]]
    share_files: list[Path] = field(default_factory=list)
    pin_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def setup_seal(plan: SealPlan, *, directory: Path, cluster_id: str,
               node_dirs: Mapping[str, Path]) -> SealSetup:
    """Create the cluster's seal key and put it where ``plan`` says; never on stdout."""
    plan.validate()
    key = envelope.new_key()
    if plan.kind == "file":
        for ndir in node_dirs.values():
            write_key_file(ndir / "seal.key", key, GENERATION)
        return SealSetup({n: {"seal": "file", "seal_key_file": "seal.key"} for n in node_dirs})
    if plan.kind == "shamir":
        return _setup_shamir(plan, directory, cluster_id, node_dirs, key)
    return _setup_pkcs11(plan, directory, cluster_id, node_dirs, key)


def _mkdir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def _setup_shamir(plan: SealPlan, directory: Path, cluster_id: str,
                  node_dirs: Mapping[str, Path], key: bytes) -> SealSetup:
    share_dir = directory / SHARE_DIR
    ensure_share_dir(share_dir)
    files = []
    for share in make_shares(key, cluster_id=cluster_id, generation=GENERATION,
                             shares=plan.shares, threshold=plan.threshold):
        path = share_dir / f"share-{share.index}.txt"
        write_share_file(path, share)
        files.append(path)
    settings = {"seal": "shamir", "shamir": {"threshold": plan.threshold,
                                             "shares": plan.shares}}
    return SealSetup({n: dict(settings) for n in node_dirs}, share_files=files, notes=[
        f"the seal key is split into {plan.shares} shares in {share_dir}; any "
        f"{plan.threshold} unseal a node. Give each share file to its own key holder and "
        "remove it from this directory: nodes start sealed until unsealed "
        "(raftsso -c admin.toml unseal NODE --share-file FILE)"])


def _setup_pkcs11(plan: SealPlan, directory: Path, cluster_id: str,
                  node_dirs: Mapping[str, Path], key: bytes) -> SealSetup:
    from raftsso.seal import softhsm
    from raftsso.seal.pkcs11_seal import Pkcs11Seal
    from raftsso.seal.settings import Pkcs11Settings, read_pin

    module = plan.pkcs11_module or softhsm.find_module()
    if module is None:
        raise ConfigError("--seal pkcs11 needs --pkcs11-module (SoftHSM2 is not installed: "
                          "apt-get install softhsm2)")
    per_node_tokens = plan.pkcs11_token_label is None
    if per_node_tokens and not softhsm.is_softhsm(module):
        raise ConfigError("--pkcs11-token-label is required with a hardware token "
                          "(raftsso creates tokens only in SoftHSM2)")
    if not per_node_tokens and plan.pkcs11_pin_file is None:
        raise ConfigError("--pkcs11-pin-file is required with --pkcs11-token-label")
    node_settings: dict[str, dict[str, Any]] = {}
    pin_files: list[Path] = []
    done: dict[tuple[str, Path | None], Pkcs11Settings] = {}
    for node_id, ndir in node_dirs.items():
        tokendir = softhsm.make_tokendir(ndir / "softhsm") if per_node_tokens else None
        if plan.pkcs11_pin_file is not None:
            pin_path = plan.pkcs11_pin_file.resolve()
        else:
            pin_path = (directory / PIN_DIR / f"{node_id}.pin").resolve()
            _mkdir(pin_path.parent)
            atomic_write(pin_path, (secrets.token_urlsafe(24) + "\n").encode())
            pin_files.append(pin_path)
        settings = Pkcs11Settings(module=module,
                                  token_label=plan.pkcs11_token_label or f"raftsso-{node_id}",
                                  pin_file=pin_path, softhsm_tokendir=tokendir)
        if per_node_tokens:
            softhsm.create_token(settings, read_pin(settings))
        token_id = (settings.token_label, tokendir)
        if token_id not in done:
            provider = Pkcs11Seal(settings, cluster_id, require_key=False)
            try:
                provider.install(GENERATION, key)
            finally:
                provider.close()
            done[token_id] = settings
        node_settings[node_id] = {"seal": "pkcs11", "pkcs11": _relative(settings, ndir)}
    _check_same_key(list(done.values()), cluster_id)
    notes = [f"the seal key was imported into {len(done)} PKCS#11 token(s) as "
             "non-extractable and is held nowhere else"]
    if pin_files:
        notes.append(f"token PINs are in {directory / PIN_DIR} (outside the node "
                     "directories): move each to its host's credential store")
    return SealSetup(node_settings, pin_files=pin_files, notes=notes)


def _check_same_key(tokens: list[Any], cluster_id: str) -> None:
    """Seal with the first token, open with every other: the ceremony worked."""
    from raftsso.seal.pkcs11_seal import Pkcs11Seal

    probe = envelope.new_key()
    first = Pkcs11Seal(tokens[0], cluster_id)
    try:
        sealed = first.wrap(probe, cluster_id=cluster_id, version=0, generation=GENERATION)
    finally:
        first.close()
    for settings in tokens[1:]:
        other = Pkcs11Seal(settings, cluster_id)
        try:
            if other.unwrap(sealed, cluster_id=cluster_id, version=0) != probe:
                raise ConfigError("the key ceremony failed: tokens hold different keys")
        finally:
            other.close()


def _relative(settings: Any, ndir: Path) -> dict[str, Any]:
    """node.toml's [pkcs11] table, with paths inside the deployment made relative."""
    out: dict[str, Any] = settings.as_toml()
    for name in ("pin_file", "softhsm_tokendir"):
        if out.get(name):
            p = Path(out[name])
            try:
                out[name] = str(p.relative_to(ndir.resolve()))
            except ValueError:
                rel = _up_relative(p, ndir.resolve())
                out[name] = rel if rel is not None else str(p)
    return {k: v for k, v in out.items() if v is not None}


def _up_relative(path: Path, base: Path) -> str | None:
    """``../x`` for a path beside ``base`` (the deployment's pin directory)."""
    try:
        return str(Path("..") / path.relative_to(base.parent))
    except ValueError:
        return None
