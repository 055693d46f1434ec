"""The agent from Java, Node.js and Go: tiny clients with no raftsso code (in
tests/agent/clients/), against a real agent beside real nodes. A ciphertext made in one
language decrypts in another."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.conftest import AgentProcess, agent_beside, b64, curl, unb64
from tests.harness import running_cluster

pytestmark = pytest.mark.integration
CLIENTS = Path(__file__).parent / "clients"
CREDENTIAL = "Pa55-for-alice ü"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    import tempfile
    sock_dir = Path(tempfile.mkdtemp(prefix="rsa-", dir="/tmp"))
    try:
        with running_cluster(tmp_path_factory.mktemp("langs") / "deploy") as cluster, \
                agent_beside(cluster, sock_dir) as a, a.client() as c:
            c.add_app("payroll", users_group="root")
            c.set_credential("payroll", "alice", CREDENTIAL.encode())
            yield a
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def run_client(argv: list[str], agent: AgentProcess, timeout: float = 300) -> list[str]:
    env = {**os.environ, "GOCACHE": "/tmp/raftsso-go-cache", "GOPATH": "/tmp/raftsso-go-path"}
    result = subprocess.run([*argv, str(agent.socket), "payroll", "alice"],
                            capture_output=True, timeout=timeout, check=False, env=env,
                            cwd=CLIENTS)
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    lines = out.splitlines()
    assert not [x for x in lines if x.startswith("FAILED")]
    return lines


def check_interop(lines: list[str], agent: AgentProcess, aad: bytes = b"order-42") -> None:
    assert f"credential {CREDENTIAL}" in lines
    ciphertext = next(x.split(" ", 1)[1] for x in lines if x.startswith("ciphertext "))
    status, dec = curl(agent.socket, "POST", "/v1/decrypt",
                       {"app": "payroll", "ciphertext": ciphertext,
                        "associated_data": b64(aad)})
    assert status == 200 and unb64(dec["plaintext"]).decode().startswith("hello from ")


@pytest.mark.skipif(shutil.which("java") is None, reason="no java (apt: openjdk-17-jdk-headless)")
def test_java_client(agent: AgentProcess) -> None:
    lines = run_client(["java", "AgentCall.java"], agent)
    assert "ok decrypt" in lines and "ok a missing mapping is 404" in lines
    check_interop(lines, agent)


@pytest.mark.skipif(shutil.which("node") is None, reason="no node (apt: nodejs)")
def test_node_client(agent: AgentProcess) -> None:
    lines = run_client(["node", "agent_call.js"], agent)
    assert "ok decrypt 19" in lines and "ok a wrong type is 400" in lines
    check_interop(lines, agent)


@pytest.mark.skipif(shutil.which("go") is None, reason="no go (apt: golang-go)")
def test_go_client(agent: AgentProcess) -> None:
    lines = run_client(["go", "run", "agent_call.go"], agent, timeout=600)
    assert "ok decrypt" in lines
    check_interop(lines, agent)
