"""The keyring fetch path's pure parts (issue 16, item 3): the index at which the keyring
last changed, the ``known``/``unchanged`` protocol fields, the client's merge of an
unchanged answer, and the pre-packed answer frame."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftsso.client import parse_keyring
from raftsso.errors import DecodeError
from raftsso.fsm import KeyringStateMachine, encode_command
from raftsso.protocol.fields import Fields
from raftsso.protocol.messages import KeyringRequest, KeyringResult
from raftsso.wire import encode_frame, encode_ok_frame, ok, pack
from tests.unit.test_fsm import bootstrap_cmd, req, rotate_cmd


def test_the_state_machine_remembers_where_the_keyring_last_changed() -> None:
    fsm = KeyringStateMachine()
    fsm.apply(bootstrap_cmd(), 3)
    _ring, index, changed = fsm.view_since()
    assert (index, changed) == (3, 3)
    fsm.apply(encode_command("barrier", req()), 4)  # no change to the keyring
    assert fsm.view_since()[1:] == (4, 3)
    fsm.apply(rotate_cmd(2, expect=1), 5)
    assert fsm.view_since()[1:] == (5, 5)
    # A snapshot's keyring is the one at its index: that is where it "changed".
    other = KeyringStateMachine()
    other.restore(fsm.snapshot())
    assert other.view_since()[1:] == (5, 5)
    # Without an index (tests only), no index may claim the new keyring.
    bare = KeyringStateMachine()
    bare.apply(bootstrap_cmd())
    _, index, changed = bare.view_since()
    assert changed > index


def _request(args: dict[str, object]) -> KeyringRequest:
    return KeyringRequest.decode(Fields(args, "keyring request"))


def test_known_round_trips_and_a_malformed_one_is_ignored() -> None:
    assert _request(KeyringRequest("c1", known=7).to_wire()).known == 7
    assert "known" not in KeyringRequest("c1").to_wire()  # as every older client sent
    for bad in ("7", -1, True, 2**63, None, 1.5):
        assert _request({"known": bad}).known is None


def _full(primary: int = 1) -> dict[str, object]:
    from raftsso.envelope import fingerprint

    key = bytes(range(32))
    return {"cluster_id": "c-1", "node_id": "node1", "term": 2, "commit_index": 9,
            "primary": primary,
            "versions": [{"id": 1, "state": "primary", "key": key, "fingerprint":
                          fingerprint(key), "created": 1.0, "promoted": 1.0,
                          "backed_up": False}]}


def _unchanged(**changes: object) -> dict[str, object]:
    answer: dict[str, object] = {"cluster_id": "c-1", "node_id": "node2", "term": 3,
                                 "commit_index": 12, "primary": 1, "unchanged": True}
    answer.update(changes)
    return answer


def test_an_unchanged_answer_carries_no_versions() -> None:
    result = KeyringResult.from_wire(_unchanged())
    assert result.unchanged and result.versions == ()
    assert "versions" not in result.to_wire() and result.to_wire()["unchanged"] is True
    with pytest.raises(DecodeError):
        KeyringResult.from_wire(_unchanged(versions=_full()["versions"]))
    assert "unchanged" not in KeyringResult.from_wire(_full()).to_wire()


def test_the_client_merges_an_unchanged_answer_into_the_keyring_it_holds() -> None:
    held = parse_keyring(_full())
    merged = parse_keyring(_unchanged(), held)
    assert merged.versions is held.versions and merged.primary == held.primary
    assert (merged.term, merged.commit_index, merged.node_id) == (3, 12, "node2")
    with pytest.raises(DecodeError):
        parse_keyring(_unchanged())  # nothing held: an unchanged answer is meaningless
    with pytest.raises(DecodeError):
        parse_keyring(_unchanged(primary=2), held)  # not the keyring held
    with pytest.raises(DecodeError):
        parse_keyring(_unchanged(cluster_id="c-2"), held)


@given(st.integers(0, 2**63 - 1),
       st.dictionaries(st.text(max_size=5), st.integers(-2**63, 2**64 - 1) | st.binary(max_size=40)
                       | st.none(), max_size=5))
def test_a_prepacked_answer_frame_is_the_frame_encode_frame_makes(
        rid: int, result: dict[str, object]) -> None:
    assert encode_ok_frame(rid, pack(result)) == encode_frame(ok(rid, result))


_ARG_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**64), st.text(max_size=70),
                        st.binary(max_size=4), st.floats(allow_nan=False),
                        st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2))


@given(st.dictionaries(st.sampled_from(["client_id", "known", "require_leader",
                                        "encryptions", "other"]), _ARG_VALUES, max_size=4))
def test_the_sync_fast_path_decodes_as_the_general_decoder(args: dict[str, object]) -> None:
    # KeyringRequest.from_wire reads an SSO client's sync (client_id, known) without Fields:
    # for every arguments map it must give what decode() gives.
    assert KeyringRequest.from_wire(args) == _request(args)  # type: ignore[arg-type]


def test_the_sync_fast_path_keeps_the_limits() -> None:
    assert KeyringRequest.from_wire({"client_id": "c" * 64, "known": 2**63 - 1}) == \
        KeyringRequest("c" * 64, known=2**63 - 1)  # type: ignore[arg-type]
    assert KeyringRequest.from_wire({"client_id": "c" * 65, "known": 2**63}) == \
        KeyringRequest()
    assert KeyringRequest.from_wire({"client_id": "", "known": True}) == KeyringRequest()
