"""The runtime's HTTP/1.1 server: httptools' parser driving an asyncio buffered protocol.

Why not uvicorn: at concurrency 1 its request cycle (ASGI scope and messages, an event
per body chunk, each chunk copied into a growing buffer and out again) cost about 0.2 ms
of the 0.8 ms the runtime added to a 5 ms MobileNetV2 inference, against a 0.5 ms target
(README "Latency"; `python -m kindling.loadtest.bench_runtime`). Our routes are a dozen
fixed ones that read a whole body and answer a whole body, so the server hands the
handler a `Request` as soon as the headers are parsed and writes its `Response` in one
go. The cold start also skips uvicorn's imports (click, its config and logging set-up).

It implements what Knative's queue-proxy, OpenWhisk's invoker, tritonclient and Locust
rely on (RFC 9112): keep-alive with an idle timeout, pipelined requests answered in
order, Content-Length and chunked bodies (httptools de-chunks), `Expect: 100-continue`,
a body limit enforced while reading (413), the unread rest of a body answered early
read and dropped, HEAD, a Date header, and a drain on SIGTERM: stop accepting, finish
what is in flight, close idle connections.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote

import httptools
import orjson

from kindling.errors import HeadTooLarge, InvalidInput, KindlingError, PayloadTooLarge

log = logging.getLogger("kindling.runtime")

JSON = b"application/json"
# Request line plus headers; llhttp itself sets no limit.
MAX_HEAD_BYTES = 64 * 1024
# Reading pauses while this many pipelined requests wait behind the one being served.
MAX_PIPELINED = 8
STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
# Written in one call with the head below this size; above it, two writes beat a copy.
COALESCE_BYTES = 64 * 1024
# A body declared this large or larger is read from the socket straight into one buffer,
# past the parser: for a 600 kB image that spares three copies (the loop's read buffer to
# bytes, the parser's chunk, the join).
DIRECT_BODY_BYTES = 64 * 1024
# What the parser reads into: heads, small bodies, the start of large ones. One per
# server: the parser consumes each read before the next.
READ_BUFFER_BYTES = 64 * 1024


class Request:
    """One request as the handler sees it; the body keeps arriving after the handler starts,
    so a handler can refuse (unknown model) before the upload is read."""

    __slots__ = (
        "_buffer",
        "_chunks",
        "_complete",
        "_continue",
        "_discard",
        "_error",
        "_limit",
        "_size",
        "_waiter",
        "headers",
        "keep_alive",
        "method",
        "params",
        "path",
    )

    def __init__(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        limit: int,
        spare: bytearray | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.params: dict[str, str] = {}
        self.keep_alive = True
        self._limit = limit
        self._chunks: list[bytes] = []
        self._buffer: bytearray | None = None
        """A body of known, large size lands here, read straight from the socket."""
        self._size = 0
        self._complete = False
        self._discard = False
        self._error: KindlingError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._continue: Callable[[], None] | None = None
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and "transfer-encoding" not in headers:
            size = int(declared)
            if size > limit:
                self._error = PayloadTooLarge(
                    f"request body of {size} bytes exceeds the limit of {limit}"
                )
            elif size >= DIRECT_BODY_BYTES:
                # The last request's buffer, if the same size: a fresh 600 kB one costs a
                # zero-fill and, often, page faults.
                self._buffer = (
                    spare if spare is not None and len(spare) == size else bytearray(size)
                )

    async def body(self) -> bytes:
        """The whole body (a bytearray when it was read straight from the socket); 413 past
        the server's limit, 400 if the client went away."""
        if not self._complete and self._error is None:
            if self._continue is not None:
                self._continue()  # the client waits for this before sending the body
                self._continue = None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self._error is not None:
            raise self._error
        if self._buffer is not None:
            return self._buffer  # type: ignore[return-value]
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @property
    def too_large(self) -> bool:
        return isinstance(self._error, PayloadTooLarge)

    # -- fed by the protocol ------------------------------------------------------------

    def _feed(self, chunk: bytes) -> None:
        if self._discard or self._error is not None:
            return
        size = self._size
        self._size = size + len(chunk)
        if self._buffer is not None:
            self._buffer[size : self._size] = chunk  # the parser guards the declared length
        elif self._size > self._limit:
            self._chunks = []
            self._fail(PayloadTooLarge(f"request body exceeds the limit of {self._limit} bytes"))
        else:
            self._chunks.append(chunk)

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: KindlingError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        body: bytes,
        status: int = 200,
        content_type: bytes = JSON,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.content_type = content_type
        self.headers = headers if headers is not None else []


def json_response(doc: object, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status)


@dataclass
class App:
    """What the server runs: a handler, the one mapping of errors to responses, and the
    start and stop hooks (OpenWhisk binds its action API to the loop; both close the
    data plane)."""

    handle: Callable[[Request], Awaitable[Response]]
    error: Callable[[KindlingError], Response]
    startup: Callable[[], None] = lambda: None
    shutdown: Callable[[], Awaitable[None]] | None = None

    async def respond(self, request: Request) -> Response:
        try:
            return await self.handle(request)
        except KindlingError as exc:
            return self.error(exc)
        except Exception as exc:  # the one place an unexpected error becomes a 500
            log.exception("unhandled error", exc_info=exc)
            return self.error(KindlingError(f"internal error: {type(exc).__name__}"))


class _Clock:
    """The Date header (RFC 9110 §6.6.1), formatted once per second."""

    def __init__(self) -> None:
        self._second = 0
        self._line = b""

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._line


class HttpProtocol(asyncio.BufferedProtocol):
    """One connection: parse, hand each request to the app in order, write responses.

    Buffered: the loop reads into the server's read buffer, which the parser consumes at
    once; a large body of declared length is then read straight into its request's
    buffer (`_direct`), bypassing the parser, which is replaced once the body is in.
    """

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._app = server.app
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[Request] = deque()
        self._parsing: Request | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._worker: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None
        """When the connection last became idle; None while a request is in progress."""
        self._reading = True
        self._writable: asyncio.Future[None] | None = None
        self._close_after = False  # an upgrade or a parse error: answer, then close
        self._direct: Request | None = None
        self._spare: bytearray | None = None
        """A body buffer no one references any more, for the next request of its size."""

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._server.connections.add(self)
        self._idle_since = self._loop.time()
        self._idle_timer = self._loop.call_later(self._server.keep_alive_s, self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        gone = InvalidInput("client disconnected before sending the whole body")
        for request in self._pending:
            request._fail(gone)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._server.connection_closed()

    def get_buffer(self, sizehint: int) -> memoryview:
        direct = self._direct
        if direct is not None:
            return memoryview(direct._buffer)[direct._size :]  # type: ignore[arg-type]
        return self._server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        direct = self._direct
        if direct is not None:
            direct._size += nbytes
            if direct._size == len(direct._buffer):  # type: ignore[arg-type]
                # The parser never saw this body: a fresh one starts at the next message.
                self._direct = None
                self._parser = httptools.HttpRequestParser(self)
                self.on_message_complete()
            return
        self._feed(self._server.read_buffer[:nbytes])
        request = self._parsing
        if request is not None and request._buffer is not None and not request._discard:
            self._direct = request  # the rest of its body comes past the parser

    def _feed(self, data: memoryview) -> None:
        if self._close_after:
            return  # past an upgrade or a parse error, the rest of the stream is not HTTP
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrades (h2c, websockets): answer this request, then close.
            self._close_after = True
            if self._parsing is not None:
                self._parsing._fail(InvalidInput("protocol upgrades are not supported"))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__  # what one of our callbacks raised
            if not isinstance(cause, KindlingError):
                log.exception("HTTP parser callback failed", exc_info=cause)
                cause = KindlingError(f"internal error: {type(cause).__name__}")
            self._refuse(cause)
        except httptools.HttpParserError as exc:
            self._refuse(InvalidInput(f"malformed HTTP request: {exc}"))

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._idle_since = None
        self._url = b""
        self._headers = {}
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        parser = self._parser
        try:
            path = httptools.parse_url(self._url).path.decode("latin-1")
        except httptools.HttpParserInvalidURLError:
            raise InvalidInput(f"invalid request target {self._url[:200]!r}") from None
        if "%" in path:
            path = unquote(path)
        request = Request(
            parser.get_method().decode("ascii"),
            path,
            self._headers,
            self._server.max_body,
            self._spare,
        )
        if request._buffer is self._spare:
            self._spare = None
        request.keep_alive = parser.should_keep_alive()
        if self._headers.get("expect", "").lower() == "100-continue" and not request.too_large:
            request._continue = self._send_continue
        self._parsing = request
        self._pending.append(request)
        if len(self._pending) > MAX_PIPELINED:
            self._pause_reading()
        if self._worker is None:
            self._worker = self._loop.create_task(self._serve())

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing._feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing._finish()
            self._parsing = None

    # -- serving ----------------------------------------------------------------------------

    async def _serve(self) -> None:
        transport = self._transport
        assert transport is not None
        try:
            await self._serve_pending(transport)
        except Exception:  # a bug here must not leave the client hanging
            log.exception("connection failed")
            transport.abort()
        finally:
            self._worker = None
        if not self._pending and not transport.is_closing():
            if self._server.draining:
                transport.close()
            else:
                self._idle_since = self._loop.time()

    async def _serve_pending(self, transport: asyncio.Transport) -> None:
        while self._pending:
            request = self._pending[0]
            response = await self._app.respond(request)
            if transport.is_closing():
                return
            keep_alive = request.keep_alive and not self._close_after and not self._server.draining
            self._write(request, response, keep_alive)
            if not keep_alive:
                transport.close()
                return
            if not request._complete:
                # Answered before its body arrived (an unknown model, a 413): read the
                # rest and drop it, so the connection stays usable and the client, still
                # sending, gets its answer rather than a reset.
                request._discard = True
                request._chunks = []
                if not await self._await_body(request):
                    transport.close()
                    return
            self._pending.popleft()
            self._recycle(request)
            if not self._reading and len(self._pending) <= MAX_PIPELINED:
                self._reading = True
                transport.resume_reading()
            if self._writable is not None:
                await self._writable

    async def _await_body(self, request: Request) -> bool:
        request._waiter = self._loop.create_future()
        try:
            await asyncio.wait_for(request._waiter, self._server.keep_alive_s)
        except TimeoutError:
            return False
        return request._complete

    def _write(self, request: Request, response: Response, keep_alive: bool) -> None:
        assert self._transport is not None
        body = response.body
        status = response.status
        parts = [
            STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status,
            self._server.clock.date_line(),
        ]
        if status != 204 and status != 304:
            parts += [
                b"content-type: ",
                response.content_type,
                b"\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\n",
            ]
        for name, value in response.headers:
            parts += [name, b": ", value, b"\r\n"]
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if request.method == "HEAD" or status == 204 or status == 304:
            body = b""
        head = b"".join(parts)
        if len(body) < COALESCE_BYTES:
            self._transport.write(head + body)
        else:
            self._transport.write(head)
            self._transport.write(body)

    def _recycle(self, request: Request) -> None:
        buffer, request._buffer = request._buffer, None
        # Two references: `buffer` and getrefcount's argument. Anything else (the handler,
        # a memoryview or an ndarray over it, a batch still running) holds one more.
        if buffer is not None and request._complete and sys.getrefcount(buffer) == 2:
            self._spare = buffer

    def _refuse(self, error: KindlingError) -> None:
        """A request the parser rejected: answer it and close (the stream can't resync)."""
        if self._transport is None or self._transport.is_closing():
            return
        for request in self._pending:
            request._fail(error)
        if self._worker is None:
            request = Request("GET", "", {}, 0)
            self._write(request, self._app.error(error), keep_alive=False)
            self._transport.close()
        # The request being served gets `error` from body(), and its answer closes.
        self._close_after = True

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge(f"request head exceeds {MAX_HEAD_BYTES} bytes")

    def _send_continue(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _pause_reading(self) -> None:
        if self._reading and self._transport is not None:
            self._reading = False
            self._transport.pause_reading()

    def _idle_check(self) -> None:
        """The keep-alive timeout, checked by one timer per connection rather than a timer
        set and cancelled per request."""
        timeout = self._server.keep_alive_s
        idle_for = 0.0 if self._idle_since is None else self._loop.time() - self._idle_since
        if idle_for >= timeout and not self._pending and self._transport is not None:
            self._transport.close()
            return
        self._idle_timer = self._loop.call_later(timeout - idle_for, self._idle_check)

    # -- drain -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Close now if idle; otherwise the response in flight says `connection: close`."""
        if self._worker is None and not self._pending and self._transport is not None:
            self._transport.close()


class HttpServer:
    """The listening socket and its connections, with Knative's drain on stop."""

    def __init__(
        self, app: App, loop: asyncio.AbstractEventLoop, max_body: int, keep_alive_s: float
    ) -> None:
        self.read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))
        self.app = app
        self.loop = loop
        self.max_body = max_body
        self.keep_alive_s = keep_alive_s
        self.clock = _Clock()
        self.connections: set[HttpProtocol] = set()
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._all_closed: asyncio.Event | None = None

    async def listen(self, host: str, port: int) -> int:
        """Bind and accept; returns the port (the one chosen, for port 0)."""
        self._server = await self.loop.create_server(
            lambda: HttpProtocol(self), host, port, backlog=2048, reuse_address=True
        )
        return self._server.sockets[0].getsockname()[1]

    def connection_closed(self) -> None:
        if self._all_closed is not None and not self.connections:
            self._all_closed.set()

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting, let requests in flight finish (up to `timeout_s`), close the rest."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        self._all_closed = asyncio.Event()
        for connection in list(self.connections):
            connection.shutdown()
        if self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), timeout_s)
            except TimeoutError:
                log.warning(
                    "%d connections still busy after %.0f s", len(self.connections), timeout_s
                )
        for connection in list(self.connections):
            if connection._transport is not None:
                connection._transport.abort()
