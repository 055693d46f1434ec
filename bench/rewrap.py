"""Rewrap: rows per second of ``raftsso -c admin.toml rewrap`` on both store backends, and
``cred get`` latency on each.

Setup per backend: a store with ``ROWS`` credential rows (100 applications), every token made
by a real SSOClient under version 1 with the row's associated data, bulk-loaded with
``SSOStore.put_many`` (one transaction per application). SQLite is a file beside the
cluster; PostgreSQL a throwaway server of the machine's binaries (tests/pgserver.py: initdb
in a temp dir, loopback, fsync on, default settings) reached over TCP with a password.
Then ``rotate --now`` and the real command line in a subprocess, timed from start to exit
(process start-up and the first sync included); the store is checked afterwards: every row
under the new primary, and a sample decrypts. An empty second run gives the start-up cost.

``cred get``: ``SSOStore.get_credential`` in this process (the library path an application
or the agent takes: one indexed read and a decrypt), ``GETS`` random users, sequential.

Targets (issue 12): >= 30,000 rows/s on SQLite, >= 20,000 rows/s on PostgreSQL.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import local_cluster, print_table
from bench.stats import percentile
from raftsso.client import SSOClient
from raftsso.store import RowKind, open_store
from tests.harness import Cluster, cli
from tests.pgserver import find_bin_dir, postgres_server

ROWS = 100_000
APPS = 100
GETS = 2_000
TARGETS = {"sqlite": 30_000, "postgresql": 20_000}


def _load(client: SSOClient, setting: str | Path, password_file: Path | None,
          rows: int) -> float:
    t = time.perf_counter()
    with open_store(setting, client, password_file=password_file) as store:
        per_app = [[] for _ in range(APPS)]  # type: list[list[tuple[str, bytes]]]
        for i in range(rows):
            per_app[i % APPS].append((f"user{i:07d}", b"password-%07d" % i))
        for a, items in enumerate(per_app):
            store.add_app(f"app{a:03d}")
            store.put_many(RowKind.CREDENTIAL, f"app{a:03d}", items)
    return time.perf_counter() - t


def _get_latency(client: SSOClient, setting: str | Path, password_file: Path | None,
                 rows: int, gets: int) -> dict[str, float]:
    rng = random.Random(7)
    samples = []
    with open_store(setting, client, password_file=password_file) as store:
        for _ in range(min(gets // 10, 200)):  # warm the pool, caches, prepared statements
            store.get_credential("app007", "user0000007")
        for _ in range(gets):
            i = rng.randrange(rows)
            t = time.perf_counter()
            value = store.get_credential(f"app{i % APPS:03d}", f"user{i:07d}")
            samples.append(time.perf_counter() - t)
            if value != b"password-%07d" % i:
                raise RuntimeError("cred get returned the wrong credential")
    samples.sort()
    return {"p50_s": percentile(samples, 50), "p99_s": percentile(samples, 99),
            "gets": float(gets)}


def _measure(cluster: Cluster, client: SSOClient, kind: str, setting: str | Path,
             password_file: Path | None, rows: int, gets: int,
             store_args: list[str]) -> dict[str, Any]:
    setup_s = _load(client, setting, password_file, rows)
    primary = cluster.rotate(now=True)["primary_version"]
    t = time.perf_counter()
    proc = cli("-c", str(cluster.admin_toml), "rewrap", *store_args, timeout=900)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"rewrap ({kind}) failed: {proc.stderr.decode()[-500:]}")
    client.sync()
    with open_store(setting, client, password_file=password_file) as store:
        versions = store.versions_in_use()
        sample = store.get_credential("app007", "user0000007")
    if versions != {primary: rows} or sample != b"password-0000007":
        raise RuntimeError(f"rewrap ({kind}) left {versions}, expected {{{primary}: {rows}}}")
    t = time.perf_counter()
    noop = cli("-c", str(cluster.admin_toml), "rewrap", *store_args)
    noop_s = time.perf_counter() - t
    return {"rows": rows, "setup_s": setup_s, "seconds": elapsed, "rows_per_s": rows / elapsed,
            "noop_run_s": noop_s, "noop_exit": noop.returncode,
            # Meaningful only when the rows, not the start-up, take most of the time.
            "rows_per_s_without_startup": rows / (elapsed - noop_s)
            if elapsed > 2 * noop_s else None,
            "target_rows_per_s": TARGETS[kind],
            "cred_get": _get_latency(client, setting, password_file, rows, gets)}


def _postgresql(cluster: Cluster, client: SSOClient, rows: int,
                gets: int) -> dict[str, Any]:
    if find_bin_dir() is None:
        return {"skipped": True, "note": "no PostgreSQL server binaries on this machine"}
    with postgres_server() as pg:
        joined = cli("-c", str(cluster.admin_toml), "sso", "--store", pg.uri,
                     "--store-password-file", str(pg.password_file), "join")
        if joined.returncode != 0:
            raise RuntimeError(f"sso join failed: {joined.stderr.decode()}")
        # admin.toml now names the store and its password file: rewrap takes no --store.
        return _measure(cluster, client, "postgresql", pg.uri, pg.password_file, rows, gets,
                        [])


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    rows = 2_000 if quick else ROWS
    gets = 200 if quick else GETS
    backends: dict[str, Callable[[Cluster, SSOClient], dict[str, Any]]] = {
        "sqlite": lambda c, cl: _measure(c, cl, "sqlite", c.root / "bench-sso.db", None,
                                         rows, gets, ["--store", str(c.root / "bench-sso.db")]),
        "postgresql": lambda c, cl: _postgresql(c, cl, rows, gets),
    }
    results: dict[str, Any] = {}
    for kind, measure in backends.items():
        # A cluster per backend: each starts from version 1 with no other store bound.
        with local_cluster(f"rewrap-{kind}") as cluster, \
                SSOClient.from_config(cluster.client_toml, background=False) as client:
            results[kind] = measure(cluster, client)
    sqlite = results["sqlite"]
    out = {"config": {"rows": rows, "apps": APPS, "batch": "CLI default (2000)",
                      "gets": gets, "timed": "the raftsso CLI subprocess, start to exit",
                      "python": sys.version.split()[0]},
           # The SQLite figures at the top level, as before the PostgreSQL backend.
           **{k: sqlite[k] for k in ("setup_s", "seconds", "rows_per_s", "noop_run_s",
                                     "noop_exit", "rows_per_s_without_startup")},
           "backends": results}
    table_rows = []
    for kind, r in results.items():
        if r.get("skipped"):
            table_rows.append([kind, "-", "-", "-", "-", r["note"], "-"])
            continue
        table_rows.append([
            kind, f"{r['rows']:,}", f"{r['seconds']:.2f}", f"{r['rows_per_s']:,.0f}",
            f"{r['noop_run_s']:.2f}",
            f"{r['rows_per_s_without_startup']:,.0f}" if r["rows_per_s_without_startup"]
            else "-",
            f"{r['cred_get']['p50_s'] * 1e3:.3f} / {r['cred_get']['p99_s'] * 1e3:.3f}"])
    print_table("rewrap", ["store", "rows", "seconds", "rows/s", "empty run (start-up) s",
                           "rows/s less start-up", "cred get p50 / p99 ms"], table_rows)
    return out
