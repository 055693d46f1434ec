"""The ops, commands and error codes documented are the ones in the code.

``docs/architecture.md`` has one table per kind and ``raftsso/server.py``'s docstring one
of the ops with their roles: a new op, command or code without its row fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import raftsso.server
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.commands import COMMANDS
from raftsso.protocol.messages import REQUESTS, Op
from raftsso.server import Service

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
ROLE_NAMES = {"client", "admin", "node"}


def _table(text: str, header: str) -> dict[str, list[str]]:
    """Rows of the markdown table whose header line starts with ``header``, by first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_every_op_has_its_row_with_its_roles() -> None:
    rows = _table(ARCHITECTURE, "| op | roles | args | result |")
    assert set(rows) == {op.value for op in Op} == set(REQUESTS)
    routes = _routes()
    for op, cells in rows.items():
        assert {r.strip() for r in cells[0].split(",")} == routes[op], op


def test_every_command_has_its_row() -> None:
    rows = _table(ARCHITECTURE, "| op | fields | effect |")
    assert set(rows) == set(COMMANDS)


def test_every_error_code_has_its_row() -> None:
    rows = _table(ARCHITECTURE, "| code | answered when | exception (client) |")
    assert set(rows) == {c.value for c in ErrorCode}
    from raftsso.remote import EXCEPTIONS
    for code, cells in rows.items():
        expected = EXCEPTIONS.get(ErrorCode(code))
        assert cells[1].strip("`") == (expected.__name__ if expected else "RemoteError"), code


def test_the_server_docstring_lists_every_op_with_its_roles() -> None:
    doc = raftsso.server.__doc__ or ""
    found = {m.group(1): {r.strip() for r in m.group(2).split(",")}
             for m in re.finditer(r"^``(\w+)``\s+([a-z, ]+?)\s{2,}", doc, re.MULTILINE)}
    assert found == _routes()


def _routes() -> dict[str, set[str]]:
    class _Stub:
        pass
    service = Service(_Stub())  # type: ignore[arg-type]
    return {op: set(route.roles) for op, route in service.routes.items()}
