"""raftsso.raft.peer_links in one process: two PeerLinks on 127.0.0.1, certificates of a test CA.

pysyncobj is not involved: each side's "pysyncobj end" is the verified TLS socket that
``dial`` delivers or that ``on_incoming`` receives, used here in blocking mode. Every wait
has a deadline and polls a condition or blocks on a socket; nothing sleeps to synchronise.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from raftsso import pki
from raftsso.raft import peer_links as peer_tls
from raftsso.raft.peer_links import PeerLinks, PeerSocket, failure_reason
from raftsso.tlserrors import LABELS, handshake_failure_reason
from tests.descriptors import no_free_descriptors
from tests.harness import wait_for

TIMEOUT = 10.0


@dataclass
class Pki:
    root: Path
    ca: pki.Issued

    @property
    def ca_pem(self) -> Path:
        return self.root / "ca.pem"

    def pair(self, name: str, role: str = "node", ca: pki.Issued | None = None,
             hosts: tuple[str, ...] = ("127.0.0.1",)) -> tuple[Path, Path]:
        issued = pki.issue(ca or self.ca, name, role, hosts=hosts)
        cert, key = self.root / f"{name}-{role}.pem", self.root / f"{name}-{role}.key"
        pki.write_pair(issued, cert, key)
        return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = pki.create_ca("c-test")
    (root / "ca.pem").write_bytes(ca.cert_pem)
    return Pki(root, ca)


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


class Side:
    """One node's PeerLinks, its members (mutable) and the links handed to "pysyncobj"."""

    def __init__(self, certs: Pki, node_id: str, **kwargs: float) -> None:
        self.node_id = node_id
        self.address = _free_address()
        self.members: dict[str, str] = {}
        self.incoming: queue.Queue[tuple[PeerSocket, str]] = queue.Queue()
        cert, key = certs.pair(node_id)
        self.links = PeerLinks(node_id=node_id, listen=self.address, ca=certs.ca_pem,
                               cert=cert, key=key, members=lambda: dict(self.members),
                               on_incoming=lambda s, a: self.incoming.put((s, a)),
                               **kwargs)  # type: ignore[arg-type]

    def accept(self) -> tuple[PeerSocket, str]:
        sock, address = self.incoming.get(timeout=TIMEOUT)
        sock.setblocking(True)
        sock.settimeout(TIMEOUT)
        return sock, address


@pytest.fixture
def sides(certs: Pki) -> Iterator[Callable[..., Side]]:
    made: list[Side] = []

    def make(node_id: str, **kwargs: float) -> Side:
        side = Side(certs, node_id, **kwargs)
        side.links.start()
        made.append(side)
        return side

    yield make
    for side in made:
        side.links.stop()
        while not side.incoming.empty():
            side.incoming.get()[0].close()


def _pair(make: Callable[..., Side], **kwargs: float) -> tuple[Side, Side]:
    a, b = make("node1", **kwargs), make("node2", **kwargs)
    a.members["node2"] = b.address
    b.members["node1"] = a.address
    return a, b


def _start_dial(side: Side, address: str) -> queue.Queue[PeerSocket | None]:
    done: queue.Queue[PeerSocket | None] = queue.Queue()
    assert side.links.dial(address, done.put)
    return done


def _dialed(done: queue.Queue[PeerSocket | None]) -> PeerSocket | None:
    sock = done.get(timeout=TIMEOUT)
    if sock is not None:
        assert sock.peer_id and sock.direction == "out"
        sock.setblocking(True)
        sock.settimeout(TIMEOUT)
    return sock


def _dial(side: Side, address: str) -> PeerSocket:
    sock = _dialed(_start_dial(side, address))
    assert sock is not None
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(min(1 << 16, n - len(chunks)))
        assert chunk, f"closed after {len(chunks)} of {n} bytes"
        chunks += chunk
    return bytes(chunks)


def _closed(sock: socket.socket) -> bool:
    """Block until the peer closes (True) or sends something (False)."""
    try:
        return sock.recv(1) == b""
    except OSError:  # ConnectionError, or a TLS error at the end of the stream
        return True


def _logged(caplog: pytest.LogCaptureFixture, *fragments: str) -> str:
    def find() -> str | None:
        return next((r.getMessage() for r in list(caplog.records)
                     if all(f in r.getMessage() for f in fragments)), None)

    return wait_for(find, TIMEOUT, what=f"a log line with {fragments}")


# -- links ------------------------------------------------------------------------------


def test_a_link_carries_bytes_both_ways_and_both_ends_close_together(
        sides: Callable[..., Side]) -> None:
    a, b = _pair(sides)
    ours = _dial(a, b.address)
    ours.sendall(b"hello from node1")
    theirs, address = b.accept()
    assert address == a.address  # the dialer's Raft address, from its certificate's name
    assert _recv_exactly(theirs, 16) == b"hello from node1"
    theirs.sendall(b"hello from node2")
    assert _recv_exactly(ours, 16) == b"hello from node2"
    assert ("out", "node2", b.address) in a.links.links()
    assert ("in", "node1", a.address) in b.links.links()
    assert (theirs.peer_id, theirs.peer_address) == ("node1", a.address)
    ours.close()  # by the Raft thread, in real life: PeerLinks forgets the link
    assert _closed(theirs)
    wait_for(lambda: not a.links.links(), TIMEOUT, what="the closed link to be forgotten")
    assert b.links.links()  # the other end is its Raft thread's to close
    theirs.close()
    wait_for(lambda: not b.links.links() and b.links.counts()["open"] == 0, TIMEOUT,
             what="the other end to be forgotten and leave the gate")


def test_large_transfers_arrive_intact(sides: Callable[..., Side]) -> None:
    # Far more than every buffer on the way, each way in turn (a TLS socket is not read
    # and written by two threads at once; the Raft thread does both in turn).
    a, b = _pair(sides)
    ours = _dial(a, b.address)
    ours.sendall(b"x")
    theirs, _ = b.accept()
    assert _recv_exactly(theirs, 1) == b"x"
    size = 16 << 20
    for sender, receiver in ((ours, theirs), (theirs, ours)):
        data = bytes(range(256)) * (size // 256)
        writer = threading.Thread(target=sender.sendall, args=(data,))
        writer.start()
        assert _recv_exactly(receiver, size) == data
        writer.join(TIMEOUT)
    ours.close()
    theirs.close()


def test_the_side_that_closes_first_may_be_either(sides: Callable[..., Side]) -> None:
    a, b = _pair(sides)
    ours = _dial(a, b.address)
    ours.sendall(b"?")
    theirs, _ = b.accept()
    assert _recv_exactly(theirs, 1) == b"?"
    theirs.close()
    assert _closed(ours)
    ours.close()


# -- outgoing refusals ------------------------------------------------------------------


def test_no_link_to_an_address_where_no_member_is_known(
        sides: Callable[..., Side], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=peer_tls.__name__)
    a, _ = _pair(sides)
    assert not a.links.dial("127.0.0.1:1", lambda sock: None)
    _logged(caplog, "127.0.0.1:1", "no current member")


def test_a_server_with_another_members_certificate_is_refused(
        sides: Callable[..., Side], caplog: pytest.LogCaptureFixture) -> None:
    a, b = _pair(sides)
    a.members = {"node3": b.address}  # node1 believes node3 listens where node2 does
    assert _dialed(_start_dial(a, b.address)) is None
    _logged(caplog, "presented a certificate for 'node2'", "expected member 'node3'")
    assert not a.links.links()


def test_a_server_without_a_node_certificate_is_refused(
        sides: Callable[..., Side], certs: Pki, caplog: pytest.LogCaptureFixture) -> None:
    # A listener with an admin certificate (no serverAuth usage) on a member's address.
    a = sides("node1")
    address = _free_address()
    a.members["node2"] = address
    cert, key = certs.pair("node2", role="admin")
    ctx = pki.server_context(certs.ca_pem, cert, key)
    host, port = address.split(":")
    with socket.create_server((host, int(port))) as server:
        done = _start_dial(a, address)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            with pytest.raises((ssl.SSLError, OSError)):
                ctx.wrap_socket(conn, server_side=True).recv(1)
        assert _dialed(done) is None
    _logged(caplog, "Raft link to node2", "failed")


# -- incoming refusals ------------------------------------------------------------------


def _client_ctx(cert: Path | None, key: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the attacker does not care who answers
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def _tls_attempt(address: str, ctx: ssl.SSLContext) -> bytes:
    """Connect, send a few bytes, return whatever comes back before the node closes."""
    host, port = address.split(":")
    got = b""
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"\x00" * 64)
                while chunk := tls.recv(4096):
                    got += chunk
        except (ssl.SSLError, ConnectionError):
            pass
    return got


@pytest.mark.parametrize(("case", "expected"), [
    ("admin", "role 'admin'"),
    ("client", "role 'client'"),
    ("other-ca", "certificate not accepted"),
    ("not-a-member", "'node9' is not a current member"),
    ("this-node", "names this node"),
    ("no-certificate", "TLS handshake failed"),
])
def test_only_current_members_with_node_certificates_get_in(
        sides: Callable[..., Side], certs: Pki, caplog: pytest.LogCaptureFixture,
        case: str, expected: str) -> None:
    _, b = _pair(sides)
    other_ca = pki.create_ca("c-other")
    cert_key: tuple[Path, Path] | tuple[None, None] = {
        "admin": lambda: certs.pair("admin-1", role="admin"),
        "client": lambda: certs.pair("client-1", role="client"),
        "other-ca": lambda: certs.pair("node1", ca=other_ca),
        "not-a-member": lambda: certs.pair("node9"),
        "this-node": lambda: certs.pair("node2"),
        "no-certificate": lambda: (None, None),
    }[case]()
    assert _tls_attempt(b.address, _client_ctx(*cert_key)) == b""
    _logged(caplog, "refused a Raft peer connection from 127.0.0.1", expected)
    assert b.incoming.empty()  # nothing was handed to pysyncobj
    assert not b.links.links()


def test_plain_tcp_is_refused(sides: Callable[..., Side],
                              caplog: pytest.LogCaptureFixture) -> None:
    _, b = _pair(sides)
    host, port = b.address.split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        s.sendall(b"\xc8\x00\x00\x00" + b"gAAAAA" * 40)  # a pysyncobj frame header + Fernet
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except ConnectionError:
            pass
    assert not got.startswith(b"\xc8") and len(got) < 16  # at most a TLS alert
    _logged(caplog, "refused a Raft peer connection from 127.0.0.1", "TLS handshake failed")
    assert b.incoming.empty()


def test_a_silent_connection_is_dropped_after_the_handshake_timeout(
        sides: Callable[..., Side], caplog: pytest.LogCaptureFixture) -> None:
    _, b = _pair(sides, handshake_timeout=0.2)
    host, port = b.address.split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        assert _closed(s)
    _logged(caplog, "refused a Raft peer connection", "handshake timeout")


def _connect_from(source: str, address: str) -> socket.socket:
    host, port = address.split(":")
    return socket.create_connection((host, int(port)), timeout=TIMEOUT,
                                    source_address=(source, 0))


def test_handshakes_beyond_the_limit_drop_the_oldest_of_the_busiest_source(
        sides: Callable[..., Side], caplog: pytest.LogCaptureFixture) -> None:
    _, b = _pair(sides, max_handshakes=1)
    with _connect_from("127.0.0.2", b.address) as first:
        wait_for(lambda: b.links.counts()["handshakes"] == 1, TIMEOUT,
                 what="the first handshake")
        with _connect_from("127.0.0.3", b.address):
            assert _closed(first)  # made room for the newer one
            _logged(caplog, "dropped a Raft peer connection from 127.0.0.2", "make room")
            assert b.links.counts()["handshakes"] == 1


def test_connections_beyond_the_limit_per_source_are_refused_at_once(
        sides: Callable[..., Side], caplog: pytest.LogCaptureFixture) -> None:
    _, b = _pair(sides, max_per_source=2)
    held = [_connect_from("127.0.0.2", b.address) for _ in range(2)]
    try:
        wait_for(lambda: b.links.counts()["handshakes"] == 2, TIMEOUT,
                 what="two handshakes from one source")
        with _connect_from("127.0.0.2", b.address) as third:
            assert _closed(third)
        _logged(caplog, "raft port: 127.0.0.2 has 2 connections open")
        with _connect_from("127.0.0.3", b.address):  # another source still gets in
            wait_for(lambda: b.links.counts()["handshakes"] == 3, TIMEOUT,
                     what="a handshake from another source")
    finally:
        for sock in held:
            sock.close()


def test_strangers_cannot_crowd_a_member_out(sides: Callable[..., Side],
                                             caplog: pytest.LogCaptureFixture) -> None:
    a, b = _pair(sides, max_handshakes=1, max_connections=1)
    with _connect_from("127.0.0.2", b.address) as stranger:
        wait_for(lambda: b.links.counts()["handshakes"] == 1, TIMEOUT,
                 what="the stranger's handshake")
        # every slot is taken by a stranger who never finishes, yet node1 gets in
        ours = _dial(a, b.address)
        ours.sendall(b"member")
        theirs, address = b.accept()
        assert address == a.address
        assert _recv_exactly(theirs, 6) == b"member"
        assert _closed(stranger)
        # the member's link is settled: now the port is full, and a newcomer is refused
        with _connect_from("127.0.0.3", b.address) as late:
            assert _closed(late)
        _logged(caplog, "raft port: 1 connections are open")
        assert b.links.counts() == {"open": 1, "handshakes": 0}
        ours.close()
        theirs.close()
    wait_for(lambda: b.links.counts()["open"] == 0, TIMEOUT,
             what="the closed link to leave the gate")


def test_an_accept_without_a_free_descriptor_backs_off_and_recovers(
        sides: Callable[..., Side], caplog: pytest.LogCaptureFixture) -> None:
    _, b = _pair(sides)
    waiting = socket.socket()
    waiting.settimeout(TIMEOUT)
    waiting.bind(("127.0.0.2", 0))
    host, port = b.address.split(":")
    with no_free_descriptors():
        waiting.connect((host, int(port)))  # in the backlog: accept() finds no descriptor
        _logged(caplog, "raft port: out of descriptors or memory while accepting")
    # descriptors are back: after the pause the waiting connection is accepted
    wait_for(lambda: b.links.counts()["handshakes"] == 1, TIMEOUT,
             what="the waiting connection to be accepted")
    waiting.close()


# -- membership and stop ------------------------------------------------------------------


def test_a_link_whose_peer_is_no_longer_a_member_is_marked_for_closing(
        sides: Callable[..., Side]) -> None:
    # The Raft thread owns the link: it asks close_reason once a second and closes it.
    a, b = _pair(sides)
    ours = _dial(a, b.address)
    ours.sendall(b"?")
    theirs, _ = b.accept()
    assert b.links.close_reason(theirs) is None and a.links.close_reason(ours) is None
    b.members.clear()  # node1 was removed, as b sees it
    assert b.links.close_reason(theirs) == "it is no longer a member"
    a.members["node2"] = "127.0.0.1:1"  # node2 moved, as a sees it
    assert a.links.close_reason(ours) == "it is no longer a member"
    ours.close()
    theirs.close()


def test_stop_refuses_dials_and_leaves_handed_links_to_their_owner(
        sides: Callable[..., Side]) -> None:
    a, b = _pair(sides)
    ours = _dial(a, b.address)
    ours.sendall(b"?")
    theirs, _ = b.accept()
    assert _recv_exactly(theirs, 1) == b"?"
    b.links.stop()
    assert not b.links.dial(a.address, lambda sock: None)
    theirs.sendall(b"!")  # the Raft thread closes its links when it stops
    assert _recv_exactly(ours, 1) == b"!"
    ours.close()
    theirs.close()


def test_a_busy_port_is_a_config_error(certs: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_tls, "BIND_PATIENCE", 0.0)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        cert, key = certs.pair("node1")
        links = PeerLinks(node_id="node1", listen=address, ca=certs.ca_pem, cert=cert,
                          key=key, members=dict, on_incoming=lambda s, a: None)
        with pytest.raises(peer_tls.ConfigError, match="cannot listen for Raft peers"):
            links.start()


def test_failure_reasons_are_the_service_ports_labels_in_words() -> None:
    # One classification for both listeners (raftsso.tlserrors): the Raft port logs the
    # words of the label the service port counts in its metrics.
    assert failure_reason(TimeoutError()) == "handshake timeout"
    aborted = ConnectionAbortedError("SSL handshake is taking longer than 5.0 seconds: "
                                     "aborting the connection")
    assert handshake_failure_reason(aborted) == "timeout"
    assert failure_reason(ssl.SSLCertVerificationError()) == "certificate not accepted"
    assert handshake_failure_reason(ssl.SSLCertVerificationError()) == "bad_certificate"
    assert failure_reason(ConnectionResetError()) == "closed during the handshake"
    assert handshake_failure_reason(ValueError()) == "other"
    assert {failure_reason(e) for e in (TimeoutError(), ValueError())} <= set(LABELS.values())


def test_peer_contexts_speak_only_tls13(certs: Pki) -> None:
    cert, key = certs.pair("node1")
    for server in (True, False):
        ctx = peer_tls.peer_context(certs.ca_pem, cert, key, server=server)
        assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode is ssl.CERT_REQUIRED
