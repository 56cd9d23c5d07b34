"""A lean HTTP/1.1 client and server launcher for the benchmark scripts.

The benchmarks measure servers, so the client must cost little: requests are prebuilt
bytes sent over keep-alive connections from asyncio, with no per-request encoding.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

# One free-port helper for the repository (tests/conftest.py uses it too); re-exported
# for the benchmarks that import it from here.
from kindling.cluster.processes import free_port as free_port


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def raw_request(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 POST as bytes, to be written to a socket as it is."""
    head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body


def start_runtime(
    repository: Path,
    port: int,
    env: dict[str, str],
    args: tuple[str, ...] = (),
    stdout: int | IO[bytes] = subprocess.DEVNULL,
    stderr: int | IO[bytes] = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """`kindling serve` in a subprocess on `port`; `env` adds to this process's environment.
    The one launcher: the benchmarks, the advisor and the tests' fixtures start it here."""
    command = [sys.executable, "-m", "kindling", "serve", "--model-repository", str(repository)]
    return subprocess.Popen(
        [*command, *args],
        env={**os.environ, **env, "PORT": str(port)},
        stdout=stdout,
        stderr=stderr,
    )


def wait_ready(
    port: int,
    timeout: float = 60,
    path: str = "/v2/health/ready",
    process: subprocess.Popen[bytes] | None = None,
    log: Callable[[], str] = lambda: "",
) -> None:
    """Until GET `path` answers 200. A `process` that exits first fails at once, with its
    `log()`; the timeout is a safety net against a hung process, not a measurement."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"runtime exited with {process.returncode}:\n{log()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        except OSError:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"runtime not answering 200 on {path} after {timeout} s:\n{log()}")


def first_answer_s(
    process: subprocess.Popen[bytes],
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    started: float,
    safety_s: float,
    log: Callable[[], str] = lambda: "",
) -> float:
    """Seconds from `started` (perf_counter) to the first 200 answer to POST `path`: a cold
    start, spawn to answer, with the port polled every 2 ms. A process that exits first
    fails with its `log()`; `safety_s` is a safety net, not a bound on what is measured."""
    while time.perf_counter() - started < safety_s:
        if process.poll() is not None:
            raise RuntimeError(f"kindling serve exited with {process.returncode}:\n{log()}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                return time.perf_counter() - started
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.002)  # polling the port: the start is what is timed, not this
    raise TimeoutError(f"no answer on {path} {safety_s:.0f} s after spawning:\n{log()}")


ECHO_BODY = b"x" * 4000  # about one image model's binary logits response


def start_echo(port: int) -> subprocess.Popen[bytes]:
    """The HTTP floor: the runtime's own HTTP server with a handler that reads the body
    and answers 4 kB, nothing else."""
    return subprocess.Popen(
        [sys.executable, "-m", "kindling.loadtest.benchclient", "--echo", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def serve_echo(port: int) -> None:
    from kindling.runtime.httpserver import App, Request, Response
    from kindling.runtime.lifecycle import run_app

    async def handle(request: Request) -> Response:
        await request.body()
        return Response(ECHO_BODY, content_type=b"application/octet-stream")

    app = App(handle, error=lambda exc: Response(exc.message.encode(), exc.status_code))
    run_app(app, "127.0.0.1", port, 1 << 30, 5.0, 1.0)


def get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    return conn.getresponse().read().decode()


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (Content-Length or chunked body); returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    if b"content-length" in fields:
        await reader.readexactly(int(fields[b"content-length"]))
    elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _closed_loop(
    port: int, requests: list[bytes], concurrency: int, seconds: float
) -> list[float]:
    """C callers, each sending the next request as soon as its last one is answered."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = offset
        try:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                writer.write(requests[i % len(requests)])
                await writer.drain()
                status = await read_response(reader)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}")
                latencies.append(time.perf_counter() - started)
                i += concurrency
        finally:
            writer.close()

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return latencies


def closed_loop(
    port: int, requests: list[bytes], concurrency: int, seconds: float, warmup_s: float = 0.5
) -> tuple[list[float], float]:
    """Latencies of a closed loop at `concurrency`, and its throughput (requests/s)."""
    asyncio.run(_closed_loop(port, requests, concurrency, warmup_s))
    started = time.perf_counter()
    latencies = asyncio.run(_closed_loop(port, requests, concurrency, seconds))
    return latencies, len(latencies) / (time.perf_counter() - started)


class BlockingConnection:
    """One keep-alive connection on a blocking socket: at concurrency 1 the leanest client
    (no event loop between the socket and the clock), so what is timed is the server."""

    def __init__(self, port: int, timeout: float = 60) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb", buffering=1 << 16)

    def exchange(self, request: bytes) -> int:
        """Send a prebuilt request, read the whole response; returns its status."""
        self.sock.sendall(request)
        reader = self.reader
        status = int(reader.readline().split()[1])
        length = None
        chunked = False
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if chunked:
            while size := int(reader.readline().split(b";")[0], 16):
                reader.read(size + 2)
            reader.readline()
        elif length:
            reader.read(length)
        return status

    def ok(self, request: bytes) -> None:
        """`exchange`, failing the benchmark on any answer but 200."""
        if (status := self.exchange(request)) != 200:
            raise RuntimeError(f"HTTP {status}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def latencies(port: int, request: bytes, count: int, warmup: int = 10) -> list[float]:
    """`count` sequential request latencies (seconds) on one connection, after `warmup`."""
    conn = BlockingConnection(port)
    try:
        times: list[float] = []
        for i in range(count + warmup):
            started = time.perf_counter()
            conn.ok(request)
            if i >= warmup:
                times.append(time.perf_counter() - started)
        return times
    finally:
        conn.close()


def interleaved(
    samplers: dict[str, Callable[[], object]], rounds: int, per_round: int = 25, warmup: int = 5
) -> dict[str, list[list[float]]]:
    """Time each sampler in turn, `per_round` calls at a time, for `rounds` rounds.

    On a shared machine the speed drifts over seconds; alternating in short rounds puts
    every side through the same drift, so their difference is fair where separate runs
    would differ by the drift (±20% here). Returns each side's samples (seconds) per round.
    """
    for sample in samplers.values():
        for _ in range(warmup):
            sample()
    result: dict[str, list[list[float]]] = {name: [] for name in samplers}
    for _ in range(rounds):
        for name, sample in samplers.items():
            times = []
            for _ in range(per_round):
                started = time.perf_counter()
                sample()
                times.append(time.perf_counter() - started)
            result[name].append(times)
    return result


def try_once(port: int, request: bytes, timeout: float) -> int | None:
    """One request on a new connection; its status, or None if nobody answered."""

    async def run() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()

    try:
        return asyncio.run(asyncio.wait_for(run(), timeout))
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
        return None


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--echo":
        serve_echo(int(sys.argv[2]))
