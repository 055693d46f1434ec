"""A client process writing credential mappings into a shared store (for the concurrency test).

``python -m tests.store.writer CLIENT_TOML NAME USERS GO PROGRESS``: waits for the file GO,
then sets each user of the comma-separated USERS in application "payroll" to
``NAME:<user>:final``, appending the user to PROGRESS after each acknowledged write, and
prints one JSON line ``{"written": n, "failures": [...]}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from raftsso.client import SSOClient
from raftsso.config import load_remote_config
from raftsso.errors import RaftssoError
from raftsso.store import open_store


def main() -> None:
    toml, name, users, go, progress = sys.argv[1:6]
    cfg = load_remote_config(toml)
    assert cfg.store is not None
    written, failures = 0, []
    with SSOClient(cfg, background=False) as client, \
            open_store(cfg.store, client, password_file=cfg.store_password_file,
                       cluster_id=cfg.cluster_id) as store, \
            open(progress, "a") as out:
        deadline = time.monotonic() + 120
        while not Path(go).exists():  # a start line for both writers, polled with a deadline
            if time.monotonic() > deadline:
                raise SystemExit("GO never appeared")
            time.sleep(0.005)
        for user in users.split(","):
            try:
                store.set_credential("payroll", user, f"{name}:{user}:final".encode())
            except RaftssoError as exc:
                failures.append(f"{user}: {exc}")
                continue
            written += 1
            out.write(user + "\n")
            out.flush()
    print(json.dumps({"written": written, "failures": failures}))


if __name__ == "__main__":
    main()
