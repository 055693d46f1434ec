"""Small statistics helpers for benchmark reports."""

from __future__ import annotations

import statistics


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": statistics.median(values),
            "p90": percentile(values, 90), "p99": percentile(values, 99),
            "max": max(values), "min": min(values)}
