"""Blocking mutual-TLS calls to nodes, shared by the operator CLI and the SSO client.

:class:`Connection` is one persistent TLS connection to one node. :class:`ClusterClient`
knows every node of a deployment: it reads from whichever answers and sends writes to the
leader, following ``NOT_LEADER`` answers (and trying every node when no leader is known)
until a deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

from raftsso import pki
from raftsso.config import Endpoint, RemoteConfig, split_address
from raftsso.errors import (
    ClusterUnavailable,
    DecodeError,
    NotLeader,
    OutcomeUnknown,
    RemoteError,
    remote_error,
)
from raftsso.wire import MAX_FRAME, encode_frame, read_frame

# Answers that say "try again, maybe elsewhere": the write was certainly not applied
# (NOT_LEADER, UNAVAILABLE, NO_QUORUM) or the same request id makes a retry safe.
_RETRYABLE = ("NOT_LEADER", "UNAVAILABLE", "NO_QUORUM", "OUTCOME_UNKNOWN")


class Connection:
    """One mTLS connection to one node; not thread-safe (the cluster client locks)."""

    def __init__(self, endpoint: Endpoint, ctx: ssl.SSLContext, timeout: float) -> None:
        self.endpoint = endpoint
        self._ctx = ctx
        self._timeout = timeout
        self._sock: ssl.SSLSocket | None = None
        self._ids = itertools.count(1)

    def _connect(self) -> ssl.SSLSocket:
        host, port = split_address(self.endpoint.address)
        raw = socket.create_connection((host, port), timeout=self._timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            return self._ctx.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise

    def call(self, op: str, args: dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        """Send one request and return its result; :class:`RemoteError` for an error answer.

        Network failures raise ``OSError``/``ssl.SSLError``; the connection is then
        dropped and the next call reconnects.
        """
        rid = next(self._ids)
        frame = encode_frame({"id": rid, "op": op, "args": args or {}})
        try:
            if self._sock is None:
                self._sock = self._connect()
            self._sock.settimeout(timeout or self._timeout)
            self._sock.sendall(frame)
            answer = read_frame(self._sock, MAX_FRAME)
        except (OSError, DecodeError):
            self.close()
            raise
        if answer.get("id") != rid:
            self.close()
            raise DecodeError("answer does not match the request")
        if answer.get("ok") is True:
            return answer.get("result")
        err = answer.get("error")
        if not isinstance(err, dict):
            raise DecodeError("malformed error answer")
        details = {k: v for k, v in err.items() if k not in ("code", "message")}
        raise remote_error(str(err.get("code", "ERROR")), str(err.get("message", "")),
                           node=self.endpoint.id, **details)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


class ClusterClient:
    """Calls to a whole deployment, with leader following and retries."""

    def __init__(self, nodes: Sequence[Endpoint], ctx: ssl.SSLContext,
                 timeout: float = 5.0) -> None:
        if not nodes:
            raise ValueError("at least one node is needed")
        self.nodes = tuple(nodes)
        self.timeout = timeout
        self._conns = {n.address: Connection(n, ctx, timeout) for n in self.nodes}
        self._locks = {n.address: threading.Lock() for n in self.nodes}
        self._leader: str | None = None
        self._preferred = 0

    @classmethod
    def from_config(cls, cfg: RemoteConfig) -> ClusterClient:
        return cls(cfg.nodes, pki.client_context(cfg.ca_cert, cfg.cert, cfg.key), cfg.timeout)

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call_node(self, address: str, op: str, args: dict[str, Any] | None = None,
                  timeout: float | None = None) -> Any:
        conn = self._conns.get(address)
        if conn is None:  # a leader hint outside our configuration
            raise ClusterUnavailable(f"the leader {address} is not in this configuration")
        with self._locks[address]:
            return conn.call(op, args, timeout)

    def endpoint_by_address(self, address: str) -> Endpoint | None:
        return next((n for n in self.nodes if n.address == address), None)

    def call_any(self, op: str, args: dict[str, Any] | None = None,
                 deadline: float | None = None) -> tuple[Endpoint, Any]:
        """A read from the first node that answers (starting with the last good one)."""
        end = time.monotonic() + (deadline if deadline is not None else self.timeout)
        errors: list[str] = []
        while True:
            order = self.nodes[self._preferred:] + self.nodes[:self._preferred]
            for i, node in enumerate(order):
                try:
                    result = self.call_node(node.address, op, args)
                except (OSError, DecodeError) as exc:
                    errors.append(f"{node.id}: {exc}")
                    continue
                self._preferred = (self._preferred + i) % len(self.nodes)
                return node, result
            if time.monotonic() >= end:
                raise ClusterUnavailable(
                    "no node answered: " + "; ".join(errors[-len(self.nodes):]))
            time.sleep(0.1)

    def call_leader(self, op: str, args: dict[str, Any] | None = None,
                    deadline: float | None = None) -> Any:
        """A write: go to the leader, follow NOT_LEADER hints, retry until the deadline.

        Callers make retries safe by putting a request id in ``args``.
        """
        end = time.monotonic() + (deadline if deadline is not None else 3 * self.timeout)
        last: Exception | None = None
        tried_without_hint = 0
        while True:
            target = self._leader
            if target is None:
                target = self.nodes[tried_without_hint % len(self.nodes)].address
                tried_without_hint += 1
            try:
                remaining = max(0.5, end - time.monotonic())
                result = self.call_node(target, op, args, timeout=min(remaining, 30.0))
                self._leader = target
                return result
            except NotLeader as exc:
                last = exc
                hint = exc.leader
                self._leader = hint if hint in self._conns and hint != target else None
            except RemoteError as exc:
                if exc.code not in _RETRYABLE:
                    raise
                last = exc
                if exc.code != "OUTCOME_UNKNOWN":
                    self._leader = None
            except (OSError, DecodeError) as exc:
                last = exc
                self._leader = None
            if time.monotonic() >= end:
                if isinstance(last, OutcomeUnknown):
                    raise last
                raise ClusterUnavailable(f"no leader accepted {op!r} in time: {last}")
            if self._leader is None:
                time.sleep(0.05)
