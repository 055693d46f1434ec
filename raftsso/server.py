"""The node's TLS service: mutual TLS, roles from certificates, typed requests in versioned
msgpack frames.

Each connection carries any number of request/answer frames (see :mod:`raftsso.wire`).
A frame over the size limit, a malformed frame, or a request of the wrong shape is
answered with an error frame and the connection is closed; the node itself is unaffected.
A connection idle for ``idle_timeout`` or stalled mid-frame for ``read_timeout`` is closed.

:class:`Service` decodes each request once, into its typed request
(:mod:`raftsso.protocol.messages`), checks the caller's role, calls the :class:`Node` and
answers the typed result; every exception becomes an error answer in one place
(:meth:`Service.error_body`). Operations and the roles allowed to call them (a unit test
checks this table against the code):

===================  ===============  ======================================================
op                   roles            what
===================  ===============  ======================================================
``ping``             client, admin    liveness: ``{"node_id", "cluster_id"}``
``status``           client, admin    this node's Raft view and the keyring (no keys)
``keyring``          client, admin    every usable version with its key, primary, term,
                                      commit index (the SSO client's cache)
``rotate``           admin            a new version, staged or primary (``now``)
``retire``           admin            destroy a non-primary version's key
``backed_up``        admin            record the versions a backup holds
``restore``          admin            merge a backup's versions
``clients``          node             the SSO clients this node served recently
``transfer_leader``  admin            move leadership to a member
``members``          client, admin    the members as this node sees them
``member_add``       admin            add a member
``member_remove``    admin            remove a member for good
``unseal``           admin            one unseal share for a shamir node (never logged)
``seal_install``     admin            hold a new seal generation's key (seal rekey, step 1)
``reseal``           admin            re-seal every live version under it (step 2, leader)
``seal_forget``      admin            destroy an old generation's key (step 3), compact
``store_report``     client, admin    which key versions a store uses (a client: only the
                                      rows it wrote; an admin: a full count too)
``stores``           admin            the SSO stores known to the cluster
``store_forget``     admin            drop a known store
``certs``            admin            certificates registered or revoked
``cert_register``    admin            register a certificate made by ``certs issue``
``cert_revoke``      admin            revoke certificates by name or serial
``encryptions``      node             SSO clients' encryption counts this node received
===================  ===============  ======================================================

Writes sent to a follower are answered ``NOT_LEADER`` with the leader's service address.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from raftsso import events, pki
from raftsso.config import split_address
from raftsso.connection import Connection, Settings, discard_input, handshake
from raftsso.errors import (
    BadRequest,
    ConfigError,
    DecodeError,
    NotLeader,
    PermissionDenied,
    RaftssoError,
    RemoteError,
    Unavailable,
)
from raftsso.limits import (
    Gate,
    MemoryTrimmer,
    Ticket,
    accept_loop,
    is_exhaustion,
    listen,
    peer_label,
    swallow_eviction,
    wait_readable,
)
from raftsso.node import Node
from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.messages import (
    BackedUpRequest,
    CertRegisterRequest,
    CertRevokeRequest,
    CertsRequest,
    ClientsRequest,
    EncryptionsRequest,
    ErrorBody,
    KeyringRequest,
    KeyringResult,
    MemberAddRequest,
    MemberRemoveRequest,
    MembersRequest,
    Op,
    PingRequest,
    Request,
    ResealRequest,
    RestoreRequest,
    Result,
    RetireRequest,
    RotateRequest,
    SealForgetRequest,
    SealInstallRequest,
    StatusRequest,
    StoreForgetRequest,
    StoreReportRequest,
    StoresRequest,
    TransferLeaderRequest,
    UnsealRequest,
)
from raftsso.tls_guard import ReloadableTLS, RevocationGuard, Tracked
from raftsso.tlserrors import handshake_failure_reason
from raftsso.wire import (
    WireMap,
    WireValue,
    encode_frame,
    encode_ok_frame,
    error,
    ok,
    pack,
    parse_request,
)

log = logging.getLogger(__name__)

READ_ROLES = frozenset({"client", "admin"})
NODE_ROLES = frozenset({"node"})
ADMIN_ROLES = frozenset({"admin"})

Rq = TypeVar("Rq", bound=Request[Result])


# Slots: one per open connection (10,000 idle clients: 10,000 of them).
@dataclass(frozen=True, slots=True)
class Caller:
    role: str
    name: str
    peer: str


@dataclass(frozen=True)
class Route:
    """An op: who may call it, and the call (decodes the arguments, runs the handler)."""

    roles: frozenset[str]
    request: type[Request[Result]]
    call: Callable[[Caller, WireMap], Awaitable[Result]]
    # The same call for a read that never waits (the keyring fetch), run without a
    # coroutine (issue 16.3: every fetch used to create and run two more); None: await call.
    now: Callable[[Caller, WireMap], Result] | None = None


def route(roles: frozenset[str], request: type[Rq],
          handler: Callable[[Caller, Rq], Awaitable[Result]]) -> Route:
    async def call(caller: Caller, args: WireMap) -> Result:
        return await handler(caller, request.from_wire(args))
    return Route(roles, request, call)


def read_route(roles: frozenset[str], request: type[Rq],
               handler: Callable[[Caller, Rq], Result]) -> Route:
    """A route whose handler answers at once (no await, no worker thread)."""
    def now(caller: Caller, args: WireMap) -> Result:
        return handler(caller, request.from_wire(args))

    async def call(caller: Caller, args: WireMap) -> Result:
        return now(caller, args)
    return Route(roles, request, call, now)


@dataclass(frozen=True)
class Observed:
    """One answered request, as seen by observers (metrics, audit, events)."""

    caller: Caller
    op: str
    args: WireMap  # as received (decoded msgpack), for the audit's allow-listed fields
    roles: frozenset[str]  # the roles allowed to call op (empty: unknown op)
    code: ErrorCode | None  # None: success
    result: WireValue  # the answered result, as sent
    seconds: float


Observer = Callable[[Observed], None]


class Service:
    """Dispatches typed requests to a :class:`Node`; blocking work runs in worker threads."""

    def __init__(self, node: Node) -> None:
        self.node = node
        # Observers run before the answer leaves (the audit line: an answered request is
        # on record); late observers once it has been handed to the socket (event lines,
        # which wake the log thread: not worth delaying the caller for).
        self.observers: list[Observer] = []
        self.late_observers: list[Observer] = []
        self.routes: dict[str, Route] = {
            Op.PING: route(READ_ROLES, PingRequest, self._ping),
            Op.STATUS: route(READ_ROLES, StatusRequest, self._status),
            Op.KEYRING: read_route(READ_ROLES, KeyringRequest, self._keyring),
            Op.ROTATE: route(ADMIN_ROLES, RotateRequest, self._rotate),
            Op.RETIRE: route(ADMIN_ROLES, RetireRequest, self._retire),
            Op.BACKED_UP: route(ADMIN_ROLES, BackedUpRequest, self._backed_up),
            Op.RESTORE: route(ADMIN_ROLES, RestoreRequest, self._restore),
            Op.CLIENTS: route(NODE_ROLES, ClientsRequest, self._clients),
            Op.TRANSFER_LEADER: route(ADMIN_ROLES, TransferLeaderRequest,
                                      self._transfer_leader),
            Op.MEMBERS: route(READ_ROLES, MembersRequest, self._members),
            Op.MEMBER_ADD: route(ADMIN_ROLES, MemberAddRequest, self._member_add),
            Op.MEMBER_REMOVE: route(ADMIN_ROLES, MemberRemoveRequest, self._member_remove),
            # the seal
            Op.UNSEAL: route(ADMIN_ROLES, UnsealRequest, self._unseal),
            Op.SEAL_INSTALL: route(ADMIN_ROLES, SealInstallRequest, self._seal_install),
            Op.RESEAL: route(ADMIN_ROLES, ResealRequest, self._reseal),
            Op.SEAL_FORGET: route(ADMIN_ROLES, SealForgetRequest, self._seal_forget),
            Op.CERTS: route(ADMIN_ROLES, CertsRequest, self._certs),
            Op.CERT_REGISTER: route(ADMIN_ROLES, CertRegisterRequest, self._cert_register),
            Op.CERT_REVOKE: route(ADMIN_ROLES, CertRevokeRequest, self._cert_revoke),
            Op.ENCRYPTIONS: route(NODE_ROLES, EncryptionsRequest, self._encryptions),
        }
        self.routes.update({
            Op.STORE_REPORT: route(READ_ROLES, StoreReportRequest, self._store_report),
            Op.STORES: route(ADMIN_ROLES, StoresRequest, self._stores),
            Op.STORE_FORGET: route(ADMIN_ROLES, StoreForgetRequest, self._store_forget),
        })
        # The node hands out the same KeyringResult object until the keyring, its index or
        # the term changes; its wire form and packed bytes are kept here (one slot per
        # kind: whole, unchanged), so a fetch between two changes packs only the frame head.
        self._packed: dict[bool, tuple[KeyringResult, WireValue, bytes]] = {}

    async def handle(self, caller: Caller, message: WireMap) -> WireMap:
        """The answer, every observer called (late ones too)."""
        answer, later = await self.answer(caller, message)
        if later is not None:
            later()
        return answer

    async def answer(self, caller: Caller, message: WireMap
                     ) -> tuple[WireMap, Callable[[], None] | None]:
        """The answer, and what is left to do once it has been sent: call the late
        observers (None: nothing)."""
        start = time.perf_counter()
        answer = await self._handle(caller, message)
        if not self.observers and not self.late_observers:
            return answer, None
        seen = self._observed(caller, message, answer, time.perf_counter() - start)
        _notify(self.observers, seen)
        if not self.late_observers:
            return answer, None
        return answer, functools.partial(_notify, self.late_observers, seen)

    @staticmethod
    def ends_connection(answer: WireMap) -> bool:
        """A malformed request closes its connection (after the answer)."""
        body = answer.get("error")
        return isinstance(body, dict) and body.get("code") == ErrorCode.BAD_REQUEST

    def _observed(self, caller: Caller, message: WireMap, answer: WireMap,
                  seconds: float) -> Observed:
        op = message.get("op")
        op = op if isinstance(op, str) else ""
        args = message.get("args")
        body = answer.get("error")
        code = ErrorCode.from_wire(body.get("code")) if isinstance(body, dict) else None
        entry = self.routes.get(op)
        return Observed(caller, op, args if isinstance(args, dict) else {},
                        entry.roles if entry else frozenset(), code, answer.get("result"),
                        seconds)

    async def _handle(self, caller: Caller, message: WireMap) -> WireMap:
        rid = _rid(message)
        op = ""
        try:
            try:
                rid, op, args = parse_request(message)
            except DecodeError as exc:
                raise BadRequest(str(exc)) from None
            entry = self.routes.get(op)
            if entry is None:
                raise RemoteError(f"unknown operation {op!r}", code=ErrorCode.UNKNOWN_OP)
            if caller.role not in entry.roles:
                log.warning("refused %s from %s (role %r, %s)", op, caller.name, caller.role,
                            caller.peer)
                raise PermissionDenied(
                    f"a {caller.role or 'certificate without a'} role may not call {op}")
            now = entry.now
            result = now(caller, args) if now is not None else await entry.call(caller, args)
            return ok(rid, self._result_wire(result))
        except Exception as exc:
            body = self.error_body(exc, op, caller)
            return error(rid, body.code.value, body.message,
                         **{k: v for k, v in body.to_wire().items()
                            if k not in ("code", "message")})

    def _result_wire(self, result: Result) -> WireValue:
        if not isinstance(result, KeyringResult):
            return result.to_wire()
        slot = self._packed.get(result.unchanged)
        if slot is None or slot[0] is not result:
            wire = result.to_wire()
            slot = (result, wire, pack(wire))
            self._packed[result.unchanged] = slot
        return slot[1]

    def forget_answers(self) -> None:
        """Drop the packed keyring answers (in the loop's thread): a retired version's key
        must not stay in them (raftsso.node.destroy)."""
        self._packed.clear()

    def encode(self, answer: WireMap, max_frame: int) -> bytes:
        """The frame of ``answer``; a cached keyring result is not packed again."""
        result = answer.get("result")
        if result is not None and answer.get("ok") is True:
            for _result, wire, packed in self._packed.values():
                if result is wire:
                    rid = answer.get("id")
                    assert type(rid) is int  # built by _handle
                    return encode_ok_frame(rid, packed, max_frame)
        return encode_frame(answer, max_frame)

    def error_body(self, exc: Exception, op: str, caller: Caller) -> ErrorBody:
        """The one place where an exception becomes an error answer."""
        if isinstance(exc, NotLeader):
            return ErrorBody(ErrorCode.NOT_LEADER, str(exc),
                             leader=self.node.leader_service_address())
        if isinstance(exc, RemoteError):
            return ErrorBody(exc.code, str(exc), leader=exc.leader, request_id=exc.request_id)
        if isinstance(exc, RaftssoError):
            return ErrorBody(ErrorCode.FAILED, str(exc))
        # A bug must still get an answer, and the node serves on.
        log.exception("unexpected error serving %s for %s", op, caller.name, exc_info=exc)
        return ErrorBody(ErrorCode.INTERNAL,
                         f"internal error ({type(exc).__name__}); see the node log")

    # reads ----------------------------------------------------------------------------------

    async def _ping(self, caller: Caller, req: PingRequest) -> Result:
        return self.node.ping()

    async def _status(self, caller: Caller, req: StatusRequest) -> Result:
        return self.node.status()

    def _keyring(self, caller: Caller, req: KeyringRequest) -> Result:
        # A backup must hold the newest state: it asks for the leader's keyring.
        if req.require_leader:
            self._require_ready_leader()
        return self.node.keyring(req, caller.name)

    async def _clients(self, caller: Caller, req: ClientsRequest) -> Result:
        return self.node.clients_view()

    async def _members(self, caller: Caller, req: MembersRequest) -> Result:
        if req.require_leader:
            self._require_ready_leader()
        return self.node.members_view()

    # writes -----------------------------------------------------------------------------------

    async def _rotate(self, caller: Caller, req: RotateRequest) -> Result:
        self._require_leader()
        # Awaited on the loop: no worker thread waits for the commit. No log line here:
        # the rotation's event line (rotation_staged/promoted, raftsso.telemetry) says it.
        return await self.node.rotate_async(req)

    async def _retire(self, caller: Caller, req: RetireRequest) -> Result:
        self._require_leader()
        result = await asyncio.to_thread(self.node.retire, req)
        log.info("version %s retired by %s", req.version, caller.name)
        return result

    async def _backed_up(self, caller: Caller, req: BackedUpRequest) -> Result:
        self._require_leader()
        return await asyncio.to_thread(self.node.mark_backed_up, req)

    async def _restore(self, caller: Caller, req: RestoreRequest) -> Result:
        self._require_leader()
        result = await asyncio.to_thread(self.node.restore, req)
        log.info("restore by %s from a backup of cluster %s: added %s, revived %s, replaced "
                 "%s, primary %s", caller.name, req.cluster_id, result.added, result.revived,
                 result.replaced, result.primary_version)
        return result

    async def _transfer_leader(self, caller: Caller, req: TransferLeaderRequest) -> Result:
        self._require_leader()
        result = await asyncio.to_thread(self.node.transfer_leadership, req)
        log.info("leadership moved to %s by %s (term %s)", req.node_id, caller.name,
                 result.term)
        return result

    async def _member_add(self, caller: Caller, req: MemberAddRequest) -> Result:
        self._require_leader()
        return await asyncio.to_thread(self.node.member_add, req)

    async def _certs(self, caller: Caller, req: CertsRequest) -> Result:
        if req.require_leader:
            self._require_ready_leader()
        return self.node.certs_view()

    async def _encryptions(self, caller: Caller, req: EncryptionsRequest) -> Result:
        return self.node.encryption_reports()

    async def _cert_register(self, caller: Caller, req: CertRegisterRequest) -> Result:
        self._require_leader()
        result = await asyncio.to_thread(self.node.cert_register, req)
        log.info("certificate %s (serial %s, %s) registered by %s", req.name, req.serial,
                 req.role, caller.name)
        return result

    async def _cert_revoke(self, caller: Caller, req: CertRevokeRequest) -> Result:
        self._require_leader()
        result = await asyncio.to_thread(self.node.cert_revoke, req, caller.name[:64])
        log.warning("certificate(s) %s revoked by %s (%s)", ", ".join(result.serials),
                    caller.name, req.target)
        return result

    async def _member_remove(self, caller: Caller, req: MemberRemoveRequest) -> Result:
        self._require_leader()
        return await asyncio.to_thread(self.node.member_remove, req)

    # the seal ---------------------------------------------------------------------------------

    async def _unseal(self, caller: Caller, req: UnsealRequest) -> Result:
        result = await asyncio.to_thread(self.node.unseal, req)
        log.info("unseal share from %s: %s", caller.name,
                 "sealed" if result.sealed else "unsealed")
        return result

    async def _seal_install(self, caller: Caller, req: SealInstallRequest) -> Result:
        result = await asyncio.to_thread(self.node.seal_install, req)
        log.info("seal generation %d installed by %s", req.generation, caller.name)
        return result

    async def _reseal(self, caller: Caller, req: ResealRequest) -> Result:
        self._require_leader()
        result = await asyncio.to_thread(self.node.reseal, req)
        log.info("seal rekey by %s: versions %s sealed under generation %d", caller.name,
                 list(result.versions), result.generation)
        events.emit(events.SEAL_REKEYED, f"seal generation {result.generation}",
                    generation=result.generation, versions=list(result.versions))
        return result

    async def _seal_forget(self, caller: Caller, req: SealForgetRequest) -> Result:
        result = await asyncio.to_thread(self.node.seal_forget, req)
        log.info("seal generation %d destroyed by %s", req.generation, caller.name)
        return result

    # the stores known to the cluster ------------------------------------------------------

    async def _store_report(self, caller: Caller, req: StoreReportRequest) -> Result:
        self._require_leader()
        return await asyncio.to_thread(self.node.store_report, req, caller.role)

    async def _stores(self, caller: Caller, req: StoresRequest) -> Result:
        self._require_ready_leader()
        return self.node.stores_view()

    async def _store_forget(self, caller: Caller, req: StoreForgetRequest) -> Result:
        self._require_leader()
        result = await asyncio.to_thread(self.node.store_forget, req)
        log.info("store %s forgotten by %s", req.store_id, caller.name)
        return result

    def _require_ready_leader(self) -> None:
        """A read that must see every commit (a backup): the leader, past its barrier."""
        self._require_leader()
        if not self.node.ready_for_writes:
            raise Unavailable("the new leader has not applied every earlier commit yet; "
                              "retry")

    def _require_leader(self) -> None:
        if not self.node.raft.is_leader:
            raise NotLeader("this node is not the leader")


def _notify(observers: list[Observer], seen: Observed) -> None:
    for observer in observers:
        try:
            observer(seen)
        except Exception:  # observing must never break serving
            log.exception("request observer failed")


def _rid(message: WireMap) -> int:
    rid = message.get("id")
    return rid if type(rid) is int and 0 <= rid < 2**63 else 0


def _plain(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if isinstance(v, str | int | float | bytes | None)}


class Server:
    """The asyncio TLS listener of one node, within the caps of ``[limits]``.

    Each accepted connection passes the port's :class:`~raftsso.limits.Gate` (refused ones
    are closed at once). TLS starts only once the client has sent its first bytes, so a
    bare TCP connection holds a socket and no TLS state; the whole handshake, that wait
    included, must finish within ``handshake_timeout``. Then :mod:`raftsso.connection`
    serves it on loop callbacks; an answer the client does not read within
    ``send_timeout`` ends the connection.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.cfg = node.cfg
        self.limits = self.cfg.limits
        self.service = Service(node)
        # The certificate is reloaded on SIGHUP (runner); revoked certificates are refused
        # after the handshake and their open connections closed (raftsso.tls_guard).
        self.tls = ReloadableTLS(
            lambda: pki.server_context(self.cfg.ca_cert, self.cfg.cert, self.cfg.key),
            lambda: pki.describe(self.cfg.cert.read_bytes()))
        self.guard = RevocationGuard()
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[None]] = set()  # accepted, in TLS handshake
        self._live: set[Connection] = set()  # past the handshake (see raftsso.connection)
        # Called with a short reason for every connection whose TLS handshake fails.
        self.on_tls_failure: Callable[[str], None] | None = None
        self.on_connection: Callable[[], None] | None = None
        self.gate = Gate("service", self.limits.service, on_refused=self._refused)
        self.on_refused: Callable[[str], None] | None = None
        self.trimmer = MemoryTrimmer([self.gate])
        self._settings = Settings(
            self.service, max_frame=self.cfg.max_frame,
            answer_cap=max(self.cfg.max_frame, 1 << 20), idle_timeout=self.cfg.idle_timeout,
            read_timeout=self.cfg.read_timeout, send_timeout=self.limits.send_timeout,
            report=self.gate.report)

    def _refused(self, reason: str) -> None:
        if self.on_refused is not None:
            self.on_refused(reason)

    async def start(self) -> None:
        host, port = split_address(self.cfg.service_address)
        for note in self.limits.notes:
            log.warning("%s", note)
            events.emit(events.LIMITS_LOWERED, note)
        log.info("connection limits: %s", self.limits.describe())
        try:
            self._listeners = listen(host, port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.cfg.service_address}: "
                              f"{exc.strerror or exc}") from None
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            self._tasks.add(loop.create_task(
                accept_loop(listener, self.gate, self._accepted, self._connections)))
        self._tasks.add(loop.create_task(self.trimmer.run()))
        self._tasks.add(loop.create_task(self.guard.run()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for listener in self._listeners:
            listener.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 2)
        self._tasks.clear()
        for conn in list(self._live):
            conn.close(graceful=False)

    async def _accepted(self, sock: socket.socket, address: Any, ticket: Ticket) -> None:
        ticket.started = True
        peer = peer_label(address)
        if self.on_connection is not None:
            self.on_connection()
        try:
            tls = await self._handshake(sock, peer)
        except asyncio.CancelledError:
            if swallow_eviction(ticket):
                self._tls_failed("evicted", peer, "dropped to make room")
                return
            raise
        if tls is None:
            return
        self.gate.settled(ticket)
        peercert = tls.getpeercert()
        role, name = pki.peer_identity(peercert)
        tracked: Tracked | None = None

        def closed(conn: Connection) -> None:
            self._live.discard(conn)
            self.guard.release(tracked)
            self.gate.release(ticket)

        try:
            conn = Connection(asyncio.get_running_loop(), tls, Caller(role, name, peer),
                              self._settings, closed)
        except BaseException:
            tls.close()
            raise
        # Before the loop runs the connection's first read: a revoked certificate gets no
        # request answered.
        tracked = self.guard.admit(pki.peer_serial(peercert), name, role, peer,
                                   lambda: conn.close(graceful=False))
        if tracked is None:
            conn.close(graceful=False)
            return
        # The connection runs on loop callbacks from here: this task ends (an idle
        # connection holds no task or coroutine) and the connection releases the ticket.
        ticket.handed_off = True
        self._live.add(conn)

    async def _handshake(self, sock: socket.socket, peer: str) -> ssl.SSLSocket | None:
        """TLS on an accepted socket, or None (the socket closed, the failure counted)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.handshake_timeout
        tls: ssl.SSLSocket | None = None
        try:
            # No TLS state until the client speaks: a silent connection costs a socket.
            if not await wait_readable(sock, self.limits.handshake_timeout):
                raise TimeoutError("no TLS ClientHello in time")
            # Answers go out as soon as written (asyncio's transports did this for us):
            # with Nagle, an answer after the session tickets waited for a delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.tls.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False)
            await handshake(loop, tls, max(0.1, deadline - loop.time()))
            return tls
        except asyncio.CancelledError:
            (tls or sock).close()
            raise
        except Exception as exc:  # every failed handshake, whatever the cause, is counted
            discard_input(tls or sock)  # the rest of what a non-TLS client sent
            (tls or sock).close()
            if is_exhaustion(exc):
                self.gate.report.exhausted("starting TLS", exc)
            self._tls_failed(handshake_failure_reason(exc), peer, exc)
            return None

    def _tls_failed(self, reason: str, peer: str, detail: object) -> None:
        log.debug("TLS handshake with %s failed (%s): %s", peer, reason, detail)
        if self.on_tls_failure is not None:
            self.on_tls_failure(reason)
