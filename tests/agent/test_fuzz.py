"""Hypothesis over raw requests to a live agent socket: no 500, no crash, one JSON error.

Requests are built from the API's own shapes (methods, route templates, JSON bodies with
right and wrong types) and from plain garbage, sent on a real Unix socket to an in-process
agent (fake keyring source, real AES-GCM, real store). After every example the agent must
still answer ``/v1/health``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.agent.conftest import (
    InProcessAgent,
    in_process_agent,
    parse_responses,
    raw_exchange,
    request_bytes,
)

ALLOWED = {200, 201, 400, 403, 404, 405, 408, 409, 413, 431, 503}
LIMITS = {"max_body": 8192, "max_header": 4096, "max_connections": 64,
          "request_timeout": 5.0, "idle_timeout": 5.0}
EXAMPLES = int(os.environ.get("RAFTSSO_FUZZ_EXAMPLES", "300"))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessAgent]:
    import shutil
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="rsa-", dir="/tmp"))
    try:
        with in_process_agent(d, limits=LIMITS) as a:
            with a.client() as c:
                c.add_app("payroll", users_group="root")
                c.set_credential("payroll", "alice", b"pw")
            yield a
    finally:
        shutil.rmtree(d, ignore_errors=True)


names = st.one_of(st.sampled_from(["payroll", "alice", "@group", "nope", "", "%ff", "%00",
                                   "a%2Fb", "..", "x" * 300]),
                  st.text(max_size=20).map(lambda s: "".join(
                      c if c.isalnum() else f"%{ord(c) & 0xff:02X}" for c in s)))
paths = st.builds(lambda t, a, u: t.format(app=a, user=u), st.sampled_from([
    "/v1/health", "/v1/whoami", "/v1/openapi.json", "/v1/encrypt", "/v1/decrypt",
    "/v1/apps", "/v1/apps/{app}", "/v1/apps/{app}/credentials",
    "/v1/apps/{app}/credentials/{user}", "/v1/apps/{app}/config",
    "/v1/apps/{app}/config/{user}", "/v1/export", "/v1/import", "/v1/import?replace={user}",
    "/v1/{app}", "/{app}", "/v1/apps/{app}/{user}/x", "*", "http://x/v1/health",
    "/v1/health?{app}={user}"]), names, names)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=30), st.sampled_from(["aGVsbG8=", "AQAAAAE=", "====",
                                                           "payroll", "individual", "group"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=10)
fields = st.sampled_from(["app", "plaintext", "ciphertext", "associated_data", "name",
                          "type", "enabled", "users_group", "admins_group", "description",
                          "credential", "value", "format", "applications", "x"])
bodies = st.one_of(
    st.none(),
    st.dictionaries(fields, values, max_size=6).map(lambda d: json.dumps(d).encode()),
    values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS",
                           "CONNECT", "TRACE", "G\x00T", "get"])
extra_headers = st.lists(st.sampled_from([
    "Transfer-Encoding: chunked\r\n", "Connection: close\r\n", "Expect: 100-continue\r\n",
    "Content-Type: text/plain\r\n", "X-A: \x7f\r\n", "Content-Length: 3\r\n",
    "Upgrade: websocket\r\nConnection: Upgrade\r\n", " folded\r\n"]), max_size=3).map("".join)


def check(agent: InProcessAgent, data: bytes) -> None:
    answers = parse_responses(raw_exchange(agent.socket, data, timeout=20))
    # Every request, even a broken one, gets an answer (blank lines before a request are
    # allowed by RFC 9112 section 2.2 and are not one).
    assert answers or not data.strip(b"\r\n"), data[:300]
    for status, headers, body in answers:
        assert status in ALLOWED, (status, body, data[:300])
        if headers.get("content-length") != "0" and body:
            doc = json.loads(body)
            if status >= 400:
                assert set(doc) == {"error", "message"} and doc["message"], doc
    assert parse_responses(raw_exchange(agent.socket, request_bytes("GET", "/v1/health")))[0][0] \
        == 200


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=methods, path=paths, body=bodies, headers=extra_headers,
       pipeline=st.integers(1, 3))
def test_shaped_requests(agent: InProcessAgent, method: str, path: str, body: bytes | None,
                         headers: str, pipeline: int) -> None:
    data = (f"{method} {path} HTTP/1.1\r\nHost: a\r\n{headers}".encode("latin-1", "replace")
            + (f"Content-Length: {len(body)}\r\n".encode() if body is not None else b"")
            + b"\r\n" + (body or b""))
    check(agent, data * pipeline)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(prefix=st.sampled_from([b"", b"GET /v1/health HTTP/1.1\r\n", b"POST /v1/encrypt HTTP/1.1"
                               b"\r\nContent-Length: 40\r\n\r\n"]),
       garbage=st.binary(min_size=1, max_size=600))
def test_garbage(agent: InProcessAgent, prefix: bytes, garbage: bytes) -> None:
    check(agent, prefix + garbage)
