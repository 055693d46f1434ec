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



def _records(data: bytes) -> int:
    """How many TLS records ``data`` holds (5-byte headers: type, version, length)."""
    count = pos = 0
    while pos + 5 <= len(data):
        pos += 5 + int.from_bytes(data[pos + 3:pos + 5], "big")
        count += 1
    assert pos == len(data)
    return count


def _connect(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
             session: ssl.SSLSession | None) -> tuple[ssl.SSLObject, ssl.SSLObject, int]:
    """A TLS 1.3 handshake over memory BIOs, then one byte each way: (server, client,
    records the server sent in the call that finished its handshake: its tickets)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1", session=session)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()  # ClientHello
    s_in.write(c_out.read())
    with pytest.raises(ssl.SSLWantReadError):
        server.do_handshake()  # ServerHello ... Finished
    c_in.write(s_out.read())
    client.do_handshake()  # (Certificate, CertificateVerify,) Finished
    s_in.write(c_out.read())
    server.do_handshake()  # done: what it wrote in this call are the session tickets
    tickets = s_out.read()
    c_in.write(tickets)
    client.write(b"?")
    s_in.write(c_out.read())
    assert server.read(1) == b"?"
    server.write(b"!")
    c_in.write(s_out.read())
    assert client.read(1) == b"!"  # the client takes the tickets on its way
    return server, client, _records(tickets)


def test_one_ticket_per_handshake_and_a_resumed_session_keeps_the_role(tmp_path: Path
                                                                         ) -> None:
    d = tmp_path / "d"
    init_deployment(d, nodes=1, base_port=7100)
    node = d / "node1"
    server_ctx = pki.server_context(node / "ca.pem", node / "node.pem", node / "node.key")
    client_ctx = pki.client_context(d / "ca.pem", d / "client.pem", d / "client.key")
    server, client, tickets = _connect(server_ctx, client_ctx, None)
    # One ticket, not OpenSSL's default two: each costs the node a session encoding and
    # parse (the client certificate's key decoded again) and a write; a client keeps one.
    assert tickets == 1 and not server.session_reused
    assert client.version() == "TLSv1.3"
    server, client, tickets = _connect(server_ctx, client_ctx, client.session)
    assert server.session_reused and client.session_reused and tickets == 1
    # The resumed session still carries the verified client certificate: role and serial.
    peercert = server.getpeercert()
    assert pki.peer_identity(peercert)[0] == "client"
    assert pki.peer_serial(peercert) == pki.describe((d / "client.pem").read_bytes()).serial
