"""Talking to one runtime for the advisor: its metadata and /config, a request body for a
model, and a counted closed loop that keeps every request's latency.

`loadtest.benchclient.closed_loop` runs for a time and writes `Host: 127.0.0.1`; the
advisor needs a fixed number of samples per load point (a p99 from a known count) and a
URL that may sit behind an ingress that routes on Host, so the loop is here, on
benchclient's `read_response`. Every call has a timeout; redirects are refused (a
measurement must be of the URL given, not of wherever it points).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Never
from urllib.parse import urlsplit

import numpy as np

from kindling.advisor.measurements import MeasurementError
from kindling.loadtest.benchclient import read_response

# Numeric OIP datatypes a request can be built for (OIP "Tensor Data Types").
_DTYPES: dict[str, type[np.generic]] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
# A dynamic dimension past the batch (a sequence length): small, as a light request is
# what the sweep wants; 16 tokens is a short sentence.
DYNAMIC_DIM = 16


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl) -> Never:  # noqa: ANN001 (urllib's)
        raise MeasurementError(f"{req.full_url} redirects ({code}) to {newurl}: give that URL")


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass(frozen=True)
class Target:
    """A runtime's base URL, split for the raw client: http or https, host, port, the
    Host header, and a path prefix (a runtime mounted below one)."""

    host: str
    port: int
    tls: bool
    host_header: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MeasurementError(f"{url!r}: give an http:// or https:// URL of a runtime")
        if parts.query or parts.fragment:
            raise MeasurementError(f"{url!r}: a base URL takes no query or fragment")
        tls = parts.scheme == "https"
        try:
            port = parts.port or (443 if tls else 80)
        except ValueError as exc:
            raise MeasurementError(f"{url!r}: {exc}") from exc
        return cls(parts.hostname, port, tls, parts.netloc, parts.path.rstrip("/"))

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host_header}{self.prefix}"

    def get_json(self, path: str, timeout_s: float) -> dict[str, Any]:
        """GET base+path as a JSON object; any failure is a MeasurementError."""
        url = self.base + path
        try:
            with _OPENER.open(urllib.request.Request(url), timeout=timeout_s) as response:
                doc = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise MeasurementError(f"GET {url}: HTTP {exc.code} {detail}") from exc
        except (OSError, ValueError) as exc:
            raise MeasurementError(f"GET {url}: {exc}") from exc
        if not isinstance(doc, dict):
            raise MeasurementError(f"GET {url}: not a JSON object")
        return doc

    def post_bytes(self, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        """One whole HTTP/1.1 POST, prebuilt, as the closed loop writes it."""
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return (
            f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
            f"Content-Length: {len(body)}\r\n{head}\r\n"
        ).encode() + body

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        context = ssl.create_default_context() if self.tls else None
        return await asyncio.open_connection(self.host, self.port, ssl=context)


# -- request bodies ----------------------------------------------------------------------


def sentence() -> str:
    """One corpus sentence (loadtest/corpus: the text the load tests send)."""
    from kindling.loadtest import corpus

    return corpus.sentences()[0]


def infer_request(metadata: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """One light inference request for any model, from its OIP metadata: a batch of one of
    each input, numbers in OIP's binary extension (floats seeded normal, integers zero),
    BYTES as one corpus sentence in the JSON header; outputs asked for binary, so no JSON
    encoding of them is timed."""
    rng = np.random.default_rng(0)
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    try:
        for spec in metadata["inputs"]:
            name, datatype = str(spec["name"]), str(spec["datatype"])
            dims = [int(d) for d in spec["shape"]]
            shape = [
                1 if i == 0 and d < 0 else (DYNAMIC_DIM if d < 0 else d) for i, d in enumerate(dims)
            ]
            count = int(np.prod(shape)) if shape else 1
            if datatype == "BYTES":
                inputs.append(
                    {
                        "name": name,
                        "datatype": datatype,
                        "shape": shape,
                        "data": [sentence()] * count,
                    }
                )
                continue
            if datatype not in _DTYPES:
                raise MeasurementError(f"input {name!r}: cannot build a {datatype} tensor")
            dtype = _DTYPES[datatype]
            if np.issubdtype(dtype, np.floating):
                array = rng.standard_normal(shape).astype(dtype)
            else:
                array = np.zeros(shape, dtype)
            blob = array.tobytes()
            blobs.append(blob)
            inputs.append(
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(blob)},
                }
            )
        outputs = [
            {"name": str(o["name"]), "parameters": {"binary_data": True}}
            for o in metadata.get("outputs", [])
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise MeasurementError(f"model metadata without usable inputs ({exc!r})") from exc
    if not inputs:
        raise MeasurementError("model metadata lists no inputs")
    header = json.dumps({"inputs": inputs, "outputs": outputs}).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + b"".join(blobs), headers


# -- the closed loop ------------------------------------------------------------------------


async def _closed_loop(
    target: Target, request: bytes, concurrency: int, count: int, warmup: int, max_s: float
) -> tuple[list[float], float]:
    connections = [await target.connect() for _ in range(concurrency)]
    latencies_ms: list[float] = []
    tickets = count

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        started = time.perf_counter()
        writer.write(request)
        await writer.drain()
        status = await read_response(reader)
        if status != 200:
            raise MeasurementError(f"the runtime answered HTTP {status} at C={concurrency}")
        return (time.perf_counter() - started) * 1e3

    async def warm(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(warmup):
            await exchange(reader, writer)

    async def caller(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal tickets
        while tickets > 0 and time.perf_counter() < deadline:
            tickets -= 1
            latencies_ms.append(await exchange(reader, writer))

    try:
        await asyncio.gather(*(warm(r, w) for r, w in connections))
        started = time.perf_counter()
        deadline = started + max_s
        await asyncio.gather(*(caller(r, w) for r, w in connections))
        elapsed = time.perf_counter() - started
    finally:
        for _, writer in connections:
            writer.close()
    return latencies_ms, len(latencies_ms) / elapsed


def closed_loop(
    target: Target,
    request: bytes,
    concurrency: int,
    count: int,
    warmup: int,
    max_s: float,
    timeout_s: float,
) -> tuple[list[float], float]:
    """`concurrency` callers on keep-alive connections, each sending the next request as
    soon as its last is answered, until `count` are answered (or `max_s` has passed): each
    latency in ms, and the rate. `warmup` requests per caller first, not kept. A non-200
    answer is a MeasurementError, and so is a loop still running `timeout_s` per request
    past its time (a hung runtime)."""
    # The whole loop's bound: a safety net, generous enough for every request to take
    # its timeout once.
    bound = max_s + timeout_s * (warmup + 2)
    try:
        return asyncio.run(
            asyncio.wait_for(
                _closed_loop(target, request, concurrency, count, warmup, max_s), bound
            )
        )
    except TimeoutError as exc:
        raise MeasurementError(f"C={concurrency}: no answer within {bound:.0f} s") from exc
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        raise MeasurementError(f"C={concurrency}: {type(exc).__name__}: {exc}") from exc
