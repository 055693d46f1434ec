"""One PNG per run: a failover timeline and latency CDFs (matplotlib, the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _cdf(ax: Any, values: list[float], label: str, scale: float = 1000.0) -> None:
    if not values:
        return
    xs = sorted(v * scale for v in values)
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    ax.step(xs, ys, where="post", label=f"{label} (n={len(xs):,})")


def render(plot: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    fig.suptitle(title, fontsize=11)

    ax = axes[0][0]
    tl = (plot.get("failover") or {}).get("timeline")
    if tl:
        bin_s = tl["bin_s"]
        counts = tl["ok_per_bin"][:-1]  # the last bin is partial
        xs = [tl["offset_s"] + i * bin_s for i in range(len(counts))]
        ax.plot(xs, [n / bin_s for n in counts], lw=0.8, color="tab:blue",
                label="successful client ops/s (10 ms bins)")
        for x, label, color in ((0.0, f"SIGKILL {tl['killed']}", "tab:red"),
                                (tl["new_leader_s"], "new leader", "tab:orange"),
                                (tl["ack_rotate_s"], "first acknowledged rotate",
                                 "tab:green")):
            ax.axvline(x, color=color, ls="--", lw=1, label=f"{label} ({x * 1000:.0f} ms)")
        if tl["failed_at"]:
            ax.plot(tl["failed_at"], [0] * len(tl["failed_at"]), "x", color="red",
                    label=f"failed client ops ({len(tl['failed_at'])})")
        nodes = sorted({n for _, _, n in tl["client_nodes"] if n})
        ax2 = ax.twinx()
        for node in nodes:
            pts = [(t, c) for t, c, n in tl["client_nodes"] if n == node]
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], ".", ms=2,
                     label=f"client synced from {node}")
        ax2.set_ylabel("client #")
        ax2.set_ylim(-0.5, max((c for _, c, _ in tl["client_nodes"]), default=0) + 0.5)
        ax2.legend(loc="lower right", fontsize=7)
        ax.set_xlabel("seconds from the kill")
        ax.set_ylabel("ops/s")
        ax.set_ylim(bottom=0)
        ax.legend(loc="lower left", fontsize=7)
    ax.set_title("failover timeline: the median SIGKILL trial", fontsize=10)

    ax = axes[0][1]
    fo = plot.get("failover") or {}
    _cdf(ax, fo.get("sigkill_ack", []), "raftsso SIGKILL")
    _cdf(ax, fo.get("sigstop_ack", []), "raftsso SIGSTOP")
    _cdf(ax, (plot.get("etcd") or {}).get("ack", []), "etcd SIGKILL (defaults)")
    ax.set_xlabel("leader failure -> first acknowledged write (ms)")
    ax.set_ylabel("fraction of trials")
    ax.set_title("failover CDF", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1][0]
    ld = plot.get("load") or {}
    _cdf(ax, ld.get("clients_latencies", []), "simulated clients, own connections")
    ramp = sorted((ld.get("ramp_latencies") or {}).items())
    # A few steps keep the chart readable: the first, 1,000/s, and the last two.
    keep = {r for r, _ in ramp[:1] + ramp[-2:]} | {1000}
    for rate, lat in ramp:
        if rate in keep:
            _cdf(ax, lat, f"ramp {rate}/s (open loop)")
    _cdf(ax, ld.get("saturation_latencies", []), "closed loop (per request)")
    ax.set_xscale("log")
    ax.set_xlabel("keyring fetch latency from the scheduled time (ms, log)")
    ax.set_ylabel("fraction")
    ax.set_title("keyring fetch latency CDF (one node)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)

    ax = axes[1][1]
    _cdf(ax, (plot.get("rotation") or {}).get("rotate_latencies", []),
         "raftsso acknowledged rotate")
    _cdf(ax, (plot.get("etcd") or {}).get("put_latencies", []), "etcd put (JSON gateway)")
    ax.set_xscale("log")
    ax.set_xlabel("sequential write latency (ms, log)")
    ax.set_ylabel("fraction")
    ax.set_title("write latency CDF (one client, sequential)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
