"""The operator's view of the whole cluster: every node's answer to ``status``, combined."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from raftsso import cluster_health
from raftsso.errors import RaftssoError
from raftsso.protocol.ids import VersionId
from raftsso.protocol.node_status import NodeStatus, SealView, StatusRequest, VersionInfo
from raftsso.protocol.record import record
from raftsso.remote import ClusterClient


@record
class NodeRow:
    """One configured node as ``status`` shows it (``reachable`` false: no answer)."""

    id: str
    address: str
    reachable: bool
    role: str | None = None
    term: int | None = None
    commit_index: int | None = None
    primary_version: VersionId | None = None
    last_contact: float | None = None
    # Health (raftsso.cluster_health): entries behind the leader, and the verdict.
    lag: int | None = None
    healthy: bool = False
    # The node's seal (None: unreachable, or a node older than seal providers).
    sealed: bool | None = None
    seal: SealView | None = None

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "address": self.address, "reachable": self.reachable,
                "role": self.role, "term": self.term, "commit_index": self.commit_index,
                "primary_version": self.primary_version, "last_contact": self.last_contact,
                "lag": self.lag, "healthy": self.healthy, "sealed": self.sealed,
                "seal": None if self.seal is None else self.seal.to_wire()}


@record
class ClusterStatus:
    """The contract's ``status --json`` object (DESIGN.md section 5), plus the versions."""

    cluster_id: str | None
    leader: str | None
    has_quorum: bool
    primary_version: VersionId | None
    versions: tuple[VersionInfo, ...]
    nodes: tuple[NodeRow, ...]
    failure_tolerance: int = 0
    leader_status: NodeStatus | None = None  # the leader's own answer (policy, counts)

    @property
    def healthy(self) -> bool:
        return self.leader is not None and self.has_quorum

    def to_dict(self) -> dict[str, object]:
        """The JSON view: the contract's keys, then ``versions``."""
        return {"cluster_id": self.cluster_id, "leader": self.leader,
                "has_quorum": self.has_quorum, "primary_version": self.primary_version,
                "failure_tolerance": self.failure_tolerance,
                "nodes": [n.to_dict() for n in self.nodes],
                "versions": [v.to_wire() for v in self.versions]}


def survey(client: ClusterClient, timeout: float = 2.0) -> ClusterStatus:
    """Ask every node at once; a node that does not answer in ``timeout`` is unreachable.

    Raises :class:`~raftsso.errors.ConfigError` when every node failed to prove its
    certificate against our ``ca_cert`` (a wrong file, not an outage).
    """
    failures: list[BaseException] = []
    unexpected: list[BaseException] = []
    answers: list[NodeStatus | None] = [None] * len(client.nodes)

    def ask(i: int, address: str) -> None:
        try:
            answers[i] = client.request_node(address, StatusRequest(), timeout=timeout)
        except (OSError, RaftssoError) as exc:
            failures.append(exc)
        except BaseException as exc:  # a bug, not an unreachable node: raised below
            unexpected.append(exc)

    # One thread per node (plain threads: concurrent.futures would add its import to every
    # `raftsso status`); the calling thread asks the last node itself.
    threads = [threading.Thread(target=ask, args=(i, n.address), daemon=True)
               for i, n in enumerate(client.nodes[:-1])]
    for thread in threads:
        thread.start()
    ask(len(client.nodes) - 1, client.nodes[-1].address)
    for thread in threads:
        thread.join()
    if unexpected:
        raise unexpected[0]
    wrong_ca = client.wrong_ca_error(failures)
    if wrong_ca is not None:
        raise wrong_ca

    leaders = [a for a in answers if a is not None and a.role == "leader"]
    # Two nodes may both believe they lead for a moment; the higher term is the real one.
    leader = max(leaders, key=lambda a: a.term) if leaders else None
    contact: dict[str, float | None] = {}
    matched: dict[str, int | None] = {}
    if leader is not None:
        contact = {p.id: p.last_contact for p in leader.peers}
        contact[leader.node_id] = 0.0
        matched = {p.id: p.match_index for p in leader.peers}
    nodes = []
    for endpoint, answer in zip(client.nodes, answers, strict=True):
        is_leader = leader is not None and answer is leader
        index = matched.get(endpoint.id)
        if index is None and answer is not None:
            index = answer.last_applied
        lag = (cluster_health.lag(leader.commit_index, index)
               if leader is not None and not is_leader else (0 if is_leader else None))
        health = cluster_health.node_health(
            endpoint.id, reachable=answer is not None, leader=is_leader, lag=lag,
            last_contact=contact.get(endpoint.id))
        if answer is None:
            nodes.append(NodeRow(endpoint.id, endpoint.address, False,
                                 last_contact=contact.get(endpoint.id), lag=lag,
                                 healthy=health.healthy))
        else:
            nodes.append(NodeRow(endpoint.id, endpoint.address, True, answer.role, answer.term,
                                 answer.last_applied, answer.primary_version,
                                 contact.get(endpoint.id), lag, health.healthy,
                                 sealed=answer.sealed, seal=answer.seal))
    # The voters are the members the leader knows (itself and its peers); without a
    # leader there is no tolerance to speak of.
    voters = ({leader.node_id, *(p.id for p in leader.peers)} if leader is not None
              else {n.id for n in nodes})
    healthy_voters = sum(1 for n in nodes if n.id in voters and n.healthy)
    tolerance = (cluster_health.failure_tolerance(len(voters), min(healthy_voters,
                                                                   len(voters)))
                 if leader is not None and leader.has_quorum else 0)
    return ClusterStatus(
        cluster_id=next((a.cluster_id for a in answers if a is not None), None),
        leader=leader.node_id if leader else None,
        has_quorum=bool(leader and leader.has_quorum),
        primary_version=leader.primary_version if leader else None,
        versions=leader.versions if leader else (),
        nodes=tuple(nodes), failure_tolerance=tolerance, leader_status=leader)


def gather(client: ClusterClient, timeout: float = 2.0) -> dict[str, Any]:
    """:func:`survey` as its JSON view, for tools and tests that read it as a map (the
    CLI and the library use the typed :func:`survey`)."""
    return survey(client, timeout).to_dict()


def healthy(status: Mapping[str, object]) -> bool:
    """:attr:`ClusterStatus.healthy` of a :func:`gather` map."""
    return status["leader"] is not None and bool(status["has_quorum"])
