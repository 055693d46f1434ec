"""An SSO client process for tests: encrypts into its own file, decrypts its peer's.

``python -m tests.integration.client_worker CONFIG NAME OUT PEER STOP``: until the file STOP
exists, encrypt ``NAME-i`` and append the token (hex, one per line) to OUT, and decrypt every
complete new line of PEER (checking the plaintext). Prints one JSON summary at the end:
``{"ops", "failures", "versions"}``. Pacing (a few ms per loop) keeps two workers and three
nodes from starving a 2-core machine; nothing waits on it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from raftsso.client import SSOClient
from raftsso.envelope import token_key_version

AD = b"worker"


def main() -> int:
    config, name, out, peer, stop = sys.argv[1:6]
    out_path, peer_path, stop_path = Path(out), Path(peer), Path(stop)
    failures: list[str] = []
    versions: set[int] = set()
    ops = 0
    consumed = 0
    with SSOClient.from_config(config, resync_interval=0.3, max_staleness=30.0) as client, \
            out_path.open("a") as sink:
        i = 0
        while not stop_path.exists():
            try:
                token = client.encrypt(f"{name}-{i}".encode(), AD)
                versions.add(token_key_version(token))
                sink.write(token.hex() + "\n")
                sink.flush()
                ops += 1
            except Exception as exc:
                failures.append(f"encrypt {i}: {type(exc).__name__}: {exc}")
            i += 1
            if peer_path.exists():
                data = peer_path.read_text()
                complete = data[:data.rfind("\n") + 1]
                for line in complete[consumed:].splitlines():
                    try:
                        plain = client.decrypt(bytes.fromhex(line), AD)
                        if b"-" not in plain:
                            failures.append(f"decrypt: unexpected plaintext {plain!r}")
                        ops += 1
                    except Exception as exc:
                        failures.append(f"decrypt: {type(exc).__name__}: {exc}")
                consumed = len(complete)
            time.sleep(0.005)
    print(json.dumps({"ops": ops, "failures": failures, "versions": sorted(versions)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
