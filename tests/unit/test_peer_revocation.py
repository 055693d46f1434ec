# ruff: noqa: F811 - the fixtures certs and sides come from test_peer_tls
"""The Raft peer links and revoked node certificates, and the certificate reload (SIGHUP):
two real PeerLinks on 127.0.0.1 with real TLS (the fixtures of test_peer_tls). Closing an
open link is the Raft thread's (raftsso.raft.transport asks close_reason once a second)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from raftsso import pki
from raftsso.raft import peer_links as peer_tls
from tests.harness import wait_for
from tests.unit.test_peer_tls import (  # noqa: F401 - fixtures
    TIMEOUT,
    Pki,
    Side,
    _closed,
    _dial,
    _dialed,
    _logged,
    _pair,
    _recv_exactly,
    _start_dial,
    certs,
    sides,
)


def serial_of(cert: Path) -> str:
    return pki.describe(cert.read_bytes()).serial


def files_of(side: Side) -> tuple[Path, Path, Path]:
    return side.links._tls_files


def test_a_revoked_dialer_is_refused_and_its_open_link_closed(
        sides: Callable[..., Side], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=peer_tls.__name__)
    a, b = _pair(sides)
    ours = _dial(a, b.address)
    ours.sendall(b"x")
    theirs, _ = b.accept()
    assert _recv_exactly(theirs, 1) == b"x"
    a_serial = serial_of(files_of(a)[1])
    b.links.revoked = lambda: frozenset({a_serial})
    # b's Raft thread closes the open link within a second (raftsso.raft.transport).
    reason = b.links.close_reason(theirs)
    assert reason is not None and a_serial in reason and "revoked" in reason
    theirs.close()
    assert _closed(ours)
    # A new link from a is refused by b.
    again = _dial(a, b.address)
    assert _closed(again)
    _logged(caplog, "refused a Raft peer connection", a_serial, "is revoked")
    assert b.incoming.empty()


def test_a_revoked_server_is_not_dialled(sides: Callable[..., Side],
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=peer_tls.__name__)
    a, b = _pair(sides)
    b_serial = serial_of(files_of(b)[1])
    a.links.revoked = lambda: frozenset({b_serial})
    assert _dialed(_start_dial(a, b.address)) is None
    _logged(caplog, "Raft link to node2", b_serial, "is revoked")


def test_reload_serves_the_new_certificate_to_new_links_only(
        sides: Callable[..., Side], certs: Pki) -> None:
    a, b = _pair(sides)
    old = _dial(a, b.address)
    old.sendall(b"1")
    theirs_old, _ = b.accept()
    assert _recv_exactly(theirs_old, 1) == b"1"
    _, cert, key = files_of(a)
    before = serial_of(cert)
    pki.write_pair(pki.issue(certs.ca, "node1", "node", hosts=("127.0.0.1",)), cert, key)
    a.links.reload_certificate()
    new = _dial(a, b.address)
    new.sendall(b"2")
    theirs_new, _ = b.accept()
    assert _recv_exactly(theirs_new, 1) == b"2"
    serials = wait_for(lambda: {link.serial for link in b.links._links if link.peer_id},
                       TIMEOUT, what="two links at b")
    assert serials >= {before, serial_of(cert)}
    # The old link still carries bytes: the reload dropped nothing.
    old.sendall(b"3")
    assert _recv_exactly(theirs_old, 1) == b"3"
    for sock in (old, new, theirs_old, theirs_new):
        sock.close()


def test_reload_with_broken_files_keeps_the_old_contexts(sides: Callable[..., Side]) -> None:
    a, _ = _pair(sides)
    key = files_of(a)[2]
    key.write_bytes(b"not a key")
    contexts = (a.links._server_ctx, a.links._client_ctx)
    with pytest.raises(Exception, match="cannot load TLS material"):
        a.links.reload_certificate()
    assert (a.links._server_ctx, a.links._client_ctx) == contexts
