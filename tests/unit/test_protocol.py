"""raftsso.protocol: typed messages and commands, and the bytes written before they existed.

The hex in ``tests/vectors/old_protocol.json`` was produced by the code before the typed
protocol (``encode_command`` with keyword fields, the state machine's ``snapshot``, the
client's request frame): journals, snapshots and clients of that version must keep working
unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from raftsso.errors import BadRequest, DecodeError
from raftsso.fsm import KeyringStateMachine
from raftsso.keyring import KeyState
from raftsso.protocol import ErrorCode, ids
from raftsso.protocol.commands import (
    BackedUp,
    Barrier,
    Bootstrap,
    Member,
    Promote,
    Restore,
    Retire,
    Rotate,
    SealedVersion,
    decode_command,
)
from raftsso.protocol.messages import (
    REQUESTS,
    BackedUpRequest,
    ClientSeen,
    ClientsView,
    ErrorBody,
    KeyringRequest,
    MemberAddRequest,
    Op,
    RestoreRequest,
    RestoreVersion,
    RetireRequest,
    RotateRequest,
    TransferLeaderRequest,
)
from raftsso.wire import decode_body, parse_request, unpack


def R(n: int) -> bytes:
    return bytes([n]) * 16


def S(n: int) -> bytes:
    return bytes([1]) + bytes([n]) * 60


OLD = json.loads((Path(__file__).parent.parent / "vectors" / "old_protocol.json").read_text())
OLD_COMMANDS: dict[str, str] = OLD["commands"]
TYPED = {
    "bootstrap": Bootstrap(ids.RequestId(R(1)), S(1), "fp1", 1000.5),
    "rotate": Rotate(ids.RequestId(R(2)), ids.VersionId(2), S(2), "fp2", 2000.0,
                     ids.VersionId(1), False),
    "promote": Promote(ids.RequestId(R(3)), ids.VersionId(2), 3000.0),
    "barrier": Barrier(ids.RequestId(R(4))),
    "backed_up": BackedUp(ids.RequestId(R(6)), {2: "fp2"}),
    "member": Member(ids.RequestId(R(7)), "node4", "127.0.0.1:7109", "127.0.0.1:7110", False),
    "retire": Retire(ids.RequestId(R(5)), ids.VersionId(1)),
    "restore": Restore(ids.RequestId(R(8)), (SealedVersion(ids.VersionId(1), S(1), "fp1",
                                                           1000.5),), None, False, 4000.0),
}
# What the old state machine answered to the commands above, applied in this order.
OLD_OUTCOMES = {
    "bootstrap": {"version": 1, "state": "primary", "primary_version": 1},
    "rotate": {"version": 2, "state": "staged", "primary_version": 1},
    "promote": {"version": 2, "state": "primary", "primary_version": 2},
    "barrier": {"last_id": 2},
    "backed_up": {"marked": [2]},
    "member": {"node_id": "node4", "removed": False},
    "retire": {"version": 1, "state": "retired", "primary_version": 2},
    "restore": {"added": [], "revived": [1], "replaced": [], "primary_version": 2},
}
# The old state machine's snapshot after those commands.
OLD_SNAPSHOT: str = OLD["snapshot"]
# A client's rotate frame before the typed protocol.
OLD_ROTATE_FRAME: str = OLD["rotate_frame"]


@pytest.mark.parametrize("name", list(OLD_COMMANDS))
def test_old_journal_entries_decode_to_the_typed_commands_and_encode_the_same(name: str) -> None:
    blob = bytes.fromhex(OLD_COMMANDS[name])
    assert decode_command(blob) == TYPED[name]
    assert TYPED[name].encode() == blob


def test_old_journal_replays_to_the_same_outcomes_and_snapshot() -> None:
    fsm = KeyringStateMachine()
    for index, (name, blob) in enumerate(OLD_COMMANDS.items(), 1):
        outcome = fsm.apply(bytes.fromhex(blob), index=index)
        assert outcome.ok and outcome.data == OLD_OUTCOMES[name], (name, outcome)
    assert fsm.snapshot() == bytes.fromhex(OLD_SNAPSHOT)


def test_an_old_snapshot_restores_and_remembers_its_requests() -> None:
    fsm = KeyringStateMachine()
    fsm.restore(bytes.fromhex(OLD_SNAPSHOT))
    ring = fsm.keyring
    assert [(v.id, v.state) for v in ring.versions] == [(1, KeyState.ACTIVE),
                                                         (2, KeyState.PRIMARY)]
    assert fsm.directory()["node4"].raft_address == "127.0.0.1:7109"
    again = fsm.apply(bytes.fromhex(OLD_COMMANDS["retire"]))  # a retried request id
    assert again.data == OLD_OUTCOMES["retire"]
    assert fsm.snapshot() == bytes.fromhex(OLD_SNAPSHOT)


def test_an_old_client_frame_decodes_into_the_typed_request() -> None:
    frame = bytes.fromhex(OLD_ROTATE_FRAME)
    rid, op, args = parse_request(decode_body(frame[4:]))
    assert (rid, op) == (7, Op.ROTATE)
    assert RotateRequest.from_wire(args) == RotateRequest(ids.RequestId(R(9)), True,
                                                          ids.VersionId(3))


KEY = bytes(range(32))
REQUEST_EXAMPLES: list[Any] = [
    RotateRequest(now=True, expect_primary=ids.VersionId(4)), RotateRequest(),
    RetireRequest(ids.VersionId(2), force=True),
    BackedUpRequest({ids.VersionId(1): "fp1", ids.VersionId(2): "fp2"}),
    RestoreRequest("c1", (RestoreVersion(ids.VersionId(3), KEY, "fp", 5.0),),
                   ids.VersionId(3), True),
    KeyringRequest(ids.ClientId("abc"), True), KeyringRequest(),
    TransferLeaderRequest(ids.NodeId("node2")),
    MemberAddRequest(ids.NodeId("node4"), "127.0.0.1:7109", "127.0.0.1:7110"),
]


@pytest.mark.parametrize("request_", REQUEST_EXAMPLES, ids=lambda r: type(r).__name__)
def test_requests_round_trip_through_the_wire(request_: Any) -> None:
    assert type(request_).from_wire(unpack(_packed(request_.to_wire()))) == request_
    assert REQUESTS[request_.op] is type(request_)


def _packed(obj: Any) -> bytes:
    from raftsso.wire import pack
    return pack(obj)


@pytest.mark.parametrize(("cls", "args", "field"), [
    (RotateRequest, {"request_id": R(1), "now": "yes"}, "now"),
    (RotateRequest, {"request_id": R(1)[:15]}, "request_id"),
    (RotateRequest, {"request_id": R(1), "expect_primary": 2**32}, "expect_primary"),
    (RotateRequest, {"request_id": R(1), "expect_primary": True}, "expect_primary"),
    (RetireRequest, {"request_id": R(1), "version": 0}, "version"),
    (BackedUpRequest, {"request_id": R(1), "fingerprints": {"x": "fp"}}, "fingerprints"),
    (RestoreRequest, {"request_id": R(1), "cluster_id": "c", "versions": []}, "versions"),
    (RestoreRequest, {"request_id": R(1), "cluster_id": "c", "primary": 9, "versions": [
        {"id": 1, "key": KEY, "fingerprint": "f", "created": 1.0}]}, "primary"),
    (RestoreRequest, {"request_id": R(1), "cluster_id": "c", "versions": [
        {"id": 1, "key": KEY, "fingerprint": "f", "created": float("nan")}]}, "created"),
    (TransferLeaderRequest, {"node_id": "x" * 65}, "node_id"),
    (MemberAddRequest, {"request_id": R(1), "node_id": "n", "raft_address": "nope",
                        "service_address": "127.0.0.1:1"}, "raft_address"),
])
def test_malformed_arguments_are_bad_requests_naming_the_field(cls: Any, args: Any,
                                                               field: str) -> None:
    with pytest.raises(BadRequest) as info:
        cls.from_wire(args)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert field in str(info.value) or "primary" in str(info.value)


def test_a_malformed_keyring_client_id_is_ignored_not_refused() -> None:
    assert KeyringRequest.from_wire({"client_id": "x" * 65}) == KeyringRequest()
    assert KeyringRequest.from_wire({"require_leader": "yes"}) == KeyringRequest()


def test_ids_are_checked_in_one_place() -> None:
    assert ids.version_id(1) == 1 and ids.version_id(2**32 - 1) == 2**32 - 1
    for bad in (0, 2**32, -1, True, 1.0, "1", None):
        assert not ids.is_version_id(bad)
        with pytest.raises(ValueError):
            ids.version_id(bad)
    assert len(ids.new_request_id()) == ids.REQUEST_ID_SIZE
    with pytest.raises(ValueError):
        ids.request_id(b"x" * 15)
    with pytest.raises(ValueError):
        ids.node_id("")


def test_clients_view_round_trips_with_certificate_names_listed_once() -> None:
    view = ClientsView(130.0, 120.0, (ClientSeen("sso-a", "p1", 1.5, 3),
                                      ClientSeen("sso-a", "p2", 2.0, 2),
                                      ClientSeen("sso-b", "p1", 0.0, 3)), overflowed=True)
    wire = view.to_wire()
    assert wire["certificates"] == ["sso-a", "sso-b"]
    assert ClientsView.from_wire(unpack(_packed(wire))) == view
    with pytest.raises(DecodeError):  # an older node's view: unknown, so the safe choice
        ClientsView.from_wire({"tracking_for": 1.0, "window": 1.0, "clients": {}})


def test_error_bodies_carry_codes_and_unknown_codes_read_as_error() -> None:
    body = ErrorBody(ErrorCode.NOT_LEADER, "not me", leader="127.0.0.1:7101")
    assert body.to_wire() == {"code": "NOT_LEADER", "message": "not me",
                              "leader": "127.0.0.1:7101"}
    assert ErrorBody.from_wire(body.to_wire()) == body
    assert ErrorBody.from_wire({"code": "FROM_THE_FUTURE", "message": "m"}).code \
        is ErrorCode.ERROR
