"""The checker: what a chaos run's history, final state and Raft logs must satisfy.

Inputs are the recorded operations (:mod:`tests.chaos.history`), what every node serves
at the end (``keyring`` answers, taken once the healed cluster has converged), each node's
Raft journal and snapshot read from disk after the nodes stopped, and the node logs.

Each node's committed log (snapshot + journal entries up to the final commit index) is
*replayed* through a fresh :class:`~raftsso.fsm.KeyringStateMachine` (pure and
deterministic), which gives the commit order, every state the keyring went through, and
the state machine's verdict on every request id. The checks (names as reported):

``acked_durable``       every acknowledged rotation exists on every node at the end, with
                        one fingerprint and one key everywhere, the fingerprint of the
                        committed command that carried its request id
``ack_shape``           an acknowledged ``rotate --now`` answered state primary, primary = version
``request_outcomes``    ok → the request id committed and succeeded with the answered
                        version; failed → it never succeeded; unknown → either. The
                        verdicts of the different nodes' replays agree
``version_order``       versions are created in commit order 1, 2, 3, ... (strictly
                        increasing, no gap, no repeat)
``one_primary``         at most one primary in every committed state (exactly one once
                        bootstrapped), in every keyring a node served, and at the end
``one_leader_per_term`` no two nodes acknowledged writes in one term (acks whose term is
                        known exactly), and no two nodes logged becoming leader in one term
``client_monotonic``    no SSO client's keyring ever went back (applied index, primary,
                        version set)
``reads_match_log``     every keyring a node served at applied index *i* is the state
                        after the committed entries up to *i* (primary and versions)
``ciphertexts``         every ciphertext written during the run decrypts at the end to its
                        plaintext; in-run decryption never returned a wrong plaintext and
                        never failed for a version the client had cached
``log_matching``        the nodes' logs agree on every committed index (term and command);
                        terms never decrease along a log
``replay_matches``      each replay ends in the state the nodes serve
``nodes_agree``         every node serves the same keyring at the end
``node_exits``          no node exited on its own (only the nemesis kills nodes)
``unexpected``          no client saw an error this workload never expects
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftsso.errors import DecodeError
from raftsso.fsm import COMMAND_FORMAT, KeyringStateMachine
from raftsso.keyring import KeyState
from raftsso.raft.hardening import restricted_loads
from raftsso.raft.journal import _HEADER, DurableJournal
from raftsso.raft.snapshot import read_snapshot_file
from raftsso.wire import unversioned

_REGULAR = 0  # pysyncobj _COMMAND_TYPE.REGULAR
_LEADER_LINE = re.compile(r"raft role of (\S+): \S+ -> leader \(term (\d+)\)")


@dataclass
class Violation:
    check: str
    message: str
    ops: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}" + (f" (ops {self.ops[:10]})" if self.ops else "")


# -- reading what the nodes left on disk ---------------------------------------------------


@dataclass
class NodeLog:
    """One node's Raft log as found on disk: its snapshot (if any) and journal entries."""

    node: str
    snapshot_fsm: bytes | None
    snapshot_index: int
    entries: list[tuple[int, int, bytes]]  # (index, term, pysyncobj command bytes)
    torn_tail: int = 0  # bytes after the last valid record


def read_node_log(node: str, data_dir: Path) -> NodeLog:
    snapshot_fsm, snapshot_index = None, 0
    snap = data_dir / "raft.snapshot"
    if snap.exists():
        fsm_blob, last, _prev, _members = read_snapshot_file(snap)
        snapshot_fsm, snapshot_index = fsm_blob, last[1]
    entries: list[tuple[int, int, bytes]] = []
    torn = 0
    journal = data_dir / "raft.journal"
    if journal.exists():
        data = journal.read_bytes()
        if data[:len(_HEADER)] != _HEADER:
            raise DecodeError(f"{journal} is not a raftsso journal")
        offset = len(_HEADER)
        while offset < len(data):
            parsed = DurableJournal._parse_record(data, offset)
            if parsed is None:
                torn = len(data) - offset
                break
            size, command, idx, term = parsed
            entries.append((idx, term, command))
            offset += size
    return NodeLog(node, snapshot_fsm, snapshot_index, entries, torn)


def fsm_command(entry_command: bytes) -> bytes | None:
    """Our command bytes inside a pysyncobj log entry (None for no-ops and membership)."""
    if not entry_command or entry_command[0] != _REGULAR:
        return None
    call = restricted_loads(entry_command[1:])
    args = call[1] if isinstance(call, tuple) and len(call) >= 2 else ()
    if not args or not isinstance(args[0], bytes):
        raise DecodeError("a regular log entry without the command bytes")
    return bytes(args[0])


# -- replay ------------------------------------------------------------------------------------


@dataclass
class Verdict:
    ok: bool
    code: str
    version: int | None
    fingerprint: str | None
    index: int


@dataclass
class Replay:
    node: str
    start_index: int  # states at indices below this are unknown (compacted away)
    end_index: int
    # (index, primary, version ids) after every entry that changed the keyring, in order;
    # the first element is the state at start_index.
    states: list[tuple[int, int | None, tuple[int, ...]]]
    verdicts: dict[str, Verdict]  # request id (hex) -> first application in the log
    created: list[tuple[int, int]]  # (index, version) in commit order
    final: dict[int, tuple[str, str]]  # version -> (state, fingerprint)
    violations: list[Violation]

    def state_at(self, index: int) -> tuple[int | None, tuple[int, ...]] | None:
        if index < self.start_index or index > self.end_index:
            return None
        pos = bisect.bisect_right([s[0] for s in self.states], index) - 1
        if pos < 0:
            return None
        return self.states[pos][1], self.states[pos][2]


def _ring_summary(fsm: KeyringStateMachine) -> tuple[int | None, tuple[int, ...], int]:
    ring = fsm.keyring
    primaries = sum(1 for v in ring.versions if v.state is KeyState.PRIMARY)
    return ring.primary, tuple(v.id for v in ring.versions), primaries


def replay(log: NodeLog, commit_index: int) -> Replay:
    fsm = KeyringStateMachine()
    violations: list[Violation] = []
    verdicts: dict[str, Verdict] = {}
    if log.snapshot_fsm is not None:
        fsm.restore(log.snapshot_fsm)
        # Verdicts of requests applied before the snapshot, as the snapshot remembers them.
        for req, outcome in list(fsm._requests.items()):
            verdicts[req.hex()] = Verdict(outcome.ok, outcome.code,
                                          outcome.data.get("version"), None, -1)
    start = fsm.view()[1] if log.snapshot_fsm is not None else 0
    primary, ids, _n = _ring_summary(fsm)
    states = [(start, primary, ids)]
    created: list[tuple[int, int]] = []
    last_term = 0
    expected_idx = None
    for idx, term, raw in log.entries:
        if idx > commit_index:
            break
        if term < last_term:
            violations.append(Violation("log_matching", f"{log.node}: term goes down from "
                                        f"{last_term} to {term} at index {idx}"))
        last_term = term
        if expected_idx is not None and idx != expected_idx:
            violations.append(Violation("log_matching", f"{log.node}: journal index jumps "
                                        f"from {expected_idx - 1} to {idx}"))
        expected_idx = idx + 1
        if idx <= start:
            continue
        try:
            command = fsm_command(raw)
        except Exception as exc:
            violations.append(Violation("log_matching", f"{log.node}: undecodable log entry "
                                        f"at index {idx}: {exc}"))
            continue
        if command is None:
            continue
        try:
            cmd = unversioned(command, COMMAND_FORMAT, "command")
        except DecodeError:
            cmd = {}
        req = cmd.get("req") if isinstance(cmd, dict) else None
        before_last = fsm.keyring.last_id
        outcome = fsm.apply(command, index=idx)
        primary, ids, n_primaries = _ring_summary(fsm)
        after_last = fsm.keyring.last_id
        if isinstance(req, bytes) and req.hex() not in verdicts:
            verdicts[req.hex()] = Verdict(
                outcome.ok, outcome.code, outcome.data.get("version"),
                cmd.get("fingerprint") if after_last != before_last else None, idx)
        if after_last != before_last:
            if after_last != before_last + 1:
                violations.append(Violation(
                    "version_order", f"{log.node}: version {after_last} created at index "
                    f"{idx} right after version {before_last}"))
            created.append((idx, after_last))
        if ids != tuple(range(1, len(ids) + 1)):
            violations.append(Violation("version_order", f"{log.node}: versions {ids} at "
                                        f"index {idx} are not 1..n"))
        if n_primaries != (1 if ids else 0):
            violations.append(Violation("one_primary", f"{log.node}: {n_primaries} primaries "
                                        f"after index {idx}"))
        if (primary, ids) != (states[-1][1], states[-1][2]):
            states.append((idx, primary, ids))
    final = {v.id: (v.state.value, v.fingerprint) for v in fsm.keyring.versions}
    return Replay(log.node, start, commit_index, states, verdicts, created, final, violations)


# -- the checks --------------------------------------------------------------------------------


def ranges(versions: Any) -> list[tuple[int, int]]:
    """Recorded version ids as merged ranges: the history stores ``[[first, last], ...]``;
    plain id lists (hand-written histories) are accepted too."""
    items = list(versions or [])
    if items and all(isinstance(v, int) for v in items):
        out: list[list[int]] = []
        for vid in sorted(items):
            if out and vid == out[-1][1] + 1:
                out[-1][1] = vid
            elif not out or vid > out[-1][1]:
                out.append([vid, vid])
        items = out
    return [(int(a), int(b)) for a, b in items]


def _covers(new: list[tuple[int, int]], old: list[tuple[int, int]]) -> bool:
    """Every id in ``old`` is in ``new`` (both merged ranges)."""
    return all(any(a <= lo and hi <= b for a, b in new) for lo, hi in old)


def leader_terms(logs: dict[str, str]) -> dict[int, set[str]]:
    terms: dict[int, set[str]] = defaultdict(set)
    for node, text in logs.items():
        for match in _LEADER_LINE.finditer(text):
            # The line names the node itself; trust the file it is in.
            terms[int(match.group(2))].add(node)
    return terms


def check(ops: list[dict[str, Any]], final_rings: dict[str, dict[str, Any]],
          node_logs: Iterable[NodeLog], commit_index: int, logs: dict[str, str],
          final_decrypt_failures: list[dict[str, Any]]) -> tuple[list[Violation], dict[str, Any]]:
    """Run every check; returns the violations and some statistics."""
    violations: list[Violation] = []
    stats: dict[str, Any] = {}

    # Final keyrings --------------------------------------------------------------------------
    rings: dict[str, dict[int, dict[str, Any]]] = {}
    for node, raw in final_rings.items():
        rings[node] = {v["id"]: v for v in raw.get("versions", [])}
        prims = [v["id"] for v in raw.get("versions", []) if v.get("state") == "primary"]
        if len(prims) != 1 or raw.get("primary") != prims[0]:
            violations.append(Violation("one_primary", f"{node} ends with primaries {prims} "
                                        f"(primary field {raw.get('primary')})"))
    names = sorted(rings)
    for a in names[1:]:
        ref, other = rings[names[0]], rings[a]
        if set(ref) != set(other):
            violations.append(Violation("nodes_agree", f"{names[0]} has versions {sorted(ref)}, "
                                        f"{a} has {sorted(other)}"))
        for vid in set(ref) & set(other):
            for key in ("fingerprint", "key", "state"):
                if ref[vid].get(key) != other[vid].get(key):
                    violations.append(Violation("nodes_agree", f"version {vid}: {key} differs "
                                                f"between {names[0]} and {a}"))

    # Replays ---------------------------------------------------------------------------------
    replays = [replay(log, commit_index) for log in node_logs]
    for r in replays:
        violations.extend(r.violations)
        ring = rings.get(r.node)
        if ring is not None:
            served = {vid: (v.get("state"), v.get("fingerprint")) for vid, v in ring.items()}
            if served != r.final:
                violations.append(Violation("replay_matches", f"{r.node}: replaying its log "
                                            f"gives {r.final}, the node serves {served}"))
    stats["replay_start_index"] = {r.node: r.start_index for r in replays}
    stats["versions_created_in_replay"] = {r.node: len(r.created) for r in replays}

    # The same committed index holds the same entry on every node.
    by_index: dict[int, dict[str, tuple[int, bytes]]] = defaultdict(dict)
    for log in node_logs:
        for idx, term, raw in log.entries:
            if idx <= commit_index:
                by_index[idx][log.node] = (term, raw)
    mismatched = [idx for idx, seen in by_index.items() if len(set(seen.values())) > 1]
    if mismatched:
        violations.append(Violation("log_matching", f"nodes disagree on committed entries at "
                                    f"indices {sorted(mismatched)[:20]}"))

    verdicts: dict[str, Verdict] = {}
    for r in replays:
        for req, v in r.verdicts.items():
            seen = verdicts.get(req)
            if seen is None:
                verdicts[req] = v
            elif (seen.ok, seen.version) != (v.ok, v.version):
                violations.append(Violation("request_outcomes", f"request {req}: replays "
                                            f"disagree ({seen} vs {v})"))
            elif seen.fingerprint is None:
                verdicts[req] = v

    # Rotations -------------------------------------------------------------------------------
    rotations = [op for op in ops if op["f"] == "rotate"]
    # With a whole log (some node never compacted), a request id that is not in it never
    # committed; after compaction only the snapshot's memory of recent requests remains.
    whole_log = any(r.start_index == 0 for r in replays)
    stats["whole_log_replayed"] = whole_log
    unverifiable = 0
    acks_by_term: dict[int, set[str]] = defaultdict(set)
    acked_versions: dict[int, int] = {}
    for op in rotations:
        val = op["value"]
        req = val.get("request_id")
        verdict = verdicts.get(req)
        if op["outcome"] == "ok":
            version = val.get("version")
            if val.get("state") != "primary" or val.get("primary_version") != version:
                violations.append(Violation("ack_shape", f"rotate --now answered {val.get('state')}"
                                            f", primary {val.get('primary_version')} for "
                                            f"version {version}", [op["i"]]))
            if version in acked_versions:
                violations.append(Violation("request_outcomes", f"version {version} acknowledged "
                                            "to two different requests",
                                            [acked_versions[version], op["i"]]))
            acked_versions[version] = op["i"]
            for node, ring in rings.items():
                if version not in ring:
                    violations.append(Violation("acked_durable", f"acknowledged version "
                                                f"{version} is missing on {node}", [op["i"]]))
            if verdict is None and whole_log:
                violations.append(Violation("request_outcomes", f"request {req} was "
                                            f"acknowledged as version {version} but never "
                                            "committed", [op["i"]]))
            elif verdict is None:
                unverifiable += 1
            elif not verdict.ok or verdict.version != version:
                violations.append(Violation("request_outcomes", f"request {req} was acknowledged"
                                            f" as version {version} but the log says {verdict}",
                                            [op["i"]]))
            elif verdict.fingerprint is not None:
                for node, ring in rings.items():
                    fp = ring.get(version, {}).get("fingerprint")
                    if fp is not None and fp != verdict.fingerprint:
                        violations.append(Violation(
                            "acked_durable", f"version {version} on {node} has fingerprint "
                            f"{fp}, the committed command had {verdict.fingerprint}", [op["i"]]))
            if isinstance(val.get("term"), int):
                acks_by_term[val["term"]].add(val["node"])
        elif op["outcome"] == "failed":
            if verdict is None:
                unverifiable += 0 if whole_log else 1
            elif verdict.ok:
                violations.append(Violation("request_outcomes", f"request {req} was reported "
                                            f"failed ({op.get('error')}) but committed as "
                                            f"{verdict}", [op["i"]]))
        if val.get("unexpected"):
            violations.append(Violation("unexpected", f"rotate got {op.get('error')}: "
                                        f"{val.get('message')}", [op["i"]]))
    stats["rotations_unverifiable"] = unverifiable
    stats["acks_with_exact_term"] = sum(1 for op in rotations if op["outcome"] == "ok"
                                        and isinstance(op["value"].get("term"), int))
    for term, nodes in sorted(acks_by_term.items()):
        if len(nodes) > 1:
            violations.append(Violation("one_leader_per_term", f"writes acknowledged by "
                                        f"{sorted(nodes)} in term {term}"))
    elected = leader_terms(logs)
    stats["terms_with_a_leader"] = len(elected)
    for term, nodes in sorted(elected.items()):
        if len(nodes) > 1:
            violations.append(Violation("one_leader_per_term", f"{sorted(nodes)} all became "
                                        f"leader in term {term}"))
    for term, nodes in acks_by_term.items():
        for node in nodes:
            if node not in elected.get(term, set()):
                violations.append(Violation("one_leader_per_term", f"{node} acknowledged a "
                                            f"write in term {term} but never logged becoming "
                                            "its leader"))

    # Reads -------------------------------------------------------------------------------------
    last_ring: dict[str, dict[str, Any]] = {}
    reads_checked = 0
    for op in sorted(ops, key=lambda o: (o["end"] if o["end"] is not None else 0, o["i"])):
        val = op["value"]
        if op["f"] == "fetch" and op["outcome"] == "ok" and "malformed" not in val:
            prims = val.get("primaries", [])
            if len(prims) > 1 or (prims and val.get("primary") != prims[0]):
                violations.append(Violation("one_primary", f"{val.get('node')} served primaries "
                                            f"{prims} (primary {val.get('primary')})", [op["i"]]))
            index = val.get("commit_index")
            for r in replays:
                state = r.state_at(index) if isinstance(index, int) else None
                if state is None:
                    continue
                reads_checked += 1
                if (val.get("primary"), ranges(val.get("versions"))) != (state[0],
                                                                         ranges(state[1])):
                    violations.append(Violation(
                        "reads_match_log", f"{val.get('node')} served primary "
                        f"{val.get('primary')} versions {val.get('versions')} at applied "
                        f"index {index}; {r.node}'s log says primary {state[0]} versions "
                        f"{ranges(state[1])}", [op["i"]]))
                break
        if op["f"] in ("encrypt", "decrypt"):
            ring = val.get("ring")
            prev = last_ring.get(op["process"])
            if ring is not None and ring.get("index") is not None:
                if prev is not None and (
                        ring["index"] < prev["index"]
                        or (ring["primary"] or 0) < (prev["primary"] or 0)
                        or not _covers(ranges(ring["versions"]), ranges(prev["versions"]))):
                    violations.append(Violation(
                        "client_monotonic", f"{op['process']} went back from index "
                        f"{prev['index']} (primary {prev['primary']}, versions "
                        f"{prev['versions']}) to {ring['index']} (primary {ring['primary']}, "
                        f"versions {ring['versions']})", [prev["op"], op["i"]]))
                last_ring[op["process"]] = {**ring, "op": op["i"]}
            if val.get("unexpected"):
                violations.append(Violation("unexpected", f"{op['f']} raised {op.get('error')}",
                                            [op["i"]]))
        if op["f"] == "decrypt":
            if op["outcome"] == "ok" and val.get("correct") is not True:
                violations.append(Violation("ciphertexts", "a decryption returned the wrong "
                                            "plaintext", [op["i"]]))
            if op["outcome"] == "failed" and val.get("known"):
                violations.append(Violation("ciphertexts", f"decryption under cached version "
                                            f"{val.get('version')} failed ({op.get('error')})",
                                            [op["i"]]))
        if op["f"] == "node_exited":
            violations.append(Violation("node_exits", f"{val.get('node')} exited by itself "
                                        f"with code {val.get('code')}: ..."
                                        f"{str(val.get('log_tail'))[-800:]}", [op["i"]]))
    stats["reads_checked_against_log"] = reads_checked
    for failure in final_decrypt_failures:
        violations.append(Violation("ciphertexts", f"a ciphertext under version "
                                    f"{failure.get('version')} does not decrypt at the end "
                                    f"({failure.get('error')})", [failure.get("op", -1)]))
    return violations, stats
