"""The OIP v2 REST transport: HTTP in, the data plane, HTTP out.

Starlette, the ASGI toolkit FastAPI is built on, without FastAPI's pydantic layer: that
layer costs ~200 ms of import on every cold start and validates nothing the codec does
not already check (see README, "Cold start").
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kindling.errors import KindlingError, PayloadTooLarge
from kindling.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kindling.runtime.codec import (
    HEADER_LENGTH,
    InferRequest,
    decode_request,
    decompress,
    encode_response,
)
from kindling.runtime.dataplane import DataPlane
from kindling.runtime.settings import ServerSettings

log = logging.getLogger("kindling.runtime")

COLD_START_HEADER = "Kindling-Cold-Start"


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status, headers, media_type="application/json")


def error_response(exc: KindlingError) -> Response:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return json_response({"error": exc.message}, exc.status_code, headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes before reading them if possible."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def create_app(settings: ServerSettings, plane: DataPlane) -> Starlette:
    limit = settings.max_body_bytes

    async def server_metadata(_: Request) -> Response:
        return json_response(plane.server_metadata())

    async def live(_: Request) -> Response:
        return json_response({"live": True})

    async def ready(_: Request) -> Response:
        is_ready = plane.ready
        return json_response({"ready": is_ready}, 200 if is_ready else 503)

    async def model_metadata(request: Request) -> Response:
        p = request.path_params
        return json_response(plane.model(p["name"], p.get("version")).metadata(plane.timeline))

    async def model_ready(request: Request) -> Response:
        p = request.path_params
        model = plane.model(p["name"], p.get("version"))
        is_ready = model is plane.ready_model(p["name"], p.get("version"))
        return json_response({"name": model.name, "ready": is_ready})

    async def model_config(request: Request) -> Response:
        p = request.path_params
        config = plane.model(p["name"], p.get("version")).config
        return json_response(
            {
                "name": config.name,
                "platform": config.platform,
                "max_batch_size": config.max_batch_size,
                "input": [t.to_metadata() for t in config.inputs],
                "output": [t.to_metadata() for t in config.outputs],
                "dynamic_batching": {
                    "max_queue_delay_microseconds": int(config.max_queue_delay_ms * 1000)
                },
            }
        )

    async def infer(request: Request) -> Response:
        async def read() -> InferRequest:
            body = await read_body(request, limit)
            body = decompress(body, request.headers.get("content-encoding"), limit)
            return decode_request(body, request.headers.get(HEADER_LENGTH))

        p = request.path_params
        try:
            result = await plane.infer(p["name"], p.get("version"), read)
        except KindlingError as exc:
            response = error_response(exc)
            response.headers[COLD_START_HEADER] = "true" if plane.claim_cold() else "false"
            return response
        body, header_length = encode_response(
            result.model.name, result.model.version, result.outputs, result.request_id
        )
        headers = {COLD_START_HEADER: "true" if plane.claim_cold() else "false"}
        if header_length is None:
            return Response(body, 200, headers, media_type="application/json")
        headers["Inference-Header-Content-Length"] = str(header_length)
        return Response(body, 200, headers, media_type="application/octet-stream")

    async def metrics(_: Request) -> Response:
        return Response(plane.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def on_kindling_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, KindlingError)
        return error_response(exc)

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return json_response({"error": exc.detail}, exc.status_code, exc.headers)

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return json_response({"error": f"internal error: {type(exc).__name__}"}, 500)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await plane.close()

    model_routes = []
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        model_routes += [
            Route(prefix, model_metadata, methods=["GET"]),
            Route(prefix + "/ready", model_ready, methods=["GET"]),
            Route(prefix + "/config", model_config, methods=["GET"]),
            Route(prefix + "/infer", infer, methods=["POST"]),
        ]
    return Starlette(
        routes=[
            Route("/v2", server_metadata, methods=["GET"]),
            Route("/v2/health/live", live, methods=["GET"]),
            Route("/v2/health/ready", ready, methods=["GET"]),
            *model_routes,
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={
            KindlingError: on_kindling_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
        lifespan=lifespan,
    )
