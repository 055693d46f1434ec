"""The agent's HTTP layer and API on a real socket, in process (fake keyring source, real
AES-GCM, real SQLite store): limits, bad input of every shape, pipelining, the API."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftsso.agent.api import app_associated_data
from raftsso.agent.errors import ApiError
from raftsso.errors import InvalidToken, NotFound
from tests.agent.conftest import (
    InProcessAgent,
    b64,
    in_process_agent,
    parse_responses,
    raw_exchange,
    request_bytes,
    unb64,
)

LIMITS = {"max_body": 16384, "max_header": 2048, "max_connections": 8,
          "max_connections_per_uid": 6, "max_pipeline": 4,
          "request_timeout": 1.0, "idle_timeout": 1.0}


@pytest.fixture
def agent(short_dir: Path) -> Iterator[InProcessAgent]:
    with in_process_agent(short_dir, limits=LIMITS) as a:
        with a.client() as c:
            c.add_app("payroll", "pay", users_group="root")
            c.set_credential("payroll", "alice", b"s3cret")
        yield a


def one(agent: InProcessAgent, data: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    responses = parse_responses(raw_exchange(agent.socket, data))
    assert len(responses) == 1, responses
    status, headers, body = responses[0]
    return status, headers, json.loads(body)


def error(agent: InProcessAgent, data: bytes, status: int, code: str) -> str:
    got, _headers, body = one(agent, data)
    assert (got, body.get("error")) == (status, code), body
    assert isinstance(body["message"], str) and body["message"]
    return str(body["message"])


def test_socket_is_0660_and_served_to_root(agent: InProcessAgent) -> None:
    assert stat.S_IMODE(os.stat(agent.socket).st_mode) == 0o660
    with agent.client() as c:
        assert c.health()["status"] == "ok"
        me = c.whoami()
    assert me["uid"] == os.getuid() and me["pid"] == os.getpid() and me["agent_admin"]


def test_encrypt_decrypt_bound_to_application_and_associated_data(
        agent: InProcessAgent) -> None:
    with agent.client() as c:
        c.add_app("billing", users_group="root")
        token = c.encrypt("payroll", b"hello", b"order-1")
        assert c.decrypt("payroll", token, b"order-1") == b"hello"
        with pytest.raises(InvalidToken):
            c.decrypt("billing", token, b"order-1")  # another application
        with pytest.raises(InvalidToken):
            c.decrypt("payroll", token, b"order-2")  # other associated data
        with pytest.raises(InvalidToken):
            c.decrypt("payroll", token[:-1] + bytes([token[-1] ^ 1]), b"order-1")
        # The binding is the documented one: the client with the same AD opens it.
        cipher = agent.agent.cipher
        assert cipher.decrypt(token, app_associated_data("payroll", b"order-1")) == b"hello"
        # A stored credential's token does not open as the application's data.
        with pytest.raises(InvalidToken):
            c.decrypt("payroll", cipher.encrypt(b"x", b"raftsso/cred/v1\x00payroll\x00alice"))


def test_store_routes(agent: InProcessAgent) -> None:
    with agent.client() as c:
        assert c.get_credential("payroll", "alice") == b"s3cret"
        assert [e.name for e in c.list_credentials("payroll")] == ["alice"]
        assert c.set_config("payroll", "conn", b"Server=db1") == 1
        assert c.get_config("payroll", "conn") == b"Server=db1"
        assert [e.name for e in c.list_config("payroll")] == ["conn"]
        c.delete_config("payroll", "conn")
        with pytest.raises(NotFound):
            c.get_config("payroll", "conn")
        c.delete_credential("payroll", "alice")
        with pytest.raises(NotFound):
            c.delete_credential("payroll", "alice")
        app = c.update_app("payroll", description="new", admins_group="root")
        assert (app.description, app.admins_group, app.users_group) == ("new", "root", "root")
        doc = c.export_apps()
        assert doc["format"] == 1 and [a["name"] for a in doc["applications"]] == ["payroll"]
        assert c.remove_app("payroll") == (0, 0)
        assert c.import_apps(doc) == ["payroll"]
        assert c.app("payroll").description == "new"
        with pytest.raises(NotFound):
            c.app("nope")


def test_disabled_application_refuses_even_root(agent: InProcessAgent) -> None:
    with agent.client() as c:
        token = c.encrypt("payroll", b"x")
        c.update_app("payroll", enabled=False)
        for call in (lambda: c.encrypt("payroll", b"x"), lambda: c.decrypt("payroll", token),
                     lambda: c.get_credential("payroll", "alice"),
                     lambda: c.set_credential("payroll", "alice", b"y"),
                     lambda: c.list_credentials("payroll")):
            with pytest.raises(ApiError) as info:
                call()
            assert info.value.code == "APP_DISABLED"
        assert not c.app("payroll").enabled  # administration goes on
        c.update_app("payroll", enabled=True)
        assert c.decrypt("payroll", token) == b"x"
    lines = [json.loads(x) for x in agent.audit_path.read_text().splitlines()]
    refused = [x for x in lines if x["code"] == "APP_DISABLED"]
    assert {x["op"] for x in refused} == {"encrypt", "decrypt", "credential.get",
                                          "credential.set", "credential.list"}
    assert all(x["who"]["uid"] == os.getuid() for x in refused)
    assert stat.S_IMODE(os.stat(agent.audit_path).st_mode) == 0o600


@pytest.mark.parametrize(("body", "what"), [
    (b"{bad", "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[]", "must be an object"),
    (b'{"app": "payroll", "plaintext": "aGk=", "app": "x"}', "twice"),
    (b'{"app": "payroll", "plaintext": NaN}', "NaN"),
    (b'{"app": 5, "plaintext": "aGk="}', "application name"),
    (b'{"app": "payroll", "plaintext": 5}', "base64"),
    (b'{"app": "payroll", "plaintext": "a"}', "base64"),
    (b'{"app": "payroll", "plaintext": "\\u00e9"}', "base64"),
    (b'{"app": "payroll", "plaintext": "aGk=", "extra": 1}', "unknown field"),
    (b'{"app": "payroll"}', "lacks"),
    (b'{"app": "pay\\u0000roll", "plaintext": "aGk="}', "NUL"),
    (b'{"app": "\\ud800", "plaintext": "aGk="}', "Unicode"),
    (b'{"app": "payroll", "plaintext": "aGk=", "associated_data": ' + b"[" * 5000
     + b"]" * 5000 + b"}", "nested"),
    (b'{"app": "payroll", "plaintext": ' + b"9" * 3000 + b"}", "base64"),
    (b'{"app": "payroll", "plaintext": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b"", "needs a JSON body"),
])
def test_bad_bodies_are_one_400(agent: InProcessAgent, body: bytes, what: str) -> None:
    message = error(agent, request_bytes("POST", "/v1/encrypt", body), 400, "BAD_REQUEST")
    assert what in message


@pytest.mark.parametrize(("data", "status", "code"), [
    (b"GET /v1/nope HTTP/1.1\r\nHost: a\r\n\r\n", 404, "NOT_FOUND"),
    (b"GET /v2/health HTTP/1.1\r\nHost: a\r\n\r\n", 404, "NOT_FOUND"),
    (b"GET /v1/apps/ HTTP/1.1\r\nHost: a\r\n\r\n", 404, "NOT_FOUND"),
    (b"GET /v1/apps/%ff HTTP/1.1\r\nHost: a\r\n\r\n", 400, "BAD_REQUEST"),
    (b"GET /v1/health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "BAD_REQUEST"),
    (b"DELETE /v1/encrypt HTTP/1.1\r\nHost: a\r\n\r\n", 405, "METHOD_NOT_ALLOWED"),
    (b"BREW /v1/health HTTP/1.1\r\nHost: a\r\n\r\n", 400, "BAD_REQUEST"),
    (b"GET /v1/health HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
     400, "BAD_REQUEST"),
    (b"GET /v1/health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400,
     "BAD_REQUEST"),
    (b"POST /v1/encrypt HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
     400, "BAD_REQUEST"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "BAD_REQUEST"),  # a TLS hello
    (b"GET /v1/health HTTP/1.1\r\nBad Header\r\n\r\n", 400, "BAD_REQUEST"),
    (b"GET /v1/health HTTP/1.1\r\nX: \xff\x00\r\n\r\n", 400, "BAD_REQUEST"),
    (b"POST /v1/encrypt HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413, "TOO_LARGE"),
    (b"POST /v1/encrypt HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4000\r\n"
     + b"x" * 16384 + b"\r\n1\r\nx\r\n0\r\n\r\n", 413, "TOO_LARGE"),
    (b"GET /v1/health HTTP/1.1\r\nX: " + b"y" * 3000 + b"\r\n\r\n", 431, "HEADERS_TOO_LARGE"),
    (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n\r\n", 431, "HEADERS_TOO_LARGE"),
    (b"POST /v1/encrypt HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}", 400, "BAD_REQUEST"),
])
def test_malformed_http_is_one_error_then_close(agent: InProcessAgent, data: bytes, status: int,
                                                code: str) -> None:
    error(agent, data, status, code)
    with agent.client() as c:  # and the agent goes on
        assert c.health()["status"] == "ok"


def test_body_refused_from_content_length_before_it_is_sent(agent: InProcessAgent) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(agent.socket))
        s.sendall(b"POST /v1/encrypt HTTP/1.1\r\nContent-Length: 20000\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            chunk = s.recv(4096)
            assert chunk
            data += chunk
    assert data.startswith(b"HTTP/1.1 413 ")


def test_expect_100_continue(agent: InProcessAgent) -> None:
    body = json.dumps({"app": "payroll", "plaintext": b64(b"hi")}).encode()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(agent.socket))
        s.sendall(f"POST /v1/encrypt HTTP/1.1\r\nContent-Length: {len(body)}\r\n"
                  "Expect: 100-continue\r\n\r\n".encode())
        assert s.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    ((status, _, answer),) = parse_responses(data)
    assert status == 200 and json.loads(answer)["key_version"] == 1


def test_pipelined_requests_answered_in_order(agent: InProcessAgent) -> None:
    reqs = [
        request_bytes("GET", "/v1/apps/payroll/credentials/alice"),  # thread pool
        request_bytes("POST", "/v1/encrypt", {"app": "payroll", "plaintext": b64(b"1")}),
        request_bytes("GET", "/v1/nope"),
        request_bytes("GET", "/v1/apps/payroll/config"),  # thread pool
        request_bytes("GET", "/v1/health"),
        request_bytes("POST", "/v1/encrypt", {"app": "payroll", "plaintext": b64(b"2")}),
        request_bytes("GET", "/v1/whoami", headers="Connection: close\r\n"),
        request_bytes("GET", "/v1/health"),  # after close: never answered
    ]
    answers = parse_responses(raw_exchange(agent.socket, b"".join(reqs), shut=False))
    assert [a[0] for a in answers] == [200, 200, 404, 200, 200, 200, 200]
    assert unb64(json.loads(answers[0][2])["credential"]) == b"s3cret"
    assert "ciphertext" in json.loads(answers[1][2])
    assert json.loads(answers[3][2]) == {"config": []}
    assert answers[6][1].get("connection") == "close"
    assert all(a[1]["cache-control"] == "no-store" for a in answers)


def test_pipelined_garbage_after_good_requests(agent: InProcessAgent) -> None:
    data = request_bytes("GET", "/v1/health") * 2 + b"NOT HTTP AT ALL\r\n\r\n" \
        + request_bytes("GET", "/v1/health")
    answers = parse_responses(raw_exchange(agent.socket, data))
    assert [a[0] for a in answers] == [200, 200, 400]
    assert answers[2][1]["connection"] == "close"


def test_slow_client_gets_408(agent: InProcessAgent) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(agent.socket))
        s.sendall(b"POST /v1/encrypt HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        data = b""
        while chunk := s.recv(4096):  # the agent answers at the deadline, then closes
            data += chunk
    ((status, _headers, body),) = parse_responses(data)
    assert status == 408 and json.loads(body)["error"] == "REQUEST_TIMEOUT"


def test_idle_keep_alive_connection_closed(agent: InProcessAgent) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(agent.socket))
        s.sendall(request_bytes("GET", "/v1/health"))
        data = b""
        while chunk := s.recv(4096):  # one answer, then the idle timeout closes it
            data += chunk
    assert [a[0] for a in parse_responses(data)] == [200]


def _hold(agent: InProcessAgent, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(str(agent.socket))
        s.sendall(request_bytes("GET", "/v1/health"))
        assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        socks.append(s)
    return socks


def test_connection_limit_per_uid(agent: InProcessAgent) -> None:
    socks = _hold(agent, LIMITS["max_connections_per_uid"])
    try:
        answer = raw_exchange(agent.socket, request_bytes("GET", "/v1/health"))
        ((status, _, body),) = parse_responses(answer)
        assert (status, json.loads(body)["error"]) == (503, "BUSY")
        assert "uid" in json.loads(body)["message"]
    finally:
        for s in socks:
            s.close()
    with agent.client() as c:  # the slots come back
        assert c.health()["status"] == "ok"


def test_connection_limit_in_all(short_dir: Path) -> None:
    with in_process_agent(short_dir, limits={"max_connections": 4}) as agent:
        socks = _hold(agent, 4)
        try:
            answer = raw_exchange(agent.socket, request_bytes("GET", "/v1/health"))
            ((status, _, body),) = parse_responses(answer)
            assert (status, json.loads(body)["error"]) == (503, "BUSY")
            assert "too many open connections" in json.loads(body)["message"]
        finally:
            for s in socks:
                s.close()
        with agent.client() as c:
            assert c.health()["status"] == "ok"


def test_half_closed_client_still_answered(agent: InProcessAgent) -> None:
    # printf ... | nc -U: the request, then EOF on the sending side.
    answer = raw_exchange(agent.socket, request_bytes("GET", "/v1/apps/payroll"))
    ((status, _, body),) = parse_responses(answer)
    assert status == 200 and json.loads(body)["name"] == "payroll"


def test_head_and_http10(agent: InProcessAgent) -> None:
    data = raw_exchange(agent.socket, b"HEAD /v1/health HTTP/1.1\r\nHost: a\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 405 ") and data.endswith(b"\r\n\r\n")
    answers = parse_responses(raw_exchange(agent.socket, b"GET /v1/health HTTP/1.0\r\n\r\n",
                                           shut=False))
    assert answers[0][0] == 200 and answers[0][1]["connection"] == "close"


def test_unknown_application_is_403_for_users_and_404_for_admins(
        agent: InProcessAgent) -> None:
    # Root administers the agent: it may learn that a name does not exist.
    error(agent, request_bytes("POST", "/v1/encrypt", {"app": "nope", "plaintext": ""}), 404,
          "NOT_FOUND")


def test_group_and_config_types(agent: InProcessAgent) -> None:
    with agent.client() as c:
        c.add_app("shared", type="group", users_group="root")
        c.add_app("settings", type="config", users_group="root")
        c.set_credential("shared", "@group", b"team")
        assert c.get_credential("shared", "@group") == b"team"
    for data, code in [
        (request_bytes("PUT", "/v1/apps/shared/credentials/alice", {"credential": "eA=="}),
         "CONFLICT"),
        (request_bytes("PUT", "/v1/apps/settings/credentials/alice", {"credential": "eA=="}),
         "CONFLICT"),
        (request_bytes("PUT", "/v1/apps/payroll/credentials/@group", {"credential": "eA=="}),
         "CONFLICT"),
        (request_bytes("POST", "/v1/apps", {"name": "payroll"}), "ALREADY_EXISTS"),
    ]:
        error(agent, data, 409, code)
    error(agent, request_bytes("POST", "/v1/apps", {"name": "x", "type": "weird"}), 400,
          "BAD_REQUEST")
    error(agent, request_bytes("POST", "/v1/apps", {"name": "x", "users_group": "a b"}), 400,
          "BAD_REQUEST")
    error(agent, request_bytes("POST", "/v1/import", {"format": 7, "applications": []}), 400,
          "BAD_REQUEST")
    error(agent, request_bytes("POST", "/v1/import?replace=maybe", {}), 400, "BAD_REQUEST")


def test_stale_cache_refuses_encrypt_with_503(short_dir: Path) -> None:
    with in_process_agent(short_dir, limits=LIMITS) as a:
        with a.client() as c:
            c.add_app("payroll", users_group="root")
            token = c.encrypt("payroll", b"x")
        client = a.agent.cipher
        # Jump the client's clock past max_staleness (its injected-clock seam).
        client._clock = lambda: 1e12  # type: ignore[attr-defined]
        error(a, request_bytes("POST", "/v1/encrypt", {"app": "payroll", "plaintext": "eA=="}),
              503, "STALE")
        with a.client() as c:
            assert c.decrypt("payroll", token) == b"x"  # decrypt goes on
            assert c.health()["status"] == "stale"


def test_a_stored_value_that_does_not_decrypt_is_409(agent: InProcessAgent,
                                                     short_dir: Path) -> None:
    import sqlite3
    db = sqlite3.connect(short_dir / "sso.db")
    with db:
        (token,) = db.execute("SELECT token FROM credentials WHERE user = 'alice'").fetchone()
        altered = bytes(token[:-1]) + bytes([token[-1] ^ 1])
        db.execute("UPDATE credentials SET token = ? WHERE user = 'alice'", (altered,))
    db.close()
    message = error(agent, request_bytes("GET", "/v1/apps/payroll/credentials/alice"), 409,
                    "UNDECRYPTABLE")
    assert "set it again" in message


def test_store_outage_keeps_encrypt_on_the_last_definition(short_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    # The store's reads fail (as a shared PostgreSQL store does when it is down): the API's
    # fallback logic is what is tested here, with the real cipher and socket.
    from raftsso.errors import StoreError
    with in_process_agent(short_dir, app_cache_ttl=0.0) as a:
        with a.client() as c:
            c.add_app("payroll", users_group="root")
            token = c.encrypt("payroll", b"x")  # reads the definition once

            def down(name: str) -> None:
                raise StoreError("cannot read the SSO store: connection refused")

            monkeypatch.setattr(a.agent.store, "app", down)
            assert c.decrypt("payroll", c.encrypt("payroll", b"y")) == b"y"
            assert c.decrypt("payroll", token) == b"x"
        # Never read before: nothing to fall back on, 503.
        error(a, request_bytes("POST", "/v1/encrypt", {"app": "billing", "plaintext": ""}),
              503, "UNAVAILABLE")


def test_python_client_reconnects_after_the_idle_timeout(short_dir: Path) -> None:
    from tests.harness import wait_for
    with in_process_agent(short_dir, limits={"idle_timeout": 0.2}) as a, a.client() as c:
        assert c.health()["status"] == "ok"
        wait_for(lambda: not a.agent.http.connections, what="the idle connection to close")
        assert c.health()["status"] == "ok"  # a fresh connection, transparently


def test_python_client_has_the_store_row_methods_the_cli_uses(agent: InProcessAgent) -> None:
    from raftsso.store import RowKind
    with agent.client() as c:
        c.add_app("settings", type="config", users_group="root")
        assert c.put(RowKind.CONFIG, "settings", "url", b"https://x") == 1
        assert c.get(RowKind.CONFIG, "settings", "url") == b"https://x"
        assert [e.name for e in c.entries(RowKind.CREDENTIAL, "payroll")] == ["alice"]
        assert c.app_usage() == {"payroll": (1, 0), "settings": (0, 1)}
        c.delete(RowKind.CONFIG, "settings", "url")
        with pytest.raises(NotFound):
            c.get(RowKind.CONFIG, "settings", "url")
