"""``python -m bench [--quick] [--trials N] [SCENARIO ...]``: run benchmarks, print a table,
write JSON to bench/results/."""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench import failover

SCENARIOS = {"failover": failover.run}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS),
                        help=f"any of {sorted(SCENARIOS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="a few trials only: checks that the harness works (CI)")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    report = {
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                    "cpus": __import__("os").cpu_count()},
        "commit": _commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "results": {},
    }
    for name in args.scenarios:
        report["results"][name] = SCENARIOS[name](quick=args.quick, trials=args.trials)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
