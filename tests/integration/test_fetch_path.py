"""The keyring fetch path on real nodes (issue 16, item 3).

* a client that sends the index it holds (``known``) gets ``unchanged`` without versions
  while the keyring is the same, and the whole keyring once it changed;
* a request without ``known`` (every client before the field) gets the whole keyring;
* the SSO client moves its index forward on unchanged answers, keeps its versions, picks
  up a rotation, and never goes back to an older keyring;
* a reconnect resumes the TLS session, and the node still knows the certificate's role.
"""

from __future__ import annotations

import pytest

from raftsso import pki
from raftsso.client import SSOClient
from raftsso.config import Endpoint
from raftsso.errors import PermissionDenied
from raftsso.remote import Connection
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.integration


def test_unchanged_answer_old_clients_and_never_going_back(cluster: Cluster) -> None:
    node = cluster.leader()
    full = cluster.call(node, "keyring", {"client_id": "old-client"})
    assert full["versions"] and "unchanged" not in full  # an old client: everything
    index = full["commit_index"]

    same = cluster.call(node, "keyring", {"client_id": "new-client", "known": index})
    assert same["unchanged"] is True and "versions" not in same
    assert same["commit_index"] >= index and same["primary"] == full["primary"]
    assert same["cluster_id"] == full["cluster_id"]

    # An index from before the keyring's last change: the whole keyring.
    assert cluster.call(node, "keyring", {"known": 0})["versions"]
    # A malformed known is ignored, never refused.
    assert cluster.call(node, "keyring", {"known": "x"})["versions"]

    with SSOClient.from_config(cluster.client_toml, background=False) as client:
        first = client.state()
        assert first.commit_index is not None
        token = client.encrypt(b"before")
        client.sync()  # unchanged: same versions, index at least as new
        again = client.state()
        assert again.versions == first.versions and again.primary == first.primary
        assert again.commit_index is not None and again.commit_index >= first.commit_index

        rotated = cluster.rotate(now=True)
        wait_for(lambda: all(rotated["version"] in cluster.keyring(n) for n in cluster.ids),
                 30, what="every node applied the rotation")
        client.sync()
        after = client.state()
        assert after.primary == rotated["version"]
        assert {v.id for v in after.versions} == {v.id for v in first.versions} | {
            rotated["version"]}
        assert client.decrypt(token) == b"before"
        assert after.commit_index is not None and after.commit_index > again.commit_index

        # The index it holds now is newer than anything an unchanged answer could cite
        # from before: every later answer is at least as new (never back).
        client.sync()
        assert (client.state().commit_index or 0) >= after.commit_index


def test_a_reconnect_resumes_the_tls_session_and_keeps_the_role(cluster: Cluster) -> None:
    node = cluster.ids[0]
    root = cluster.root
    ctx = pki.client_context(root / "ca.pem", root / "client.pem", root / "client.key")
    conn = Connection(Endpoint(node, cluster.address(node)), ctx, timeout=10.0)
    try:
        assert conn.call("ping")
        assert not conn.session_reused  # the first connection: a full handshake
        conn.close()
        assert conn.call("keyring")
        assert conn.session_reused
        # The resumed session still carries the client certificate: its role holds.
        with pytest.raises(PermissionDenied):
            conn.call("rotate", {"request_id": b"\x01" * 16})
    finally:
        conn.close()
