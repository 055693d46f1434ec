"""Blocking mutual-TLS calls to nodes, shared by the operator tools and the SSO client.

:class:`Connection` is one persistent TLS connection to one node. :class:`ClusterClient`
knows every node of a deployment: it reads from whichever answers and sends writes to the
leader, following ``NOT_LEADER`` answers (and trying every node when no leader is known)
until a deadline.

Two levels: the typed one (``request_node``, ``request_any``, ``request_leader``) sends a
:class:`~raftsso.protocol.messages.Request` and returns its typed result; the wire level
(``call_node``, ``call_any``, ``call_leader``) sends an op name and a raw argument map, for
tests and tools that must send what no typed request would. Error answers become
exceptions in one place, :func:`raise_for` (its table maps each code to a class).
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from raftsso import pki
from raftsso.config import Endpoint, RemoteConfig, split_address
from raftsso.errors import (
    BadRequest,
    ClusterUnavailable,
    ConfigError,
    Conflict,
    DecodeError,
    NotLeader,
    OutcomeUnknown,
    PermissionDenied,
    RemoteError,
    Unavailable,
)
from raftsso.protocol.base import ErrorBody, Request, Result
from raftsso.protocol.codes import RETRYABLE, ErrorCode
from raftsso.wire import MAX_FRAME, WireMap, WireValue, encode_frame, read_frame

R = TypeVar("R", bound=Result)

#: The exception class of each error code (any other code: :class:`RemoteError`).
EXCEPTIONS: dict[ErrorCode, type[RemoteError]] = {
    ErrorCode.NOT_LEADER: NotLeader,
    ErrorCode.FORBIDDEN: PermissionDenied,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.OUTCOME_UNKNOWN: OutcomeUnknown,
    ErrorCode.BAD_REQUEST: BadRequest,
    ErrorCode.BAD_FRAME: BadRequest,
    ErrorCode.FRAME_TOO_LARGE: BadRequest,
    ErrorCode.UNKNOWN_OP: BadRequest,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.NO_QUORUM: Unavailable,
}


def raise_for(body: ErrorBody, node: str | None = None) -> NoReturn:
    """Raise the exception of an error answer (the client's one translation point)."""
    cls = EXCEPTIONS.get(body.code, RemoteError)
    raise cls(body.message, code=body.code, leader=body.leader, request_id=body.request_id,
              node=node)


class Connection:
    """One mTLS connection to one node; not thread-safe (the cluster client locks)."""

    def __init__(self, endpoint: Endpoint, ctx: ssl.SSLContext, timeout: float) -> None:
        self.endpoint = endpoint
        self._ctx = ctx
        self._timeout = timeout
        self._sock: ssl.SSLSocket | None = None
        self._ids = itertools.count(1)
        # The TLS session of the last connection: a reconnect resumes it (TLS 1.3 session
        # ticket), which skips both certificate checks and signatures, about half the cost
        # of a full mutual handshake for the node. The node still knows our certificate:
        # the ticket carries it.
        self._session: ssl.SSLSession | None = None

    def _connect(self) -> ssl.SSLSocket:
        host, port = split_address(self.endpoint.address)
        # An ASCII name (or address) goes as bytes: a str is encoded with the "idna" codec
        # by getaddrinfo and by ssl, whose import (stringprep, unicodedata) every CLI call
        # would pay, and for ASCII that codec only checks label lengths. The certificate
        # is checked against the same name either way.
        name: str | bytes = host.encode("ascii") if host.isascii() else host
        # (typeshed types create_connection's host as str only; it hands it to
        # getaddrinfo, which takes bytes and is typed so)
        raw = socket.create_connection((name, port),  # type: ignore[arg-type]
                                       timeout=self._timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            return self._ctx.wrap_socket(raw, server_hostname=name, session=self._session)
        except BaseException:
            raw.close()
            raise

    def use_context(self, ctx: ssl.SSLContext) -> None:
        """New connections use ``ctx``; a session of the old certificate is not resumed."""
        self._ctx = ctx
        self._session = None

    @property
    def session_reused(self) -> bool:
        """The open connection resumed an earlier TLS session (for tests and tools)."""
        return self._sock is not None and bool(self._sock.session_reused)

    def call(self, op: str, args: WireMap | None = None,
             timeout: float | None = None) -> WireValue:
        """Send one request and return its raw result; :class:`RemoteError` for an error
        answer.

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
            # TLS 1.3 tickets arrive after the handshake: the session is resumable only
            # once something has been read.
            self._session = self._sock.session
        except (OSError, DecodeError):
            self.close()
            self._session = None  # a failed connection's session is not tried again
            raise
        if answer.get("id") != rid:
            self.close()
            raise DecodeError("answer does not match the request")
        if answer.get("ok") is True:
            return answer.get("result")
        raise_for(ErrorBody.from_wire(answer.get("error")), node=self.endpoint.id)

    def request(self, request: Request[R], timeout: float | None = None) -> R:
        return request.decode_result(self.call(request.op, request.to_wire(), timeout))

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def check_tls_files(cfg: RemoteConfig) -> None:
    """Refuse, as a local configuration error, a ``cert`` that ``ca_cert`` did not issue.

    With such a pair every node would look unreachable (each handshake fails), which
    reads like an outage; the mistake is in the file.
    """
    try:
        issued = pki.issued_by(cfg.ca_cert, cfg.cert)
    except OSError as exc:
        raise ConfigError(f"{cfg.path}: cannot read {exc.filename}: "
                          f"{exc.strerror or exc}") from None
    except ValueError:
        raise ConfigError(f"{cfg.path}: ca_cert ({cfg.ca_cert}) or cert ({cfg.cert}) is not "
                          "a PEM certificate") from None
    if not issued:
        raise ConfigError(f"{cfg.path}: ca_cert {cfg.ca_cert} did not issue cert {cfg.cert}; "
                          "ca_cert must be the cluster's ca.pem (written by raftsso init)")


def _wrong_ca(errors: Sequence[BaseException]) -> bool:
    """Every node failed to prove its certificate against our CA: a configuration error."""
    return bool(errors) and all(isinstance(e, ssl.SSLCertVerificationError) for e in errors)


class ClusterClient:
    """Calls to a whole deployment, with leader following and retries."""

    def __init__(self, nodes: Sequence[Endpoint], ctx: ssl.SSLContext,
                 timeout: float = 5.0, config_path: str | None = None,
                 ca_cert: str | None = None) -> None:
        if not nodes:
            raise ValueError("at least one node is needed")
        self.nodes = tuple(nodes)
        self.timeout = timeout
        self.config_path = config_path
        self._ca_cert = ca_cert
        self._conns = {n.address: Connection(n, ctx, timeout) for n in self.nodes}
        self._locks = {n.address: threading.Lock() for n in self.nodes}
        self._leader: str | None = None
        self._preferred = 0
        # Run once, at the first TLS failure: refuses a client certificate that ca_cert
        # did not issue as the configuration error it is (see check_tls_files). Not up
        # front: reading certificates loads cryptography, a fifth of a CLI call's time.
        self._tls_check: Callable[[], None] | None = None

    @classmethod
    def from_config(cls, cfg: RemoteConfig) -> ClusterClient:
        ctx = pki.client_context(cfg.ca_cert, cfg.cert, cfg.key)
        client = cls(cfg.nodes, ctx, cfg.timeout, config_path=str(cfg.path),
                     ca_cert=str(cfg.ca_cert))
        client._tls_check = lambda: check_tls_files(cfg)
        return client

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()

    def set_context(self, ctx: ssl.SSLContext) -> None:
        """Use ``ctx`` (a reloaded certificate) for every new connection; open connections
        keep theirs until they close (SIGHUP of a long-running client, issue 15)."""
        for address, conn in self._conns.items():
            with self._locks[address]:
                conn.use_context(ctx)

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wrong_ca_error(self, errors: Sequence[BaseException]) -> ConfigError | None:
        """A :class:`ConfigError` naming the file when every node's certificate failed
        verification against ``ca_cert`` (``errors``: one per node tried), or the one the
        first TLS failure's check of our own files raised, else None."""
        found = next((e for e in errors if isinstance(e, ConfigError)), None)
        if found is not None:
            return found
        if not _wrong_ca(errors) or len(errors) < len(self.nodes):
            return None
        where = f"{self.config_path}: " if self.config_path else ""
        return ConfigError(f"{where}no node's certificate was issued by ca_cert "
                           f"{self._ca_cert or ''}; check ca_cert (it must be the cluster's "
                           "ca.pem) and the node addresses")

    # -- wire level ---------------------------------------------------------------------

    def call_node(self, address: str, op: str, args: WireMap | None = None,
                  timeout: float | None = None) -> WireValue:
        conn = self._conns.get(address)
        if conn is None:  # a leader hint outside our configuration
            raise ClusterUnavailable(f"the leader {address} is not in this configuration")
        with self._locks[address]:
            try:
                return conn.call(op, args, timeout)
            except ssl.SSLError:
                check, self._tls_check = self._tls_check, None
                if check is not None:
                    check()  # ConfigError when our certificate is not the CA's
                raise

    def endpoint_by_address(self, address: str) -> Endpoint | None:
        return next((n for n in self.nodes if n.address == address), None)

    def call_any(self, op: str, args: WireMap | None = None,
                 deadline: float | None = None) -> tuple[Endpoint, WireValue]:
        """A read from the first node that answers (starting with the last good one)."""
        end = time.monotonic() + (deadline if deadline is not None else self.timeout)
        errors: list[str] = []
        while True:
            order = self.nodes[self._preferred:] + self.nodes[:self._preferred]
            failures: list[BaseException] = []
            for i, node in enumerate(order):
                try:
                    result = self.call_node(node.address, op, args)
                except (OSError, DecodeError) as exc:
                    errors.append(f"{node.id}: {exc}")
                    failures.append(exc)
                    continue
                self._preferred = (self._preferred + i) % len(self.nodes)
                return node, result
            wrong_ca = self.wrong_ca_error(failures)
            if wrong_ca is not None:
                raise wrong_ca
            if time.monotonic() >= end:
                raise ClusterUnavailable(
                    "no node answered: " + "; ".join(errors[-len(self.nodes):]))
            time.sleep(0.1)

    def call_leader(self, op: str, args: WireMap | None = None,
                    deadline: float | None = None) -> WireValue:
        """A write: go to the leader, follow NOT_LEADER hints, retry until the deadline.

        Callers make retries safe by putting a request id in ``args``.
        """
        end = time.monotonic() + (deadline if deadline is not None else 3 * self.timeout)
        last: Exception | None = None
        tried_without_hint = 0
        failures: dict[str, BaseException] = {}
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
                if exc.code not in RETRYABLE:
                    raise
                last = exc
                if exc.code is not ErrorCode.OUTCOME_UNKNOWN:
                    self._leader = None
            except (OSError, DecodeError) as exc:
                last = exc
                failures[target] = exc
                self._leader = None
                wrong_ca = self.wrong_ca_error(list(failures.values()))
                if wrong_ca is not None:
                    raise wrong_ca from None
            if time.monotonic() >= end:
                if isinstance(last, OutcomeUnknown):
                    raise last
                raise ClusterUnavailable(f"no leader accepted {op!r} in time: {last}")
            if self._leader is None:
                time.sleep(0.05)

    # -- typed ----------------------------------------------------------------------------

    def request_node(self, address: str, request: Request[R],
                     timeout: float | None = None) -> R:
        return request.decode_result(
            self.call_node(address, request.op, request.to_wire(), timeout))

    def request_any(self, request: Request[R],
                    deadline: float | None = None) -> tuple[Endpoint, R]:
        node, raw = self.call_any(request.op, request.to_wire(), deadline)
        return node, request.decode_result(raw)

    def request_leader(self, request: Request[R], deadline: float | None = None) -> R:
        """A write (or a leader-only read); the request's own id makes retries safe."""
        return request.decode_result(
            self.call_leader(request.op, request.to_wire(), deadline))
