"""The checker catches what it claims to catch (synthetic histories and logs, no cluster).

A checker that never fails proves nothing: each test below breaks one property on purpose
and expects exactly that check to report it, starting from a consistent scenario that
passes.
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass, field
from typing import Any

import pysyncobj.pickle as pso_pickle
import pytest

from raftsso import envelope
from raftsso.fsm import encode_command
from tests.chaos import checker
from tests.chaos.checker import NodeLog, Violation

SEAL = secrets.token_bytes(32)
CLUSTER = "c-test"


def _entry(command: bytes) -> bytes:
    # What pysyncobj journals for a call of the one replicated method.
    return b"\x00" + pso_pickle.dumps((0, (command,)))


@dataclass
class Scenario:
    """Bootstrap then ``n`` rotations, all committed in term 1 by node1."""

    n: int = 3
    entries: list[tuple[int, int, bytes]] = field(default_factory=list)
    keys: dict[int, bytes] = field(default_factory=dict)
    reqs: dict[int, bytes] = field(default_factory=dict)
    ops: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.entries.append((1, 1, b"\x01"))  # pysyncobj's no-op
        for version in range(1, self.n + 2):
            key, req = secrets.token_bytes(32), secrets.token_bytes(16)
            sealed = envelope.seal(SEAL, key, cluster_id=CLUSTER, version=version)
            fp = envelope.fingerprint(key)
            if version == 1:
                cmd = encode_command("bootstrap", req, sealed=sealed, fingerprint=fp,
                                     created=1.0)
            else:
                cmd = encode_command("rotate", req, version=version, sealed=sealed,
                                     fingerprint=fp, created=float(version),
                                     expect_primary=version - 1, now=True)
                self.ops.append(self.op("admin1", "rotate", "ok", request_id=req.hex(),
                                        version=version, state="primary",
                                        primary_version=version, node="node1", term=1))
            self.keys[version] = key
            self.reqs[version] = req
            self.entries.append((len(self.entries) + 1, 1, _entry(cmd)))

    def op(self, process: str, f: str, outcome: str, **value: Any) -> dict[str, Any]:
        t = float(len(self.ops))
        return {"i": len(self.ops), "process": process, "f": f, "start": t, "end": t + 0.5,
                "outcome": outcome, "value": value}

    @property
    def commit(self) -> int:
        return len(self.entries)

    def ring(self, node: str) -> dict[str, Any]:
        top = self.n + 1
        return {"node_id": node, "primary": top, "commit_index": self.commit,
                "versions": [{"id": v, "state": "primary" if v == top else "active",
                              "fingerprint": envelope.fingerprint(k), "key": k}
                             for v, k in sorted(self.keys.items())]}

    def logs(self) -> list[NodeLog]:
        return [NodeLog(n, None, 0, list(self.entries)) for n in ("node1", "node2", "node3")]

    def check(self, *, rings: dict[str, dict[str, Any]] | None = None,
              node_logs: list[NodeLog] | None = None, text: dict[str, str] | None = None,
              failures: list[dict[str, Any]] | None = None) -> list[Violation]:
        rings = rings or {n: self.ring(n) for n in ("node1", "node2", "node3")}
        text = text if text is not None else {"node1": "raft role of node1: candidate -> "
                                                       "leader (term 1)\n"}
        violations, _stats = checker.check(self.ops, rings, node_logs or self.logs(),
                                           self.commit, text, failures or [])
        return violations


def _checks(violations: list[Violation]) -> set[str]:
    return {v.check for v in violations}


def test_a_consistent_scenario_passes() -> None:
    s = Scenario()
    s.ops.append(s.op("sso1", "fetch", "ok", node="node2", commit_index=s.commit, term=1,
                      primary=4, versions=[1, 2, 3, 4], primaries=[4]))
    s.ops.append(s.op("sso1", "encrypt", "ok", ring={"index": 3, "primary": 1,
                                                      "versions": [1]}))
    s.ops.append(s.op("sso1", "encrypt", "ok", ring={"index": 6, "primary": 4,
                                                      "versions": [1, 2, 3, 4]}))
    assert s.check() == []


def test_acknowledged_rotation_missing_on_a_node() -> None:
    s = Scenario()
    rings = {n: s.ring(n) for n in ("node1", "node2", "node3")}
    rings["node3"]["versions"] = rings["node3"]["versions"][:-1]
    rings["node3"]["versions"][-1]["state"] = "primary"
    rings["node3"]["primary"] = 3
    assert {"acked_durable", "nodes_agree", "replay_matches"} <= _checks(s.check(rings=rings))


def test_acknowledged_version_with_another_fingerprint() -> None:
    s = Scenario()
    rings = {n: s.ring(n) for n in ("node1", "node2", "node3")}
    for n in rings:
        rings[n]["versions"][2]["fingerprint"] = "0" * 16
    assert "acked_durable" in _checks(s.check(rings=rings))


def test_rotation_reported_failed_but_committed() -> None:
    s = Scenario()
    s.ops[0]["outcome"] = "failed"
    assert _checks(s.check()) == {"request_outcomes"}


def test_acknowledged_rotation_that_never_committed() -> None:
    s = Scenario()
    s.ops.append(s.op("admin2", "rotate", "ok", request_id=secrets.token_hex(16), version=9,
                      state="primary", primary_version=9, node="node1", term=1))
    found = _checks(s.check())
    assert {"acked_durable", "request_outcomes"} <= found


def test_acknowledged_under_a_version_another_request_created() -> None:
    """The version exists everywhere, but the acknowledged request never committed."""
    s = Scenario()
    s.ops.append(s.op("admin2", "rotate", "ok", request_id=secrets.token_hex(16), version=3,
                      state="primary", primary_version=3, node="node1", term=1))
    assert "request_outcomes" in _checks(s.check())


def test_acknowledged_version_under_another_request() -> None:
    s = Scenario()
    s.ops[1]["value"]["version"] = 2
    s.ops[1]["value"]["primary_version"] = 2
    assert "request_outcomes" in _checks(s.check())


def test_two_leaders_acknowledging_in_one_term() -> None:
    s = Scenario()
    s.ops[1]["value"]["node"] = "node2"
    assert "one_leader_per_term" in _checks(s.check())


def test_two_nodes_elected_in_one_term() -> None:
    s = Scenario()
    text = {"node1": "raft role of node1: candidate -> leader (term 1)\n",
            "node2": "x INFO raftsso.node: raft role of node2: candidate -> leader (term 1)\n"}
    assert _checks(s.check(text=text)) == {"one_leader_per_term"}


def test_client_going_back() -> None:
    s = Scenario()
    s.ops.append(s.op("sso1", "decrypt", "ok", correct=True,
                      ring={"index": 6, "primary": 4, "versions": [1, 2, 3, 4]}))
    s.ops.append(s.op("sso1", "encrypt", "ok",
                      ring={"index": 5, "primary": 3, "versions": [1, 2, 3]}))
    assert _checks(s.check()) == {"client_monotonic"}


def test_other_clients_are_independent() -> None:
    s = Scenario()
    s.ops.append(s.op("sso1", "encrypt", "ok", ring={"index": 6, "primary": 4,
                                                      "versions": [1, 2, 3, 4]}))
    s.ops.append(s.op("sso2", "encrypt", "ok", ring={"index": 3, "primary": 1,
                                                      "versions": [1]}))
    assert s.check() == []


def test_read_that_does_not_match_the_log() -> None:
    s = Scenario()
    # Index 4 holds the rotation to version 3: at index 3 the primary was still 2.
    s.ops.append(s.op("sso1", "fetch", "ok", node="node2", commit_index=4, term=1,
                      primary=3, versions=[1, 2, 3], primaries=[3]))
    assert s.check() == []
    s.ops.append(s.op("sso1", "fetch", "ok", node="node2", commit_index=3, term=1,
                      primary=3, versions=[1, 2, 3], primaries=[3]))
    assert _checks(s.check()) == {"reads_match_log"}


def test_read_with_two_primaries() -> None:
    s = Scenario()
    s.ops.append(s.op("sso1", "fetch", "ok", node="node2", commit_index=s.commit, term=1,
                      primary=4, versions=[1, 2, 3, 4], primaries=[3, 4]))
    assert "one_primary" in _checks(s.check())


def test_logs_that_disagree_on_a_committed_entry() -> None:
    s = Scenario()
    logs = s.logs()
    idx, term, raw = logs[2].entries[-1]
    logs[2].entries[-1] = (idx, term + 1, raw)
    assert "log_matching" in _checks(s.check(node_logs=logs))


def test_term_going_down_in_a_log() -> None:
    s = Scenario()
    logs = s.logs()
    for log in logs:
        log.entries[1] = (log.entries[1][0], 5, log.entries[1][2])
    assert "log_matching" in _checks(s.check(node_logs=logs))


def test_ciphertext_that_does_not_decrypt_at_the_end() -> None:
    s = Scenario()
    found = s.check(failures=[{"version": 2, "error": "InvalidToken", "op": 0}])
    assert _checks(found) == {"ciphertexts"}


def test_decryption_failing_under_a_cached_version() -> None:
    s = Scenario()
    s.ops.append(s.op("sso1", "decrypt", "failed", version=2, known=True,
                      ring={"index": 6, "primary": 4, "versions": [1, 2, 3, 4]}))
    s.ops[-1]["error"] = "InvalidToken"
    assert _checks(s.check()) == {"ciphertexts"}


def test_wrong_plaintext() -> None:
    s = Scenario()
    s.ops.append(s.op("sso1", "decrypt", "ok", correct=False,
                      ring={"index": 6, "primary": 4, "versions": [1, 2, 3, 4]}))
    assert _checks(s.check()) == {"ciphertexts"}


def test_node_that_exited_on_its_own() -> None:
    s = Scenario()
    s.ops.append(s.op("nemesis", "node_exited", "info", node="node2", code=1, log_tail="x"))
    assert _checks(s.check()) == {"node_exits"}


def test_replay_from_a_snapshot() -> None:
    """A compacted log: the replay starts from the snapshot and still checks the rest."""
    from raftsso.fsm import KeyringStateMachine

    s = Scenario(n=4)
    fsm = KeyringStateMachine()
    for idx, _term, raw in s.entries[:3]:
        command = checker.fsm_command(raw)
        if command is not None:
            fsm.apply(command, index=idx)
    blob = fsm.snapshot()
    logs = [NodeLog(n, blob, 3, list(s.entries[2:])) for n in ("node1", "node2", "node3")]
    assert s.check(node_logs=logs) == []
    broken = copy.deepcopy(logs)
    broken[0].entries = [e for e in broken[0].entries if e[0] != 5]
    assert "log_matching" in _checks(s.check(node_logs=broken))


@pytest.mark.parametrize("outcome", ["unknown", "failed"])
def test_unacknowledged_rotations_may_be_absent(outcome: str) -> None:
    s = Scenario()
    s.ops.append(s.op("admin2", "rotate", outcome, request_id=secrets.token_hex(16)))
    assert s.check() == []
