"""The operator's view of the whole cluster: every node's answer to ``status``, combined."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from raftsso.errors import RaftssoError
from raftsso.remote import ClusterClient


def gather(client: ClusterClient, timeout: float = 2.0) -> dict[str, Any]:
    """The contract's ``status --json`` object (DESIGN.md section 5), plus detail."""

    def ask(address: str) -> dict[str, Any] | None:
        try:
            answer = client.call_node(address, "status", timeout=timeout)
        except (OSError, RaftssoError):
            return None
        return answer if isinstance(answer, dict) else None

    with ThreadPoolExecutor(max_workers=len(client.nodes)) as pool:
        answers = list(pool.map(ask, [n.address for n in client.nodes]))

    leaders = [a for a in answers if a and a.get("role") == "leader"]
    # Two nodes may both believe they lead for a moment; the higher term is the real one.
    leader = max(leaders, key=lambda a: a.get("term", 0)) if leaders else None
    contact: dict[str, Any] = {}
    if leader is not None:
        contact = {p["id"]: p.get("last_contact") for p in leader.get("peers", [])}
        contact[leader["node_id"]] = 0.0
    nodes = []
    for endpoint, answer in zip(client.nodes, answers, strict=True):
        row: dict[str, Any] = {"id": endpoint.id, "address": endpoint.address,
                               "reachable": answer is not None, "role": None, "term": None,
                               "commit_index": None, "primary_version": None,
                               "last_contact": contact.get(endpoint.id)}
        if answer is not None:
            row.update(role=answer.get("role"), term=answer.get("term"),
                       commit_index=answer.get("last_applied"),
                       primary_version=answer.get("primary_version"))
        nodes.append(row)
    cluster_id = next((a["cluster_id"] for a in answers if a), None)
    return {
        "cluster_id": cluster_id,
        "leader": leader["node_id"] if leader else None,
        "has_quorum": bool(leader and leader.get("has_quorum")),
        "primary_version": leader.get("primary_version") if leader else None,
        "versions": leader.get("versions", []) if leader else [],
        "nodes": nodes,
    }


def healthy(status: dict[str, Any]) -> bool:
    return status["leader"] is not None and status["has_quorum"]
