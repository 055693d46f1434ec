"""A real agent process beside real node processes (real TLS, real kills): curl over the
socket, callers under other uids (useradd/groupadd), nodes down, leader SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from raftsso.agent.client import AgentClient
from tests.agent.conftest import (
    UnixUsers,
    agent_beside,
    audit_lines,
    b64,
    curl,
    parse_responses,
    raw_exchange,
    request_bytes,
    unb64,
)
from tests.harness import Cluster, cli, free_base_port, wait_for

pytestmark = pytest.mark.integration


def test_curl_encrypts_and_decrypts(cluster: Cluster, short_dir: Path) -> None:
    with agent_beside(cluster, short_dir) as agent:
        assert stat.S_IMODE(os.stat(agent.socket).st_mode) == 0o660
        assert curl(agent.socket, "GET", "/v1/health")[1]["status"] == "ok"
        status, app = curl(agent.socket, "POST", "/v1/apps",
                           {"name": "payroll", "users_group": "root"})
        assert status == 201 and app["type"] == "individual"
        status, enc = curl(agent.socket, "POST", "/v1/encrypt",
                           {"app": "payroll", "plaintext": b64(b"s3cret"),
                            "associated_data": b64(b"row-7")})
        assert status == 200 and enc["key_version"] == 1
        status, dec = curl(agent.socket, "POST", "/v1/decrypt",
                           {"app": "payroll", "ciphertext": enc["ciphertext"],
                            "associated_data": b64(b"row-7")})
        assert status == 200 and unb64(dec["plaintext"]) == b"s3cret"
        status, err = curl(agent.socket, "POST", "/v1/decrypt",
                           {"app": "payroll", "ciphertext": enc["ciphertext"]})
        assert (status, err["error"]) == (400, "INVALID_TOKEN")
        status, err = curl(agent.socket, "POST", "/v1/encrypt", {"app": "payroll"})
        assert (status, err["error"]) == (400, "BAD_REQUEST")
        # Credentials through the agent end up in the store the CLI reads, encrypted.
        status, _ = curl(agent.socket, "PUT", "/v1/apps/payroll/credentials/alice",
                         {"credential": b64(b"Pa55-alice")})
        assert status == 200
        status, got = curl(agent.socket, "GET", "/v1/apps/payroll/credentials/alice")
        assert unb64(got["credential"]) == b"Pa55-alice"
        assert b"Pa55-alice" not in b"".join(
            p.read_bytes() for p in cluster.root.glob("sso.db*"))
        assert agent.alive()


def test_a_caller_outside_the_groups_gets_403(cluster: Cluster, short_dir: Path,
                                               unix_users: UnixUsers) -> None:
    u = unix_users
    with agent_beside(cluster, short_dir, socket_group=u.name("sock")) as agent:
        assert os.stat(agent.socket).st_gid == u.groups[u.name("sock")]
        with agent.client() as root:
            root.add_app("payroll", users_group=u.name("users"), admins_group=u.name("admins"))
            root.add_app("team", type="group", users_group=u.name("users"))
            root.set_credential("payroll", u.name("alice"), b"alice-pw")
            root.set_credential("payroll", u.name("bob"), b"bob-pw")
            root.set_credential("team", "@group", b"team-pw")
            root.set_config("payroll", "conn", b"Server=db1")
            token = root.encrypt("payroll", b"data")
        sock = agent.socket
        alice = u.who("alice", "sock", "users")
        bob = u.who("bob", "sock", "admins")
        eve = u.who("eve", "sock")
        ciphertext = {"app": "payroll", "ciphertext": b64(token)}

        # eve is not in the socket's group: the kernel refuses the connection itself.
        no_group = u.who("eve")
        result = subprocess.run(["curl", "-sS", "--unix-socket", str(sock),
                                 "http://localhost/v1/health"], capture_output=True,
                                timeout=30, check=False, user=no_group.uid,
                                group=no_group.gid, extra_groups=[])
        assert result.returncode == 7, result.stderr  # curl: could not connect (EACCES)

        # eve reaches the socket but is in neither group: 403 for the app and its data.
        me = curl(sock, "GET", "/v1/whoami", who=eve)[1]
        assert (me["uid"], me["user"], me["agent_admin"]) == (eve.uid, u.name("eve"), False)
        for method, path, body in [
            ("POST", "/v1/encrypt", {"app": "payroll", "plaintext": b64(b"x")}),
            ("POST", "/v1/decrypt", ciphertext),
            ("GET", f"/v1/apps/payroll/credentials/{u.name('eve')}", None),
            ("GET", "/v1/apps/payroll/credentials", None),
            ("GET", "/v1/apps/payroll/config/conn", None),
            ("GET", "/v1/apps/payroll", None),
            ("GET", "/v1/apps/team/credentials/@group", None),
            ("PUT", f"/v1/apps/payroll/credentials/{u.name('eve')}", {"credential": "eA=="}),
            ("POST", "/v1/encrypt", {"app": "no-such-app", "plaintext": b64(b"x")}),
            ("POST", "/v1/apps", {"name": "mine"}),
        ]:
            status, err = curl(sock, method, path, body, who=eve)
            assert (status, err["error"]) == (403, "FORBIDDEN"), (method, path, err)
        assert curl(sock, "GET", "/v1/apps", who=eve) == (200, {"apps": []})

        # alice, a user: encrypt, decrypt, her own mapping, config, the group mapping.
        assert curl(sock, "POST", "/v1/encrypt", {"app": "payroll", "plaintext": b64(b"mine")},
                    who=alice)[0] == 200
        assert unb64(curl(sock, "POST", "/v1/decrypt", ciphertext, who=alice)[1]["plaintext"]) \
            == b"data"
        got = curl(sock, "GET", f"/v1/apps/payroll/credentials/{u.name('alice')}", who=alice)
        assert unb64(got[1]["credential"]) == b"alice-pw"
        assert unb64(curl(sock, "GET", "/v1/apps/payroll/config/conn", who=alice)[1]["value"]) \
            == b"Server=db1"
        assert unb64(curl(sock, "GET", "/v1/apps/team/credentials/@group",
                          who=alice)[1]["credential"]) == b"team-pw"
        # ... but not bob's mapping, and the listing shows only her own.
        status, err = curl(sock, "GET", f"/v1/apps/payroll/credentials/{u.name('bob')}",
                           who=alice)
        assert (status, err["error"]) == (403, "FORBIDDEN") and "own" in err["message"]
        listing = curl(sock, "GET", "/v1/apps/payroll/credentials", who=alice)[1]
        assert [e["user"] for e in listing["credentials"]] == [u.name("alice")]
        # Users do not write.
        status, err = curl(sock, "PUT", f"/v1/apps/payroll/credentials/{u.name('alice')}",
                           {"credential": b64(b"new")}, who=alice)
        assert (status, err["error"]) == (403, "FORBIDDEN")

        # bob administers payroll: reads and writes any mapping, not other apps' definitions.
        got = curl(sock, "GET", f"/v1/apps/payroll/credentials/{u.name('alice')}", who=bob)
        assert unb64(got[1]["credential"]) == b"alice-pw"
        assert curl(sock, "PUT", f"/v1/apps/payroll/credentials/{u.name('alice')}",
                    {"credential": b64(b"rotated")}, who=bob)[0] == 200
        assert len(curl(sock, "GET", "/v1/apps/payroll/credentials", who=bob)[1]
                   ["credentials"]) == 2
        assert curl(sock, "PATCH", "/v1/apps/payroll", {"enabled": False}, who=bob)[0] == 403
        status, err = curl(sock, "POST", "/v1/encrypt", {"app": "team", "plaintext": "eA=="},
                           who=bob)
        assert (status, err["error"]) == (403, "FORBIDDEN")

        # Disabled: everything refused to everybody, until root enables it again.
        assert curl(sock, "PATCH", "/v1/apps/payroll", {"enabled": False})[0] == 200
        for who in (alice, bob, None):
            for method, path, body in [
                ("POST", "/v1/encrypt", {"app": "payroll", "plaintext": b64(b"x")}),
                ("POST", "/v1/decrypt", ciphertext),
                ("GET", f"/v1/apps/payroll/credentials/{u.name('alice')}", None),
                ("PUT", f"/v1/apps/payroll/credentials/{u.name('alice')}",
                 {"credential": "eA=="}),
                ("GET", "/v1/apps/payroll/config/conn", None),
            ]:
                status, err = curl(sock, method, path, body, who=who)
                assert (status, err["error"]) == (403, "APP_DISABLED"), (who, path, err)
        assert curl(sock, "GET", "/v1/apps", who=alice)[1]["apps"] == [
            a for a in curl(sock, "GET", "/v1/apps", who=alice)[1]["apps"]
            if a["name"] == "team"]
        assert curl(sock, "PATCH", "/v1/apps/payroll", {"enabled": True})[0] == 200
        assert curl(sock, "POST", "/v1/decrypt", ciphertext, who=alice)[0] == 200

        # Every refusal and every write is in the audit log, with the kernel's uid.
        lines = audit_lines(agent.audit_path)
        assert stat.S_IMODE(os.stat(agent.audit_path).st_mode) == 0o600
        eve_refusals = [x for x in lines if x["who"]["uid"] == eve.uid]
        assert len(eve_refusals) == 10 and all(x["code"] == "FORBIDDEN" for x in eve_refusals)
        assert {x["who"]["user"] for x in eve_refusals} == {u.name("eve")}
        writes = [(x["op"], x["who"]["uid"]) for x in lines if x["result"] == "ok"]
        assert ("credential.set", bob.uid) in writes and ("app.update", 0) in writes
        assert sum(1 for x in lines if x["code"] == "APP_DISABLED") == 15
        text = agent.audit_path.read_bytes()
        assert b"alice-pw" not in text and b"rotated" not in text and b64(b"rotated").encode() \
            not in text


def test_decrypts_with_every_node_down_and_encrypt_503_only_past_max_staleness(
        cluster: Cluster, short_dir: Path) -> None:
    max_staleness = 4.0
    with agent_beside(cluster, short_dir, resync_interval=0.5,
                      max_staleness=max_staleness) as agent:
        sock = agent.socket
        assert curl(sock, "POST", "/v1/apps", {"name": "payroll", "users_group": "root"})[0] \
            == 201
        enc = curl(sock, "POST", "/v1/encrypt", {"app": "payroll", "plaintext": b64(b"v")})[1]
        cluster.kill()  # every node: SIGKILL
        # Right after: the cache is fresh, encryption goes on.
        assert curl(sock, "POST", "/v1/encrypt",
                    {"app": "payroll", "plaintext": b64(b"v")})[0] == 200
        # A new application process (each curl is one) decrypts with every node down.
        decrypt = {"app": "payroll", "ciphertext": enc["ciphertext"]}
        status, dec = curl(sock, "POST", "/v1/decrypt", decrypt)
        assert status == 200 and unb64(dec["plaintext"]) == b"v"

        def stale_refusal() -> tuple[int, dict[str, object]] | None:
            status, body = curl(sock, "POST", "/v1/encrypt",
                                {"app": "payroll", "plaintext": b64(b"v")})
            return (status, body) if status != 200 else None

        status, err = wait_for(stale_refusal, timeout=60, interval=0.2,
                               what="encrypt to be refused")
        assert (status, err["error"]) == (503, "STALE")
        health = curl(sock, "GET", "/v1/health")[1]
        assert health["status"] == "stale" and health["sync_age"] >= max_staleness
        assert curl(sock, "POST", "/v1/decrypt", decrypt)[0] == 200  # still decrypts
        assert agent.alive()

        cluster.start()  # the nodes come back: encryption resumes by itself
        wait_for(lambda: curl(sock, "POST", "/v1/encrypt",
                              {"app": "payroll", "plaintext": b64(b"v")})[0] == 200,
                 timeout=60, interval=0.2, what="encryption to resume")
        assert curl(sock, "GET", "/v1/health")[1]["status"] == "ok"


def test_sigkill_of_the_leader_during_an_encrypt_loop_costs_nothing(
        cluster: Cluster, short_dir: Path) -> None:
    with agent_beside(cluster, short_dir, resync_interval=0.5, max_staleness=10.0) as agent:
        with agent.client() as c:
            c.add_app("payroll", users_group="root")
        failures: list[BaseException] = []
        done = threading.Event()
        counts = {"ok": 0, "after_kill": 0}
        killed = threading.Event()

        def loop() -> None:
            with AgentClient(agent.socket, timeout=10) as c:
                while not done.is_set():
                    try:
                        token = c.encrypt("payroll", b"payload")
                        assert c.decrypt("payroll", token) == b"payload"
                        counts["ok"] += 1
                        if killed.is_set():
                            counts["after_kill"] += 1
                    except BaseException as exc:  # every failure counts
                        failures.append(exc)

        thread = threading.Thread(target=loop)
        thread.start()
        try:
            wait_for(lambda: counts["ok"] > 50, what="the loop to run")
            leader = cluster.leader()
            cluster.kill(leader)
            killed.set()
            cluster.wait_healthy(exclude=(leader,))
            # The agent resyncs from a survivor after the failover.
            wait_for(lambda: curl(agent.socket, "GET", "/v1/health")[1]["last_error"] is None
                     and counts["after_kill"] > 200, timeout=60, what="more encrypts")
        finally:
            done.set()
            thread.join(30)
        assert failures == []
        assert counts["after_kill"] > 0


def test_rotation_reaches_the_agent(cluster: Cluster, short_dir: Path) -> None:
    with agent_beside(cluster, short_dir, resync_interval=0.5, max_staleness=10.0) as agent, \
            agent.client() as c:
        c.add_app("payroll", users_group="root")
        old = c.encrypt("payroll", b"before")
        version = cluster.rotate(now=True)["version"]
        wait_for(lambda: c.health()["primary_version"] == version, what="the new primary")
        new = c.encrypt("payroll", b"after")
        assert int.from_bytes(new[1:5], "big") == version
        assert c.decrypt("payroll", old) == b"before" and c.decrypt("payroll", new) == b"after"


def test_agent_survives_hostile_connections(cluster: Cluster, short_dir: Path) -> None:
    with agent_beside(cluster, short_dir, limits={"request_timeout": 1.0}) as agent:
        answers = parse_responses(raw_exchange(agent.socket, b"\x00" * 100))
        assert answers[0][0] == 400
        answers = parse_responses(raw_exchange(
            agent.socket, request_bytes("GET", "/v1/health") * 20, shut=True))
        assert [a[0] for a in answers] == [200] * 20
        # A slow client (half a request, then nothing) is answered 408 at the deadline.
        answers = parse_responses(raw_exchange(agent.socket, b"POST /v1/encrypt HTTP/1.1\r\n",
                                               timeout=30, shut=False))
        assert answers[0][0] == 408
        assert curl(agent.socket, "GET", "/v1/health")[1]["status"] == "ok"
        assert agent.alive()


def test_init_writes_agent_toml_and_local_up_starts_the_agent(tmp_path: Path) -> None:
    d = tmp_path / "d"
    base = free_base_port(9)
    assert cli("init", str(d), "--base-port", str(base)).returncode == 0
    toml = (d / "agent.toml").read_text()
    assert 'socket = "agent.sock"' in toml and stat.S_IMODE((d / "agent.toml").stat().st_mode) \
        == 0o600
    try:
        result = cli("local", "up", str(d), "--agent", timeout=120)
        assert result.returncode == 0, result.stderr.decode()
        with AgentClient(d / "agent.sock") as c:
            assert c.health()["status"] == "ok"
        health = cli("agent", "health", "--config", str(d / "agent.toml"))
        assert health.returncode == 0 and json.loads(health.stdout)["status"] == "ok"
    finally:
        down = cli("local", "down", str(d), timeout=120)
    assert down.returncode == 0 and b"agent" in down.stdout
    assert not (d / "agent.sock").exists()


def test_agent_refuses_to_start_twice_and_without_a_cluster(cluster: Cluster,
                                                            short_dir: Path) -> None:
    with agent_beside(cluster, short_dir) as agent:
        second = cli("agent", "run", "--config", str(agent.config), timeout=60)
        assert second.returncode == 1 and b"another agent is listening" in second.stderr
        assert b"Traceback" not in second.stderr
        assert agent.alive()
    cluster.kill()
    toml = agent.config.read_text() + "start_timeout = 1.0\n"
    agent.config.write_text(toml)
    result = cli("agent", "run", "--config", str(agent.config), timeout=60)
    assert result.returncode == 3 and b"cannot start without a keyring" in result.stderr
    assert b"Traceback" not in result.stderr


def test_sso_command_line_through_the_agent(cluster: Cluster, short_dir: Path) -> None:
    with agent_beside(cluster, short_dir) as agent:
        a = str(agent.config)  # -c agent.toml: the sso group talks to the agent
        for args, stdin in [
            (("app", "add", "payroll", "--users-group", "root"), None),
            (("cred", "set", "payroll", "alice"), b"Pa55-cli\n"),
        ]:
            result = cli("-c", a, "sso", *args, stdin=stdin)
            assert result.returncode == 0, result.stderr.decode()
        got = cli("-c", a, "sso", "cred", "get", "payroll", "alice")
        assert got.returncode == 0 and got.stdout == b"Pa55-cli"
        listing = json.loads(cli("-c", a, "sso", "app", "list", "--json").stdout)
        assert listing[0]["name"] == "payroll" and listing[0]["credentials"] == 1
        missing = cli("-c", a, "sso", "cred", "get", "payroll", "bob")
        assert missing.returncode == 1 and b"no credential mapping" in missing.stderr
        ops = [x["op"] for x in audit_lines(agent.audit_path)]
        assert ops[:2] == ["app.create", "credential.set"]  # it went through the agent
        # And the same data is in the store the direct CLI reads (client.toml).
        direct = cli("-c", str(cluster.client_toml), "sso", "cred", "get", "payroll", "alice")
        assert direct.returncode == 0 and direct.stdout == b"Pa55-cli"


def test_sighup_reloads_the_client_certificate_and_the_agent_serves_on(
        cluster: Cluster, short_dir: Path) -> None:
    with agent_beside(cluster, short_dir) as agent, agent.client() as c:
        c.add_app("hup", users_group="root")
        token = c.encrypt("hup", b"kept")
        agent.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "client certificate reloaded" in agent.log(),
                 what="the agent to log the reload")
        assert agent.alive()
        assert c.decrypt("hup", token) == b"kept"
        assert c.decrypt("hup", c.encrypt("hup", b"after")) == b"after"
