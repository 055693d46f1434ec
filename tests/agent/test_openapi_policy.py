"""The OpenAPI document (repo copy == served == routes) and the authorization policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raftsso.agent.api import ROUTES, _route_table
from raftsso.agent.errors import CODES, ApiError
from raftsso.agent.openapi import document, document_bytes
from raftsso.agent.peer import Caller
from raftsso.agent.policy import Action, Policy
from raftsso.store import App, AppType
from tests.agent.conftest import in_process_agent

DOC = Path(__file__).resolve().parents[2] / "docs" / "agent-openapi.json"


def test_repository_copy_is_the_served_document(short_dir: Path) -> None:
    assert DOC.read_bytes() == document_bytes(), (
        "docs/agent-openapi.json is out of date: python -m raftsso.agent.openapi > "
        "docs/agent-openapi.json")
    with in_process_agent(short_dir) as agent, agent.client() as c:
        assert c.request("GET", "/v1/openapi.json") == json.loads(DOC.read_text())


def test_document_describes_exactly_the_routes() -> None:
    doc = document()
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops
                 if m != "parameters"}
    assert described == set(ROUTES)
    for method, template in ROUTES:
        segments = template[4:].replace("{app}", "a").replace("{user}", "u") \
            .replace("{name}", "n").split("/")
        table = _route_table(segments)
        assert table is not None and method in table, (method, template)
    # Every error code appears in the Error schema.
    assert doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"] == sorted(CODES)
    assert doc["openapi"].startswith("3.1")


GIDS = {"users": 100, "admins": 200, "agentadm": 300}
APP = App("payroll", "", 0.0, AppType.INDIVIDUAL, True, "users", "admins")


def caller(uid: int, *groups: str, user: str | None = None) -> Caller:
    return Caller(pid=1, uid=uid, gid=uid, groups=frozenset(GIDS[g] for g in groups),
                  user=user)


@pytest.mark.parametrize(("who", "action", "user", "allowed"), [
    (caller(1000, "users", user="alice"), Action.USE, None, True),
    (caller(1000, "users", user="alice"), Action.READ, "alice", True),
    (caller(1000, "users", user="alice"), Action.READ, "bob", False),
    (caller(1000, "users", user="alice"), Action.READ, None, True),
    (caller(1000, "users", user="alice"), Action.WRITE, "alice", False),
    (caller(1000, "users", user="alice"), Action.ADMINISTER, None, False),
    (caller(1001, "admins", user="bob"), Action.READ, "alice", True),
    (caller(1001, "admins", user="bob"), Action.WRITE, "alice", True),
    (caller(1001, "admins", user="bob"), Action.USE, None, True),
    (caller(1001, "admins", user="bob"), Action.ADMINISTER, None, False),
    (caller(1002, user="eve"), Action.USE, None, False),
    (caller(1002, user="eve"), Action.READ, "eve", False),
    (caller(1003, "agentadm"), Action.ADMINISTER, None, True),
    (caller(1003, "agentadm"), Action.WRITE, "x", True),
    (caller(0), Action.READ, "alice", True),
    (caller(1004, "users", user=None), Action.READ, "alice", False),  # no passwd entry
])
def test_policy(who: Caller, action: Action, user: str | None, allowed: bool) -> None:
    policy = Policy(GIDS.get, admin_group="agentadm")
    if allowed:
        policy.check(who, action, APP, user=user)
    else:
        with pytest.raises(ApiError) as info:
            policy.check(who, action, APP, user=user)
        assert info.value.code == "FORBIDDEN"


def test_primary_gid_counts_and_unknown_groups_match_nobody() -> None:
    policy = Policy(GIDS.get)
    policy.check(Caller(1, 1000, GIDS["users"], frozenset(), "alice"), Action.USE, APP)
    nobody = App("x", "", 0.0, AppType.INDIVIDUAL, True, "no-such-group", None)
    with pytest.raises(ApiError):
        policy.check(caller(1000, "users"), Action.USE, nobody)


def test_disabled_refuses_everyone_but_administration() -> None:
    policy = Policy(GIDS.get, admin_group="agentadm")
    off = App("payroll", "", 0.0, AppType.INDIVIDUAL, False, "users", "admins")
    for who in (caller(0), caller(1001, "admins"), caller(1000, "users", user="alice")):
        for action in (Action.USE, Action.READ, Action.WRITE):
            with pytest.raises(ApiError) as info:
                policy.check(who, action, off, user="alice")
            assert info.value.code == "APP_DISABLED"
    policy.check(caller(0), Action.ADMINISTER, off)
    assert not policy.may_see(caller(1000, "users"), off) and policy.may_see(caller(0), off)


def test_group_application_users_read_the_shared_mapping() -> None:
    policy = Policy(GIDS.get)
    shared = App("team", "", 0.0, AppType.GROUP, True, "users", "admins")
    policy.check(caller(1000, "users", user="alice"), Action.READ, shared, user="@group")
