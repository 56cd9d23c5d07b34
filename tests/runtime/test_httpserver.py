"""The runtime's HTTP/1.1 server (kindling.runtime.httpserver) over real sockets.

A real server on a free loopback port, in a thread with its own event loop, and raw
sockets for the client: the edge cases (pipelining, dribbled and chunked bodies,
100-continue, early answers) are about bytes on the wire, which an HTTP client library
would smooth over. http.client covers the ordinary exchanges.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from email.utils import formatdate
from typing import TypeVar

import orjson
import pytest

from kindling.errors import InvalidInput, KindlingError, RouteNotFound
from kindling.runtime.httpserver import (
    DIRECT_BODY_BYTES,
    MAX_HEAD_BYTES,
    App,
    HttpServer,
    Request,
    Response,
    http_date,
)

LIMIT = 4 * 1024 * 1024
BIG = 3 * DIRECT_BODY_BYTES + 123  # read past the parser, straight into one buffer
SAFETY_S = 60  # how long a test waits for an event before calling it a hang
T = TypeVar("T")


class Handlers:
    """The test app: routes that read, hold, ignore or fail on the body."""

    def __init__(self) -> None:
        self.kept: list[bytes] = []
        self.errors: list[KindlingError] = []
        self.gate = asyncio.Event()  # created per loop in start()
        # For the test's thread: a handler reached these points.
        self.held = threading.Event()
        """/slow is waiting at the gate."""
        self.reading = threading.Event()
        """A handler is waiting for its body."""
        self.failed = threading.Event()
        """A body read failed (in `errors`)."""

    async def handle(self, request: Request) -> Response:
        path = request.path
        if path == "/early":  # answers without reading the body
            raise RouteNotFound("nothing here")
        if path == "/boom":
            raise RuntimeError("bug")
        if path == "/slow":
            self.held.set()
            await self.gate.wait()
        try:
            self.reading.set()
            body = await request.body()
        except KindlingError as exc:
            self.errors.append(exc)
            self.failed.set()
            raise
        if path == "/keep":  # holds on to the body past the response
            self.kept.append(body)
        doc = {
            "method": request.method,
            "path": path,
            "length": len(body),
            "sha": hashlib.sha256(body).hexdigest(),
            "type": type(body).__name__,
        }
        return Response(orjson.dumps(doc))

    @staticmethod
    def error(exc: KindlingError) -> Response:
        return Response(orjson.dumps({"error": exc.message}), exc.status_code)


class ServerThread:
    def __init__(self, keep_alive_s: float) -> None:
        self.handlers = Handlers()
        self.keep_alive_s = keep_alive_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: HttpServer | None = None
        self.port = 0
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(SAFETY_S)
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.handlers.gate = asyncio.Event()
        self._stop = asyncio.Event()
        app = App(self.handlers.handle, self.handlers.error)
        self.server = HttpServer(app, self.loop, LIMIT, self.keep_alive_s)
        self.port = await self.server.listen("127.0.0.1", 0)
        self._ready.set()
        await self._stop.wait()
        await self.server.drain(SAFETY_S)

    def call(self, fn) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn)

    def query(self, fn: Callable[[], T]) -> T:
        """`fn()` run on the server's loop: after whatever step it is in now has finished."""
        result: Future[T] = Future()

        def run() -> None:
            try:
                result.set_result(fn())
            except BaseException as exc:  # raised in the test's thread instead
                result.set_exception(exc)

        self.call(run)
        return result.result(SAFETY_S)

    def pause(self) -> threading.Event:
        """Block the server's loop until the returned event is set: connections and bytes
        queue in the kernel meanwhile."""
        paused, resume = threading.Event(), threading.Event()

        def block() -> None:
            paused.set()
            resume.wait(SAFETY_S)

        self.call(block)
        assert paused.wait(SAFETY_S)
        return resume

    def drain(self) -> None:
        assert self._stop is not None
        self.call(self._stop.set)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.drain()
            self._thread.join(10)


@pytest.fixture
def server() -> Iterator[ServerThread]:
    s = ServerThread(keep_alive_s=5.0).start()
    yield s
    s.stop()


def connect(server: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=SAFETY_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


class Reader:
    """Reads responses (Content-Length framed) off a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 16)
        self.buffer += data
        return bool(data)

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError("closed before a response")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers.get("content-length", 0))
        while len(self.buffer) < length:
            if not self._fill():
                raise ConnectionError("closed inside a body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed(self) -> bool:
        """True if the server closed the connection (EOF, with nothing more to read)."""
        try:
            return not self.buffer and not self._fill()
        except ConnectionResetError:
            return True


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_keep_alive_serves_many_requests_on_one_connection(server: ServerThread):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=SAFETY_S)
    for i in range(3):
        body = bytes([i]) * (10 + i)
        conn.request("POST", f"/echo/{i}", body=body)
        response = conn.getresponse()
        doc = orjson.loads(response.read())
        assert response.status == 200
        assert doc == {
            "method": "POST",
            "path": f"/echo/{i}",
            "length": len(body),
            "sha": digest(body),
            "type": "bytes",
        }
        assert response.getheader("date")
        assert response.getheader("connection") is None
    conn.close()


@pytest.mark.parametrize(
    "seconds",
    [0, 784111777, 951782400, 1796608000, 2**31, 4102444799, 1709164800, 1704067199],
    ids=[
        "epoch",
        "rfc9110-example",
        "2000-02-29",
        "2026",
        "2038",
        "2099-12-31",
        "2024-02-29",
        "2023-12-31",
    ],
)
def test_http_date_is_formatdate(seconds):
    """The Date header's own formatter writes what email.utils.formatdate did."""
    assert http_date(seconds) == formatdate(seconds, usegmt=True).encode()


def test_the_date_header_is_an_http_date(server: ServerThread):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=SAFETY_S)
    before = time.time()
    conn.request("GET", "/echo/date")
    response = conn.getresponse()
    response.read()
    conn.close()
    date = response.getheader("date")
    assert date.encode() in {http_date(t) for t in range(int(before), int(time.time()) + 1)}


def test_pipelined_requests_are_answered_in_order(server: ServerThread):
    sock = connect(server)
    bodies = [b"a" * 5, b"b" * BIG, b"", b"c" * 70_000]
    sock.sendall(b"".join(post(f"/p/{i}", b) for i, b in enumerate(bodies)))
    reader = Reader(sock)
    for i, body in enumerate(bodies):
        status, _, raw = reader.response()
        doc = orjson.loads(raw)
        assert (status, doc["path"], doc["sha"]) == (200, f"/p/{i}", digest(body))
    sock.close()


@pytest.mark.parametrize("piece", [1, 7, 1000, 65_536, BIG])
def test_a_large_body_arrives_whole_however_it_is_split(server: ServerThread, piece: int):
    """Past DIRECT_BODY_BYTES the body bypasses the parser; a body dribbled in pieces
    (the head split too) must land whole, and the next request must parse."""
    body = bytes(range(256)) * (BIG // 256) + b"xyz"
    wire = post("/big", body) + post("/after", b"ok")
    sock = connect(server)
    for i in range(0, len(wire), piece if piece > 1 else 1):
        sock.sendall(wire[i : i + piece])
        if piece < 1000 and i < 200:
            time.sleep(0.001)  # a slow client: the head arrives a few bytes at a time
        if piece == 1 and i >= 200:  # the rest at once: byte-by-byte would take minutes
            sock.sendall(wire[i + 1 :])
            break
    reader = Reader(sock)
    status, _, raw = reader.response()
    doc = orjson.loads(raw)
    assert (status, doc["length"], doc["sha"], doc["type"]) == (
        200,
        len(body),
        digest(body),
        "bytearray",
    )
    status, _, raw = reader.response()
    assert (status, orjson.loads(raw)["path"]) == (200, "/after")
    sock.close()


def test_a_body_buffer_is_reused_only_once_no_one_holds_it(server: ServerThread):
    """A recycled buffer is overwritten by the next request: a handler that kept the last
    body must still see its own bytes."""
    sock = connect(server)
    reader = Reader(sock)
    first, second, third = (bytes([n]) * BIG for n in (1, 2, 3))
    sock.sendall(post("/keep", first))
    assert reader.response()[0] == 200
    assert spare(server) is None  # the handler holds it
    for body in (second, third):
        sock.sendall(post("/echo", body))
        status, _, raw = reader.response()
        assert (status, orjson.loads(raw)["sha"]) == (200, digest(body))
        assert len(spare(server) or b"") == BIG  # free again: the next request gets it
    assert [bytes(b) for b in server.handlers.kept] == [first]
    sock.close()


def spare(server: ServerThread) -> bytearray | None:
    """The connection's spare buffer, read on the loop: the step that wrote the response
    recycles the buffer before it ends."""
    assert server.server is not None
    (connection,) = server.query(lambda: list(server.server.connections))
    return server.query(lambda: connection._spare)


def test_chunked_bodies_are_dechunked(server: ServerThread):
    sock = connect(server)
    body = b"hello, " * 20_000
    chunks = [body[i : i + 30_000] for i in range(0, len(body), 30_000)]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    sock.sendall(b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + wire)
    status, _, raw = Reader(sock).response()
    assert (status, orjson.loads(raw)["sha"]) == (200, digest(body))
    sock.close()


def test_expect_100_continue(server: ServerThread):
    sock = connect(server)
    body = b"z" * 1000
    sock.sendall(
        b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
    )
    reader = Reader(sock)
    while b"\r\n\r\n" not in reader.buffer:
        reader._fill()
    assert reader.buffer.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    reader.buffer = reader.buffer[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
    sock.sendall(body)
    status, _, raw = reader.response()
    assert (status, orjson.loads(raw)["length"]) == (200, 1000)
    sock.close()


def test_a_declared_oversized_body_gets_413_and_the_connection_survives(server: ServerThread):
    """Answered at once; the rest of the upload is read and dropped, so a client that
    sends everything before reading still gets the 413, not a reset."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/echo", body=b"\0" * (LIMIT + 1))
    response = conn.getresponse()
    assert response.status == 413
    assert "limit" in orjson.loads(response.read())["error"]
    conn.request("POST", "/echo", body=b"fine")
    response = conn.getresponse()
    assert (response.status, orjson.loads(response.read())["length"]) == (200, 4)
    conn.close()


def test_a_chunked_body_over_the_limit_gets_413(server: ServerThread):
    sock = connect(server)
    chunk = b"q" * 1_000_000
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    sock.sendall(head + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)))
    sock.sendall(b"0\r\n\r\n")
    status, _, raw = Reader(sock).response()
    assert status == 413
    assert "limit" in orjson.loads(raw)["error"]
    sock.close()


def test_an_early_answer_drops_the_unread_body_and_keeps_the_connection(server: ServerThread):
    sock = connect(server)
    sock.sendall(post("/early", b"x" * BIG) + post("/echo", b"next"))
    reader = Reader(sock)
    assert reader.response()[0] == 404
    status, _, raw = reader.response()
    assert (status, orjson.loads(raw)["length"]) == (200, 4)
    sock.close()


@pytest.mark.parametrize(
    ("wire", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", 431),
        (b"GET http://a:99999/x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ],
    ids=["not HTTP", "bad content-length", "head too large", "bad target"],
)
def test_malformed_requests_get_a_clear_error_and_a_close(
    server: ServerThread, wire: bytes, status: int
):
    sock = connect(server)
    sock.sendall(wire)
    reader = Reader(sock)
    got, headers, raw = reader.response()
    assert got == status
    assert orjson.loads(raw)["error"]
    assert headers.get("connection") == "close"
    assert reader.closed()
    sock.close()


def test_head_gets_the_headers_without_the_body(server: ServerThread):
    sock = connect(server)
    sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n" + post("/echo", b"abc"))
    reader = Reader(sock)
    status, headers, _ = reader.response(head_only=True)
    assert status == 200 and int(headers["content-length"]) > 0
    status, _, raw = reader.response()
    assert (status, orjson.loads(raw)["length"]) == (200, 3)
    sock.close()


@pytest.mark.parametrize(
    "wire",
    [
        b"GET /old HTTP/1.0\r\n\r\n",
        b"GET /bye HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ],
    ids=["HTTP/1.0", "Connection: close"],
)
def test_the_connection_closes_when_the_client_asks(server: ServerThread, wire: bytes):
    sock = connect(server)
    sock.sendall(wire)
    reader = Reader(sock)
    status, headers, _ = reader.response()
    assert status == 200
    assert headers.get("connection") == "close"
    assert reader.closed()
    sock.close()


def test_an_unhandled_error_is_a_500_and_the_connection_lives_on(server: ServerThread):
    sock = connect(server)
    sock.sendall(post("/boom", b"") + post("/echo", b"x"))
    reader = Reader(sock)
    status, _, raw = reader.response()
    assert (status, orjson.loads(raw)) == (500, {"error": "internal error: RuntimeError"})
    assert reader.response()[0] == 200
    sock.close()


def test_a_client_gone_mid_body_fails_the_handlers_read(server: ServerThread):
    sock = connect(server)
    sock.sendall(post("/echo", b"x" * BIG)[: 200 + DIRECT_BODY_BYTES])
    assert server.handlers.reading.wait(SAFETY_S)  # the handler waits for the rest
    sock.close()
    assert server.handlers.failed.wait(SAFETY_S)
    assert isinstance(server.handlers.errors[0], InvalidInput)
    assert "disconnected" in server.handlers.errors[0].message


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout():
    keep_alive_s = 0.3
    s = ServerThread(keep_alive_s=keep_alive_s).start()
    try:
        # The loop is held while the client connects and sends, so the request is there
        # when the server first sees the connection, however late this thread runs.
        resume = s.pause()
        started = time.monotonic()
        sock = connect(s)
        sock.sendall(post("/echo", b"x"))
        resume.set()
        reader = Reader(sock)
        assert reader.response()[0] == 200
        assert reader.closed()  # EOF: the only wait, up to the socket's SAFETY_S
        # The server's idle clock started after `started`: it cannot have closed sooner.
        assert time.monotonic() - started >= keep_alive_s
        sock.close()
    finally:
        s.stop()


def test_drain_finishes_requests_in_flight_and_closes_idle_connections():
    s = ServerThread(keep_alive_s=60).start()
    try:
        idle, busy = connect(s), connect(s)
        idle.sendall(post("/echo", b"1"))
        idle_reader = Reader(idle)
        assert idle_reader.response()[0] == 200
        busy.sendall(post("/slow", b"in flight"))
        assert s.handlers.held.wait(SAFETY_S)  # the slow request is being served
        s.drain()
        assert idle_reader.closed()  # idle: closed at once
        # The listening socket closed in the same step as the idle connection.
        with pytest.raises(ConnectionRefusedError):  # no longer accepting
            connect(s)
        s.call(s.handlers.gate.set)
        busy_reader = Reader(busy)
        status, headers, raw = busy_reader.response()
        assert (status, orjson.loads(raw)["length"]) == (200, len(b"in flight"))
        assert headers.get("connection") == "close"
        assert busy_reader.closed()
        idle.close()
        busy.close()
    finally:
        s.stop()
