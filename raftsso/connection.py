"""One TLS connection of the node's service port, served by event loop callbacks.

The service used to run a coroutine per connection over asyncio's streams
(``StreamReader``/``StreamWriter`` over asyncio's TLS transport). An idle connection then
held a StreamReader, a StreamWriter, asyncio's TLS protocol with its 256 KiB read buffer and
two memory BIOs, a coroutine frame parked in ``readexactly`` and a timer: 10,000 idle
clients took a node from 45 to 751 MiB (72 KiB each). Here the TLS socket itself is
non-blocking and read by a callback into *one* buffer shared by every connection of the
loop; a connection holds only its socket, a few fields and the bytes of a frame still
arriving. Every answer is written straight to the socket (one ``SSL_write``), with no
drain unless the socket's buffer is full.

Time limits, one timer per connection, re-armed only when it fires (a request just moves a
deadline): ``idle_timeout`` while waiting for a request, ``read_timeout`` for the body of
a frame once its length arrived, ``send_timeout`` for an answer the client does not read.
While a request is being answered, or its answer is not yet sent, nothing more is read
(so a client that never reads cannot make the node buffer answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import types
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raftsso.errors import DecodeError, FrameTooLarge
from raftsso.limits import is_exhaustion
from raftsso.wire import WireMap, decode_body, error, frame_length

if TYPE_CHECKING:
    from raftsso.limits import _Reporter
    from raftsso.server import Caller, Service

log = logging.getLogger(__name__)

_HEADER = 4
# One read buffer for every connection of the loop (callbacks never run concurrently);
# larger than a TLS record (16 KiB), so one read takes a whole record.
_READ_SIZE = 64 * 1024


@dataclass
class Settings:
    """What every connection of one service port shares."""

    service: Service
    max_frame: int
    answer_cap: int
    idle_timeout: float
    read_timeout: float
    send_timeout: float
    report: _Reporter

    def __post_init__(self) -> None:
        self.buffer = bytearray(_READ_SIZE)
        self.view = memoryview(self.buffer)


class Connection:
    """A served connection after its TLS handshake; ``on_close(self)`` runs once, when it
    closes (the server then releases its gate ticket)."""

    __slots__ = ("_busy", "_deadline", "_ending", "_fd", "_in", "_loop", "_need", "_on_close",
                 "_out", "_peer", "_reading", "_s", "_sock", "_task", "_timer", "_when",
                 "caller", "closed")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket, caller: Caller,
                 settings: Settings, on_close: Callable[[Connection], None]) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._s = settings
        self.caller = caller
        self._peer = caller.peer
        self.closed = False
        self._on_close = on_close
        self._in: bytearray | None = None  # bytes of an unfinished frame (rarely any)
        self._need = 0  # the body length awaited after a header; 0: awaiting a header
        self._out: bytes | None = None  # an answer the socket did not take yet
        self._busy = False  # a request is being answered: read nothing more meanwhile
        self._ending = False  # close once the last answer is sent
        self._task: asyncio.Task[Answered] | None = None
        self._reading = False
        self._deadline = loop.time() + settings.idle_timeout
        self._when = self._deadline
        self._timer: asyncio.TimerHandle | None = loop.call_at(self._when, self._expired)
        self._resume()

    # -- reading ----------------------------------------------------------------------

    def _resume(self) -> None:
        if not self._reading:
            self._reading = True
            self._loop.add_reader(self._fd, self._readable)

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _readable(self) -> None:
        if self._busy:
            # A request is being answered and the client sent more: stop watching the
            # socket until the answer is out. (Not before: a client that waits for its
            # answer sends nothing, and unwatching then rewatching costs two epoll_ctl.)
            self._pause()
            return
        settings = self._s
        sock = self._sock
        try:
            while True:
                n = sock.recv_into(settings.buffer)
                if not n:  # the client closed
                    self.close(graceful=False)
                    return
                self._received(settings.view[:n])
                # More decrypted bytes of the record may wait inside OpenSSL, where the
                # event loop cannot see them; bytes still in the kernel wake us again.
                if self._busy or self.closed or not sock.pending():
                    return
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except Exception as exc:
            self._failed(exc)

    def _received(self, data: memoryview) -> None:
        """Take bytes read; answer every whole frame (until one is still being answered)."""
        buf = self._in
        if buf is not None:
            buf += data
            data = memoryview(buf)
            self._in = None
        pos = 0
        end = len(data)
        while not self._busy and not self.closed:
            if not self._need:
                if end - pos < _HEADER:
                    break
                try:
                    self._need = frame_length(bytes(data[pos:pos + _HEADER]),
                                              self._s.max_frame)
                except FrameTooLarge as exc:
                    self._refuse(error(0, "FRAME_TOO_LARGE", str(exc)))
                    return
                except DecodeError as exc:
                    self._refuse(error(0, "BAD_FRAME", str(exc)))
                    return
                pos += _HEADER
                if end - pos < self._need:  # the body must follow within read_timeout
                    self._set_deadline(self._s.read_timeout)
                continue
            if end - pos < self._need:
                break
            body = bytes(data[pos:pos + self._need])
            pos += self._need
            self._need = 0
            self._request(body)
        if pos < end:
            rest = bytearray(data[pos:])
            self._in = rest
        if buf is not None:
            data.release()

    def _request(self, body: bytes) -> None:
        try:
            message = decode_body(body)
        except DecodeError as exc:
            self._refuse(error(0, "BAD_FRAME", str(exc)))
            return
        coro = self._s.service.answer(self.caller, message)
        # Reads finish without awaiting anything: run the coroutine here, with no task;
        # only a request that awaits (a write) gets one. So a handler must not need a
        # current task before its first await (no asyncio.timeout there).
        try:
            awaited = coro.send(None)
        except StopIteration as stop:
            self._answer(*stop.value)
            return
        self._busy = True  # read nothing more meanwhile (see _readable)
        task = self._loop.create_task(_finish(coro, awaited))
        self._task = task
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[Answered]) -> None:
        self._task = None
        if task.cancelled() or self.closed:
            return
        exc = task.exception()
        if exc is not None:
            self._failed(exc)
            return
        self._busy = False
        self._answer(*task.result())
        self._continue()

    def _continue(self) -> None:
        """After an answer went out: the frames already read, then the socket again."""
        if self._busy or self.closed:
            return
        if self._in is not None and (self._need or len(self._in) >= _HEADER):
            data, self._in = self._in, None
            self._received(memoryview(data))
            if self._busy or self.closed:
                return
        self._resume()
        if self._sock.pending():
            self._readable()

    # -- answering ----------------------------------------------------------------------

    def _answer(self, answer: WireMap, later: Callable[[], None] | None = None) -> None:
        """Send ``answer``; then ``later`` (the service's late observers)."""
        service = self._s.service
        try:
            data = service.encode(answer, self._s.answer_cap)
        except Exception as exc:
            self._failed(exc)
            return
        self._write(data)
        if later is not None:
            later()
        if service.ends_connection(answer):
            self._end_after_write()

    def _refuse(self, answer: WireMap) -> None:
        """A bad frame: answer it, then close."""
        self._answer(answer)
        self._end_after_write()

    def _end_after_write(self) -> None:
        self._ending = True
        self._busy = True  # read nothing more
        self._pause()
        if self._out is None:
            self.close()

    def _write(self, data: bytes) -> None:
        try:
            sent = self._sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        except Exception as exc:
            self._failed(exc)
            return
        if sent >= len(data):
            if not self._need:
                self._set_deadline(self._s.idle_timeout)
            return
        # The client is not reading: hold the rest, read nothing more until it is sent.
        # (OpenSSL wants the same bytes again after a partial SSL_write.)
        self._out = data[sent:] if sent else data
        self._busy = True
        self._pause()
        self._loop.add_writer(self._fd, self._writable)
        self._set_deadline(self._s.send_timeout)

    def _writable(self) -> None:
        out = self._out
        assert out is not None
        try:
            sent = self._sock.send(out)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        except Exception as exc:
            self._failed(exc)
            return
        if sent < len(out):
            self._out = out[sent:]
            return
        self._out = None
        self._loop.remove_writer(self._fd)
        if self._ending:
            self.close()
            return
        self._busy = False
        self._set_deadline(self._s.idle_timeout)
        self._continue()

    # -- time limits --------------------------------------------------------------------

    def _set_deadline(self, seconds: float) -> None:
        self._deadline = deadline = self._loop.time() + seconds
        if deadline < self._when:  # earlier than the armed timer: arm it anew
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._when = when
        self._timer = self._loop.call_at(when, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self.closed:
            return
        if self._task is not None:  # a request is being answered: no time limit on that
            self._deadline = self._loop.time() + self._s.idle_timeout
        if self._loop.time() < self._deadline:
            self._arm(self._deadline)
            return
        if self._out is not None:
            log.debug("connection from %s ended: the client read nothing for %g s",
                      self._peer, self._s.send_timeout)
        self.close(graceful=self._out is None)

    # -- ending -------------------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, ssl.SSLError | OSError | MemoryError):
            if is_exhaustion(exc):
                self._s.report.exhausted("serving a connection", exc)
            log.debug("connection from %s ended: %s", self._peer, exc)
        else:
            log.error("unexpected error serving %s", self._peer, exc_info=exc)
        self.close(graceful=False)

    def close(self, graceful: bool = True) -> None:
        """Close now (idempotent); ``graceful`` sends TLS close_notify first."""
        if self.closed:
            return
        self.closed = True
        self._pause()
        if self._out is not None:
            self._out = None
            self._loop.remove_writer(self._fd)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._in = None
        if graceful:
            # Sends close_notify; waiting for the client's would only hold the socket.
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                self._sock.unwrap()
            discard_input(self._sock)
        with contextlib.suppress(OSError):
            self._sock.close()
        self._on_close(self)


def discard_input(sock: socket.socket, limit: int = 4) -> None:
    """Read and drop what the client sent that nobody will read (a few reads at most), so
    that closing sends a FIN: closing a socket with unread input sends a reset, and the
    client may then lose the answer (or the TLS alert) it had not read yet."""
    for _ in range(limit):
        try:
            # The plain socket's recv, beneath TLS: these bytes are not for OpenSSL.
            if not socket.socket.recv(sock, _READ_SIZE):
                return
        except OSError:  # BlockingIOError: nothing (more) waiting
            return


#: What :meth:`raftsso.server.Service.answer` returns: the answer, what to do once it is sent.
Answered = tuple[WireMap, Callable[[], None] | None]


@types.coroutine
def _finish(coro: Coroutine[Any, Any, Answered], awaited: Any
            ) -> Generator[Any, Any, Answered]:
    """The rest of a coroutine already started (it yielded ``awaited``), as a task runs it:
    the task waits for what the coroutine yields and resumes it (or throws into it)."""
    while True:
        try:
            value = yield awaited
        except BaseException as exc:  # thrown in by the task (a cancellation)
            try:
                awaited = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            continue
        try:
            awaited = coro.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


async def handshake(loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket,
                    timeout: float) -> None:
    """Finish the TLS handshake of a non-blocking server socket within ``timeout``."""
    fd = sock.fileno()
    async with asyncio.timeout(timeout):
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                await _ready(loop, fd, loop.add_reader, loop.remove_reader)
            except ssl.SSLWantWriteError:
                await _ready(loop, fd, loop.add_writer, loop.remove_writer)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int,
                 add: Callable[..., None], remove: Callable[[int], Any]) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    add(fd, wake)
    try:
        await ready
    finally:
        remove(fd)
