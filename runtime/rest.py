"""The Open Inference Protocol's REST endpoints over the data plane, on the runtime's own
HTTP server: one method of `V2Endpoints` per route, the routes as data (`ROUTES`), and
routing a pure function (`route`), as KServe's `V2Endpoints` and MLServer's `Endpoints`.

No web framework: FastAPI's import costs ~200 ms and Starlette's ~35 ms of every cold
start (measured in README, "Cold start"), for a score of fixed routes that a table and a
path split serve as well.

Specs: KServe "Open Inference Protocol" (REST), with Triton's extensions: model
configuration, model_repository (`POST /v2/repository/index`) and statistics
(`GET /v2/models[/{m}[/versions/{v}]]/stats`), in triton-inference-server/server
docs/protocol/extension_*.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from kindling.errors import InvalidInput, KindlingError, MethodNotAllowed, RouteNotFound
from kindling.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kindling.runtime.codec import (
    HEADER_LENGTH,
    InferRequest,
    decode_body,
    encode_response,
    json_object,
    precheck,
)
from kindling.runtime.dataplane import DataPlane
from kindling.runtime.httpserver import App, Request, Response, json_response
from kindling.runtime.responses import error_response
from kindling.runtime.settings import ServerSettings

COLD_START_HEADER = b"kindling-cold-start"
# A repository index request's body is a small JSON object ({"ready": true}).
MAX_INDEX_BODY_BYTES = 4096

# path template -> {method: V2Endpoints method}. `{name}` and `{version}` match one
# non-empty path segment; literal paths win over templates (a model named "stats" is
# reached by its metadata route only as /v2/models/stats/versions/{v}, as in Triton).
ROUTES: dict[str, dict[str, str]] = {
    "/v2": {"GET": "server_metadata"},
    "/v2/": {"GET": "server_metadata"},
    "/v2/health/live": {"GET": "live"},
    "/v2/health/ready": {"GET": "ready"},
    "/v2/models/stats": {"GET": "statistics"},
    "/v2/repository/index": {"POST": "repository_index"},
    "/metrics": {"GET": "metrics"},
    "/v2/models/{name}": {"GET": "model_metadata"},
    "/v2/models/{name}/ready": {"GET": "model_ready"},
    "/v2/models/{name}/config": {"GET": "model_config"},
    "/v2/models/{name}/stats": {"GET": "statistics"},
    "/v2/models/{name}/infer": {"POST": "infer"},
    "/v2/models/{name}/versions/{version}": {"GET": "model_metadata"},
    "/v2/models/{name}/versions/{version}/ready": {"GET": "model_ready"},
    "/v2/models/{name}/versions/{version}/config": {"GET": "model_config"},
    "/v2/models/{name}/versions/{version}/stats": {"GET": "statistics"},
    "/v2/models/{name}/versions/{version}/infer": {"POST": "infer"},
}

_Template = tuple[tuple[str, ...], dict[str, str]]


def _compile(
    routes: dict[str, dict[str, str]],
) -> tuple[dict[str, dict[str, str]], dict[int, list[_Template]]]:
    """Literal paths by path; templates by segment count, in table order."""
    literal: dict[str, dict[str, str]] = {}
    templates: dict[int, list[_Template]] = {}
    for path, methods in routes.items():
        if "{" in path:
            segments = tuple(path.split("/"))
            templates.setdefault(len(segments), []).append((segments, methods))
        else:
            literal[path] = methods
    return literal, templates


_LITERAL, _TEMPLATES = _compile(ROUTES)


def allowed(methods: dict[str, str]) -> list[str]:
    """The methods a route answers: HEAD wherever GET is (RFC 9110 §9.3.2)."""
    return [*methods, *(["HEAD"] if "GET" in methods else [])]


def route(method: str, path: str) -> tuple[str, dict[str, str]]:
    """The endpoint method's name and the path parameters for a request.

    Raises RouteNotFound (404) for an unknown path and MethodNotAllowed (405, with Allow)
    for a known path and another method; HEAD is served by GET's endpoint (the server
    sends the head without the body).
    """
    params: dict[str, str] = {}
    methods = _LITERAL.get(path)
    if methods is None:
        parts = path.split("/")
        for segments, candidate in _TEMPLATES.get(len(parts), ()):
            for want, got in zip(segments, parts, strict=True):
                if want[:1] == "{":
                    if not got:
                        break
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                methods = candidate
                break
            params = {}
        if methods is None:
            raise RouteNotFound(f"no route for {path}")
    handler = methods.get(method)
    if handler is None and method == "HEAD":
        handler = methods.get("GET")
    if handler is None:
        raise MethodNotAllowed(f"{method} is not allowed on {path}", allowed(methods))
    return handler, params


Endpoint = Callable[[Request], Awaitable[Response]]


class V2Endpoints:
    """The OIP REST endpoints: parse the request, ask the data plane, encode the answer."""

    def __init__(self, plane: DataPlane, max_body_bytes: int, max_json_bytes: int) -> None:
        self.plane = plane
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = max_json_bytes
        # Bound once: a request costs a dict lookup, not a getattr.
        self._endpoints: dict[str, Endpoint] = {
            name: getattr(self, name) for methods in ROUTES.values() for name in methods.values()
        }

    async def handle(self, request: Request) -> Response:
        """Route the request to its endpoint."""
        name, request.params = route(request.method, request.path)
        return await self._endpoints[name](request)

    # -- server -------------------------------------------------------------------------

    async def server_metadata(self, _: Request) -> Response:
        """GET /v2: name, version and the extensions this server implements."""
        return json_response(self.plane.server_metadata())

    async def live(self, _: Request) -> Response:
        """GET /v2/health/live: the process answers."""
        return json_response({"live": True})

    async def ready(self, _: Request) -> Response:
        """GET /v2/health/ready: 200 once every model can serve, 503 with why until then."""
        reasons = await self.plane.unready()
        if not reasons:
            return json_response({"ready": True})
        return json_response({"ready": False, "error": "; ".join(reasons.values())}, 503)

    async def metrics(self, _: Request) -> Response:
        """GET /metrics: Prometheus' text format."""
        body = self.plane.metrics.render().encode()
        return Response(body, content_type=METRICS_CONTENT_TYPE.encode())

    async def repository_index(self, request: Request) -> Response:
        """POST /v2/repository/index, body optional {"ready": bool}: every model, with its
        state and reason (Triton's model_repository extension)."""
        ready = False
        body = await request.body()
        if body.strip():
            if len(body) > MAX_INDEX_BODY_BYTES:
                raise InvalidInput(f"repository index request exceeds {MAX_INDEX_BODY_BYTES} bytes")
            ready = json_object(body).get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidInput("'ready' must be a boolean")
        return json_response(self.plane.repository_index(ready_only=ready))

    # -- models -------------------------------------------------------------------------

    async def model_metadata(self, request: Request) -> Response:
        """GET /v2/models/{name}[/versions/{version}]: inputs, outputs, parameters."""
        p = request.params
        model = self.plane.model(p["name"], p.get("version"))
        return json_response(model.metadata(self.plane.timeline))

    async def model_ready(self, request: Request) -> Response:
        """GET /v2/models/{name}[/versions/{version}]/ready: 200 or 503 with why."""
        p = request.params
        model = self.plane.model(p["name"], p.get("version"))
        reason = await self.plane.readiness(model)
        if reason is None:
            return json_response({"name": model.name, "ready": True})
        return json_response({"name": model.name, "ready": False, "error": reason}, 503)

    async def model_config(self, request: Request) -> Response:
        """GET /v2/models/{name}[/versions/{version}]/config: Triton's ModelConfig."""
        p = request.params
        return json_response(self.plane.triton_config(p["name"], p.get("version")))

    async def statistics(self, request: Request) -> Response:
        """GET /v2/models[/{name}[/versions/{version}]]/stats: Triton's statistics."""
        p = request.params
        return json_response(self.plane.statistics(p.get("name"), p.get("version")))

    async def infer(self, request: Request) -> Response:
        """POST /v2/models/{name}[/versions/{version}]/infer: JSON or binary tensors in,
        the same out; `kindling-cold-start` says whether this was the process's first."""
        p = request.params
        try:
            read = partial(self._read, request)
            result = await self.plane.infer(p["name"], p.get("version"), read)
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
        cold = self.plane.claim_cold()
        response.headers.append((COLD_START_HEADER, b"true" if cold else b"false"))
        return response

    async def _read(self, request: Request) -> InferRequest:
        headers = request.headers
        precheck(headers, self.max_json_bytes)  # refused before the body is even read
        return await decode_body(
            await request.body(),
            headers.get("content-encoding"),
            headers.get(HEADER_LENGTH),
            self.max_body_bytes,
            self.max_json_bytes,
        )


def create_app(settings: ServerSettings, plane: DataPlane) -> App:
    """The OIP REST app the HTTP server runs."""
    endpoints = V2Endpoints(plane, settings.max_body_bytes, settings.max_json_bytes)
    return App(endpoints.handle, error_response, shutdown=plane.close)
