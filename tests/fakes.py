"""Fakes shared by the unit tests: a settable clock, a keyring source, keyring answers.

The seam of the SSO client is :class:`raftsso.client.KeyringSource`: :class:`FakeSource`
answers the ``keyring`` operation per node from dictionaries shaped exactly like a node's
answer (:func:`ring`), with real keys (:data:`KEYS`), so real AES-GCM runs on top.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from raftsso import envelope
from raftsso.client import SSOClient
from raftsso.config import Endpoint

CLUSTER = "c-test"
KEYS = {v: os.urandom(32) for v in range(1, 6)}


class FakeClock:
    """A clock for ``clock=`` parameters: returns :attr:`now`, which the test moves."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSource:
    """Answers per node id: a keyring dict, an exception to raise, or None (refused)."""

    def __init__(self, nodes: int = 3) -> None:
        self.endpoints = [Endpoint(f"node{i + 1}", f"127.0.0.1:{7000 + i}")
                          for i in range(nodes)]
        self.answers: dict[str, Any] = {}
        self.calls: list[str] = []
        self.closed = False
        self._lock = threading.Lock()

    def fetch(self, endpoint: Endpoint) -> Any:
        with self._lock:
            self.calls.append(endpoint.id)
            answer = self.answers.get(endpoint.id)
        if answer is None:
            raise ConnectionRefusedError(111, "Connection refused")
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def set_all(self, answer: Any) -> None:
        for ep in self.endpoints:
            self.answers[ep.id] = answer

    def close(self) -> None:
        self.closed = True


def ring(versions: dict[int, str], *, index: int, term: int = 1, node: str = "node1",
         cluster: str = CLUSTER) -> dict[str, Any]:
    """A node's answer to ``keyring``: ``versions`` maps version id to state."""
    primary = next((v for v, s in versions.items() if s == "primary"), None)
    return {
        "cluster_id": cluster, "node_id": node, "term": term, "commit_index": index,
        "primary": primary,
        "versions": [{"id": v, "state": s, "key": KEYS[v],
                      "fingerprint": envelope.fingerprint(KEYS[v]), "created": 1.0,
                      "promoted": None, "backed_up": False} for v, s in versions.items()],
    }


def make_client(source: FakeSource, clock: FakeClock, **kw: Any) -> SSOClient:
    """An SSOClient over ``source`` with no background thread (resync 10 s, stale at 20 s)."""
    opts: dict[str, Any] = {"cluster_id": CLUSTER, "resync_interval": 10.0,
                            "max_staleness": 20.0, "clock": clock, "background": False}
    opts.update(kw)
    return SSOClient(source, **opts)
