"""HTTP front of EmbeddingStore for clients that cannot call it in-process.

    POST /v1/tables/{table}/lookup  {"words": [...]}
        200 application/json          {"dim": D, "vectors": [[...], ...], "oov": [i, ...],
                                       "table": T, "version": V}
        200 application/octet-stream  (when the request says Accept: application/octet-stream)
                                      raw little-endian float32, row-major, one row per
                                      word; headers X-Kindling-Dim, X-Kindling-Rows,
                                      X-Kindling-OOV (comma-separated indices),
                                      X-Kindling-Version
    GET  /v1/tables, /v1/tables/{table}   table names, a table's metadata
    GET  /healthz    the process is up
    GET  /readyz     the backing store answers (Redis PING)
    GET  /metrics    Prometheus text format

Every error is a KindlingError and leaves through one handler as {"error": message}
with its status (unknown table 404, bad body 400, a body over KINDLING_MAX_BODY_BYTES
413, Redis down 503 + Retry-After).
The binary form exists because JSON costs ~20 bytes and a float parse per number:
300-d vectors for a 20-word sentence are 24 KB raw against ~120 KB of JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kindling.embeddings.store import EmbeddingStore
from kindling.errors import InvalidInput, KindlingError, PayloadTooLarge
from kindling.metrics import CONTENT_TYPE, Registry

BINARY = "application/octet-stream"


def _json(content: object, status: int = 200) -> Response:
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, media_type="application/json")


def _words(raw: bytes) -> list[str]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not JSON: {exc}") from None
    words = body.get("words") if isinstance(body, dict) else None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise InvalidInput('body must be {"words": [string, ...]}')
    return words


def error_response(exc: KindlingError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, exc.status_code, headers=exc.headers())


class BodyLimit:
    """413 for a request body over `limit` bytes: by Content-Length before any of it is
    read, else (chunked) once the bytes received pass it, which fails the endpoint's read.
    Starlette's Request.body() keeps whatever it is given (a 186 MB body took the process
    from 73 to 549 MB before); uvicorn reads and drops the rest of a body answered early,
    so the client, still sending, gets the 413 rather than a reset."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                exc = PayloadTooLarge(
                    f"request body of {int(value)} bytes exceeds the limit of {limit}"
                )
                await error_response(exc)(scope, receive, send)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, limited, send)


def create_app(store: EmbeddingStore) -> FastAPI:
    registry: Registry = store.registry
    requests = registry.counter(
        "kindling_embeddings_http_requests_total", "HTTP requests by route and status.",
        ["route", "code"],
    )  # fmt: skip

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(title="Kindling embeddings", lifespan=lifespan)
    # Added before `count`, so inside it: refused bodies are counted too.
    app.add_middleware(BodyLimit, limit=store.settings.max_body_bytes)

    @app.exception_handler(KindlingError)
    async def kindling_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, KindlingError)
        return error_response(exc)

    @app.middleware("http")
    async def count(request: Request, call_next: object) -> Response:
        response: Response = await call_next(request)  # type: ignore[operator]
        route = request.scope.get("route")
        requests.inc(getattr(route, "path", "other"), str(response.status_code))
        return response

    @app.post("/v1/tables/{table}/lookup")
    async def lookup(table: str, request: Request) -> Response:
        words = _words(await request.body())
        # The lookup blocks on Redis; keep it off the event loop.
        result = await run_in_threadpool(store.lookup, table, words)
        if BINARY in request.headers.get("accept", ""):
            headers = {
                "X-Kindling-Dim": str(result.dim),
                "X-Kindling-Rows": str(len(words)),
                "X-Kindling-OOV": ",".join(map(str, result.oov)),
                "X-Kindling-Version": result.version,
            }
            body = result.vectors.astype("<f4", copy=False).tobytes()
            return Response(body, media_type=BINARY, headers=headers)
        return _json(
            {
                "dim": result.dim,
                "vectors": result.vectors,
                "oov": result.oov,
                "table": result.table,
                "version": result.version,
            }
        )

    @app.get("/v1/tables")
    async def tables() -> Response:
        return _json({"tables": await run_in_threadpool(store.tables)})

    @app.get("/v1/tables/{table}")
    async def info(table: str) -> Response:
        meta = await run_in_threadpool(store.info, table)
        return Response(meta.to_json(), media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        await run_in_threadpool(store.ping)
        return _json({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(registry.render(), media_type=CONTENT_TYPE)

    return app
