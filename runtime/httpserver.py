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

Against slow and hostile clients: a head must arrive within `header_timeout_s` of its first
byte and a body may not pause longer than `body_timeout_s` (408, then close); a body's
buffer grows as its bytes arrive, and all bodies together hold at most `max_body_memory`
(503 past it); at most `max_connections` are open; a connection's buffers go when it
closes, not at the next garbage collection.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote

import httptools
import orjson

from kindling.errors import (
    ExpectationFailed,
    HeadTooLarge,
    HttpVersionNotSupported,
    InvalidInput,
    KindlingError,
    MethodNotImplemented,
    PayloadTooLarge,
    RequestTimeout,
    ServerBusy,
    UnsupportedTransferCoding,
)
from kindling.runtime.settings import ServerSettings

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
# Such a buffer is made when the body's first bytes arrive, this large at most (the whole
# 600 kB image, in one allocation), and doubles as they fill it: a client that declares
# 64 MiB and sends nothing costs nothing, one that sends n bytes at most max(2n, 1 MiB).
# Doubling, not fixed steps: a realloc may copy, and doubling copies each byte once.
BODY_STEP_BYTES = 1024 * 1024
# Past its first body_timeout_s, a body must average this many bytes a second (Apache
# mod_reqtimeout's default MinRate): a byte every few seconds is no upload.
MIN_BODY_RATE = 500
# A request line as RFC 9112 §3 has it (a method token, a target, a version): its method.
REQUEST_LINE = re.compile(rb"(?m)^([!#$%&'*+.^_`|~0-9A-Za-z-]+) [^ \r\n]+ HTTP/[0-9]\.[0-9]\r?$")
# The methods llhttp parses (llhttp's src/llhttp/constants.ts, HTTP and its extensions): a
# request line with any other fails parsing as an unknown method.
LLHTTP_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)
# An encoded "/" stays encoded: decoded, it would split a path segment (a model name
# cannot hold "/", as in Triton's model routes).
ENCODED_SLASH = re.compile("%2f", re.IGNORECASE)
# What the parser reads into: heads, small bodies, the start of large ones. One per
# server: the parser consumes each read before the next.
READ_BUFFER_BYTES = 64 * 1024


class Request:
    """One request as the handler sees it; the body keeps arriving after the handler starts,
    so a handler can refuse (unknown model) before the upload is read."""

    __slots__ = (
        "_budget",
        "_buffer",
        "_chunks",
        "_complete",
        "_continue",
        "_declared",
        "_discard",
        "_error",
        "_limit",
        "_refused",
        "_reserved",
        "_size",
        "_waiter",
        "headers",
        "http10",
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
        budget: BodyBudget,
        spare: bytearray | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.params: dict[str, str] = {}
        self.keep_alive = True
        # An HTTP/1.0 request: its connection persists only if the answer says so.
        self.http10 = False
        self._limit = limit
        self._budget = budget
        self._chunks: list[bytes] = []
        self._buffer: bytearray | None = None
        """A body of known, large size lands here, read straight from the socket."""
        self._declared = 0
        """That size (0: the body goes through the parser into `_chunks`)."""
        self._reserved = 0
        """Bytes of the server's body budget this request holds."""
        self._size = 0
        self._complete = False
        self._discard = False
        self._refused = False
        """Not a request: the answer to a stream the parser rejected (`_error`)."""
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
                self._declared = size
                if spare is not None and len(spare) == size:
                    # The last request's buffer, if the same size: a fresh 600 kB one costs
                    # a zero-fill and, often, page faults. Its bytes are already counted.
                    self._buffer = spare
                    self._reserved = size

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

    @classmethod
    def refusal(cls, error: KindlingError, budget: BodyBudget) -> Request:
        """Not a request: the answer to a stream the parser rejected, `error`."""
        refused = cls("GET", "", {}, 0, budget)
        refused._refused = refused._complete = True
        refused._error = error
        return refused

    # -- the protocol's view -----------------------------------------------------------

    @property
    def refused(self) -> KindlingError | None:
        """The error to answer, for a `refusal`; None for a request."""
        return self._error if self._refused else None

    @property
    def complete(self) -> bool:
        """The whole body has arrived."""
        return self._complete

    @property
    def received(self) -> int:
        """Body bytes received so far."""
        return self._size

    @property
    def discarding(self) -> bool:
        """Answered already: the rest of the body is read and dropped."""
        return self._discard

    @property
    def direct(self) -> bool:
        """The body is read from the socket straight into one buffer, past the parser."""
        return self._declared > 0

    @property
    def took_spare(self) -> bool:
        """Its buffer is the connection's spare, with that buffer's share of the budget."""
        return self._buffer is not None

    @property
    def awaiting_continue(self) -> bool:
        """The client waits for `100 Continue` before sending the body."""
        return self._continue is not None

    def expect_continue(self, send: Callable[[], None]) -> None:
        """`send` writes the 100 Continue: on the handler's first read of the body."""
        self._continue = send

    def receive_into(self, scratch: memoryview) -> memoryview:
        """Where the socket's next bytes of a direct body go: the rest of its buffer, grown
        as needed, or `scratch` (at most the rest of the body) once it is refused or
        answered."""
        buffer = self._buffer
        size = self._size
        if buffer is None or size == len(buffer):
            # Grown here, not in `received_direct`: asyncio's loop still holds the last
            # view of the buffer there, and a bytearray with a view can't be resized.
            if self._error is None and not self._discard and self._grow(size + 1):
                buffer = self._buffer
            else:
                return scratch[: min(self._declared - size, len(scratch))]
        return memoryview(buffer)[size:]  # type: ignore[arg-type]

    def received_direct(self, nbytes: int) -> bool:
        """`nbytes` more of a direct body arrived; True once it is all in."""
        self._size += nbytes
        return self._size == self._declared

    def feed(self, chunk: bytes) -> None:
        """Bytes of the body, de-chunked by the parser."""
        if self._discard or self._error is not None:
            return
        size = self._size
        end = self._size = size + len(chunk)
        if self._declared:  # the first bytes of a direct body, with the head
            buffer = self._buffer
            if (buffer is not None and end <= len(buffer)) or self._grow(end):
                self._buffer[size:end] = chunk  # type: ignore[index]  # the parser guards the length
        elif end > self._limit:
            self.fail(PayloadTooLarge(f"request body exceeds the limit of {self._limit} bytes"))
        elif end - DIRECT_BODY_BYTES <= self._reserved or self._charge(end - DIRECT_BODY_BYTES):
            # A body smaller than a read buffer is not counted against the budget.
            self._chunks.append(chunk)

    def _grow(self, need: int) -> bool:
        """Make the direct buffer hold at least `need` bytes: allocated on its first bytes,
        doubled as they fill it, never past the declared size (BODY_STEP_BYTES)."""
        buffer = self._buffer
        have = 0 if buffer is None else len(buffer)
        size = min(self._declared, max(need, 2 * have, BODY_STEP_BYTES))
        if not self._budget.take(size - have):
            self.fail(self._budget.refusal())
            return False
        self._reserved += size - have
        if buffer is None:
            self._buffer = bytearray(size)
        else:
            buffer += bytes(size - have)  # in place: a realloc, often without a copy
        return True

    def _charge(self, size: int) -> bool:
        """Count a de-chunked body's bytes against the budget, doubling as for `_grow`."""
        step = max(size, 2 * self._reserved, BODY_STEP_BYTES) - self._reserved
        if not self._budget.take(step):
            self.fail(self._budget.refusal())
            return False
        self._reserved += step
        return True

    def finish(self) -> None:
        """The body is complete."""
        self._complete = True
        self._wake()

    def discard(self) -> None:
        """The request was answered before its body arrived: drop what came and what will."""
        self._discard = True
        self._drop_body()

    async def discarded(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the rest of a discarded body; True if it came."""
        if not self._complete:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout_s)
            except TimeoutError:
                return False
        return self._complete

    def take_buffer(self) -> bytearray | None:
        """The body's buffer, with its share of the budget, if the body is complete and
        nothing else references the buffer (for the connection's next request); else None,
        and the buffer is the handler's, or garbage."""
        buffer, self._buffer = self._buffer, None
        # Two references: `buffer` and getrefcount's argument. Anything else (the handler,
        # a memoryview or an ndarray over it, a batch still running) holds one more.
        if buffer is None or not self._complete or sys.getrefcount(buffer) != 2:
            return None
        self._reserved -= len(buffer)  # its share of the budget goes with it
        return buffer

    def fail(self, error: KindlingError) -> None:
        """The body will not be delivered: `error` is what body() raises. What it held goes
        now, even if the request itself lives on (a handler still running)."""
        if self._error is None:
            self._error = error
        self._drop_body()
        self._wake()

    def _drop_body(self) -> None:
        self._buffer = None
        if self._chunks:
            self._chunks = []
        if self._reserved:
            self._budget.give(self._reserved)
            self._reserved = 0

    def release(self) -> None:
        """The request is done with: let go of its body and of its error, whose traceback's
        frames hold this request (a cycle that only a full garbage collection would free,
        with the body in it)."""
        self._drop_body()
        self._error = None
        self._waiter = None
        self._continue = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class BodyBudget:
    """Bytes held by request bodies (and connections' spare buffers), all connections
    together, against `max_body_memory`; `reclaim` frees the spare buffers when short."""

    __slots__ = ("free", "limit", "reclaim")

    def __init__(self, limit: int, reclaim: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.free = limit
        self.reclaim = reclaim

    def take(self, size: int) -> bool:
        if size > self.free:
            self.reclaim()
            if size > self.free:
                return False
        self.free -= size
        return True

    def give(self, size: int) -> None:
        self.free += size

    def refusal(self) -> ServerBusy:
        return ServerBusy(
            f"request bodies in progress hold the server's {self.limit} bytes for them; "
            "retry shortly"
        )


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


class FlowControl:
    """Back-pressure on one connection, after uvicorn's `protocols/flow_control.py`:
    reading paused while too many pipelined requests wait, writing paused while the
    transport's buffer is full (asyncio's pause_writing/resume_writing)."""

    __slots__ = ("_transport", "_writable", "reading")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.reading = True
        self._writable: asyncio.Future[None] | None = None

    @property
    def write_paused(self) -> bool:
        return self._writable is not None

    def pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            self._transport.pause_reading()

    def resume_reading(self) -> bool:
        """Resume if paused; True if it was."""
        if self.reading:
            return False
        self.reading = True
        self._transport.resume_reading()
        return True

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        """The transport drained (or the connection is gone): wake whoever waits."""
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    async def drain(self) -> None:
        """Until the transport can take more."""
        if self._writable is not None:
            await self._writable


# IMF-fixdate's names (RFC 9110 §5.6.7), by tm_wday and tm_mon - 1: what
# email.utils.formatdate(usegmt=True) writes, without importing the email package, which
# cost ~9.5 ms of the cold start's imports.
_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = tuple(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())


def http_date(seconds: float) -> bytes:
    """`seconds` since the epoch as an HTTP date: b"Sun, 06 Nov 1994 08:49:37 GMT"."""
    t = time.gmtime(seconds)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday],
        t.tm_mday,
        _MONTHS[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


class _Clock:
    """The Date header (RFC 9110 §6.6.1), formatted once per second."""

    def __init__(self) -> None:
        self._second = 0
        self._line = b""

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: " + http_date(now) + b"\r\n"
        return self._line


class HttpProtocol(asyncio.BufferedProtocol):
    """One connection: parse, hand each request to the app in order, write responses.

    Buffered: the loop reads into the server's read buffer, which the parser consumes at
    once; a large body of declared length is then read straight into its request's
    buffer (`_direct`), bypassing the parser, which is replaced once the body is in.

    One timer per connection enforces every timeout (`_check`): it may fire early, never
    late, and is moved only when a phase starts whose deadline is nearer than it.
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
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._idle_since: float | None = None
        """When the connection last became idle; None while a request is in progress."""
        self._head_since: float | None = None
        """When the head being parsed began to arrive; None between heads."""
        self._body_since = 0.0
        """When the body being parsed began (or the client was told to send it)."""
        self._last_read = 0.0
        self._write_paused_at = 0.0
        """When writing last paused, or the client was last seen reading while paused."""
        self._write_left = 0
        """Bytes waiting to be written, as of `_write_paused_at`."""
        self._flow: FlowControl | None = None
        """Made with the transport, in connection_made."""
        self._close_after = False  # an upgrade or a refusal: answer, then close
        self._direct: Request | None = None
        self._spare: bytearray | None = None
        """A body buffer no one references any more, for the next request of its size;
        counted against the server's body budget."""

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._flow = FlowControl(transport)  # type: ignore[arg-type]
        server = self._server
        if len(server.connections) >= server.max_connections:
            server.over_capacity(self)
            return
        server.connections.add(self)
        self._idle_since = self._last_read = self._loop.time()
        self._arm(self._idle_since + server.tick_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        gone = InvalidInput("client disconnected before sending the whole body")
        for request in self._pending:
            request.fail(gone)
        if self._flow is not None:
            self._flow.resume_writing()
        if self._worker is None:
            self._forget()
        # else the worker, woken by the failures above, forgets when it ends
        self._server.connection_closed()

    def get_buffer(self, sizehint: int) -> memoryview:
        direct = self._direct
        if direct is not None:
            return direct.receive_into(self._server.read_buffer)
        return self._server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._last_read = self._loop.time()
        direct = self._direct
        if direct is not None:
            if direct.received_direct(nbytes):
                # The parser never saw this body: a fresh one starts at the next message.
                self._direct = None
                self._parser = httptools.HttpRequestParser(self)
                self.on_message_complete()
            return
        self._feed(self._server.read_buffer[:nbytes])
        request = self._parsing
        if request is not None and request.direct and not self._close_after:
            self._direct = request  # the rest of its body comes past the parser

    def _feed(self, data: memoryview) -> None:
        if self._close_after:
            return  # past an upgrade or a refusal, the rest of the stream is not read
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrades (h2c, websockets): answer this request, then close.
            self._close_after = True
            if self._parsing is not None:
                self._parsing.fail(InvalidInput("protocol upgrades are not supported"))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__  # what one of our callbacks raised
            if not isinstance(cause, KindlingError):
                log.exception("HTTP parser callback failed", exc_info=cause)
                cause = KindlingError(f"internal error: {type(cause).__name__}")
            self._refuse(cause)
        except httptools.HttpParserInvalidMethodError:
            # A well-formed request line with a method llhttp does not know is a 501 (RFC
            # 9110 §9.1); anything else that failed at its first token is no request at all.
            lines = REQUEST_LINE.findall(bytes(data[:MAX_HEAD_BYTES]))
            if any(method not in LLHTTP_METHODS for method in lines):
                self._refuse(MethodNotImplemented("unknown request method"))
            else:
                self._refuse(InvalidInput("malformed HTTP request: no request line"))
        except httptools.HttpParserError as exc:
            if "version" in str(exc).lower():
                self._refuse(HttpVersionNotSupported(f"{exc}: HTTP/1.1 or HTTP/1.0 only"))
            else:
                self._refuse(InvalidInput(f"malformed HTTP request: {exc}"))

    def pause_writing(self) -> None:
        assert self._flow is not None
        self._flow.pause_writing()
        self._write_paused_at = self._loop.time()
        self._write_left = 1 << 62  # measured at the first check
        self._arm(self._write_paused_at + self._server.tick_s)

    def resume_writing(self) -> None:
        assert self._flow is not None
        self._flow.resume_writing()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._idle_since = None
        self._head_since = self._last_read  # the read that brought the head's first byte
        self._arm(self._last_read + self._server.header_timeout_s)
        self._url = b""
        self._headers = {}
        self._hosts = 0
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key == "host":
            self._hosts += 1
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        parser = self._parser
        server = self._server
        self._head_since = None
        headers = self._headers
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):  # HTTP/2.0 or HTTP/0.9 on an HTTP/1 request line
            raise HttpVersionNotSupported(f"HTTP/{version} is not supported: HTTP/1.1 or 1.0")
        http10 = version == "1.0"
        coding = headers.get("transfer-encoding")
        if coding is not None and http10:
            # RFC 9112 §6.1: such a message's framing is faulty, whatever its Content-Length.
            raise InvalidInput("Transfer-Encoding in an HTTP/1.0 request: its framing is faulty")
        if not http10 and self._hosts != 1:
            raise InvalidInput(
                "an HTTP/1.1 request needs exactly one Host header (RFC 9112 §3.2), "
                f"got {self._hosts}"
            )
        # RFC 9110 §10.1.1: 100-continue is the one expectation; any other is a 417, and an
        # HTTP/1.0 request's is ignored. The header may repeat (joined here with ", ").
        expect = headers.get("expect") if not http10 else None
        if expect is not None and {e.strip().lower() for e in expect.split(",")} != {
            "100-continue"
        }:
            raise ExpectationFailed(f"cannot meet the expectation {expect[:100]!r}")
        if coding is not None and coding.strip().lower() != "chunked":
            # llhttp would take "gzip, chunked" and hand over still-gzipped bytes.
            raise UnsupportedTransferCoding(
                f"transfer coding {coding[:100]!r} is not supported, only chunked"
            )
        try:
            path = httptools.parse_url(self._url).path.decode("latin-1")
        except httptools.HttpParserInvalidURLError:
            raise InvalidInput(f"invalid request target {self._url[:200]!r}") from None
        if "%" in path:  # decoded between encoded slashes, which stay as they are
            path = "%2F".join(map(unquote, ENCODED_SLASH.split(path)))
        request = Request(
            parser.get_method().decode("ascii"),
            path,
            headers,
            server.max_body,
            server.budget,
            self._spare,
        )
        if request.took_spare:
            self._spare = None  # taken, with its share of the budget
        request.keep_alive = parser.should_keep_alive()
        request.http10 = http10
        if expect is not None and not request.too_large:
            request.expect_continue(self._send_continue)  # the body timer starts with the 100
        else:
            self._body_since = self._last_read
            self._arm(self._last_read + server.body_timeout_s)
        self._parsing = request
        self._pending.append(request)
        if len(self._pending) > MAX_PIPELINED:
            assert self._flow is not None
            self._flow.pause_reading()
        if self._worker is None:
            self._worker = self._loop.create_task(self._serve())

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.finish()
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
        if transport.is_closing():
            self._forget()
        elif not self._pending:
            if self._server.draining:
                transport.close()
            else:
                self._idle_since = self._loop.time()
                self._arm(self._idle_since + self._server.keep_alive_s)

    async def _serve_pending(self, transport: asyncio.Transport) -> None:
        flow = self._flow
        assert flow is not None
        while self._pending:
            request = self._pending[0]
            refused = request.refused
            if refused is not None:
                response = self._app.error(refused)
            else:
                response = await self._app.respond(request)
            if transport.is_closing():
                return
            # After a refusal, the requests before it are answered as usual; the last
            # answer closes.
            keep_alive = (
                request.keep_alive
                and not self._server.draining
                and not (self._close_after and len(self._pending) == 1)
            )
            self._write(request, response, keep_alive)
            if not keep_alive:
                transport.close()
                return
            if not request.complete:
                # Answered before its body arrived (an unknown model, a 413): read the
                # rest and drop it, so the connection stays usable and the client, still
                # sending, gets its answer rather than a reset.
                request.discard()
                if not await request.discarded(self._server.keep_alive_s):
                    transport.close()
                    return
            self._pending.popleft()
            self._recycle(request)
            if len(self._pending) <= MAX_PIPELINED and flow.resume_reading():
                self._restart_clocks()
            await flow.drain()

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
        elif request.http10:  # RFC 9112 §9.3: 1.0 persists only where both sides say so
            parts.append(b"connection: keep-alive\r\n")
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
        buffer = request.take_buffer()
        if buffer is not None:
            self.drop_spare()
            self._spare = buffer  # its share of the budget stays with the spare
        request.release()

    def drop_spare(self) -> None:
        """Give the spare body buffer back to the budget."""
        spare, self._spare = self._spare, None
        if spare is not None:
            self._server.budget.give(len(spare))

    def _forget(self) -> None:
        """The connection is closing: let go of everything its requests hold now, not at
        the next full garbage collection (the parser and this protocol reference each
        other, so nothing they hold is freed by reference counting alone)."""
        for request in self._pending:
            request.release()
        self._pending.clear()
        self._parsing = self._direct = None
        self.drop_spare()

    def _refuse(self, error: KindlingError) -> None:
        """Stop reading the stream, which can't resync: the request being parsed fails with
        `error` (its handler's body() raises it), or, between requests, `error` is answered
        after the requests before it; then the connection closes."""
        if self._transport is None or self._transport.is_closing() or self._close_after:
            return
        self._close_after = True
        self._direct = None
        self._head_since = None
        request = self._parsing
        if request is not None:
            request.fail(error)
            return
        self._pending.append(Request.refusal(error, self._server.budget))
        if self._worker is None:
            self._worker = self._loop.create_task(self._serve())

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge(f"request head exceeds {MAX_HEAD_BYTES} bytes")

    def _send_continue(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._body_since = self._last_read = self._loop.time()
            self._arm(self._last_read + self._server.body_timeout_s)

    def _restart_clocks(self) -> None:
        """Reading resumed: the time it was paused was ours, not the client's."""
        now = self._last_read = self._body_since = self._loop.time()
        if self._head_since is not None:
            self._head_since = now
        self._arm(now + self._server.tick_s)

    # -- timeouts ------------------------------------------------------------------------

    def _arm(self, deadline: float) -> None:
        """Have `_check` run by `deadline`: a no-op when the timer fires sooner already, so
        a request costs no timer of its own with the default timeouts."""
        if deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._check)

    def _check(self) -> None:
        """Every timeout of the connection, in the phase it is in: the head (408 after
        header_timeout_s), the body (408 after body_timeout_s without a byte, or too slow
        on average), a response the client does not read (reset), idle (close)."""
        self._timer, self._timer_at = None, float("inf")
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        server = self._server
        now = self._loop.time()
        deadline = now + server.tick_s  # when no phase is due: look again then
        flow = self._flow
        assert flow is not None
        if flow.write_paused:
            left = transport.get_write_buffer_size()
            if left < self._write_left:  # the client read some: a slow reader, not gone
                self._write_left, self._write_paused_at = left, now
            elif now >= self._write_paused_at + server.body_timeout_s:
                transport.abort()  # close() would wait for the client to read
                return
        request = self._parsing
        if self._close_after or not flow.reading:
            pass  # a refusal is being answered, or the client waits on us
        elif self._head_since is not None:
            due = self._head_since + server.header_timeout_s
            if now >= due:
                self._refuse(
                    RequestTimeout(
                        f"request head not received within {server.header_timeout_s:g} s"
                    )
                )
            else:
                deadline = min(deadline, due)
        elif request is not None and not request.awaiting_continue:
            timeout = server.body_timeout_s
            due = min(
                self._last_read + timeout,
                self._body_since + timeout + request.received / MIN_BODY_RATE,
            )
            if now < due:
                deadline = min(deadline, due)
            elif request.discarding:
                transport.close()  # already answered: the rest of its body is not coming
                return
            else:
                self._refuse(
                    RequestTimeout(f"request body stalled (no progress for {timeout:g} s)")
                )
        elif self._idle_since is not None and not self._pending:
            due = self._idle_since + server.keep_alive_s
            if now >= due:
                transport.close()
                return
            deadline = min(deadline, due)
        self._arm(deadline)

    # -- drain -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Close now if idle; otherwise the response in flight says `connection: close`."""
        if self._worker is None and not self._pending and self._transport is not None:
            self._transport.close()

    def refuse(self, response: Response) -> None:
        """Answer `response` before reading anything, and close (over capacity)."""
        self._write(Request("GET", "", {}, 0, self._server.budget), response, False)
        assert self._transport is not None
        self._transport.close()

    def abort(self) -> None:
        """Close now, dropping what is unsent (the drain's deadline passed)."""
        if self._transport is not None:
            self._transport.abort()


@dataclass(frozen=True)
class Limits:
    """What the server allows its clients; ServerSettings (runtime/settings.py) documents
    each, and its defaults are these."""

    header_timeout_s: float = ServerSettings.header_timeout_s
    body_timeout_s: float = ServerSettings.body_timeout_s
    max_body_memory: int = ServerSettings.max_body_memory_bytes
    max_connections: int = ServerSettings.max_connections

    @classmethod
    def of(cls, settings: ServerSettings) -> Limits:
        return cls(
            settings.header_timeout_s,
            settings.body_timeout_s,
            settings.max_body_memory_bytes,
            settings.max_connections,
        )


class HttpServer:
    """The listening socket and its connections, with Knative's drain on stop."""

    def __init__(
        self,
        app: App,
        loop: asyncio.AbstractEventLoop,
        max_body: int,
        keep_alive_s: float,
        limits: Limits = Limits(),
    ) -> None:
        self.read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))
        self.app = app
        self.loop = loop
        self.max_body = max_body
        self.keep_alive_s = keep_alive_s
        self.header_timeout_s = limits.header_timeout_s
        self.body_timeout_s = limits.body_timeout_s
        self.max_connections = limits.max_connections
        self.tick_s = min(keep_alive_s, limits.header_timeout_s)
        """How often an idle or busy connection's timer looks: a head may start any time,
        and its deadline must not be missed (see HttpProtocol._arm)."""
        self.budget = BodyBudget(limits.max_body_memory, self._drop_spares)
        self.clock = _Clock()
        self.connections: set[HttpProtocol] = set()
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._all_closed: asyncio.Event | None = None
        self._at_capacity = False

    async def listen(self, host: str, port: int) -> int:
        """Bind and accept; returns the port (the one chosen, for port 0)."""
        self._server = await self.loop.create_server(
            lambda: HttpProtocol(self), host, port, backlog=2048, reuse_address=True
        )
        return self._server.sockets[0].getsockname()[1]

    def over_capacity(self, connection: HttpProtocol) -> None:
        """One connection too many: 503 and close, before reading anything from it."""
        if not self._at_capacity:  # once per episode: a flood must not flood the log too
            log.warning("%d connections open: refusing more", len(self.connections))
            self._at_capacity = True
        busy = ServerBusy(f"the server has {self.max_connections} connections open")
        connection.refuse(self.app.error(busy))

    def connection_closed(self) -> None:
        if len(self.connections) < self.max_connections:
            self._at_capacity = False
        if self._all_closed is not None and not self.connections:
            self._all_closed.set()

    def _drop_spares(self) -> None:
        """The budget is short: idle buffers kept for reuse go first."""
        for connection in self.connections:
            connection.drop_spare()

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
            connection.abort()
