"""The OIP v2 REST transport: a plain ASGI app over the data plane.

No web framework: FastAPI's import costs ~200 ms and Starlette's ~35 ms of every cold
start (measured in README, "Cold start"), for a dozen fixed routes that a table and a
path split serve as well. The app runs under uvicorn like any ASGI app.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from kindling.errors import InvalidInput, KindlingError, PayloadTooLarge
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

COLD_START_HEADER = b"kindling-cold-start"
JSON = b"application/json"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class NotFound(KindlingError):
    status_code = 404


class MethodNotAllowed(KindlingError):
    status_code = 405


class Request:
    """What a handler needs of one HTTP request."""

    __slots__ = ("headers", "method", "params", "receive")

    def __init__(self, scope: Scope, receive: Receive, params: dict[str, str]) -> None:
        self.method: str = scope["method"]
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.params = params
        self.receive = receive

    async def body(self, limit: int) -> bytes:
        """The body, refused past `limit` bytes (before reading, if Content-Length says so)."""
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise InvalidInput("client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        body: bytes,
        status: int = 200,
        content_type: bytes = JSON,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *(headers or []),
        ]

    async def send(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status)


def error_response(exc: KindlingError) -> Response:
    headers = []
    if exc.retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(exc.retry_after))).encode()))
    return Response(orjson.dumps({"error": exc.message}), exc.status_code, JSON, headers)


Handler = Callable[[Request], Awaitable[Response]]


def create_app(settings: ServerSettings, plane: DataPlane) -> Callable[..., Awaitable[None]]:
    limit = settings.max_body_bytes

    async def server_metadata(_: Request) -> Response:
        return json_response(plane.server_metadata())

    async def live(_: Request) -> Response:
        return json_response({"live": True})

    async def ready(_: Request) -> Response:
        is_ready = plane.ready
        return json_response({"ready": is_ready}, 200 if is_ready else 503)

    async def model_metadata(request: Request) -> Response:
        p = request.params
        return json_response(plane.model(p["name"], p.get("version")).metadata(plane.timeline))

    async def model_ready(request: Request) -> Response:
        p = request.params
        model = plane.model(p["name"], p.get("version"))
        try:
            plane.ready_model(p["name"], p.get("version"))
            is_ready = True
        except KindlingError:
            is_ready = False
        return json_response({"name": model.name, "ready": is_ready}, 200 if is_ready else 503)

    async def model_config(request: Request) -> Response:
        p = request.params
        config = plane.model(p["name"], p.get("version")).config
        delay_us = int(config.max_queue_delay_ms * 1000)
        return json_response(
            {
                "name": config.name,
                "platform": config.platform,
                "max_batch_size": config.max_batch_size,
                "input": [t.to_metadata() for t in config.inputs],
                "output": [t.to_metadata() for t in config.outputs],
                "dynamic_batching": {"max_queue_delay_microseconds": delay_us},
            }
        )

    async def infer(request: Request) -> Response:
        async def read() -> InferRequest:
            body = await request.body(limit)
            body = decompress(body, request.headers.get("content-encoding"), limit)
            return decode_request(body, request.headers.get(HEADER_LENGTH))

        p = request.params
        try:
            result = await plane.infer(p["name"], p.get("version"), read)
        except KindlingError as exc:
            response = error_response(exc)
        else:
            body, header_length = encode_response(
                result.model.name, result.model.version, result.outputs, result.request_id
            )
            if header_length is None:
                response = Response(body)
            else:
                response = Response(
                    body,
                    content_type=b"application/octet-stream",
                    headers=[(b"inference-header-content-length", str(header_length).encode())],
                )
        cold = plane.claim_cold()
        response.headers.append((COLD_START_HEADER, b"true" if cold else b"false"))
        return response

    async def metrics(_: Request) -> Response:
        return Response(plane.metrics.render().encode(), content_type=METRICS_CONTENT_TYPE.encode())

    # path -> {method: handler}; model routes are matched by `route` below.
    fixed: dict[str, dict[str, Handler]] = {
        "/v2": {"GET": server_metadata},
        "/v2/health/live": {"GET": live},
        "/v2/health/ready": {"GET": ready},
        "/metrics": {"GET": metrics},
    }
    model_actions: dict[str, dict[str, Handler]] = {
        "": {"GET": model_metadata},
        "ready": {"GET": model_ready},
        "config": {"GET": model_config},
        "infer": {"POST": infer},
    }

    def route(path: str) -> tuple[dict[str, Handler], dict[str, str]]:
        """/v2/models/{name}[/versions/{version}][/{action}] -> handlers, params."""
        if path in fixed:
            return fixed[path], {}
        parts = path.split("/")
        if len(parts) >= 4 and parts[:3] == ["", "v2", "models"] and parts[3]:
            params = {"name": parts[3]}
            rest = parts[4:]
            if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
                params["version"] = rest[1]
                rest = rest[2:]
            if len(rest) <= 1:
                action = rest[0] if rest else ""
                if action in model_actions:
                    return model_actions[action], params
        raise NotFound(f"no route for {path}")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            handlers, params = route(scope["path"])
            handler = handlers.get(scope["method"])
            if handler is None:
                raise MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}")
            response = await handler(Request(scope, receive, params))
        except KindlingError as exc:
            response = error_response(exc)
        except Exception as exc:  # the one place an unexpected error becomes a 500
            log.exception("unhandled error", exc_info=exc)
            response = json_response({"error": f"internal error: {type(exc).__name__}"}, 500)
        await response.send(send)

    async def lifespan(receive: Receive, send: Send) -> None:
        await run_lifespan(receive, send, lambda: None, plane.close)

    return app


async def run_lifespan(
    receive: Receive,
    send: Send,
    startup: Callable[[], None],
    shutdown: Callable[[], Awaitable[None]],
) -> None:
    """The ASGI lifespan protocol, for both transports."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
