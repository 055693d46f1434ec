"""The state machine's day-two commands (issue 15): certificate registry, revocations,
encryption counts; their snapshots; the node's persisted revoked serials; the SSO client's
encryption counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftsso.fsm import KeyringStateMachine, encode_command
from raftsso.keyring import KeyState
from raftsso.node.certificates import RevokedSerials
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.commands import (
    Bootstrap,
    CertRegister,
    CertRevoke,
    Encryptions,
    Retire,
    Rotate,
    decode_command,
)
from raftsso.protocol.ids import VersionId, new_request_id
from raftsso.protocol.messages import KeyringRequest
from tests.fakes import FakeClock, FakeSource, make_client, ring

SEALED = b"\x01" * 61


def fresh() -> KeyringStateMachine:
    fsm = KeyringStateMachine()
    assert fsm.apply(Bootstrap(new_request_id(), SEALED, "f1", 1.0).encode()).ok
    return fsm


def test_register_list_and_revoke_by_name() -> None:
    fsm = fresh()
    for serial, name in (("a1", "svc-a"), ("a2", "svc-a"), ("b1", "svc-b")):
        out = fsm.apply(CertRegister(new_request_id(), serial, name, "client", 9e9,
                                     10.0).encode())
        assert out.ok, out
    assert fsm.certs().resolve("svc-a") == ["a1", "a2"]
    out = fsm.apply(CertRevoke(new_request_id(), ("a1", "a2"), {}, "admin-1", 20.0).encode())
    assert out.ok and out.data == {"serials": ["a1", "a2"], "revoked": ["a1", "a2"]}
    assert fsm.certs().revoked == {"a1", "a2"}
    # The same serial under another name is a conflict, and changes nothing.
    out = fsm.apply(CertRegister(new_request_id(), "b1", "svc-x", "client", 9e9, 30.0)
                    .encode())
    assert not out.ok and out.code is ErrorCode.CONFLICT
    assert fsm.certs().get("b1").name == "svc-b"  # type: ignore[union-attr]


def test_a_retried_revocation_is_applied_once() -> None:
    fsm = fresh()
    cmd = CertRevoke(new_request_id(), ("ff",), {"ff": "client-1"}, "admin-1", 5.0).encode()
    first = fsm.apply(cmd)
    assert fsm.apply(cmd) == first and first.data["revoked"] == ["ff"]


@pytest.mark.parametrize("fields", [
    {"serials": ["0A"], "names": {}, "by": "x", "at": 1.0},  # not canonical
    {"serials": [], "names": {}, "by": "x", "at": 1.0},
    {"serials": ["zz"], "names": {}, "by": "x", "at": 1.0},
    {"serials": ["a"], "names": {"a": 5}, "by": "x", "at": 1.0},
    {"serials": ["a"] * 1025, "names": {}, "by": "x", "at": 1.0},
])
def test_malformed_revocations_are_bad_commands(fields: dict[str, object]) -> None:
    fsm = fresh()
    out = fsm.apply(encode_command("cert_revoke", new_request_id(), **fields))
    assert not out.ok and out.code is ErrorCode.BAD_COMMAND
    assert fsm.certs().revoked == frozenset()


def test_encryption_counts_and_retired_versions() -> None:
    fsm = fresh()
    assert fsm.apply(Rotate(new_request_id(), VersionId(2), SEALED, "f2", 2.0, VersionId(1),
                            True).encode()).ok
    out = fsm.apply(Encryptions(new_request_id(), {"svc/a": {1: 7, 2: 3}, "svc/b": {2: 4}},
                                3.0).encode())
    assert out.ok
    assert dict(fsm.encryptions().totals) == {1: 7, 2: 7}
    assert fsm.apply(Retire(new_request_id(), VersionId(1)).encode()).ok
    assert fsm.apply(Encryptions(new_request_id(), {"svc/a": {1: 9, 2: 5}}, 4.0).encode()).ok
    assert dict(fsm.encryptions().totals) == {2: 9}
    assert fsm.keyring.get(1).state is KeyState.RETIRED  # type: ignore[union-attr]


def test_commands_round_trip() -> None:
    for cmd in (CertRegister(new_request_id(), "abc", "n", "admin", 5.0, 1.0),
                CertRevoke(new_request_id(), ("abc",), {"abc": "n"}, "op", 2.0),
                Encryptions(new_request_id(), {"c/1": {3: 4}}, 1.0)):
        assert decode_command(cmd.encode()) == cmd


def test_snapshot_keeps_certs_and_counts_and_old_snapshots_restore() -> None:
    fsm = fresh()
    before = fsm.snapshot()
    restored = KeyringStateMachine()
    restored.restore(before)  # a snapshot without the day-two keys (the earlier format)
    assert len(restored.certs()) == 0 and not restored.encryptions().totals
    fsm.apply(CertRegister(new_request_id(), "a1", "svc-a", "client", 9e9, 1.0).encode())
    fsm.apply(CertRevoke(new_request_id(), ("a1", "b2"), {}, "op", 2.0).encode())
    fsm.apply(Encryptions(new_request_id(), {"svc/x": {1: 12}}, 3.0).encode())
    restored.restore(fsm.snapshot())
    assert restored.certs().records() == fsm.certs().records()
    assert restored.certs().revoked == {"a1", "b2"}
    assert dict(restored.encryptions().totals) == {1: 12}
    assert restored.snapshot() == fsm.snapshot()


def test_revoked_serials_survive_a_restart_before_the_log_is_replayed(tmp_path: Path) -> None:
    path = tmp_path / "revoked.serials"
    fsm = fresh()
    serials = RevokedSerials(fsm, path)
    assert serials() == frozenset() and not path.exists()
    fsm.apply(CertRevoke(new_request_id(), ("a1",), {}, "op", 2.0).encode())
    first = serials()
    assert first == {"a1"} and serials() is first  # the same object until it changes
    assert path.read_text() == "a1\n" and (path.stat().st_mode & 0o777) == 0o600
    # A restarted node: its state machine is empty until the leader's commits arrive.
    restarted = RevokedSerials(KeyringStateMachine(), path)
    assert restarted() == {"a1"}
    # A damaged line is skipped; the others are kept.
    path.write_text("a1\nnot a serial\nB2\n")
    assert RevokedSerials(KeyringStateMachine(), path)() == {"a1", "b2"}


def test_revoked_serials_unreadable_file_falls_back_to_the_registry(tmp_path: Path) -> None:
    path = tmp_path / "revoked.serials"
    path.write_bytes(b"\xff\xfe")
    fsm = fresh()
    fsm.apply(CertRevoke(new_request_id(), ("c3",), {}, "op", 2.0).encode())
    assert RevokedSerials(fsm, path)() == {"c3"}
    assert path.read_text() == "c3\n"  # rewritten whole, from the registry


# -- the SSO client's counts ---------------------------------------------------------------


def test_client_counts_encryptions_per_version_and_reports_them() -> None:
    source = FakeSource()
    source.set_all(ring({1: "primary"}, index=1))
    clock = FakeClock()
    client = make_client(source, clock)
    for _ in range(5):
        client.encrypt(b"x")
    assert client.encryption_counts() == {1: 5}
    assert client.encryption_counts() == {1: 5}  # reading does not count
    source.set_all(ring({1: "active", 2: "primary"}, index=2))
    client.sync()
    for _ in range(3):
        client.encrypt(b"y")
    assert client.encryption_counts() == {1: 5, 2: 3}
    client.close()
    request = KeyringRequest(encryptions={1: 5, 2: 3})
    assert KeyringRequest.from_wire(request.to_wire()).encryptions == {1: 5, 2: 3}
    # A malformed report is ignored (the client still gets its keyring), not refused.
    assert KeyringRequest.from_wire({"encryptions": {"x": -1}}).encryptions is None
