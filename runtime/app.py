"""The OIP v2 REST routes over the data plane, on the runtime's own HTTP server.

No web framework: FastAPI's import costs ~200 ms and Starlette's ~35 ms of every cold
start (measured in README, "Cold start"), for a dozen fixed routes that a table and a
path split serve as well.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson

from kindling.errors import KindlingError, MethodNotAllowed, RouteNotFound
from kindling.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kindling.runtime.codec import (
    HEADER_LENGTH,
    InferRequest,
    decode_body,
    encode_response,
    precheck,
)
from kindling.runtime.dataplane import DataPlane
from kindling.runtime.httpserver import (
    JSON,
    App,
    Request,
    Response,
    json_response,
)
from kindling.runtime.settings import ServerSettings

COLD_START_HEADER = b"kindling-cold-start"


def error_body(exc: KindlingError) -> bytes:
    return orjson.dumps({"error": exc.message})


def error_response(exc: KindlingError) -> Response:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers().items()]
    return Response(error_body(exc), exc.status_code, JSON, headers)


Handler = Callable[[Request], Awaitable[Response]]


def create_app(settings: ServerSettings, plane: DataPlane) -> App:
    limit = settings.max_body_bytes
    json_limit = settings.max_json_bytes

    async def server_metadata(_: Request) -> Response:
        return json_response(plane.server_metadata())

    async def live(_: Request) -> Response:
        return json_response({"live": True})

    async def ready(_: Request) -> Response:
        reasons = await plane.unready()
        if not reasons:
            return json_response({"ready": True})
        return json_response({"ready": False, "error": "; ".join(reasons.values())}, 503)

    async def model_metadata(request: Request) -> Response:
        p = request.params
        return json_response(plane.model(p["name"], p.get("version")).metadata(plane.timeline))

    async def model_ready(request: Request) -> Response:
        p = request.params
        model = plane.model(p["name"], p.get("version"))
        reason = await plane.readiness(model)
        if reason is None:
            return json_response({"name": model.name, "ready": True})
        return json_response({"name": model.name, "ready": False, "error": reason}, 503)

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
            headers = request.headers
            precheck(headers, json_limit)  # refused before the body is even read
            return await decode_body(
                await request.body(),
                headers.get("content-encoding"),
                headers.get(HEADER_LENGTH),
                limit,
                json_limit,
            )

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
        raise RouteNotFound(f"no route for {path}")

    async def handle(request: Request) -> Response:
        handlers, request.params = route(request.path)
        handler = handlers.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = handlers.get("GET")  # the server sends the head without the body
        if handler is None:
            allow = [*handlers, *(["HEAD"] if "GET" in handlers else [])]
            raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}", allow)
        return await handler(request)

    return App(handle, error_response, shutdown=plane.close)
