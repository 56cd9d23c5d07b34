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
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def raw_request(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 POST as bytes, to be written to a socket as it is."""
    head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body


def start_runtime(repository: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`kindling serve` in a subprocess; `env` adds to this process's environment."""
    return subprocess.Popen(
        [sys.executable, "-m", "kindling", "serve", "--model-repository", str(repository)],
        env={**os.environ, **env, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_ready(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise TimeoutError("server never became ready")


ECHO_BODY = b"x" * 4000  # about one image model's binary logits response


async def echo_app(scope: dict, receive: object, send: object) -> None:
    """The HTTP floor: an ASGI app that reads the body and answers 4 kB, nothing else."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()  # type: ignore[operator]
        more = message.get("more_body", False)
    headers = [(b"content-length", str(len(ECHO_BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": ECHO_BODY})  # type: ignore[operator]


def start_echo(port: int) -> subprocess.Popen[bytes]:
    """uvicorn serving `echo_app` exactly as the runtime is served (same protocol class)."""
    return subprocess.Popen(
        [sys.executable, "-m", "kindling.loadtest.benchclient", "--echo", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def serve_echo(port: int) -> None:
    import uvicorn

    from kindling.runtime.server import BodyPassThroughProtocol

    uvicorn.run(
        echo_app,
        port=port,
        loop="uvloop",
        http=BodyPassThroughProtocol,
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


def get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    return conn.getresponse().read().decode()


async def _closed_loop(
    port: int, requests: list[bytes], concurrency: int, seconds: float
) -> list[float]:
    """C callers, each sending the next request as soon as its last one is answered."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = offset
        while time.perf_counter() < stop:
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n")[0].decode())
            latencies.append(time.perf_counter() - started)
            i += concurrency
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


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--echo":
        serve_echo(int(sys.argv[2]))
