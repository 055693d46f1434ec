"""raftsso.seal.pkcs11_seal with real SoftHSM2 tokens (created by each test in tmp_path).

Nothing is mocked: the seal key is imported into a real token, AES-GCM runs inside it,
and the tests read the token's files to show the key is not in them.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftsso.errors import ConfigError, InvalidToken
from raftsso.seal import SealError, SealProvider, blob, softhsm
from raftsso.seal.file_seal import FileSeal, write_key_file
from raftsso.seal.keyed import KeyedSeal
from raftsso.seal.rekey import new_seal_key, reseal
from raftsso.seal.settings import Pkcs11Settings, open_seal, parse_seal_settings
from raftsso.seal.setup import SealPlan, setup_seal

MODULE = softhsm.find_module()
pytestmark = pytest.mark.skipif(MODULE is None, reason="softhsm2 is not installed "
                                "(apt-get install softhsm2; .ci/run installs it)")

from raftsso.seal.pkcs11_seal import (  # noqa: E402  (needs python-pkcs11 only)
    Pkcs11Seal,
    find_token,
    key_label,
    load_module,
)

KEY = bytes(range(32))
SECRET = bytes(range(100, 132))
CLUSTER = "c-000000000001"
PIN = "user-pin-1234"


def _pin_file(path: Path, pin: str) -> Path:
    path.write_text(pin + "\n")
    path.chmod(0o600)
    return path


def _token(root: Path, label: str = "raftsso-test", pin: str = PIN) -> Pkcs11Settings:
    assert MODULE is not None
    settings = Pkcs11Settings(MODULE, label, pin_file=_pin_file(root / f"{label}.pin", pin),
                              softhsm_tokendir=softhsm.make_tokendir(root / "softhsm"))
    softhsm.create_token(settings, pin)
    return settings


@pytest.fixture
def token(tmp_path: Path) -> Pkcs11Settings:
    return _token(tmp_path)


@pytest.fixture
def with_key(token: Pkcs11Settings) -> Iterator[Pkcs11Settings]:
    seal = Pkcs11Seal(token, CLUSTER, require_key=False)
    seal.install(1, KEY)
    seal.close()
    yield token


def _open(settings: Pkcs11Settings) -> Pkcs11Seal:
    return Pkcs11Seal(settings, CLUSTER)


def test_seal_and_open_inside_the_token(with_key: Pkcs11Settings, tmp_path: Path) -> None:
    seal = _open(with_key)
    try:
        assert isinstance(seal, SealProvider)
        assert seal.generations == (1,) and not seal.sealed
        assert seal.status().as_dict() == {"kind": "pkcs11", "sealed": False,
                                           "generations": [1]}
        sealed = seal.wrap(SECRET, cluster_id=CLUSTER, version=3)
        assert len(sealed) == blob.SIZE and blob.generation_of(sealed) == 1
        assert seal.unwrap(sealed, cluster_id=CLUSTER, version=3) == SECRET
        # Same format as every provider: a file seal holding the same key agrees both ways.
        write_key_file(tmp_path / "seal.key", KEY)
        file_seal = FileSeal(tmp_path / "seal.key")
        assert file_seal.unwrap(sealed, cluster_id=CLUSTER, version=3) == SECRET
        other = file_seal.wrap(SECRET, cluster_id=CLUSTER, version=4)
        assert seal.unwrap(other, cluster_id=CLUSTER, version=4) == SECRET
        for bad_cluster, bad_version, bad_blob in (
                ("c-other", 3, sealed), (CLUSTER, 4, sealed),
                (CLUSTER, 3, sealed[:-1] + bytes([sealed[-1] ^ 1]))):
            with pytest.raises(InvalidToken):
                seal.unwrap(bad_blob, cluster_id=bad_cluster, version=bad_version)
        assert "Pkcs11Seal" in repr(seal) and PIN not in repr(seal)
    finally:
        seal.close()
    with pytest.raises(SealError, match="closed"):
        seal.wrap(SECRET, cluster_id=CLUSTER, version=1)


def test_the_key_cannot_be_read_or_wrapped_out_of_the_token(with_key: Pkcs11Settings) -> None:
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    lib = load_module(with_key)
    with find_token(lib, with_key).open(rw=True, user_pin=PIN) as session:
        key = session.get_key(ObjectClass.SECRET_KEY, KeyType.AES,
                              label=key_label(CLUSTER, 1))
        assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[Attribute.VALUE]
        wrapper = session.generate_key(KeyType.AES, 256, template={
            Attribute.WRAP: True, Attribute.TOKEN: False})
        with pytest.raises(pkcs11.exceptions.PKCS11Error):
            wrapper.wrap_key(key)
        with pytest.raises(pkcs11.exceptions.PKCS11Error):  # CKA_MODIFIABLE is false
            key[Attribute.EXTRACTABLE] = True


def test_token_files_hold_no_copy_of_the_key(with_key: Pkcs11Settings) -> None:
    assert with_key.softhsm_tokendir is not None
    files = [p for p in with_key.softhsm_tokendir.rglob("*") if p.is_file()]
    assert files
    content = b"".join(p.read_bytes() for p in files)
    for form in (KEY, KEY.hex().encode(), base64.b64encode(KEY), KEY[:16], KEY[16:]):
        assert form not in content


def test_wrong_pin_is_one_clear_line_without_the_pin(with_key: Pkcs11Settings,
                                                     tmp_path: Path) -> None:
    wrong = Pkcs11Settings(with_key.module, with_key.token_label,
                           pin_file=_pin_file(tmp_path / "wrong.pin", "not-the-pin-99"),
                           softhsm_tokendir=with_key.softhsm_tokendir)
    with pytest.raises(ConfigError) as info:
        Pkcs11Seal(wrong, CLUSTER)
    message = str(info.value)
    assert "is not the user PIN of PKCS#11 token 'raftsso-test'" in message
    assert "\n" not in message and "not-the-pin-99" not in message and PIN not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    # the token still works with the right PIN (one wrong PIN does not wedge anything)
    _open(with_key).close()


def test_missing_token_module_or_key_is_one_clear_line(token: Pkcs11Settings,
                                                       tmp_path: Path) -> None:
    cases = [
        (Pkcs11Settings(token.module, "no-such-token", pin_file=token.pin_file,
                        softhsm_tokendir=token.softhsm_tokendir), "no PKCS#11 token labelled"),
        (Pkcs11Settings(token.module, token.token_label, pin_file=tmp_path / "none.pin",
                        softhsm_tokendir=token.softhsm_tokendir), "cannot read"),
        (Pkcs11Settings(token.module, token.token_label, pin_file=token.pin_file,
                        softhsm_tokendir=tmp_path / "elsewhere"), "does not exist"),
        (token, "holds no seal key of cluster"),  # a token without the ceremony
    ]
    for settings, expect in cases:
        with pytest.raises(ConfigError, match=expect) as info:
            Pkcs11Seal(settings, CLUSTER)
        assert "\n" not in str(info.value) and PIN not in str(info.value)


def test_an_extractable_key_is_refused(token: Pkcs11Settings) -> None:
    from pkcs11 import Attribute, KeyType, ObjectClass

    lib = load_module(token)
    with find_token(lib, token).open(rw=True, user_pin=PIN) as session:
        session.create_object({
            Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
            Attribute.VALUE: KEY, Attribute.TOKEN: True, Attribute.SENSITIVE: False,
            Attribute.EXTRACTABLE: True, Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
            Attribute.LABEL: key_label(CLUSTER, 1)})
    with pytest.raises(ConfigError, match="can be extracted; refusing"):
        Pkcs11Seal(token, CLUSTER)


def test_rekey_in_the_token_old_blobs_no_longer_open(with_key: Pkcs11Settings) -> None:
    seal = _open(with_key)
    try:
        old = seal.wrap(SECRET, cluster_id=CLUSTER, version=1)
        seal.install(2, new_seal_key())
        seal.install(2, new_seal_key())  # a rekey run again replaces the unused key
        new = reseal(seal, old, cluster_id=CLUSTER, version=1, generation=2)
        assert blob.generation_of(new) == 2
        seal.forget(1)
    finally:
        seal.close()
    seal = _open(with_key)  # what the token holds now, after a restart
    try:
        assert seal.generations == (2,)
        assert seal.unwrap(new, cluster_id=CLUSTER, version=1) == SECRET
        with pytest.raises(SealError, match="no seal key of generation 1"):
            seal.unwrap(old, cluster_id=CLUSTER, version=1)
        with pytest.raises(InvalidToken):  # relabelled, the new key does not open it
            seal.unwrap(blob.header(2) + old[5:], cluster_id=CLUSTER, version=1)
        with pytest.raises(SealError, match="only seal key"):
            seal.forget(2)
    finally:
        seal.close()


def test_key_ceremony_puts_the_same_key_in_every_node_token(tmp_path: Path) -> None:
    deploy = tmp_path / "deploy"
    dirs = {f"node{i}": deploy / f"node{i}" for i in (1, 2, 3)}
    for d in dirs.values():
        d.mkdir(parents=True)
    result = setup_seal(SealPlan("pkcs11"), directory=deploy, cluster_id=CLUSTER,
                        node_dirs=dirs)
    assert not list(deploy.rglob("seal.key"))
    assert [p.name for p in result.pin_files] == ["node1.pin", "node2.pin", "node3.pin"]
    assert all(p.parent == deploy / "pkcs11-pins" and p.stat().st_mode & 0o777 == 0o600
               for p in result.pin_files)
    table = result.node_settings["node2"]
    assert table["pkcs11"]["pin_file"] == "../pkcs11-pins/node2.pin"  # outside node2/
    assert table["pkcs11"]["softhsm_tokendir"] == "softhsm"
    # One process holds one SoftHSM token directory at a time: open each node's in turn.
    blobs = []
    for node_id, d in dirs.items():
        seal = open_seal(parse_seal_settings(result.node_settings[node_id], d,
                                             d / "node.toml"), CLUSTER)
        try:
            blobs.append(seal.wrap(SECRET, cluster_id=CLUSTER, version=len(blobs)))
        finally:
            seal.close()
    for node_id, d in dirs.items():  # every token opens what every other token sealed
        seal = open_seal(parse_seal_settings(result.node_settings[node_id], d,
                                             d / "node.toml"), CLUSTER)
        try:
            for version, sealed in enumerate(blobs):
                assert seal.unwrap(sealed, cluster_id=CLUSTER, version=version) == SECRET
        finally:
            seal.close()


def test_a_copy_of_a_node_directory_without_the_pin_reveals_nothing(tmp_path: Path) -> None:
    """A node directory copied elsewhere (a VM backup, a stolen disk) holds the token, but
    not its PIN: opening it is one clear refusal, and no file holds the key."""
    deploy = tmp_path / "deploy"
    node1 = deploy / "node1"
    node1.mkdir(parents=True)
    result = setup_seal(SealPlan("pkcs11"), directory=deploy, cluster_id=CLUSTER,
                        node_dirs={"node1": node1})
    copy = tmp_path / "elsewhere" / "node1"
    shutil.copytree(node1, copy)
    settings = parse_seal_settings(result.node_settings["node1"], copy, copy / "node.toml")
    with pytest.raises(ConfigError, match=r"cannot read .*pkcs11-pins/node1\.pin") as info:
        open_seal(settings, CLUSTER)
    assert "\n" not in str(info.value)
    # With a guessed PIN in the place the copy expects: refused as well.
    pins = tmp_path / "elsewhere" / "pkcs11-pins"
    pins.mkdir()
    _pin_file(pins / "node1.pin", "guess-1234")
    with pytest.raises(ConfigError, match="is not the user PIN") as info:
        open_seal(settings, CLUSTER)
    assert "guess-1234" not in str(info.value)
    # The real PIN opens the copy's token (so the refusals above are about the PIN).
    shutil.copy(result.pin_files[0], pins / "node1.pin")
    seal = open_seal(settings, CLUSTER)
    try:
        sealed = seal.wrap(SECRET, cluster_id=CLUSTER, version=1)
    finally:
        seal.close()
    # The copy's files hold no key that opens what the token sealed: every 32-byte window
    # of every file, tried as the seal key.
    content = b"".join(p.read_bytes() for p in copy.rglob("*") if p.is_file())
    assert len(content) > 32
    for start in range(len(content) - 31):
        with pytest.raises(InvalidToken):
            KeyedSeal({1: content[start:start + 32]}).unwrap(sealed, cluster_id=CLUSTER,
                                                             version=1)


def test_pin_from_a_systemd_credential(with_key: Pkcs11Settings, tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "raftsso-pkcs11-pin").write_text(PIN)
    (creds / "raftsso-pkcs11-pin").chmod(0o400)
    settings = Pkcs11Settings(with_key.module, with_key.token_label,
                              pin_credential="raftsso-pkcs11-pin",
                              softhsm_tokendir=with_key.softhsm_tokendir)
    seal = Pkcs11Seal(settings, CLUSTER, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    seal.close()
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        Pkcs11Seal(settings, CLUSTER, environ={})


def test_concurrent_threads_share_one_token_session(with_key: Pkcs11Settings) -> None:
    """The node's service threads seal and open at once; one session, one lock."""
    from concurrent.futures import ThreadPoolExecutor

    seal = _open(with_key)
    try:
        def round_trip(version: int) -> bool:
            sealed = seal.wrap(SECRET, cluster_id=CLUSTER, version=version)
            return seal.unwrap(sealed, cluster_id=CLUSTER, version=version) == SECRET

        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(round_trip, range(400)))
    finally:
        seal.close()
