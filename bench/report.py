"""Reading a bench report: safe accessors, number formats, and the ratios to the peers.

A report is the JSON that ``python -m bench`` writes (``{"results": {scenario: {...}}}``);
any scenario may be missing (not run, or failed), so every accessor answers None rather
than raising. Used by bench/targets.py (the issues' targets) and bench/summary.py
(RESULTS.md).
"""

from __future__ import annotations

import math
from typing import Any

# The agent's figures per op: one client is "sequential", 8 clients "concurrent", as for
# OpenBao's transit engine (bench/agent.py names them "encrypt x1" and "encrypt x8").
AGENT_CLIENTS = {"sequential": 1, "concurrent": 8}


def get(report: dict[str, Any], *path: str) -> Any:
    node: Any = report.get("results", {})
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_ms(x: Any) -> str:
    return f"{x * 1000:.1f} ms" if num(x) else "-"


def fmt_ops(x: Any) -> str:
    return f"{x:,.0f}" if num(x) else "-"


def fmt_rate(x: Any) -> str:
    return f"{x:,.0f}/s" if num(x) else "-"


def fmt_ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}" if num(a) and num(b) and b else "-"


def agent_rate(report: dict[str, Any], op: str, mode: str) -> float | None:
    """The agent's ops/s for ``op`` (encrypt, decrypt) in ``mode`` (sequential: one
    client, concurrent: eight), or None when the agent scenario did not run."""
    agent = get(report, "agent") or {}
    x = (agent.get(f"{op} x{AGENT_CLIENTS[mode]}") or {}).get("ops_per_s")
    if x is None:  # the layout of the OpenBao transit figures, if a report uses it
        x = (agent.get(f"{op}_{mode}") or {}).get("per_s")
    return float(x) if x is not None and num(x) else None


def comparisons(report: dict[str, Any]) -> dict[str, Any]:
    """raftsso / peer ratios from the same run (absent where either side is missing)."""
    out: dict[str, Any] = {}
    etcd_ack = get(report, "etcd", "ack_write_s", "median")
    etcd_leader = get(report, "etcd", "new_leader_s", "median")
    etcd_put = get(report, "etcd", "sequential_put_s", "median")
    r_ack = get(report, "failover", "sigkill", "ack_rotate_s", "median")
    r_leader = get(report, "failover", "sigkill", "new_leader_s", "median")
    r_rot = get(report, "rotation", "sequential", "p50_s")
    if num(etcd_ack) and num(r_ack):
        out["failover_ack_median_ratio"] = r_ack / etcd_ack
    if num(etcd_leader) and num(r_leader):
        out["failover_new_leader_median_ratio"] = r_leader / etcd_leader
    if num(etcd_put) and num(r_rot):
        out["sequential_write_p50_ratio"] = r_rot / etcd_put
    # OpenBao: times are raftsso / OpenBao (below 1: raftsso faster), rates too (above 1:
    # raftsso faster).
    for timing in ("default", "multiplier_1"):
        bao_ack = get(report, "openbao", "failover", timing, "ack_write_s", "median")
        if num(bao_ack) and num(r_ack):
            out[f"openbao_{timing}_failover_ack_median_ratio"] = r_ack / bao_ack
    bao_rot = get(report, "openbao", "transit", "rotate_sequential", "p50_s")
    if num(bao_rot) and num(r_rot):
        out["openbao_rotate_p50_ratio"] = r_rot / bao_rot
    for op in ("encrypt", "decrypt"):
        for mode in ("sequential", "concurrent"):
            bao = get(report, "openbao", "transit", f"{op}_{mode}", "per_s")
            client = get(report, "encryption", "1 KiB", f"client_{op}")
            agent = agent_rate(report, op, mode)
            if num(bao) and bao > 0:
                if num(client):
                    out[f"openbao_transit_{op}_{mode}_client_rate_ratio"] = client / bao
                if agent is not None:
                    out[f"openbao_transit_{op}_{mode}_agent_rate_ratio"] = agent / bao
    return out
