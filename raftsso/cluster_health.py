"""How healthy each node is, and how many more voters the cluster can lose (pure).

Vault's autopilot reports the same two things. A node is *healthy* when it answers, and,
unless it is the leader, the leader heard from it recently (``last_contact``) and its log
trails the leader's by few entries (``lag``). The *failure tolerance* is how many voters
may fail with a quorum kept: healthy voters minus the quorum, never below zero. Three
healthy nodes tolerate one failure; with one of them down, none.

Used by ``status --json`` (from every node's answer, :mod:`raftsso.cluster_status`) and by a
leader's ``/metrics`` (from its own view of its peers).
"""

from __future__ import annotations

from collections.abc import Iterable

from raftsso.protocol.record import record  # (cheap to define: see there)

#: A follower whose last contact with the leader is older than this is unhealthy (seconds).
#: Heartbeats go every ``append_entries_period`` (0.03 s by default): seconds of silence
#: mean a dead or cut-off node, not a busy one.
MAX_LAST_CONTACT = 5.0
#: A follower trailing the leader's commit index by more entries than this is unhealthy.
MAX_LAG = 100


def quorum(voters: int) -> int:
    """Votes needed for a majority of ``voters``."""
    if voters < 1:
        raise ValueError("a cluster has at least one voter")
    return voters // 2 + 1


def failure_tolerance(voters: int, healthy_voters: int) -> int:
    """How many more voters may fail with a quorum kept (0 when none, or already lost)."""
    if not 0 <= healthy_voters <= voters:
        raise ValueError("healthy voters must be between 0 and the number of voters")
    return max(0, healthy_voters - quorum(voters))


@record
class NodeHealth:
    id: str
    reachable: bool
    leader: bool
    lag: int | None  # entries behind the leader's commit index (None: unknown)
    last_contact: float | None  # seconds since the leader heard from it (None: unknown)
    healthy: bool

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "reachable": self.reachable, "lag": self.lag,
                "last_contact": self.last_contact, "healthy": self.healthy}


def lag(leader_commit: int | None, node_index: int | None) -> int | None:
    """Entries ``node_index`` trails ``leader_commit`` (0 when ahead: it applied more than
    the leader had committed when asked)."""
    if leader_commit is None or node_index is None:
        return None
    return max(0, leader_commit - node_index)


def node_health(node_id: str, *, reachable: bool, leader: bool, lag: int | None,
                last_contact: float | None, max_lag: int = MAX_LAG,
                max_last_contact: float = MAX_LAST_CONTACT) -> NodeHealth:
    """The health of one node. The leader is healthy when it answers; a follower also needs
    a recent contact with the leader and a small lag (an unknown one is unhealthy)."""
    if leader:
        healthy = reachable
    else:
        healthy = (reachable and last_contact is not None and last_contact <= max_last_contact
                   and lag is not None and lag <= max_lag)
    return NodeHealth(node_id, reachable, leader, lag, last_contact, healthy)


def tolerance_of(nodes: Iterable[NodeHealth], *, has_leader: bool) -> int:
    """The failure tolerance of a cluster whose voters are ``nodes`` (0 with no leader: a
    cluster electing has nothing to spare)."""
    rows = list(nodes)
    if not rows or not has_leader:
        return 0
    return failure_tolerance(len(rows), sum(n.healthy for n in rows))
