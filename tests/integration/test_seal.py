"""Seal providers on real node processes (issue 14, "Done when").

* pkcs11 (SoftHSM2): no seal.key anywhere; every node SIGKILLed at once comes back with
  the same keyring; a copy of a node's directory started without the token's PIN refuses
  with one line and reveals no key;
* shamir: a restarted node stays sealed (and not ready) with 2 of 3 shares, serves with
  3, and SSO clients keep working through the other nodes meanwhile;
* rekey-seal: a sealed blob taken from the journal before it no longer opens after it,
  no node's files keep it, and an interrupted rekey runs again;
* retire destroys: no file of any node holds the retired version's sealed blob, and its
  key is gone from every node's memory (``/proc/PID/mem`` of our own node processes).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftsso.admin import AdminClient
from raftsso.client import SSOClient
from raftsso.errors import InvalidToken, RaftssoError, RemoteError
from raftsso.protocol.codes import ErrorCode
from raftsso.seal import SealError, softhsm
from raftsso.seal.file_seal import FileSeal
from raftsso.seal.setup import SealPlan
from tests.harness import Cluster, running_cluster, wait_for
from tests.harness.wait import cli

pytestmark = pytest.mark.integration

# A sealed secret as the state machine's commands and snapshots carry it: the msgpack key
# "sealed" then a bin8 of 61 (format 1) or 65 bytes (format 2).
_SEALED_FIELD = re.compile(rb"\xa6sealed\xc4([\x3d\x41])", re.DOTALL)


def _forms(needle: bytes) -> tuple[bytes, bytes]:
    """``needle`` as stored raw, and as pysyncobj's journal stores command bytes (a str of
    the bytes decoded as latin-1, written as UTF-8)."""
    return needle, needle.decode("latin-1").encode("utf-8")


def _as_latin1(data: bytes) -> bytes:
    """The inverse view of a file: UTF-8 text read back into the bytes it stood for."""
    text = data.decode("utf-8", errors="surrogateescape")
    return bytes(o if o < 0x100 else (o & 0xFF if 0xDC80 <= o <= 0xDCFF else 0x3F)
                 for o in map(ord, text))


def _sealed_blobs(data: bytes) -> set[bytes]:
    """Every sealed secret in a file: stored raw (msgpack; pysyncobj's pickles since
    protocol 4), or as a latin-1 string (older pysyncobj pickles). A match in the latin-1
    view of raw bytes is garbled (a UTF-8-looking pair of raw bytes reads as one): it
    counts only if its stored form really is in the file."""
    out = {data[m.end():m.end() + m.group(1)[0]] for m in _SEALED_FIELD.finditer(data)}
    view = _as_latin1(data)
    for m in _SEALED_FIELD.finditer(view):
        blob = view[m.end():m.end() + m.group(1)[0]]
        if _forms(blob)[1] in data:
            out.add(blob)
    return out


def _files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


def _blobs_in(root: Path) -> set[bytes]:
    out: set[bytes] = set()
    for path in _files(root):
        out |= _sealed_blobs(path.read_bytes())
    return out


def _holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in _files(root) if any(f in p.read_bytes() for f in _forms(needle))]


def _in_memory(pid: int, needle: bytes) -> bool:
    """Whether ``needle`` is anywhere in the readable memory of process ``pid`` (ours)."""
    found = False
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            if any(f in chunk for f in _forms(needle)):
                found = True
                break
    return found


def _opened(seal: FileSeal, blob: bytes, cluster_id: str, version: int) -> bytes | None:
    try:
        return seal.unwrap(blob, cluster_id=cluster_id, version=version)
    except (InvalidToken, SealError):
        return None


def _opens(seal: FileSeal, blob: bytes, cluster_id: str) -> bool:
    return any(_opened(seal, blob, cluster_id, v) is not None for v in range(1, 8))


def _readyz(cluster: Cluster, node_id: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(cluster.metrics_url(node_id, "/readyz"), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _same_keyring_everywhere(cluster: Cluster, expect: dict[int, bytes]) -> None:
    for node_id in cluster.ids:
        wait_for(lambda n=node_id: cluster.keyring(n) == expect,  # type: ignore[misc]
                 what=f"{node_id} to serve the keyring")


# -- pkcs11 -----------------------------------------------------------------------------


@pytest.mark.skipif(softhsm.find_module() is None,
                    reason="softhsm2 is not installed (.ci/run installs it)")
def test_pkcs11_no_key_file_survives_sigkill_and_a_copy_without_pin_refuses(
        tmp_path: Path) -> None:
    with running_cluster(tmp_path / "d", 3, seal=SealPlan("pkcs11")) as c:
        assert list(c.root.rglob("seal.key")) == []
        assert not [p for p in _files(c.root) if p.name.endswith(".key") and
                    p.name not in ("ca.key", "node.key", "admin.key", "client.key")]
        c.rotate(now=True)
        expect = c.keyring(c.leader())
        assert sorted(expect) == [1, 2]
        _same_keyring_everywhere(c, expect)
        assert all(c.node_status(n)["seal"]["kind"] == "pkcs11" for n in c.ids)

        for node_id in c.ids:  # every node at once, no chance to flush anything
            c.signal(node_id, signal.SIGKILL)
        for node_id in c.ids:
            c.wait(node_id)
        c.start()
        c.wait_healthy()
        _same_keyring_everywhere(c, expect)

        # node1's whole directory, elsewhere, without the PIN file (kept outside it).
        copy = tmp_path / "elsewhere" / "node1"
        shutil.copytree(c.root / "node1", copy, ignore=shutil.ignore_patterns("node.log"))
        run = subprocess.run([sys.executable, "-m", "raftsso_cli", "node", "run",
                              str(copy / "node.toml")], capture_output=True, timeout=60,
                             check=False)
        lines = run.stderr.decode().strip().splitlines()
        assert run.returncode == 1, run.stderr
        assert len(lines) == 1 and "PIN" in lines[0] and "Traceback" not in lines[0], lines
        # ... and with a wrong PIN where the PIN file should be: refused too.
        pins = copy.parent / "pkcs11-pins"
        pins.mkdir(mode=0o700)
        fd = os.open(pins / "node1.pin", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"not-the-pin\n")
        os.close(fd)
        wrong = subprocess.run([sys.executable, "-m", "raftsso_cli", "node", "run",
                                str(copy / "node.toml")], capture_output=True, timeout=60,
                               check=False)
        wrong_lines = wrong.stderr.decode().strip().splitlines()
        assert wrong.returncode == 1
        assert len(wrong_lines) == 1 and "not the user PIN" in wrong_lines[0], wrong_lines
        for key in expect.values():  # no master secret in the copy or in what it printed
            assert _holding(copy, key) == []
            assert key not in run.stdout + run.stderr + wrong.stdout + wrong.stderr


# -- shamir -----------------------------------------------------------------------------


def _unseal_all(c: Cluster, shares: list[Path]) -> None:
    for node_id in c.ids:
        wait_for(lambda n=node_id: c.node_status(n),  # type: ignore[misc]
                 what=f"{node_id} to answer")
        assert c.unseal(node_id, shares)["sealed"] is False


def test_shamir_restarted_node_is_sealed_until_threshold_while_clients_carry_on(
        tmp_path: Path) -> None:
    with Cluster(tmp_path / "d", 3, seal=SealPlan("shamir", shares=5, threshold=3)) as c:
        assert list(c.root.rglob("seal.key")) == []
        shares = c.share_files()
        assert len(shares) == 5
        c.start()
        _unseal_all(c, shares[:3])
        leader = c.leader()
        target = next(n for n in c.ids if n != leader)
        with SSOClient.from_config(c.client_toml) as client:
            token = client.encrypt(b"before the restart")
            c.kill(target)
            c.start(target)
            status = wait_for(lambda: (s := c.node_status(target)) and s.get("sealed") and s,
                              what=f"{target} to answer, sealed")
            assert status["seal"]["generations"] == []
            code, body = _readyz(c, target)
            assert code == 503 and "sealed" in body
            with pytest.raises(RemoteError) as refused:
                c.call(target, "keyring")
            assert refused.value.code is ErrorCode.SEALED

            # Two of the three shares needed: still sealed, still not ready.
            view = c.unseal(target, shares[3:5])
            assert view["sealed"] is True and view["supplied"] == 2
            assert view["threshold"] == 3
            assert _readyz(c, target)[0] == 503
            # Meanwhile the others serve: sync, encrypt, decrypt, even a rotation.
            client.sync()
            assert client.decrypt(token) == b"before the restart"
            c.rotate(now=True)
            client.sync()
            assert client.decrypt(client.encrypt(b"during")) == b"during"

            view = c.unseal(target, shares[:1])
            assert view["sealed"] is False
            wait_for(lambda: _readyz(c, target)[0] == 200, what=f"{target} to be ready")
            _same_keyring_everywhere(c, c.keyring(c.leader()))
        # A share is never logged.
        for node_id in c.ids:
            for share in shares:
                value = share.read_text().split("value = ")[1].split()[0]
                assert value not in c.log(node_id)


# -- seal rekey ---------------------------------------------------------------------------


def test_rekey_seal_old_journal_blobs_no_longer_open_and_it_reruns(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "d", 3) as c:
        c.rotate(now=True)
        expect = c.keyring(c.leader())
        _same_keyring_everywhere(c, expect)
        old_seal = FileSeal(c.root / "node1" / "seal.key")
        before = _blobs_in(c.data_dir("node1"))
        assert before and all(_opens(old_seal, b, c.cluster_id) for b in before)

        # Interrupted after step 1 on one node: a key of generation 2 nobody used yet.
        with AdminClient.from_config(c.admin_toml) as admin:
            from raftsso.protocol.messages import SealInstallRequest
            admin.cluster.request_node(c.address("node1"),
                                       SealInstallRequest(2, os.urandom(32)))
        done = cli("-c", str(c.admin_toml), "rekey-seal", "--json")
        assert done.returncode == 0, done.stderr
        assert b'"generation": 2' in done.stdout

        for node_id in c.ids:
            seal = FileSeal(c.root / node_id / "seal.key")
            assert seal.generations == (2,)
            assert not any(_opens(seal, b, c.cluster_id) for b in before)
            assert c.node_status(node_id)["seal"]["seal_generation"] == 2
        _same_keyring_everywhere(c, expect)  # the same secrets, sealed anew
        for node_id in c.ids:
            wait_for(lambda n=node_id: not any(_holding(c.root / n, b)  # type: ignore[misc]
                                               for b in before),
                     what=f"{node_id}'s files to drop the old sealed blobs")
        # Run again: a new generation, nothing lost.
        again = cli("-c", str(c.admin_toml), "rekey-seal")
        assert again.returncode == 0, again.stderr
        assert FileSeal(c.root / "node2" / "seal.key").generations == (3,)
        c.rotate(now=True)
        assert len(c.keyring(c.leader())) == 3


# -- retire destroys ----------------------------------------------------------------------


def test_retire_leaves_no_sealed_copy_in_files_and_no_key_in_memory(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "d", 3) as c:
        c.rotate(now=True)
        keys = c.keyring(c.leader())
        _same_keyring_everywhere(c, keys)
        retired = keys[1]
        seal = FileSeal(c.root / "node1" / "seal.key")
        blob = next(b for b in _blobs_in(c.data_dir("node1"))
                    if _opened(seal, b, c.cluster_id, 1) == retired)
        with SSOClient.from_config(c.client_toml) as client:
            client.sync()
            assert 1 in {v.id for v in client.state().versions}
            with AdminClient.from_config(c.admin_toml) as admin:
                result = admin.retire(1, force=True)
            assert result.state.value == "retired" and result.destroyed is True
            for node_id in c.ids:
                wait_for(lambda n=node_id: _holding(c.root / n, blob) == [],  # type: ignore[misc]
                         what=f"{node_id}'s files to drop the retired version's blob")
            client.sync()
            assert 1 not in {v.id for v in client.state().versions}
        for node_id in c.ids:
            wait_for(lambda n=node_id: not _in_memory(c.pid(n), retired),  # type: ignore[misc]
                     what=f"the retired key to leave {node_id}'s memory")


def test_keyring_refused_by_a_sealed_node_is_one_error(tmp_path: Path) -> None:
    with Cluster(tmp_path / "d", 1, seal=SealPlan("shamir", shares=1, threshold=1)) as c:
        c.start()
        wait_for(lambda: c.node_status("node1"), what="node1 to answer")
        with pytest.raises(RaftssoError, match="sealed"):
            c.call("node1", "keyring")
        bad = c.root / "bad.txt"
        fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"raftsso-seal-share v1\nnonsense\n")
        os.close(fd)
        refused = cli("-c", str(c.admin_toml), "unseal", "node1", "--share-file", str(bad))
        assert refused.returncode == 1
        assert len(refused.stderr.decode().strip().splitlines()) == 1
        assert c.alive("node1")
        ok = cli("-c", str(c.admin_toml), "unseal", "node1", "--share-file",
                 str(c.share_files()[0]))
        assert ok.returncode == 0, ok.stderr
        assert b"unsealed" in ok.stdout
        c.wait_healthy()
