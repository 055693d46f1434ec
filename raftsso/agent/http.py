"""A small HTTP/1.1 server for JSON on a Unix socket: httptools (llhttp) on asyncio.

llhttp, Node.js's parser, does the byte-level parsing (request line, headers, chunked
bodies, pipelining, the ambiguities that smuggling attacks use); this module adds what a
secret-holding local service needs around it:

* every caller is identified once, at ``accept()``, by the kernel
  (:func:`raftsso.agent.peer.identify`); a connection without credentials is closed;
* limits (:class:`raftsso.agent.config.Limits`): request line + headers (431), body (413,
  refused from ``Content-Length`` before a byte of body is read), connections in all and
  per caller uid (503 BUSY),
  requests read ahead on one connection (reading pauses), a whole-request deadline from
  its first byte to its last (408), an idle keep-alive timeout, and a send deadline for a
  caller that stops reading its answers (the connection is aborted); the deadlines are
  checked by one sweep a few times per timeout, so they fire up to a quarter late;
* answers leave in request order (pipelining), each with ``Content-Length``,
  ``Cache-Control: no-store`` (answers can hold secrets), and ``Connection: close`` when
  the connection ends with it;
* any malformed input is one JSON error answer, then the connection is closed: the
  parser's state after an error is not trusted for a next request.

Handlers return a :class:`Response`, or an awaitable of one for work that must leave the
event loop (store calls); the fast paths (encrypt, decrypt, health) answer inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httptools

from raftsso.agent.config import Limits
from raftsso.agent.errors import REASONS, ApiError
from raftsso.agent.peer import Caller, PeerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # as sent: path (percent-encoded) and query
    headers: dict[str, str]  # names lower-cased; values latin-1
    body: bytes
    caller: Caller
    keep_alive: bool = True


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False


Handler = Callable[[Request], "Response | Awaitable[Response]"]


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # built once, not per answer


def json_response(status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, _ENCODER.encode(obj).encode(), headers)


def error_response(err: ApiError, close: bool = False,
                   headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps({"error": err.code, "message": err.message},
                      separators=(",", ":")).encode()
    return Response(err.status, body, headers, close)


_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode()
                 for code, reason in REASONS.items()}
_COMMON = b"Content-Type: application/json\r\nCache-Control: no-store\r\n"


def render(resp: Response, *, close: bool, head: bool = False) -> bytes:
    parts = [_STATUS_LINES.get(resp.status) or f"HTTP/1.1 {resp.status} -\r\n".encode(),
             _COMMON, b"Content-Length: %d\r\n" % len(resp.body)]
    for name, value in resp.headers:
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head:
        parts.append(resp.body)
    return b"".join(parts)


class HttpServer:
    """Serves ``handler`` on an already bound, listening Unix socket."""

    def __init__(self, handler: Handler, limits: Limits,
                 identify: Callable[[Any], Caller]) -> None:
        self.handler = handler
        self.limits = limits
        self.identify = identify
        self.connections: set[_Connection] = set()
        self.per_uid: dict[int, int] = {}  # open connections of each caller uid
        self.refused_busy = 0
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Connection(self), sock=sock)
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        """Check every connection's deadlines a few times per timeout."""
        period = max(0.01, min(1.0, self.limits.request_timeout / 4,
                               self.limits.idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self.connections):
                try:
                    conn.check_deadlines(now)
                except Exception:  # one connection's trouble must not stop the sweep
                    log.exception("deadline check failed")
                    conn.abort()

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let answers in progress finish (up to ``grace``), then close."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._caller: Caller | None = None
        self._queue: deque[Request | Response] = deque()
        self._busy = False
        self._closing = False  # read no more; close once the queue is answered
        self._closed = False
        self._reading_paused = False
        self._write_paused = False
        self._task: asyncio.Task[None] | None = None
        # Deadlines are checked by the server's sweep (HttpServer._sweep), not by a timer
        # per request: two timer operations per request cost more than the AES-GCM.
        self._activity = time.monotonic()  # last request completed or answer sent
        self._message_start = 0.0  # first byte of the request being read
        self._paused_at: float | None = None  # when the caller stopped reading answers
        self._in_message = False
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_len = 0
        self._method = ""
        self._keep_alive = True
        self._upgrade = False

    # connection lifecycle -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        server = self._server
        server.connections.add(self)
        if len(server.connections) > self._limits.max_connections:
            self._busy_refusal("the agent has too many open connections; retry later")
            return
        try:
            self._caller = server.identify(transport.get_extra_info("socket"))
        except Exception as exc:  # PeerError, or a bug: never serve an unknown caller
            if not isinstance(exc, PeerError):
                log.exception("cannot identify a caller")
            log.warning("closing a connection without peer credentials: %s", exc)
            self._closing = True
            transport.abort()
            return
        uid = self._caller.uid
        server.per_uid[uid] = server.per_uid.get(uid, 0) + 1
        if server.per_uid[uid] > self._limits.max_connections_per_uid:
            self._busy_refusal(f"uid {uid} has {self._limits.max_connections_per_uid} "
                               "connections open to the agent already; reuse them")
            return
        self._activity = time.monotonic()

    def _busy_refusal(self, message: str) -> None:
        self._server.refused_busy += 1
        self._closing = True
        assert self._transport is not None
        self._transport.write(render(error_response(ApiError("BUSY", message)), close=True))
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._closing = True
        server = self._server
        if self in server.connections:
            server.connections.discard(self)
            if self._caller is not None:
                left = server.per_uid.get(self._caller.uid, 1) - 1
                if left > 0:
                    server.per_uid[self._caller.uid] = left
                else:
                    server.per_uid.pop(self._caller.uid, None)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._queue.clear()

    def eof_received(self) -> bool:
        """The caller shut down its sending side: answer what it sent, then close."""
        self._closing = True
        if self._in_message:
            self._fail(ApiError("BAD_REQUEST", "the connection ended in the middle of a "
                                "request"))
            self._pump()
        return self._busy or bool(self._queue)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._paused_at = time.monotonic()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._paused_at = None
        self._pump()

    def shutdown(self) -> None:
        """Server stopping: answer what was read, read nothing more."""
        self._closing = True
        if not self._busy and not self._queue and not self._in_message:
            self._close()

    def abort(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.abort()

    def _close(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()

    # timers ----------------------------------------------------------------------------------

    def check_deadlines(self, now: float) -> None:
        """Called by the server's sweep: the request, idle and send deadlines."""
        if self._closed:
            return
        limits = self._limits
        if self._paused_at is not None and now - self._paused_at >= limits.request_timeout:
            self.abort()  # the caller does not read its answers
        elif self._in_message and not self._closing:
            if now - self._message_start >= limits.request_timeout:
                self._fail(ApiError("REQUEST_TIMEOUT", "the request did not arrive whole "
                                    f"within {limits.request_timeout:g} s"))
                self._pump()
        elif (not self._busy and not self._queue and not self._in_message
              and now - self._activity >= limits.idle_timeout):
            self._close()

    # parsing ---------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._stop_reading()  # the upgrade request itself is answered with an error
        except httptools.HttpParserCallbackError as exc:
            ctx = exc.__context__
            if isinstance(ctx, ApiError):
                self._fail(ctx)
            else:
                log.error("bug in the HTTP callbacks: %r", ctx)
                self._fail(ApiError("BAD_REQUEST", "malformed HTTP request"))
        except httptools.HttpParserError as exc:
            self._fail(ApiError("BAD_REQUEST", f"malformed HTTP request: {exc}"))
        self._pump()

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self._limits.max_header:
            raise ApiError("HEADERS_TOO_LARGE", "the request line and headers are larger "
                           f"than {self._limits.max_header} bytes")

    def on_message_begin(self) -> None:
        self._in_message = True
        self._reset_message()
        self._message_start = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        # llhttp has checked the digits and refused a second, different value.
        if key == "content-length" and int(text) > self._limits.max_body:
            raise ApiError("TOO_LARGE", f"the request body is larger than "
                               f"{self._limits.max_body} bytes")
        if key in self._headers:
            text = self._headers[key] + ", " + text
        self._headers[key] = text

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._method = parser.get_method().decode("latin-1")
        self._keep_alive = bool(parser.should_keep_alive())
        self._upgrade = bool(parser.should_upgrade())
        if (self._headers.get("expect", "").lower() == "100-continue" and not self._busy
                and not self._queue and self._transport is not None):
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self._limits.max_body:
            raise ApiError("TOO_LARGE", f"the request body is larger than "
                           f"{self._limits.max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        assert self._caller is not None
        if self._upgrade:
            self._fail(ApiError("BAD_REQUEST", "protocol upgrades and CONNECT are not "
                                "supported"))
            return
        self._queue.append(Request(
            method=self._method, target=self._url.decode("latin-1"),
            headers=self._headers, body=b"".join(self._body), caller=self._caller,
            keep_alive=self._keep_alive))
        if not self._keep_alive:
            self._stop_reading()
        elif len(self._queue) >= self._limits.max_pipeline and not self._reading_paused:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()

    def _stop_reading(self) -> None:
        self._closing = True
        self._in_message = False
        if self._transport is not None and not self._closed:
            with contextlib.suppress(RuntimeError):
                self._transport.pause_reading()

    def _fail(self, err: ApiError) -> None:
        """Answer ``err`` after what is queued, then close (nothing more is read)."""
        if self._closing and self._queue and isinstance(self._queue[-1], Response):
            return  # already failing
        self._stop_reading()
        self._queue.append(error_response(err, close=True))

    # answering -------------------------------------------------------------------------------

    def _pump(self) -> None:
        while self._queue and not self._busy and not self._write_paused and not self._closed:
            item = self._queue.popleft()
            if isinstance(item, Response):
                self._write(item, head=False, close=True)
                return
            try:
                result = self._server.handler(item)
            except ApiError as err:
                result = error_response(err)
            except Exception:
                log.exception("unexpected error answering %s %s", item.method,
                              item.target[:200])
                result = error_response(ApiError("INTERNAL", "internal error; see the "
                                                 "agent's log"))
            if inspect.isawaitable(result):
                self._busy = True
                self._task = asyncio.ensure_future(self._finish(item, result))
                return
            assert isinstance(result, Response)
            self._answer(item, result)
        self._after_pump()

    def _after_pump(self) -> None:
        if self._closed or self._busy or self._queue:
            return
        if self._reading_paused and not self._closing and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        if self._closing and not self._in_message:
            self._close()
        else:
            self._activity = time.monotonic()

    async def _finish(self, request: Request, pending: Awaitable[Response]) -> None:
        try:
            response = await pending
        except ApiError as err:
            response = error_response(err)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error answering %s %s", request.method,
                          request.target[:200])
            response = error_response(ApiError("INTERNAL", "internal error; see the agent's "
                                               "log"))
        self._busy = False
        self._task = None
        if self._closed:
            return
        self._answer(request, response)
        self._pump()

    def _answer(self, request: Request, response: Response) -> None:
        last = (not request.keep_alive or response.close
                or (self._closing and not self._queue and not self._in_message))
        head = request.method == "HEAD"
        self._write(response, head=head, close=last or head)

    def _write(self, response: Response, *, head: bool, close: bool) -> None:
        if self._transport is None or self._closed:
            return
        self._transport.write(render(response, close=close, head=head))
        if close:
            self._queue.clear()
            self._closing = True
            self._close()
