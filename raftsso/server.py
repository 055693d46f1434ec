"""The node's TLS service: mutual TLS, roles from certificates, versioned msgpack frames.

Each connection carries any number of request/answer frames (see :mod:`raftsso.wire`).
A frame over the size limit, a malformed frame, or a request of the wrong shape is
answered with an error frame and the connection is closed; the node itself is unaffected.
A connection idle for ``idle_timeout`` or stalled mid-frame for ``read_timeout`` is closed.

Operations and the roles allowed to call them:

============  ==================  ==================================================
op            roles               what
============  ==================  ==================================================
``ping``      client, admin       liveness
``status``    client, admin       this node's Raft view and the keyring (no keys)
``keyring``   client, admin       every usable version with its key, primary, term,
                                  commit index (the SSO client's cache)
``rotate``    admin               new version: ``{"request_id": bytes16, "now": bool}``
============  ==================  ==================================================

Writes sent to a follower are answered ``NOT_LEADER`` with the leader's service address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from raftsso import events, pki
from raftsso.config import split_address
from raftsso.errors import (
    ConfigError,
    DecodeError,
    FrameTooLarge,
    NotLeader,
    RaftssoError,
    RemoteError,
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
from raftsso.tlserrors import handshake_failure_reason
from raftsso.wire import decode_body, encode_frame, error, frame_length, ok, parse_request

log = logging.getLogger(__name__)

READ_ROLES = frozenset({"client", "admin"})
NODE_ROLES = frozenset({"node"})
ADMIN_ROLES = frozenset({"admin"})


@dataclass(frozen=True)
class Caller:
    role: str
    name: str
    peer: str


Handler = Callable[[Caller, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Observed:
    """One answered request, as seen by observers (metrics, audit, events)."""

    caller: Caller
    op: str
    args: dict[str, Any]
    roles: frozenset[str]  # the roles allowed to call op (empty: unknown op)
    code: str | None  # None: success
    result: Any
    seconds: float


Observer = Callable[[Observed], None]


class Service:
    """Dispatches requests to a :class:`Node`; blocking work runs in worker threads."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.observers: list[Observer] = []
        self._ops: dict[str, tuple[frozenset[str], Handler]] = {
            "ping": (READ_ROLES, self._ping),
            "status": (READ_ROLES, self._status),
            "keyring": (READ_ROLES, self._keyring),
            "rotate": (ADMIN_ROLES, self._rotate),
            "retire": (ADMIN_ROLES, self._retire),
            "backed_up": (ADMIN_ROLES, self._backed_up),
            "restore": (ADMIN_ROLES, self._restore),
            "clients": (NODE_ROLES, self._clients),
            "transfer_leader": (ADMIN_ROLES, self._transfer_leader),
            "members": (READ_ROLES, self._members),
            "member_add": (ADMIN_ROLES, self._member_add),
            "member_remove": (ADMIN_ROLES, self._member_remove),
        }

    async def handle(self, caller: Caller, message: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        answer = await self._handle(caller, message)
        if self.observers:
            self._observe(caller, message, answer, time.perf_counter() - start)
        return answer

    def _observe(self, caller: Caller, message: Any, answer: dict[str, Any],
                 seconds: float) -> None:
        op = message.get("op") if isinstance(message, dict) else None
        op = op if isinstance(op, str) else ""
        args = message.get("args") if isinstance(message, dict) else None
        code = None if answer.get("ok") else str(answer.get("error", {}).get("code"))
        entry = self._ops.get(op)
        seen = Observed(caller, op, args if isinstance(args, dict) else {},
                        entry[0] if entry else frozenset(), code, answer.get("result"),
                        seconds)
        for observer in self.observers:
            try:
                observer(seen)
            except Exception:  # observing must never break serving
                log.exception("request observer failed")

    async def _handle(self, caller: Caller, message: dict[str, Any]) -> dict[str, Any]:
        try:
            rid, op, args = parse_request(message)
        except DecodeError as exc:
            return error(_rid(message), "BAD_REQUEST", str(exc))
        entry = self._ops.get(op)
        if entry is None:
            return error(rid, "UNKNOWN_OP", f"unknown operation {op!r}")
        roles, handler = entry
        if caller.role not in roles:
            log.warning("refused %s from %s (role %r) at %s", op, caller.name, caller.role,
                        caller.peer)
            return error(rid, "FORBIDDEN",
                         f"a {caller.role or 'certificate without a'} role may not call {op}")
        try:
            return ok(rid, await handler(caller, args))
        except NotLeader as exc:
            leader = self.node.leader_service_address()
            return error(rid, "NOT_LEADER", str(exc), leader=leader)
        except RemoteError as exc:
            return error(rid, exc.code, str(exc), **_plain(exc.details))
        except RaftssoError as exc:
            return error(rid, "FAILED", str(exc))
        except Exception as exc:  # a bug must still get an answer, and the node serves on
            log.exception("unexpected error serving %s for %s", op, caller.name)
            return error(rid, "INTERNAL", f"internal error ({type(exc).__name__}); see the "
                                          "node log")

    async def _ping(self, caller: Caller, args: dict[str, Any]) -> Any:
        return {"node_id": self.node.cfg.node_id}

    async def _status(self, caller: Caller, args: dict[str, Any]) -> Any:
        return self.node.status()

    async def _keyring(self, caller: Caller, args: dict[str, Any]) -> Any:
        # A backup must hold the newest state: it asks for the leader's keyring.
        if args.get("require_leader") is True:
            self._require_ready_leader()
        client_id = args.get("client_id")
        if not (isinstance(client_id, str) and 0 < len(client_id) <= 64):
            client_id = None
        return self.node.keyring(client_id=client_id)

    async def _clients(self, caller: Caller, args: dict[str, Any]) -> Any:
        return self.node.client_view()

    async def _rotate(self, caller: Caller, args: dict[str, Any]) -> Any:
        request_id = args.get("request_id")
        now = args.get("now", False)
        expect = args.get("expect_primary")
        if not isinstance(request_id, bytes) or not isinstance(now, bool) or not (
                expect is None or _is_version(expect)):
            raise RemoteError("rotate needs request_id (16 bytes), now (bool) and optionally "
                              "expect_primary (int)", code="BAD_REQUEST")
        self._require_leader()
        result = await asyncio.to_thread(self.node.rotate, request_id, now, expect)
        log.info("rotation by %s: version %s (%s), primary %s", caller.name,
                 result.get("version"), result.get("state"), result.get("primary_version"))
        return result

    async def _retire(self, caller: Caller, args: dict[str, Any]) -> Any:
        request_id = _request_id(args)
        version, force = args.get("version"), args.get("force", False)
        if not isinstance(version, int) or not _is_version(version) or \
                not isinstance(force, bool):
            raise RemoteError("retire needs version (an integer from 1 to 2**32 - 1) and "
                              "optionally force (bool)", code="BAD_REQUEST")
        self._require_leader()
        result = await asyncio.to_thread(self.node.retire, request_id, version, force)
        log.info("version %s retired by %s", version, caller.name)
        return result

    async def _backed_up(self, caller: Caller, args: dict[str, Any]) -> Any:
        request_id = _request_id(args)
        raw = args.get("fingerprints")
        if not isinstance(raw, dict) or not all(
                isinstance(k, str) and k.isascii() and k.isdigit() and len(k) <= 10
            and _is_version(int(k)) and isinstance(v, str) for k, v in raw.items()):
            raise RemoteError("backed_up needs fingerprints: {version: fingerprint}",
                              code="BAD_REQUEST")
        self._require_leader()
        return await asyncio.to_thread(self.node.mark_backed_up, request_id,
                                       {int(k): v for k, v in raw.items()})

    async def _restore(self, caller: Caller, args: dict[str, Any]) -> Any:
        request_id = _request_id(args)
        cluster_id, versions = args.get("cluster_id"), args.get("versions")
        primary, force = args.get("primary"), args.get("force", False)
        if not isinstance(cluster_id, str) or not isinstance(versions, list) or \
                not all(isinstance(v, dict) for v in versions) or not versions or \
                not (primary is None or _is_version(primary)) or not isinstance(force, bool):
            raise RemoteError("restore needs cluster_id, versions, primary and force",
                              code="BAD_REQUEST")
        ids = [v.get("id") for v in versions]
        if not all(_is_version(i) for i in ids) or len(set(ids)) != len(ids) or \
                (primary is not None and primary not in ids) or not all(
                    isinstance(v.get("created"), int | float) and not isinstance(
                        v.get("created"), bool) and math.isfinite(v["created"])
                    and v["created"] >= 0 for v in versions):
            raise RemoteError("restore versions need unique ids (1 to 2**32 - 1), a finite "
                              "creation time, and the primary among them", code="BAD_REQUEST")
        self._require_leader()
        result = await asyncio.to_thread(
            lambda: self.node.restore(request_id, cluster_id=cluster_id, primary=primary,
                                      versions=versions, force=force))
        log.info("restore by %s from a backup of cluster %s: %s", caller.name, cluster_id,
                 {k: result.get(k) for k in ("added", "revived", "replaced", "primary_version")})
        return result

    async def _transfer_leader(self, caller: Caller, args: dict[str, Any]) -> Any:
        target = args.get("node_id")
        if not isinstance(target, str) or not target:
            raise RemoteError("transfer_leader needs node_id", code="BAD_REQUEST")
        self._require_leader()
        result = await asyncio.to_thread(self.node.transfer_leadership, target)
        log.info("leadership moved to %s by %s (term %s)", target, caller.name,
                 result.get("term"))
        return result

    async def _members(self, caller: Caller, args: dict[str, Any]) -> Any:
        if args.get("require_leader") is True:
            self._require_ready_leader()
        return {"leader": self.node.raft.leader_id, "node_id": self.node.cfg.node_id,
                "members": self.node.member_views()}

    async def _member_add(self, caller: Caller, args: dict[str, Any]) -> Any:
        request_id = _request_id(args)
        node_id, raft_address = args.get("node_id"), args.get("raft_address")
        service_address = args.get("service_address")
        if not all(isinstance(x, str) and x for x in (node_id, raft_address, service_address)):
            raise RemoteError("member_add needs node_id, raft_address and service_address",
                              code="BAD_REQUEST")
        assert isinstance(node_id, str) and isinstance(raft_address, str)
        assert isinstance(service_address, str)
        try:
            split_address(raft_address)
            split_address(service_address)
        except RaftssoError as exc:
            raise RemoteError(str(exc), code="BAD_REQUEST") from None
        self._require_leader()
        return await asyncio.to_thread(
            lambda: self.node.change_member(request_id, node_id, add=True,
                                            raft_address=raft_address,
                                            service_address=service_address))

    async def _member_remove(self, caller: Caller, args: dict[str, Any]) -> Any:
        request_id = _request_id(args)
        node_id = args.get("node_id")
        if not isinstance(node_id, str) or not node_id:
            raise RemoteError("member_remove needs node_id", code="BAD_REQUEST")
        self._require_leader()
        return await asyncio.to_thread(
            lambda: self.node.change_member(request_id, node_id, add=False))

    def _require_ready_leader(self) -> None:
        """A read that must see every commit (a backup): the leader, past its barrier."""
        self._require_leader()
        if not self.node.ready_for_writes:
            raise RemoteError("the new leader has not applied every earlier commit yet; "
                              "retry", code="UNAVAILABLE")

    def _require_leader(self) -> None:
        if not self.node.raft.is_leader:
            raise NotLeader("this node is not the leader")


def _is_version(value: Any) -> bool:
    """A version id as the state machine accepts it (so nothing malformed is replicated)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**32


def _request_id(args: dict[str, Any]) -> bytes:
    request_id = args.get("request_id")
    if not isinstance(request_id, bytes) or len(request_id) != 16:
        raise RemoteError("request_id must be 16 bytes", code="BAD_REQUEST")
    return request_id


def _rid(message: Any) -> int:
    rid = message.get("id") if isinstance(message, dict) else None
    return rid if isinstance(rid, int) and not isinstance(rid, bool) and rid >= 0 else 0


def _plain(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if isinstance(v, str | int | float | bytes | None)}


class Server:
    """The asyncio TLS listener of one node, within the caps of ``[limits]``.

    Each accepted connection passes the port's :class:`~raftsso.limits.Gate` (refused ones
    are closed at once). TLS starts only once the client has sent its first bytes, so a
    bare TCP connection holds a socket and no TLS state; the whole handshake, that wait
    included, must finish within ``handshake_timeout``. An answer the client does not
    read within ``send_timeout`` ends the connection.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.cfg = node.cfg
        self.limits = self.cfg.limits
        self.service = Service(node)
        self._ctx = pki.server_context(self.cfg.ca_cert, self.cfg.cert, self.cfg.key)
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[None]] = set()
        # Called with a short reason for every connection whose TLS handshake fails.
        self.on_tls_failure: Callable[[str], None] | None = None
        self.on_connection: Callable[[], None] | None = None
        self.gate = Gate("service", self.limits.service, on_refused=self._refused)
        self.on_refused: Callable[[str], None] | None = None
        self.trimmer = MemoryTrimmer([self.gate])

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

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for listener in self._listeners:
            listener.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 2)
        self._tasks.clear()

    async def _accepted(self, sock: socket.socket, address: Any, ticket: Ticket) -> None:
        ticket.started = True
        peer = peer_label(address)
        if self.on_connection is not None:
            self.on_connection()
        try:
            streams = await self._handshake(sock, peer)
        except asyncio.CancelledError:
            if swallow_eviction(ticket):
                self._tls_failed("evicted", peer, "dropped to make room")
                return
            raise
        if streams is None:
            return
        self.gate.settled(ticket)
        await self._serve(*streams, peer)

    async def _handshake(self, sock: socket.socket, peer: str
                         ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """TLS on an accepted socket, or None (the socket closed, the failure counted)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.handshake_timeout
        handed = False  # once asyncio's transport owns the socket, only it may close it
        try:
            # No TLS state until the client speaks: a silent connection costs a socket.
            if not await wait_readable(sock, self.limits.handshake_timeout):
                raise TimeoutError("no TLS ClientHello in time")
            reader = asyncio.StreamReader(limit=self.cfg.max_frame + 16)
            protocol = asyncio.StreamReaderProtocol(reader)
            handed = True
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self._ctx,
                ssl_handshake_timeout=max(0.1, deadline - loop.time()))
            return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
        except asyncio.CancelledError:
            if not handed:
                sock.close()
            raise
        except Exception as exc:  # every failed handshake, whatever the cause, is counted
            if not handed:
                sock.close()
            if is_exhaustion(exc):
                self.gate.report.exhausted("starting TLS", exc)
            self._tls_failed(handshake_failure_reason(exc), peer, exc)
            return None

    def _tls_failed(self, reason: str, peer: str, detail: object) -> None:
        log.debug("TLS handshake with %s failed (%s): %s", peer, reason, detail)
        if self.on_tls_failure is not None:
            self.on_tls_failure(reason)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: str) -> None:
        sslobj = writer.get_extra_info("ssl_object")
        role, name = pki.peer_identity(sslobj.getpeercert() if sslobj else None)
        caller = Caller(role, name, peer)
        try:
            while True:
                try:
                    header = await asyncio.wait_for(reader.readexactly(4),
                                                    self.cfg.idle_timeout)
                except (asyncio.IncompleteReadError, TimeoutError):
                    return
                try:
                    length = frame_length(header, self.cfg.max_frame)
                except FrameTooLarge as exc:
                    await self._send(writer, error(0, "FRAME_TOO_LARGE", str(exc)))
                    return
                except DecodeError as exc:
                    await self._send(writer, error(0, "BAD_FRAME", str(exc)))
                    return
                try:
                    body = await asyncio.wait_for(reader.readexactly(length),
                                                  self.cfg.read_timeout)
                except (asyncio.IncompleteReadError, TimeoutError):
                    return
                try:
                    message = decode_body(body)
                except DecodeError as exc:
                    await self._send(writer, error(0, "BAD_FRAME", str(exc)))
                    return
                answer = await self.service.handle(caller, message)
                await self._send(writer, answer)
                if not answer["ok"] and answer["error"]["code"] == "BAD_REQUEST":
                    return
        except (ConnectionError, ssl.SSLError, OSError, MemoryError) as exc:
            if is_exhaustion(exc):
                self.gate.report.exhausted("serving a connection", exc)
            log.debug("connection from %s ended: %s", peer, exc)
        except asyncio.CancelledError:
            # Shutdown: end quietly (a cancelled handler makes asyncio's stream callback
            # log a traceback for every open connection).
            writer.transport.abort()
            return
        except Exception:
            log.exception("unexpected error serving %s", peer)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _send(self, writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        writer.write(encode_frame(message, max_frame=max(self.cfg.max_frame, 1 << 20)))
        try:
            await asyncio.wait_for(writer.drain(), self.limits.send_timeout)
        except TimeoutError:
            # A client that does not read its answers would otherwise hold the connection
            # (and the unsent answer) for ever: no read timeout runs while we wait here.
            writer.transport.abort()
            raise ConnectionAbortedError(
                f"the client read nothing for {self.limits.send_timeout:g} s") from None
