"""Rewrap: rows per second of ``raftsso -c admin.toml rewrap --store PATH``.

Setup: an SSO store with ``ROWS`` credential rows (100 applications), every token made by a
real SSOClient under version 1 with the row's associated data, bulk-loaded in one
transaction (SSOStore._transaction; set_credential would cost one fsynced transaction per
row). Then ``rotate --now`` and the real command line in a subprocess, timed from start to
exit (process start-up and the first sync included); the store is checked afterwards: every
row under the new primary, and a sample decrypts.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from bench.common import local_cluster, print_table
from raftsso.client import SSOClient
from raftsso.store import RowKind, SSOStore, associated_data
from tests.harness import cli

ROWS = 100_000
APPS = 100


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    rows = 2_000 if quick else ROWS
    with local_cluster("rewrap") as cluster, \
            SSOClient.from_config(cluster.client_toml, background=False) as client:
        path = cluster.root / "bench-sso.db"
        t = time.perf_counter()
        with SSOStore(path, client) as store:
            for a in range(APPS):
                store.add_app(f"app{a:03d}")
            now = time.time()
            with store._transaction() as db:
                batch = []
                for i in range(rows):
                    app, user = f"app{i % APPS:03d}", f"user{i:07d}"
                    token = client.encrypt(b"password-%07d" % i,
                                           associated_data(RowKind.CREDENTIAL, app, user))
                    batch.append((app, user, token, 1, now))
                db.executemany("INSERT INTO credentials (app, user, token, key_version, "
                               "updated) VALUES (?, ?, ?, ?, ?)", batch)
        setup_s = time.perf_counter() - t
        primary = cluster.rotate(now=True)["primary_version"]
        t = time.perf_counter()
        proc = cli("-c", str(cluster.admin_toml), "rewrap", "--store", str(path),
                   timeout=600)
        elapsed = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"rewrap failed: {proc.stderr.decode()[-500:]}")
        client.sync()
        with SSOStore(path, client) as store:
            versions = store.key_versions()
            sample = store.get_credential("app007", "user0000007")
        t = time.perf_counter()
        noop = cli("-c", str(cluster.admin_toml), "rewrap", "--store", str(path))
        noop_s = time.perf_counter() - t
    if versions != {primary: rows} or sample != b"password-0000007":
        raise RuntimeError(f"rewrap left {versions}, expected {{{primary}: {rows}}}")
    out = {"config": {"rows": rows, "apps": APPS, "batch": "the CLI default",
                      "timed": "the raftsso CLI subprocess, start to exit",
                      "python": sys.version.split()[0]},
           "setup_s": setup_s, "seconds": elapsed, "rows_per_s": rows / elapsed,
           "noop_run_s": noop_s, "noop_exit": noop.returncode,
           # Meaningful only when the rows, not the start-up, take most of the time.
           "rows_per_s_without_startup": rows / (elapsed - noop_s)
           if elapsed > 2 * noop_s else None}
    print_table("rewrap", ["rows", "seconds", "rows/s", "empty run (start-up) s",
                           "rows/s less start-up"],
                [[f"{rows:,}", f"{elapsed:.2f}", f"{out['rows_per_s']:,.0f}", f"{noop_s:.2f}",
                  f"{out['rows_per_s_without_startup']:,.0f}"
                  if out["rows_per_s_without_startup"] else "-"]])
    return out
