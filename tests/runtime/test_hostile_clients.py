"""The runtime's HTTP server against slow and hostile clients, over real sockets.

A client that stalls in a head or a body gets 408 and a close; bodies take memory as
their bytes arrive, all of them together no more than the server's budget (503 past it);
a connection's buffers are freed when it closes, without a garbage collection; at most
`max_connections` are open; an upload that stopped does not hold the model's batches.

Timeouts are configured short and the tests wait for their effect (the 408, the EOF):
nothing here measures how long anything took. Memory is measured with tracemalloc in
the server's own process.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import re
import shutil
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

import numpy as np
import orjson
import pytest
import yaml

from kindling.errors import KindlingError, RouteNotFound
from kindling.runtime.httpserver import (
    DIRECT_BODY_BYTES,
    App,
    HttpServer,
    Limits,
    Request,
    Response,
)
from kindling.runtime.settings import ConfigError, ServerSettings
from tests.conftest import RuntimeProcess, launch_runtime
from tests.runtime.test_httpserver import Reader, connect, digest, post

SAFETY_S = 60  # how long a test waits for an event before calling it a hang
MIB = 1024 * 1024
BIG = 3 * DIRECT_BODY_BYTES + 123  # read straight into one buffer, past the parser
T = TypeVar("T")


class Handlers:
    """/early answers without reading the body; /large answers 16 MiB; anything else
    echoes the body's length and digest, recording who got to read it."""

    def __init__(self) -> None:
        self.reading: list[str] = []
        self.errors: list[KindlingError] = []

    async def handle(self, request: Request) -> Response:
        if request.path == "/early":
            raise RouteNotFound("nothing here")
        if request.path == "/large":
            return Response(b"x" * (16 * MIB))
        self.reading.append(request.path)
        try:
            body = await request.body()
        except KindlingError as exc:
            self.errors.append(exc)
            raise
        doc = {"path": request.path, "length": len(body), "sha": digest(body)}
        return Response(orjson.dumps(doc))

    @staticmethod
    def error(exc: KindlingError) -> Response:
        headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers().items()]
        return Response(orjson.dumps({"error": exc.message}), exc.status_code, headers=headers)


class Harness:
    """An HttpServer on a free loopback port, in a thread with its own event loop."""

    def __init__(self, limits: Limits, max_body: int = 4 * MIB, keep_alive_s: float = 60) -> None:
        self.handlers = Handlers()
        self.limits, self.max_body, self.keep_alive_s = limits, max_body, keep_alive_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: HttpServer | None = None
        self.port = 0
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Harness:
        self._thread.start()
        assert self._ready.wait(SAFETY_S)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(SAFETY_S)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = App(self.handlers.handle, self.handlers.error)
        self.server = HttpServer(app, self.loop, self.max_body, self.keep_alive_s, self.limits)
        self.port = await self.server.listen("127.0.0.1", 0)
        self._ready.set()
        await self._stop.wait()
        await self.server.drain(SAFETY_S)

    def query(self, fn: Callable[[HttpServer], T]) -> T:
        """`fn(server)`, run on the server's loop between two of its steps."""
        assert self.loop is not None
        result: Future[T] = Future()

        def run() -> None:
            try:
                result.set_result(fn(self.server))  # type: ignore[arg-type]
            except BaseException as exc:
                result.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return result.result(SAFETY_S)

    def wait_until(self, condition: Callable[[HttpServer], bool]) -> None:
        """Until the server is in a state: polled, with SAFETY_S as the only limit."""
        deadline = time.monotonic() + SAFETY_S
        while not self.query(condition):
            assert time.monotonic() < deadline, "the server never reached the state"
            time.sleep(0.005)


def head(path: str, length: int) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()


def error_of(raw: bytes) -> str:
    return orjson.loads(raw)["error"]


def expect_close(reader: Reader, status: int) -> tuple[dict[str, str], bytes]:
    """The next response has `status` and `connection: close`, and then the server closes."""
    got, headers, raw = reader.response()
    assert (got, headers.get("connection")) == (status, "close")
    assert reader.closed()
    return headers, raw


@pytest.fixture
def quick() -> Iterator[Harness]:
    """Short header and body timeouts; a long keep-alive, so that only they can close."""
    with Harness(Limits(header_timeout_s=0.2, body_timeout_s=0.2)) as harness:
        yield harness


@pytest.fixture
def harness() -> Iterator[Harness]:
    with Harness(Limits()) as harness:
        yield harness


# -- slow clients -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire", [b"P", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Le"], ids=["a byte", "half a head"]
)
def test_a_stalled_head_gets_408_then_a_close(quick: Harness, wire: bytes):
    sock = connect(quick)
    sock.sendall(wire)
    _, raw = expect_close(Reader(sock), 408)
    assert "head" in error_of(raw)
    sock.close()


@pytest.mark.parametrize(
    "stalled",
    [
        head("/stalled", BIG) + b"x" * 1000,  # read past the parser
        head("/stalled", 1000) + b"x" * 10,  # through the parser
        b"POST /stalled HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    ],
    ids=["large", "small", "chunked"],
)
def test_a_stalled_body_gets_408_after_the_requests_before_it(quick: Harness, stalled: bytes):
    sock = connect(quick)
    sock.sendall(post("/first", b"fine") + stalled)
    reader = Reader(sock)
    status, headers, raw = reader.response()
    assert (status, orjson.loads(raw)["length"], headers.get("connection")) == (200, 4, None)
    _, raw = expect_close(reader, 408)
    assert "body" in error_of(raw)
    assert [type(e).__name__ for e in quick.handlers.errors] == ["RequestTimeout"]
    sock.close()


def test_an_answered_request_whose_body_stops_is_closed(quick: Harness):
    """Answered early (404), its unread body dropped as it comes: when it stops coming,
    the connection closes (no second answer) instead of waiting for it."""
    sock = connect(quick)
    sock.sendall(head("/early", BIG) + b"x" * 1000)
    reader = Reader(sock)
    assert reader.response()[0] == 404
    assert reader.closed()
    sock.close()


def test_a_client_that_does_not_read_its_responses_is_reset(quick: Harness):
    """Responses the client never reads fill the socket buffers; after the body timeout
    without progress the server drops the connection rather than hold it for ever."""
    sock = connect(quick)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /large HTTP/1.1\r\nHost: t\r\n\r\n" * 4)
    quick.wait_until(lambda server: not server.connections)
    sock.close()


# -- body memory ----------------------------------------------------------------------------


@pytest.fixture
def traced() -> Iterator[Callable[[], int]]:
    """Bytes allocated by Python since the fixture started, every thread included."""
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    yield lambda: tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()


def test_a_declared_body_takes_memory_only_as_it_arrives(traced: Callable[[], int]):
    """Eight uploads that declare 16 MiB and send a byte: 128 MiB if allocated on the
    declaration, at most 8 MiB (one first step each) as they arrive."""
    with Harness(Limits(), max_body=16 * MIB) as harness:
        socks = [connect(harness) for _ in range(8)]
        for sock in socks:
            sock.sendall(head("/stalled", 16 * MIB) + b"x")
        harness.wait_until(lambda server: len(harness.handlers.reading) == 8)
        harness.wait_until(
            lambda server: server.budget.free == server.budget.limit - 8 * MIB
        )  # each got its first byte, in a first step of 1 MiB
        assert traced() < 8 * MIB + 2 * MIB
        for sock in socks:
            sock.close()


def test_bodies_past_the_memory_budget_get_503_with_retry_after():
    with Harness(Limits(max_body_memory=2 * MIB)) as harness:
        hog = connect(harness)
        hog.sendall(head("/hog", 4 * MIB) + b"x" * (3 * MIB // 2))  # grows to 2 MiB, and stops
        harness.wait_until(lambda server: server.budget.free == 0)
        sock = connect(harness)
        reader = Reader(sock)
        sock.sendall(post("/echo", b"y" * BIG))
        status, headers, raw = reader.response()
        assert (status, headers.get("retry-after")) == (503, "1")
        assert "retry" in error_of(raw)
        sock.sendall(post("/small", b"z" * 100))  # the connection lives; a small body is free
        assert reader.response()[0] == 200
        hog.close()  # its memory goes back with it
        harness.wait_until(lambda server: server.budget.free == server.budget.limit)
        body = b"w" * BIG
        sock.sendall(post("/echo", body))
        status, _, raw = reader.response()
        assert (status, orjson.loads(raw)["sha"]) == (200, digest(body))
        sock.close()


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_buffers_are_freed_when_connections_close_without_a_gc(
    no_gc: None, traced: Callable[[], int]
):
    """Some connections complete a large request (the server keeps its buffer for the
    next one), others stop mid-body (the handler's read fails); all then close. With the
    garbage collector off, all of it must be gone: reference cycles (an error's traceback
    and the request it holds, the parser and its protocol) would keep 36 MiB."""
    with Harness(Limits(), max_body=16 * MIB) as harness:
        socks = []
        for i in range(8):
            sock = connect(harness)
            if i % 2:
                sock.sendall(post("/complete", b"c" * (3 * MIB)))
                assert Reader(sock).response()[0] == 200
            else:
                sock.sendall(head("/cut", 6 * MIB) + b"h" * (3 * MIB))
            socks.append(sock)
        harness.wait_until(lambda server: len(harness.handlers.reading) == 8)
        for sock in socks:
            sock.close()
        harness.wait_until(
            lambda server: not server.connections and len(harness.handlers.errors) == 4
        )
        assert traced() < 2 * MIB


# -- connections ------------------------------------------------------------------------------


def test_one_connection_past_the_cap_gets_503_and_a_close():
    with Harness(Limits(max_connections=2)) as harness:
        first, second = connect(harness), connect(harness)
        harness.wait_until(lambda server: len(server.connections) == 2)
        third = connect(harness)  # answered at once, before it sends anything
        headers, _ = expect_close(Reader(third), 503)
        assert headers.get("retry-after") == "1"
        first.sendall(post("/echo", b"still served"))
        assert Reader(first).response()[0] == 200
        second.close()
        harness.wait_until(lambda server: len(server.connections) == 1)
        fourth = connect(harness)
        fourth.sendall(post("/echo", b"room again"))
        assert Reader(fourth).response()[0] == 200
        for sock in (first, third, fourth):
            sock.close()


# -- HTTP ---------------------------------------------------------------------------------------


def test_garbage_after_a_pipelined_request_gets_400_then_a_close(harness: Harness):
    sock = connect(harness)
    sock.sendall(post("/echo", b"ok") + b"GARBAGE\r\n\r\n")
    reader = Reader(sock)
    status, headers, raw = reader.response()
    assert (status, orjson.loads(raw)["length"], headers.get("connection")) == (200, 2, None)
    _, raw = expect_close(reader, 400)
    assert "malformed" in error_of(raw)
    sock.close()


@pytest.mark.parametrize(
    ("wire", "status", "said"),
    [
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\nok",
         417, "cannot meet the expectation"),
        (b"GET /x HTTP/1.1\r\n\r\n", 400, "exactly one Host header"),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "exactly one Host header"),
        (b"GET /x HTTP/2.0\r\nHost: t\r\n\r\n", 505, "HTTP/1.1 or 1.0"),
        (b"GET /x HTTP/3.0\r\nHost: t\r\n\r\n", 505, "HTTP/1.1 or HTTP/1.0"),
        (b"GET /x\r\n\r\n", 505, "HTTP/0.9 is not supported"),
        (b"BREW /x HTTP/1.1\r\nHost: t\r\n\r\n", 501, "unknown request method"),
        (b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
         400, "framing is faulty"),
    ],
    ids=["expect-other", "no-host", "two-hosts", "http2-line", "http3-line", "http09-line",
         "unknown-method", "te-in-http10"],
)  # fmt: skip
def test_http_semantics_are_answered_with_their_own_status(
    harness: Harness, wire: bytes, status: int, said: str
):
    """RFC 9110 and 9112: each gets its status and a clear message, then a close."""
    sock = connect(harness)
    sock.sendall(wire)
    _, raw = expect_close(Reader(sock), status)
    assert said in error_of(raw), error_of(raw)
    sock.close()


def test_an_http10_expect_is_ignored_and_its_keep_alive_is_answered(harness: Harness):
    """RFC 9110 §10.1.1: 100-continue is ignored in HTTP/1.0 (no interim answer); RFC 9112
    §9.3: a 1.0 connection persists only if the answer says keep-alive, and then it does."""
    sock = connect(harness)
    request = (
        b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    reader = Reader(sock)
    for _ in range(2):
        sock.sendall(request)
        status, headers, raw = reader.response()
        assert (status, headers.get("connection")) == (200, "keep-alive")
        assert orjson.loads(raw)["length"] == 2
    sock.sendall(b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\n\r\nok")  # no keep-alive
    assert reader.response()[0] == 200 and reader.closed()
    sock.close()


def test_a_repeated_expect_100_continue_still_gets_its_100(harness: Harness):
    sock = connect(harness)
    sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nExpect: 100-Continue\r\n"
        b"Content-Length: 2\r\n\r\n"
    )
    reader = Reader(sock)
    assert reader.response()[0] == 100  # before any body byte was sent
    sock.sendall(b"ok")
    status, _, raw = reader.response()
    assert (status, orjson.loads(raw)["length"]) == (200, 2)
    sock.close()


@pytest.mark.parametrize("coding", ["gzip", "GZIP, chunked", "identity"])
def test_an_unsupported_transfer_coding_gets_501_then_a_close(harness: Harness, coding: str):
    """RFC 9112 §6.1; "gzip, chunked" would otherwise pass still-gzipped bytes as the body."""
    sock = connect(harness)
    sock.sendall(
        f"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {coding}\r\n\r\n".encode()
        + b"3\r\nabc\r\n0\r\n\r\n"
    )
    _, raw = expect_close(Reader(sock), 501)
    assert "chunked" in error_of(raw)
    sock.close()


def test_chunked_is_a_transfer_coding_in_any_case(harness: Harness):
    sock = connect(harness)
    sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    status, _, raw = Reader(sock).response()
    assert (status, orjson.loads(raw)["length"]) == (200, 3)
    sock.close()


def test_an_encoded_slash_does_not_split_a_path_segment(harness: Harness):
    sock = connect(harness)
    sock.sendall(post("/v2/models/a%2fb%20c%41/infer", b""))
    status, _, raw = Reader(sock).response()
    assert (status, orjson.loads(raw)["path"]) == (200, "/v2/models/a%2Fb cA/infer")
    sock.close()


# -- settings ---------------------------------------------------------------------------------


def test_the_limits_are_settings():
    settings = ServerSettings.from_env({})
    assert (
        settings.header_timeout_s,
        settings.body_timeout_s,
        settings.max_body_memory_bytes,
        settings.max_connections,
    ) == (10.0, 30.0, 256 * MIB, 1000)
    assert Limits.of(settings) == Limits()
    env = {
        "KINDLING_HEADER_TIMEOUT_S": "2.5",
        "KINDLING_BODY_TIMEOUT_S": "7",
        "KINDLING_MAX_BODY_MEMORY_BYTES": str(512 * MIB),
        "KINDLING_MAX_CONNECTIONS": "50",
    }
    assert Limits.of(ServerSettings.from_env(env)) == Limits(2.5, 7.0, 512 * MIB, 50)
    for bad in (
        {"KINDLING_HEADER_TIMEOUT_S": "0"},
        {"KINDLING_MAX_CONNECTIONS": "0"},
        {"KINDLING_MAX_BODY_MEMORY_BYTES": str(MIB)},  # less than one body at the limit
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ServerSettings.from_env(bad)


# -- a real runtime: stalled uploads and batching ---------------------------------------------

MODEL = "squeezenet1_1"
SHAPE = (1, 3, 224, 224)


@pytest.fixture(scope="module")
def slow_batching_runtime(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    """One image model whose batches may wait an hour for requests known to be arriving:
    if a stalled upload counted as arriving, a request would wait that long. Any run is
    quick enough to go inline; a short header timeout checks the setting's plumbing."""
    workdir = tmp_path_factory.mktemp("hostile")
    repository = workdir / "models"
    shutil.copytree(model_repository / MODEL, repository / MODEL)
    config_path = repository / MODEL / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["batching"] = {"max_queue_delay_ms": 3_600_000}
    config_path.write_text(yaml.safe_dump(config))
    runtime = launch_runtime(
        workdir,
        repository,
        env={
            "KINDLING_INLINE_MAX_MS": "3600000",
            "KINDLING_HEADER_TIMEOUT_S": "0.3",
            "KINDLING_BODY_TIMEOUT_S": "3600",
        },
    )
    yield runtime
    runtime.stop()


def image_request() -> tuple[bytes, dict[str, str]]:
    """A binary-tensor OIP request for one image."""
    image = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    tensor = {"name": "input", "datatype": "FP32", "shape": list(SHAPE)}
    tensor["parameters"] = {"binary_data_size": image.nbytes}
    header = orjson.dumps({"inputs": [tensor]})
    headers = {"Inference-Header-Content-Length": str(len(header))}
    return header + image.tobytes(), headers


def infer(runtime: RuntimeProcess, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=SAFETY_S)
    try:
        conn.request("POST", f"/v2/models/{MODEL}/infer", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def metric(runtime: RuntimeProcess, name: str) -> float:
    status, text = runtime.get("/metrics")
    assert status == 200
    found = re.search(rf"^{re.escape(name)} (\S+)$", text.decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def queue_phase(runtime: RuntimeProcess) -> tuple[float, float]:
    """(count, sum) of the queue-time histogram: a request run inline adds exactly 0.0."""
    labels = f'{{model="{MODEL}",phase="queue"}}'
    return (
        metric(runtime, f"kindling_request_duration_seconds_count{labels}"),
        metric(runtime, f"kindling_request_duration_seconds_sum{labels}"),
    )


@pytest.mark.integration
def test_a_stalled_upload_holds_neither_the_batches_nor_the_inline_path(
    slow_batching_runtime: RuntimeProcess,
):
    runtime = slow_batching_runtime
    body, headers = image_request()
    stalled = socket.create_connection(("127.0.0.1", runtime.port), timeout=SAFETY_S)
    lines = [f"POST /v2/models/{MODEL}/infer HTTP/1.1", "Host: t", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    stalled.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body[:1000])
    in_flight = f'kindling_requests_in_flight{{model="{MODEL}"}}'
    deadline = time.monotonic() + SAFETY_S
    while metric(runtime, in_flight) != 1:  # its body is being awaited
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # It began first and is still arriving: a batch that waited for it would wait an hour.
    assert infer(runtime, body, headers) == 200
    # That request overtook it, and marked the traffic concurrent for a while
    # (SEQUENTIAL_AFTER_S); once that passes, a lone request runs inline again.
    deadline = time.monotonic() + SAFETY_S
    while True:
        count, total = queue_phase(runtime)
        assert infer(runtime, body, headers) == 200
        if queue_phase(runtime) == (count + 1, total):  # queued for exactly 0 s: inline
            break
        assert time.monotonic() < deadline, "never inline while an upload is stalled"
        time.sleep(0.05)
    stalled.close()


@pytest.mark.integration
def test_an_encoded_slash_is_not_a_version_separator(slow_batching_runtime: RuntimeProcess):
    """Decoded before routing, this would be /v2/models/M/versions/1, model M's metadata."""
    status, raw = slow_batching_runtime.get(f"/v2/models/{MODEL}%2Fversions%2F1")
    assert status == 404
    assert "not found" in orjson.loads(raw)["error"]


@pytest.mark.integration
def test_a_runtime_answers_a_stalled_head_with_408(slow_batching_runtime: RuntimeProcess):
    """KINDLING_HEADER_TIMEOUT_S reaches the server."""
    sock = socket.create_connection(("127.0.0.1", slow_batching_runtime.port), timeout=SAFETY_S)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
    expect_close(Reader(sock), 408)
    sock.close()
