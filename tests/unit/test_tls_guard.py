"""raftsso.tls_guard: reloading the service certificate, refusing and closing connections
of revoked certificates (real TLS contexts and certificates; connections are stand-ins)."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from raftsso import pki
from raftsso.deployment import init_deployment
from raftsso.errors import ConfigError
from raftsso.tls_guard import ReloadableTLS, RevocationGuard


def test_reload_swaps_the_context_and_keeps_it_on_failure(tmp_path: Path) -> None:
    d = tmp_path / "d"
    init_deployment(d, nodes=1, base_port=7100)
    node = d / "node1"

    def build() -> ssl.SSLContext:
        return pki.server_context(node / "ca.pem", node / "node.pem", node / "node.key")

    tls = ReloadableTLS(build, lambda: pki.describe((node / "node.pem").read_bytes()))
    first, serial = tls.context, tls.serial
    assert serial == pki.describe((node / "node.pem").read_bytes()).serial
    # New files for the same node, issued by the same CA.
    ca = pki.load_ca(d / "ca.pem", d / "ca.key")
    pki.write_pair(pki.issue(ca, "node1", "node", hosts=("127.0.0.1", "node1")),
                   node / "node.pem", node / "node.key")
    new_serial = tls.reload()
    assert new_serial != serial and tls.context is not first
    # A certificate whose key is another's: refused, the context stays.
    shutil.copy(d / "admin.key", node / "node.key")
    current = tls.context
    with pytest.raises(ConfigError):
        tls.reload()
    assert tls.context is current and tls.serial == new_serial


class Conn:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_guard_refuses_revoked_and_closes_open_ones() -> None:
    revoked: list[frozenset[str]] = [frozenset({"bad"})]
    seen: list[tuple[str, ...]] = []
    guard = RevocationGuard(lambda: revoked[0], lambda *a: seen.append(a))
    a, b, c = Conn(), Conn(), Conn()
    assert guard.admit("bad", "svc-x", "client", "1.2.3.4:5", a.close) is None
    assert seen == [("handshake", "svc-x", "client", "1.2.3.4:5", "bad")]
    ta = guard.admit("a1", "svc-a", "client", "p:1", b.close)
    tb = guard.admit("b1", "svc-b", "client", "p:2", c.close)
    assert ta is not None and tb is not None and guard.open_connections == 2
    assert guard.sweep() == 0
    revoked[0] = revoked[0] | {"a1"}
    assert guard.sweep() == 1
    assert b.closed and not c.closed and guard.open_connections == 1
    assert seen[-1] == ("open", "svc-a", "client", "p:1", "a1")
    assert guard.sweep() == 0  # the same set: nothing walked, nothing closed
    guard.release(tb)
    guard.release(None)
    assert guard.open_connections == 0


def test_guard_refuses_a_certificate_without_serial() -> None:
    guard = RevocationGuard(lambda: frozenset())
    assert guard.admit(None, "x", "client", "p", Conn().close) is None


def test_a_failing_observer_does_not_break_the_guard() -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("observer")

    guard = RevocationGuard(lambda: frozenset({"s"}), boom)
    assert guard.admit("s", "n", "client", "p", Conn().close) is None
