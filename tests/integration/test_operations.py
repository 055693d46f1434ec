"""Metrics, health, events and the audit log of real node processes."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import stat
import tomllib
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftsso.config import load_remote_config, split_address
from raftsso.errors import RemoteError
from raftsso.remote import ClusterClient
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.integration

EXPECTED_FAMILIES = {
    "raftsso_node_info": "gauge",
    "raftsso_raft_role": "gauge",
    "raftsso_raft_term": "gauge",
    "raftsso_raft_commit_index": "gauge",
    "raftsso_raft_applied_index": "gauge",
    "raftsso_raft_leader_commit_index": "gauge",
    "raftsso_raft_leader_changes": "counter",
    "raftsso_raft_has_leader": "gauge",
    "raftsso_raft_has_quorum": "gauge",
    "raftsso_raft_peer_connected": "gauge",
    "raftsso_raft_peer_last_contact_seconds": "gauge",
    "raftsso_raft_peer_match_index": "gauge",
    "raftsso_ready": "gauge",
    "raftsso_keyring_versions": "gauge",
    "raftsso_keyring_primary_version": "gauge",
    "raftsso_keyring_last_version": "gauge",
    "raftsso_keyring_versions_not_backed_up": "gauge",
    "raftsso_keyring_fetches": "counter",
    "raftsso_keyring_fetch_seconds": "histogram",
    "raftsso_requests": "counter",
    "raftsso_request_errors": "counter",
    "raftsso_tls_handshake_failures": "counter",
    "raftsso_connections": "counter",
    "raftsso_client_last_sync_age_seconds": "gauge",
    "raftsso_clients_seen": "gauge",
    "raftsso_events": "counter",
    "raftsso_audit_write_errors": "counter",
}


def _node_cfg(cluster: Cluster, node_id: str) -> dict[str, Any]:
    return tomllib.loads(cluster.node_toml(node_id).read_text())


def _http(cluster: Cluster, node_id: str, path: str) -> tuple[int, str]:
    url = f"http://{_node_cfg(cluster, node_id)['metrics_address']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def _metrics(cluster: Cluster, node_id: str) -> dict[str, Any]:
    status, text = _http(cluster, node_id, "/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], family: str, sample: str | None = None,
           **labels: str) -> float | None:
    fam = families[family]
    if sample is None:
        sample = f"{family}_total" if fam.type == "counter" else family
    for s in fam.samples:
        if s.name == sample and all(
                s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


def _client(cluster: Cluster) -> ClusterClient:
    return ClusterClient.from_config(load_remote_config(cluster.client_toml))


def _events(cluster: Cluster, node_id: str) -> list[dict[str, Any]]:
    out = []
    for line in cluster.log(node_id).splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _audit(cluster: Cluster, node_id: str) -> list[dict[str, Any]]:
    path = cluster.root / node_id / "data" / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _handshake_failure(address: str) -> None:
    """A plain-text client on the TLS port: its handshake fails on the node."""
    host, port = split_address(address)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while sock.recv(4096):
            pass


def test_every_node_serves_prometheus_metrics_and_health(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.ids if n != leader)
    wait_for(lambda: cluster.node_status(follower)["primary_version"] == 1,
             what="the follower to apply the first secret")
    with _client(cluster) as client:
        ring = client.call_node(cluster.address(follower), "keyring")
        assert ring["primary"] == 1
        with pytest.raises(RemoteError) as refused:
            client.call_node(cluster.address(follower), "rotate",
                             {"request_id": secrets.token_bytes(16), "now": True})
        assert refused.value.code == "FORBIDDEN"
    cluster.rotate(now=False)
    _handshake_failure(cluster.address(follower))
    # Followers connect to each other a moment after the leader is elected.
    wait_for(lambda: all(_http(cluster, n, "/readyz")[0] == 200 for n in cluster.ids),
             what="every node ready")

    for node_id in cluster.ids:
        assert _http(cluster, node_id, "/healthz") == (200, "ok\n")
        families = _metrics(cluster, node_id)
        for name, kind in EXPECTED_FAMILIES.items():
            assert name in families, f"{node_id}: {name} missing"
            assert families[name].type == kind, f"{node_id}: {name} is {families[name].type}"
        assert _value(families, "raftsso_node_info", node_id=node_id) == 1
        assert _value(families, "raftsso_raft_has_quorum") == 1
        assert _value(families, "raftsso_raft_term") >= 1
        role = "leader" if node_id == leader else "follower"
        assert _value(families, "raftsso_raft_role", role=role) == 1
        peers = {s.labels["peer"] for s in families["raftsso_raft_peer_connected"].samples}
        assert peers == set(cluster.ids) - {node_id}

    # The leader's view once version 2 is everywhere: staged 2, primary 1.
    def leader_sees_rotation() -> dict[str, Any] | None:
        families = _metrics(cluster, leader)
        if (_value(families, "raftsso_keyring_versions", state="staged") != 1
                or not _value(families, "raftsso_raft_leader_changes")):
            return None  # the watch samples every 100 ms
        return families

    lf = wait_for(leader_sees_rotation, what="the staged version in the leader's metrics")
    assert _value(lf, "raftsso_keyring_primary_version") == 1
    assert _value(lf, "raftsso_keyring_last_version") == 2
    assert _value(lf, "raftsso_events", event="rotation_staged") == 1
    match = {s.labels["peer"] for s in lf["raftsso_raft_peer_match_index"].samples}
    assert match == set(cluster.ids) - {leader}
    assert (_value(lf, "raftsso_raft_commit_index")
            >= _value(lf, "raftsso_raft_applied_index") > 0)

    # The follower saw the client's fetch, its refusal and the bad handshake.
    ff = wait_for(lambda: (f := _metrics(cluster, follower)) and _value(
        f, "raftsso_tls_handshake_failures", reason="protocol") and f,
                  what="the failed handshake in the follower's metrics")
    assert _value(ff, "raftsso_keyring_fetches", result="ok") == 1
    assert _value(ff, "raftsso_keyring_fetch_seconds", "raftsso_keyring_fetch_seconds_count") \
        == 1
    assert _value(ff, "raftsso_request_errors", op="rotate", code="FORBIDDEN") == 1
    age = _value(ff, "raftsso_client_last_sync_age_seconds", client="client-1")
    assert age is not None and age >= 0
    assert _value(ff, "raftsso_clients_seen") == 1
    assert _http(cluster, follower, "/nope")[0] == 404


def test_readyz_turns_unready_on_a_node_cut_off_from_the_quorum(
        cluster: Cluster) -> None:
    kept = "node1"
    wait_for(lambda: _http(cluster, kept, "/readyz")[0] == 200, what="node1 ready")
    others = [n for n in cluster.ids if n != kept]
    for node_id in others:
        cluster.signal(node_id, signal.SIGSTOP)
    try:
        _, reason = wait_for(
            lambda: (r := _http(cluster, kept, "/readyz"))[0] == 503 and r,
            what="/readyz 503 on the node cut off from its quorum")
        assert reason.startswith("not ready: ")
        assert _value(_metrics(cluster, kept), "raftsso_ready") == 0
    finally:
        for node_id in others:
            cluster.signal(node_id, signal.SIGCONT)
    wait_for(lambda: _http(cluster, kept, "/readyz")[0] == 200,
             what="/readyz 200 again once the others are back")
    assert _http(cluster, kept, "/healthz")[0] == 200


def test_rotation_and_refusal_produce_events_and_audit_lines(cluster: Cluster) -> None:
    leader = cluster.leader()
    result = cluster.rotate(now=True)
    version = result["version"]

    def rotation_event() -> dict[str, Any] | None:
        return next((e for e in _events(cluster, leader)
                     if e["event"] == "rotation_promoted" and e.get("version") == version),
                    None)

    event = wait_for(rotation_event, what="the rotation's event line")
    assert event["event_id"] == 1202
    assert event["node"] == leader
    assert event["by"] == "admin-1"
    assert event["level"] == "info"

    line = next(a for a in _audit(cluster, leader) if a["op"] == "rotate")
    assert line["kind"] == "request"
    assert line["who"] == {"cn": "admin-1", "role": "admin"}
    assert line["result"] == "ok" and line["code"] is None
    assert line["outcome"]["version"] == version
    assert line["args"]["now"] is True and len(line["args"]["request_id"]) == 32
    assert line["peer"].startswith("127.0.0.1:")
    assert line["ts"].endswith("Z")

    # A client certificate asking for a rotation: refused, audited, an event.
    follower = next(n for n in cluster.ids if n != leader)
    with _client(cluster) as client, pytest.raises(RemoteError) as refused:
        client.call_node(cluster.address(follower), "rotate",
                         {"request_id": secrets.token_bytes(16), "now": True})
    assert refused.value.code == "FORBIDDEN"
    # Aggregated read lines (one per client and minute) have no "code": skip them.
    denied = [a for a in _audit(cluster, follower) if a.get("code") == "FORBIDDEN"]
    assert len(denied) == 1
    assert denied[0]["who"] == {"cn": "client-1", "role": "client"}
    assert denied[0]["op"] == "rotate" and denied[0]["result"] == "error"
    wait_for(lambda: any(e["event"] == "request_refused" and e["op"] == "rotate"
                         for e in _events(cluster, follower)),
             what="the refusal's event line")


def test_no_secret_material_in_audit_or_logs(cluster: Cluster) -> None:
    leader = cluster.leader()
    cluster.rotate(now=True)
    keys: set[bytes] = set()
    fetches = dict.fromkeys(cluster.ids, 0)
    with _client(cluster) as client:
        for node_id in cluster.ids:
            wait_for(lambda n=node_id: cluster.node_status(n)["primary_version"] == 2,
                     what="version 2 applied")
            ring = client.call_node(cluster.address(node_id), "keyring")
            fetches[node_id] += 1
            keys.update(v["key"] for v in ring["versions"])
    # An operator's export too (individually audited).
    exported = cluster.client.call_node(cluster.address(leader), "keyring")
    keys.update(v["key"] for v in exported["versions"])
    assert len(keys) == 2 and all(len(k) == 32 for k in keys)
    cluster.stop()  # flushes the per-minute read windows into the audit files

    forms = set()
    for key in keys:
        forms |= {key.hex(), key.hex().upper(), base64.b64encode(key).decode(),
                  base64.urlsafe_b64encode(key).decode().rstrip("="), repr(key)[2:-1]}
    for node_id in cluster.ids:
        audit_path = cluster.root / node_id / "data" / "audit.jsonl"
        assert stat.S_IMODE(os.stat(audit_path).st_mode) == 0o600
        raw = audit_path.read_bytes() + (cluster.root / node_id / "node.log").read_bytes()
        for key in keys:
            assert key not in raw, f"raw key bytes in {node_id}'s audit or log"
        text = raw.decode("utf-8", errors="replace")
        for form in forms:
            assert form not in text, f"a key ({form[:6]}…) in {node_id}'s audit or log"
        reads = [a for a in _audit(cluster, node_id)
                 if a["kind"] == "reads" and a["op"] == "keyring"
                 and a["who"]["cn"] == "client-1"]
        assert sum(a["count"] for a in reads) == fetches[node_id], node_id
        assert all(a["ok"] == a["count"] and a["peers"] for a in reads)
    exports = [a for a in _audit(cluster, leader) if a["op"] == "keyring"
               and a["kind"] == "request"]
    assert exports and exports[-1]["who"]["role"] == "admin"
    assert "outcome" not in exports[-1]
