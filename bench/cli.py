"""CLI start: wall time of ``raftsso --version`` and ``raftsso -c admin.toml status``.

Each command runs ``RUNS`` times as a fresh process (the installed ``raftsso`` script next
to this Python, as an operator runs it), against a healthy three-node local cluster for
``status``; the wall time of each run is taken around ``subprocess.run``. Bytecode is
compiled first (``compileall``), as an installed package has it: a checkout run with
``PYTHONDONTWRITEBYTECODE`` would otherwise compile every module at every start. Python's
own start (``python -c pass``) is measured beside them, and ``-X importtime`` of
``status`` names the slowest imports. The load average is recorded with the numbers.
"""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import local_cluster, ms, print_table
from bench.stats import percentile

RUNS = 30
HERE = Path(__file__).resolve().parent


def _script() -> list[str]:
    script = Path(sys.executable).with_name("raftsso")
    return [str(script)] if script.exists() else [sys.executable, "-m", "raftsso_cli"]


def _times(argv: list[str], runs: int) -> dict[str, Any]:
    import time

    walls: list[float] = []
    codes: set[int] = set()
    for _ in range(runs):
        t = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, check=False)
        walls.append(time.perf_counter() - t)
        codes.add(done.returncode)
    return {"runs": runs, "exit_codes": sorted(codes), "min_s": min(walls),
            "p50_s": percentile(walls, 50), "p90_s": percentile(walls, 90),
            "max_s": max(walls)}


def _slowest_imports(argv: list[str], n: int = 8) -> list[list[Any]]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "raftsso_cli", *argv],
                          capture_output=True, text=True, check=False)
    rows = []
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append([parts[2].rstrip(), int(parts[1]) / 1e6])
    top = [r for r in rows if not r[0].startswith("   ")]  # top-level imports only
    return sorted(top, key=lambda r: -r[1])[:n]


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    runs = trials or (3 if quick else RUNS)
    for pkg in ("raftsso", "raftsso_cli"):
        compileall.compile_dir(str(HERE.parent / ("cli/raftsso_cli" if pkg == "raftsso_cli"
                                                   else pkg)), quiet=1)
    out: dict[str, Any] = {"config": {"runs": runs, "script": " ".join(_script()),
                                      "loadavg_at_start": list(os.getloadavg())}}
    out["python_start"] = _times([sys.executable, "-c", "pass"], runs)
    out["version"] = _times([*_script(), "--version"], runs)
    with local_cluster("cli") as cluster:
        admin = str(cluster.admin_toml)
        out["status"] = _times([*_script(), "-c", admin, "status"], runs)
        out["status_imports_s"] = _slowest_imports(["-c", admin, "status"])
    out["config"]["loadavg_at_end"] = list(os.getloadavg())
    print_table(f"CLI start ({runs} runs each; load {out['config']['loadavg_at_start'][0]:.2f}"
                f" -> {out['config']['loadavg_at_end'][0]:.2f})",
                ["command", "min ms", "p50 ms", "p90 ms", "exit"],
                [[name, ms(out[key]["min_s"]), ms(out[key]["p50_s"]), ms(out[key]["p90_s"]),
                  ",".join(map(str, out[key]["exit_codes"]))]
                 for name, key in (("python -c pass", "python_start"),
                                   ("raftsso --version", "version"),
                                   ("raftsso status", "status"))])
    print("  slowest top-level imports of status: " + ", ".join(
        f"{name.strip()} {seconds * 1000:.1f} ms" for name, seconds in out["status_imports_s"]))
    return out
