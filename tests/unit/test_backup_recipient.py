"""raftsso.backup_recipient: backups encrypted to an X25519 public key (real crypto).

Layout (from the module's docstring)::

    "RSSOBAK" | format (2) | header length (u32 BE) | header (msgpack) | nonce (12) | sealed
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from raftsso import backup, envelope
from raftsso.backup import MAGIC, BackupError, BackupVersion
from raftsso.backup_recipient import (
    FORMAT,
    SCHEME,
    Identity,
    is_recipient_backup,
    keygen,
    load_identity,
    load_recipient,
    open_backup,
    public_path,
    read_any_info,
    read_recipient_info,
    write_backup,
)
from raftsso.errors import ConfigError
from raftsso.wire import pack, unpack

CLUSTER = "c-recipient-unit"
HEAD = len(MAGIC) + 1 + 4


def version(i: int, state: str = "active") -> BackupVersion:
    key = bytes([i]) * envelope.KEY_SIZE
    return BackupVersion(i, state, envelope.fingerprint(key), 1000.0 + i, key)


VERSIONS = [version(1), version(2, "primary"), version(3, "staged")]
IDENTITY = Identity.generate()


def make(identity: Identity = IDENTITY) -> bytes:
    return write_backup(identity.recipient, cluster_id=CLUSTER, primary=2, versions=VERSIONS)


def parts(blob: bytes) -> tuple[dict[str, object], int]:
    (length,) = struct.unpack_from(">I", blob, len(MAGIC) + 1)
    return unpack(blob[HEAD:HEAD + length]), HEAD + length


def test_round_trip_gives_every_key_back() -> None:
    blob = make()
    assert blob[:len(MAGIC)] == MAGIC and blob[len(MAGIC)] == FORMAT
    info = open_backup(blob, IDENTITY)
    assert info.cluster_id == CLUSTER and info.primary == 2
    assert [(v.id, v.state, v.key) for v in info.versions] == \
        [(v.id, v.state, v.key) for v in VERSIONS]
    assert info.kdf == {"name": SCHEME, "key_id": IDENTITY.recipient.key_id}


def test_known_answer_with_an_independent_derivation() -> None:
    """Open a file with the scheme written out by hand from the docstring: X25519, HKDF
    (salt = ephemeral | recipient, info = label), AES-256-GCM with the prefix as AAD."""
    blob = make()
    header, end = parts(blob)
    recipient = header["recipient"]
    assert isinstance(recipient, dict)
    ephemeral = recipient["ephemeral"]
    shared = X25519PrivateKey.from_private_bytes(IDENTITY.private_bytes()).exchange(
        X25519PublicKey.from_public_bytes(ephemeral))
    key = HKDF(hashes.SHA256(), 32, salt=ephemeral + IDENTITY.recipient.public,
               info=b"raftsso/backup/x25519/v1").derive(shared)
    sealed = blob[end:]
    body = unpack(AESGCM(key).decrypt(sealed[:12], sealed[12:], blob[:end]))
    assert [v["key"] for v in body["versions"]] == [v.key for v in VERSIONS]


def test_every_file_has_its_own_ephemeral_key() -> None:
    a, b = parts(make())[0]["recipient"], parts(make())[0]["recipient"]
    assert isinstance(a, dict) and isinstance(b, dict)
    assert a["ephemeral"] != b["ephemeral"] and a["key_id"] == b["key_id"]


def test_the_header_is_readable_without_the_identity_and_holds_no_key() -> None:
    blob = make()
    info = read_any_info(blob)
    assert info.cluster_id == CLUSTER and [v.id for v in info.versions] == [1, 2, 3]
    assert all(v.key is None for v in info.versions)
    assert info.kdf["key_id"] == IDENTITY.recipient.key_id
    for v in VERSIONS:
        assert v.key is not None and v.key not in blob


def test_another_identity_is_refused_by_key_id() -> None:
    other = Identity.generate()
    with pytest.raises(BackupError, match=f"encrypted to key {IDENTITY.recipient.key_id}"):
        open_backup(make(), other)


def test_a_forged_key_id_does_not_help_another_identity() -> None:
    """The key id is only a hint: rewriting it to the attacker's id fails authentication."""
    other = Identity.generate()
    header, end = parts(make())
    recipient = dict(header["recipient"])  # type: ignore[arg-type]
    recipient["key_id"] = other.recipient.key_id
    forged = backup.frame(FORMAT, {**header, "recipient": recipient})
    blob = forged + make()[end:]
    with pytest.raises(BackupError, match="changed or damaged"):
        open_backup(blob, other)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_flipped_byte_is_refused(data: st.DataObject) -> None:
    blob = bytearray(make())
    i = data.draw(st.integers(len(MAGIC) + 1, len(blob) - 1))
    blob[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(BackupError):
        open_backup(bytes(blob), IDENTITY)


def test_a_changed_header_field_is_refused() -> None:
    blob = make()
    header, end = parts(blob)
    tampered = backup.frame(FORMAT, {**header, "primary": 1}) + blob[end:]
    with pytest.raises(BackupError, match="changed or damaged"):
        open_backup(tampered, IDENTITY)


@pytest.mark.parametrize("recipient", [
    None, {}, {"scheme": "rsa", "key_id": "x", "ephemeral": b"\x00" * 32},
    {"scheme": SCHEME, "key_id": "x", "ephemeral": b"\x00" * 31},
    {"scheme": SCHEME, "key_id": 5, "ephemeral": b"\x00" * 32},
])
def test_a_damaged_recipient_header_is_one_clear_error(recipient: object) -> None:
    header, end = parts(make())
    blob = backup.frame(FORMAT, {**header, "recipient": recipient}) + make()[end:]
    with pytest.raises(BackupError, match="recipient scheme"):
        read_recipient_info(blob)


def test_a_low_order_ephemeral_key_is_refused_not_crashed() -> None:
    blob = make()
    header, end = parts(blob)
    recipient = dict(header["recipient"])  # type: ignore[arg-type]
    recipient["ephemeral"] = b"\x00" * 32  # the all-zero point: an all-zero shared secret
    forged = backup.frame(FORMAT, {**header, "recipient": recipient}) + blob[end:]
    with pytest.raises(BackupError):
        open_backup(forged, IDENTITY)


def test_the_two_formats_tell_each_other_apart() -> None:
    fast = {"name": "argon2id", "memory_kib": 8, "iterations": 1, "lanes": 1}
    password_blob = backup.write_backup(b"correct horse battery", cluster_id=CLUSTER,
                                        primary=2, versions=VERSIONS, kdf=fast)
    assert not is_recipient_backup(password_blob) and is_recipient_backup(make())
    assert read_any_info(password_blob).kdf["name"] == "argon2id"
    with pytest.raises(BackupError, match="protected by a password"):
        open_backup(password_blob, IDENTITY)
    with pytest.raises(BackupError, match="protected by a public key"):
        backup.open_backup(make(), b"correct horse battery")
    with pytest.raises(BackupError, match="format 9 is not supported"):
        is_recipient_backup(MAGIC + b"\x09" + b"\x00" * 8)


def test_a_backup_needs_keys() -> None:
    with pytest.raises(BackupError, match="at least one version"):
        write_backup(IDENTITY.recipient, cluster_id=CLUSTER, primary=None, versions=[])
    with pytest.raises(BackupError, match="at least one version"):
        write_backup(IDENTITY.recipient, cluster_id=CLUSTER, primary=None,
                     versions=[BackupVersion(1, "primary", "fp", 1.0)])


def test_keygen_writes_a_private_identity_and_a_public_recipient(tmp_path: Path) -> None:
    path = tmp_path / "backup.key"
    identity = keygen(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path(path).stat().st_mode) == 0o644
    assert load_identity(path).recipient.public == identity.recipient.public
    recipient = load_recipient(public_path(path))
    assert recipient.key_id == identity.recipient.key_id
    assert recipient.key_id in public_path(path).read_text()
    blob = write_backup(recipient, cluster_id=CLUSTER, primary=1, versions=VERSIONS[:1])
    assert open_backup(blob, load_identity(path)).versions[0].key == VERSIONS[0].key
    assert "key_id" in repr(identity) and identity.private_bytes().hex() not in repr(identity)


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "backup.key"
    keygen(path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="never overwritten"):
        keygen(path)
    assert path.read_bytes() == before
    path.unlink()
    with pytest.raises(ConfigError, match="never overwritten"):  # the .pub is still there
        keygen(path)


def test_an_identity_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "backup.key"
    keygen(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="accessible by other users"):
        load_identity(path)


@pytest.mark.parametrize("text", [
    b"", b"raftsso-backup-identity v1\n", b"raftsso-seal-key v1\nAAAA\n",
    b"raftsso-backup-identity v1\n!!!\n", b"raftsso-backup-identity v1\nAAAA\n", b"\xff\xfe",
])
def test_bad_key_files_are_one_clear_error(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "k"
    path.write_bytes(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="backup identity"):
        load_identity(path)
    with pytest.raises(ConfigError, match="backup recipient"):
        load_recipient(path)


def test_the_public_file_is_not_an_identity(tmp_path: Path) -> None:
    path = tmp_path / "backup.key"
    keygen(path)
    public_path(path).chmod(0o600)
    with pytest.raises(ConfigError, match="not a raftsso backup identity"):
        load_identity(public_path(path))
    with pytest.raises(ConfigError, match="not a raftsso backup recipient"):
        load_recipient(path)


def test_missing_recipient_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_recipient(tmp_path / "nope.pub")


def test_header_prefix_layout() -> None:
    blob = make()
    header, end = parts(blob)
    assert set(header) == {"recipient", "cluster_id", "created", "reminder", "primary",
                           "versions"}
    assert blob[:end] == backup.frame(FORMAT, header)
    assert pack(header) == blob[HEAD:end]
