"""The image's own OpenWhisk action: OIP inference over /run, plainly or as a web action.

An action created from the image with no code (`wsk action create m --docker IMAGE`, or
a zip holding only model folders) answers each activation's `value` as an OIP inference
request, JSON form: {"model_name", "inputs", "outputs", "parameters", "id"}; the result
is the OIP response. As a web action (`__ow_method` in the value) the path after the
action (`__ow_path`) routes like OIP's REST API, binary tensors come and go base64 in
`__ow_body` and `body` (docs/webactions.md), and errors carry their HTTP status in the
result's statusCode.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import orjson

from kindling.errors import InvalidInput, KindlingError, MethodNotAllowed, RouteNotFound
from kindling.runtime.codec import (
    HEADER_LENGTH,
    InferRequest,
    decode_body,
    decode_request,
    encode_response,
)
from kindling.runtime.dataplane import DataPlane
from kindling.runtime.responses import error_body


def never_503(status: int) -> int:
    """The one rule on OpenWhisk mode's statuses, web results' included: never 503, which
    an invoker reads as the container shutting down (the issue this mode implements). A
    model that failed to load (ModelLoadError) or an embedding store that is down
    (DependencyUnavailable) report 502, as an action that cannot start or run does; the
    Retry-After they carry still says "retry"."""
    return 502 if status == 503 else status


def text_media(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return (
        media.startswith("text/")
        or media in ("application/json", "application/xml")
        or media.endswith(("+json", "+xml"))
    )


def _web_body(value: dict[str, Any], headers: dict[str, str]) -> bytes:
    """__ow_body as bytes: base64 for binary content (and JSON, in raw web actions), plain
    text otherwise (docs/webactions.md, "HTTP Context", "Raw HTTP handling")."""
    raw = value["__ow_body"]
    if not isinstance(raw, str):
        raise InvalidInput("__ow_body must be a string")
    content_type = headers.get("content-type", "")
    if text_media(content_type) and (
        not content_type.startswith("application/json") or raw.lstrip()[:1] in ("{", "[")
    ):
        return raw.encode()
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("__ow_body is not valid base64") from None


def _web_result(status: int, body: bytes, headers: dict[str, str] | None = None) -> Any:
    """A web action's HTTP response as its result: JSON bodies inline, others base64."""
    headers = dict(headers or {})
    if headers.get("Content-Type", "application/json") == "application/json":
        headers["Content-Type"] = "application/json"
        payload: Any = orjson.Fragment(body)
    else:
        payload = base64.b64encode(body).decode()
    return {"statusCode": status, "headers": headers, "body": payload}


def _web_error(exc: KindlingError) -> Any:
    """The error's status for the web client, which the controller relays (the runtime
    itself answers 200; on Knative, openwhisk.http_response makes it the answer)."""
    return _web_result(never_503(exc.status_code), error_body(exc), exc.headers())


class ImageAction:
    """/run with no action code: `value` is an OIP inference request ({"model_name",
    "inputs", ...}, JSON form), answered with the OIP response. As a web action, the path
    after the action (__ow_path) routes like OIP's REST API: /v2/models/{m}/infer."""

    def __init__(
        self, plane: Callable[[], DataPlane], max_body_bytes: int, max_json_bytes: int
    ) -> None:
        self.plane = plane
        self.limit = max_body_bytes
        self.json_limit = max_json_bytes

    async def run(self, value: Any) -> tuple[bytes, Any]:
        """The activation's result, encoded and (for web actions) as an object; the
        runtime answers it with 200 whatever happened: failures are the action's."""
        if isinstance(value, dict) and "__ow_method" in value:
            try:
                result = await self._web(value)
            except KindlingError as exc:
                result = _web_error(exc)
            return orjson.dumps(result), result
        try:
            if not isinstance(value, dict):
                raise InvalidInput("value must be an OIP inference request (a JSON object)")
            name, version = self._model(value.get("model_name"), value.get("model_version"))
            request = orjson.dumps({k: v for k, v in value.items() if k != "model_name"})

            async def decode() -> InferRequest:
                return decode_request(request, None, self.json_limit)

            body, _ = await self._infer(name, version, decode, binary_allowed=False)
        except KindlingError as exc:
            # The action's failure, not the container's: 200 with {"error"}, as the Python
            # runtime answers an action that returned an error (launcher.py).
            return error_body(exc), None
        return body, None

    def _model(self, name: Any, version: Any) -> tuple[str, str | None]:
        version = None if version in (None, "") else str(version)
        if name:
            return str(name), version
        models = self.plane().models
        if len(models) == 1:
            return next(iter(models)), version
        raise InvalidInput(
            "name the model with 'model_name' (or, in a web action, the path "
            f"/v2/models/NAME/infer); this action serves {sorted(models)}"
        )

    async def _infer(
        self,
        name: str,
        version: str | None,
        decode: Callable[[], Awaitable[InferRequest]],
        binary_allowed: bool,
    ) -> tuple[bytes, int | None]:
        async def read() -> InferRequest:
            request = await decode()
            if not binary_allowed:  # a plain activation's result must be all JSON
                request.binary_output = False
                if request.outputs is not None:
                    request.outputs = [replace(o, binary=False) for o in request.outputs]
            return request

        result = await self.plane().infer(name, version, read)
        return encode_response(
            result.model.name, result.model.version, result.outputs, result.request_id
        )

    async def _web(self, value: dict[str, Any]) -> Any:
        method = str(value.get("__ow_method", "post")).upper()
        raw_headers = value.get("__ow_headers") or {}
        if not isinstance(raw_headers, dict):
            raise InvalidInput("__ow_headers must be an object")
        headers = {str(k).lower(): str(v) for k, v in raw_headers.items()}
        parts = [p for p in str(value.get("__ow_path") or "").split("/") if p]
        name: Any = value.get("model_name")
        version: Any = value.get("model_version")
        target = "infer"
        if parts:
            if parts == ["v2"]:
                target = "server"
            elif len(parts) >= 3 and parts[:2] == ["v2", "models"]:
                name, rest = parts[2], parts[3:]
                if len(rest) >= 2 and rest[0] == "versions":
                    version, rest = rest[1], rest[2:]
                target = rest[0] if len(rest) == 1 else "metadata" if not rest else "?"
            else:
                target = "?"
        wanted = {"infer": "POST", "metadata": "GET", "server": "GET"}.get(target)
        if wanted is None:
            raise RouteNotFound(f"no route for {value.get('__ow_path')!r}")
        if method != wanted:
            path = value.get("__ow_path") or "/"
            raise MethodNotAllowed(f"{method} is not allowed on {path}", [wanted])
        plane = self.plane()
        if target == "server":
            return _web_result(200, orjson.dumps(plane.server_metadata()))
        name, version = self._model(name, version)
        if target == "metadata":
            metadata = plane.model(name, version).metadata(plane.timeline)
            return _web_result(200, orjson.dumps(metadata))

        async def decode() -> InferRequest:
            if "__ow_body" in value:  # a raw web action, or a body that is not JSON
                return await decode_body(
                    _web_body(value, headers),
                    headers.get("content-encoding"),
                    headers.get(HEADER_LENGTH),
                    self.limit,
                    self.json_limit,
                )
            doc = {k: v for k, v in value.items() if not k.startswith("__ow_")}
            doc.pop("model_name", None)
            return decode_request(orjson.dumps(doc), None, self.json_limit)

        body, header_length = await self._infer(name, version, decode, binary_allowed=True)
        if header_length is None:
            return _web_result(200, body)
        return _web_result(
            200,
            body,
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(header_length),
            },
        )
