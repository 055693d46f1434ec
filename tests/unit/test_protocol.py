"""raftsso.protocol: typed messages and commands, and the bytes written before they existed.

The hex below was produced by the code before the typed protocol (``encode_command`` with
keyword fields, the state machine's ``snapshot``, the client's request frame): journals,
snapshots and clients of that version must keep working unchanged.
"""

from __future__ import annotations

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


OLD_COMMANDS = {
    "bootstrap": "0185a26f70a9626f6f747374726170a3726571c41001010101010101010101010101010101a67365616c6564c43d01010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101ab66696e6765727072696e74a3667031a763726561746564cb408f440000000000",
    "rotate": "0188a26f70a6726f74617465a3726571c41002020202020202020202020202020202a776657273696f6e02a67365616c6564c43d01020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202ab66696e6765727072696e74a3667032a763726561746564cb409f400000000000ae6578706563745f7072696d61727901a36e6f77c2",
    "promote": "0184a26f70a770726f6d6f7465a3726571c41003030303030303030303030303030303a776657273696f6e02a26174cb40a7700000000000",
    "barrier": "0182a26f70a762617272696572a3726571c41004040404040404040404040404040404",
    "backed_up": "0183a26f70a96261636b65645f7570a3726571c41006060606060606060606060606060606ac66696e6765727072696e747381a132a3667032",
    "member": "0186a26f70a66d656d626572a3726571c41007070707070707070707070707070707a76e6f64655f6964a56e6f646534ac726166745f61646472657373ae3132372e302e302e313a37313039af736572766963655f61646472657373ae3132372e302e302e313a37313130a772656d6f766564c2",
    "retire": "0183a26f70a6726574697265a3726571c41005050505050505050505050505050505a776657273696f6e01",
    "restore": "0186a26f70a7726573746f7265a3726571c41008080808080808080808080808080808a876657273696f6e739184a2696401ab66696e6765727072696e74a3667031a763726561746564cb408f440000000000a67365616c6564c43d01010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101a77072696d617279c0ab7265706c6163655f6e6577c2a26174cb40af400000000000",
}
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
OLD_SNAPSHOT = "0184a5696e64657808a96469726563746f727981a56e6f64653483ac726166745f61646472657373ae3132372e302e302e313a37313039af736572766963655f61646472657373ae3132372e302e302e313a37313130a772656d6f766564c2a876657273696f6e739287a2696401a57374617465a6616374697665a67365616c6564c43d01010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101ab66696e6765727072696e74a3667031a763726561746564cb408f440000000000a870726f6d6f746564c0a96261636b65645f7570c387a2696402a57374617465a77072696d617279a67365616c6564c43d01020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202ab66696e6765727072696e74a3667032a763726561746564cb409f400000000000a870726f6d6f746564cb40a7700000000000a96261636b65645f7570c3a872657175657374739892c4100101010101010101010101010101010184a26f6bc3a46461746183a776657273696f6e01a57374617465a77072696d617279af7072696d6172795f76657273696f6e01a4636f6465a0a76d657373616765a092c4100202020202020202020202020202020284a26f6bc3a46461746183a776657273696f6e02a57374617465a6737461676564af7072696d6172795f76657273696f6e01a4636f6465a0a76d657373616765a092c4100303030303030303030303030303030384a26f6bc3a46461746183a776657273696f6e02a57374617465a77072696d617279af7072696d6172795f76657273696f6e02a4636f6465a0a76d657373616765a092c4100404040404040404040404040404040484a26f6bc3a46461746181a76c6173745f696402a4636f6465a0a76d657373616765a092c4100606060606060606060606060606060684a26f6bc3a46461746181a66d61726b65649102a4636f6465a0a76d657373616765a092c4100707070707070707070707070707070784a26f6bc3a46461746182a76e6f64655f6964a56e6f646534a772656d6f766564c2a4636f6465a0a76d657373616765a092c4100505050505050505050505050505050584a26f6bc3a46461746183a776657273696f6e01a57374617465a772657469726564af7072696d6172795f76657273696f6e02a4636f6465a0a76d657373616765a092c4100808080808080808080808080808080884a26f6bc3a46461746184a5616464656490a7726576697665649101a87265706c6163656490af7072696d6172795f76657273696f6e02a4636f6465a0a76d657373616765a0"
# A client's rotate frame before the typed protocol.
OLD_ROTATE_FRAME = "000000480183a2696407a26f70a6726f74617465a46172677383aa726571756573745f6964c41009090909090909090909090909090909a36e6f77c3ae6578706563745f7072696d61727903"


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
