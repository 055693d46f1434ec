"""Readiness, metrics of a stub node, the cluster watch's events, TLS failure labels, --hosts."""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from raftsso import events
from raftsso.config import Peer, RaftTimings, load_node_config
from raftsso.deployment import init_deployment, plan_hosts
from raftsso.errors import ConfigError
from raftsso.keyring import Keyring, KeyState, KeyVersion
from raftsso.metrics import MAX_TRACKED_CLIENTS, ClientSyncTracker, NodeMetrics, readiness
from raftsso.raft import PeerView
from raftsso.server import handshake_failure_reason
from raftsso.watch import ClusterWatch


@dataclass
class StubRaft:
    leader_id: str | None = "node1"
    term: int = 3
    has_quorum: bool = True
    is_leader: bool = False
    last_applied: int = 10
    commit_index: int = 10
    leader_commit_index: int = 10
    peer_views: list[PeerView] = field(default_factory=list)

    @property
    def role(self) -> str:
        return "leader" if self.is_leader else "follower"

    def peers(self) -> list[PeerView]:
        return list(self.peer_views)


@dataclass
class StubFsm:
    keyring: Keyring


@dataclass
class StubCfg:
    node_id: str = "node2"
    cluster_id: str = "c-test"
    raft: RaftTimings = field(default_factory=RaftTimings)
    peers: tuple[Peer, ...] = (Peer("node1", "h1:1", "h1:2"), Peer("node3", "h3:1", "h3:2"))


@dataclass
class StubSeal:
    sealed: bool = False


@dataclass
class StubNode:
    raft: StubRaft
    fsm: StubFsm
    cfg: StubCfg = field(default_factory=StubCfg)
    ready_for_writes: bool = True
    seal: StubSeal = field(default_factory=StubSeal)


def _ring(*states: KeyState, backed_up: bool = False) -> Keyring:
    return Keyring(tuple(KeyVersion(i + 1, s, b"s" * 60, f"fp{i}", 1.0, backed_up=backed_up)
                         for i, s in enumerate(states)))


def _node(**raft: Any) -> StubNode:
    return StubNode(StubRaft(**raft), StubFsm(_ring(KeyState.ACTIVE, KeyState.PRIMARY)))


def test_readiness_rules() -> None:
    assert readiness(_node())[0] is True  # type: ignore[arg-type]
    sealed = _node()
    sealed.seal.sealed = True
    assert readiness(sealed)[1].startswith("sealed")  # type: ignore[arg-type]
    assert readiness(_node(leader_id=None)) == (False, "no leader known to this node")  # type: ignore[arg-type]
    assert readiness(_node(has_quorum=False))[1] == "this node is not connected to a quorum"  # type: ignore[arg-type]
    behind = readiness(_node(last_applied=7, leader_commit_index=9))  # type: ignore[arg-type]
    assert behind == (False, "catching up: applied 7 of 9")
    leader = _node(is_leader=True, leader_id="node2")
    leader.ready_for_writes = False
    assert readiness(leader)[0] is False  # type: ignore[arg-type]
    empty = _node()
    empty.fsm = StubFsm(Keyring())
    assert readiness(empty)[1] == "the cluster has no master secret yet"  # type: ignore[arg-type]


def test_metrics_of_a_node_parse_as_prometheus_text() -> None:
    node = _node(peer_views=[PeerView("node1", True, 0.01, None),
                             PeerView("node3", False, None, None)])
    metrics = NodeMetrics(node)  # type: ignore[arg-type]
    metrics.observe_request("client", "sso-1", "keyring", None, 0.003)
    metrics.observe_request("client", "sso-1", "rotate", "FORBIDDEN", 0.0001)
    metrics.observe_request("client", "x", "../weird op", "UNKNOWN_OP", 0.0001)
    metrics.tls_handshake_failures.labels("bad_certificate").inc()
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("raftsso_raft_role", (("role", "follower"),))] == 1
    assert samples[("raftsso_raft_peer_connected", (("peer", "node3"),))] == 0
    assert samples[("raftsso_keyring_versions", (("state", "primary"),))] == 1
    assert samples[("raftsso_keyring_versions_not_backed_up", ())] == 2
    assert samples[("raftsso_ready", ())] == 1
    assert samples[("raftsso_request_errors_total", (("code", "UNKNOWN_OP"),
                                                     ("op", "other")))] == 1
    assert samples[("raftsso_tls_handshake_failures_total",
                    (("reason", "bad_certificate"),))] == 1
    assert ("raftsso_client_last_sync_age_seconds", (("client", "sso-1"),)) in samples


def test_client_sync_tracker_is_bounded_and_forgets() -> None:
    now = [0.0]
    tracker = ClientSyncTracker(clock=lambda: now[0])
    tracker.synced("a")
    now[0] = 5.0
    assert tracker.ages() == {"a": 5.0}
    for i in range(MAX_TRACKED_CLIENTS + 10):
        tracker.synced(f"c{i}")
    assert len(tracker.ages()) == MAX_TRACKED_CLIENTS
    now[0] = 5.0 + 25 * 3600
    assert tracker.ages() == {}


def test_handshake_failure_labels() -> None:
    def err(reason: str) -> ssl.SSLError:
        e = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
        e.reason = reason
        return e

    assert handshake_failure_reason(TimeoutError()) == "timeout"
    assert handshake_failure_reason(err("PEER_DID_NOT_RETURN_A_CERTIFICATE")) == \
        "no_client_certificate"
    assert handshake_failure_reason(err("CERTIFICATE_VERIFY_FAILED")) == "bad_certificate"
    assert handshake_failure_reason(err("TLSV1_ALERT_UNKNOWN_CA")) == "bad_certificate"
    assert handshake_failure_reason(err("HTTP_REQUEST")) == "protocol"
    assert handshake_failure_reason(err("WRONG_VERSION_NUMBER")) == "protocol"
    assert handshake_failure_reason(ConnectionResetError()) == "closed"
    assert handshake_failure_reason(ValueError()) == "other"


# -- the watch ------------------------------------------------------------------------


def _events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for r in caplog.records:
        if r.name == events.LOGGER_NAME:
            rec = json.loads(r.getMessage())
            out.append((rec["event"], rec))
    caplog.clear()
    return out


def test_watch_reports_leader_quorum_and_peer_changes(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    node = _node(peer_views=[PeerView("node1", True, 0.0, None),
                             PeerView("node3", True, 50.0, None)])
    metrics = NodeMetrics()
    watch = ClusterWatch(node, metrics, quorum_grace=1.0, clock=lambda: now[0])  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger=events.LOGGER_NAME)
    watch.sample()
    assert [e for e, _ in _events(caplog)] == ["leader_changed"]
    # An election: no leader for less than the grace is not an outage.
    node.raft.leader_id = None
    now[0] = 0.5
    watch.sample()
    node.raft.leader_id, node.raft.term = "node3", 4
    node.raft.peer_views = [PeerView("node1", True, 3.0, None),
                            PeerView("node3", True, 0.0, None)]
    now[0] = 0.8
    watch.sample()
    assert [e for e, _ in _events(caplog)] == ["leader_changed"]
    # This node leads; node3 goes silent: unreachable once that has lasted.
    node.raft.is_leader, node.raft.leader_id, node.raft.term = True, "node2", 5
    node.raft.peer_views = [PeerView("node1", True, 0.0, None),
                            PeerView("node3", True, 0.0, None)]
    node.fsm.keyring = _ring(KeyState.PRIMARY, backed_up=True)
    now[0] = 1.0
    watch.sample()
    assert [e for e, _ in _events(caplog)] == ["leader_changed"]
    node.raft.peer_views = [PeerView("node1", True, 0.0, None),
                            PeerView("node3", True, 1.5, None)]  # TCP still "open"
    now[0] = 2.0
    watch.sample()
    assert _events(caplog) == []
    now[0] = 3.1
    watch.sample()
    assert [(e, r["peer"]) for e, r in _events(caplog)] == [("peer_unreachable", "node3")]
    # It steps down and no leader appears for longer than the grace.
    node.raft.is_leader, node.raft.leader_id = False, None
    now[0] = 3.5
    watch.sample()
    now[0] = 4.6
    watch.sample()
    assert [e for e, _ in _events(caplog)] == ["quorum_lost"]
    # Healed: node1 leads with a quorum; the idle link to node3 is trusted again.
    node.raft.leader_id, node.raft.term = "node1", 9
    node.raft.peer_views = [PeerView("node1", True, 0.0, None),
                            PeerView("node3", True, 30.0, None)]
    now[0] = 10.0
    watch.sample()
    names = [e for e, _ in _events(caplog)]
    assert sorted(names) == ["leader_changed", "peer_reachable", "quorum_regained"]
    assert metrics.leader_changes._value.get() == 4


def test_watch_reminds_the_leader_of_versions_never_backed_up(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    node = _node(is_leader=True, leader_id="node2")
    watch = ClusterWatch(node, clock=lambda: now[0])  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger=events.LOGGER_NAME)
    watch.sample()
    watch.sample()
    reminded = [r["version"] for e, r in _events(caplog) if e == "version_not_backed_up"]
    assert reminded == [1, 2]
    now[0] = 3601.0
    node.fsm.keyring = _ring(KeyState.ACTIVE, KeyState.PRIMARY, backed_up=True)
    watch.sample()
    assert [e for e, _ in _events(caplog) if e == "version_not_backed_up"] == []


# -- one node per host ---------------------------------------------------------------------


def test_init_with_one_host_per_node(tmp_path: Path) -> None:
    hosts = ["10.0.0.11", "10.0.0.12", "sso-3.example.net"]
    init_deployment(tmp_path / "d", nodes=None, hosts=hosts, base_port=7100)
    for i, host in enumerate(hosts, start=1):
        cfg = load_node_config(tmp_path / "d" / f"node{i}" / "node.toml")
        assert cfg.raft_address == f"{host}:7100"
        assert cfg.service_address == f"{host}:7101"
        assert cfg.metrics_address == f"{host}:7102"
        assert {p.raft_address for p in cfg.peers} == {f"{h}:7100" for h in hosts
                                                       if h != host}
        cert = x509.load_pem_x509_certificate((tmp_path / "d" / f"node{i}" /
                                               "node.pem").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.IPAddress)] + \
            san.get_values_for_type(x509.DNSName)
        assert host in names
    admin = (tmp_path / "d" / "admin.toml").read_text()
    assert all(f'"{h}:7101"' in admin for h in hosts)


@pytest.mark.parametrize("hosts", [["a", "a", "b"], ["a", "b"], ["a b", "c", "d"], []])
def test_bad_host_lists_are_refused(hosts: list[str]) -> None:
    with pytest.raises(ConfigError):
        plan_hosts(hosts, 7100)


def test_nodes_must_match_hosts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not match"):
        init_deployment(tmp_path / "d", nodes=5, hosts=["a", "b", "c"])


def test_deploy_examples_are_valid_configs() -> None:
    from raftsso.config import load_remote_config

    hosts = Path(__file__).resolve().parents[2] / "deploy" / "hosts"
    configs = [load_node_config(hosts / f"node{i}.toml") for i in (1, 2, 3)]
    assert [c.raft_address for c in configs] == [f"10.0.0.1{i}:7100" for i in (1, 2, 3)]
    assert {c.cluster_id for c in configs} == {"c-0123456789ab"}
    for c in configs:
        assert {p.id for p in c.peers} == {"node1", "node2", "node3"} - {c.node_id}
    for name, role in (("admin", "admin"), ("client", "client")):
        remote = load_remote_config(hosts / f"{name}.toml")
        assert remote.role == role
        assert [n.address for n in remote.nodes] == [c.service_address for c in configs]
