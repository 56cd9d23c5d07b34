"""The one client every peer gets: keep-alive HTTP/1.1 on raw asyncio sockets.

Bodies are built once; parsing is the bare minimum (status line, Content-Length or
chunked), so what is measured is the server, as in bench_runtime.py.
"""

from __future__ import annotations

import asyncio
import time


def raw_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; returns its status."""
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


async def _caller(port: int, request: bytes, stop: float, times: list[float] | None) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status = await read_response(reader)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
            if times is not None:
                times.append(time.perf_counter() - start)
            done += 1
    finally:
        writer.close()
    return done


def closed_loop(port: int, request: bytes, concurrency: int, seconds: float) -> float:
    """Requests per second from `concurrency` callers back to back."""

    async def run() -> int:
        stop = time.perf_counter() + seconds
        counts = await asyncio.gather(
            *(_caller(port, request, stop, None) for _ in range(concurrency))
        )
        return sum(counts)

    asyncio.run(_warm(port, request, concurrency))
    start = time.perf_counter()
    done = asyncio.run(run())
    return done / (time.perf_counter() - start)


async def _warm(port: int, request: bytes, concurrency: int) -> None:
    stop = time.perf_counter() + 0.5  # every connection path and batch size seen once
    await asyncio.gather(*(_caller(port, request, stop, None) for _ in range(concurrency)))


def latencies(port: int, request: bytes, count: int, warmup: int = 10) -> list[float]:
    """`count` sequential request latencies (seconds) on one connection, after `warmup`."""

    async def run() -> list[float]:
        times: list[float] = []
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(count + warmup):
                start = time.perf_counter()
                writer.write(request)
                await writer.drain()
                status = await read_response(reader)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}")
                if i >= warmup:
                    times.append(time.perf_counter() - start)
        finally:
            writer.close()
        return times

    return asyncio.run(run())


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
