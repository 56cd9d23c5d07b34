"""OpenWhisk's action protocol over the data plane: the image as a docker action.

An unmodified invoker drives it (apache/openwhisk docs/actions-new.md): POST /init once
with the action's code, then POST /run per activation; on Knative, POST / carries both
(__OW_RUNTIME_PLATFORM=knative, as openwhisk-runtime-nodejs platform/knative.js). With no
code the action is the image's own: /run takes an OIP inference request. Behaviour and
messages follow the Python runtime (apache/openwhisk-runtime-python) and the Go action
proxy it runs on (apache/openwhisk-runtime-go). What action code gets: action.py (its API),
action_init.py (how it is loaded) and the README ("OpenWhisk").

On the runtime's own HTTP server like rest.py, for the same cold-start reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from kindling.errors import (
    InvalidActionResult,
    InvalidInput,
    KindlingError,
    MethodNotAllowed,
    RouteNotFound,
)
from kindling.runtime import action, action_init
from kindling.runtime.builtin_action import ImageAction, never_503, text_media
from kindling.runtime.cpu import available_cpus
from kindling.runtime.dataplane import DataPlane
from kindling.runtime.httpserver import JSON, App, Request, Response
from kindling.runtime.responses import error_body, error_response
from kindling.runtime.settings import ServerSettings

if TYPE_CHECKING:
    from kindling.embeddings.settings import EmbeddingSettings
    from kindling.embeddings.store import EmbeddingStore
    from kindling.runtime.model_loader import ModelLoader

log = logging.getLogger("kindling.runtime")

# The invoker cuts an activation's logs at this line on stdout and on stderr.
SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"
ALREADY_INITIALIZED = "Cannot initialize the action more than once."
NOT_A_DICT = "The action did not return a dictionary or array."
# Result fields by which a web action controls its HTTP response (docs/webactions.md).
HTTP_FIELDS = frozenset(("statusCode", "headers", "body"))
DUMPS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class AlreadyInitialized(KindlingError):
    status_code = 403  # openwhisk-runtime-go, actionProxy.go initHandler


def status_of(exc: KindlingError) -> int:
    """The one place an error becomes this transport's HTTP status."""
    return never_503(exc.status_code)


@dataclass
class Outcome:
    """One activation's answer: status, body, and the result it encodes (for Knative)."""

    status: int
    body: bytes
    result: Any = None


class _LineTracker:
    """sys.stdout/sys.stderr, remembering whether the last write ended its line, so the
    sentinel always goes out alone on its line even after `print(..., end="")`."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.at_line_start = True

    def write(self, text: str) -> int:
        if text:
            self.at_line_start = text.endswith("\n")
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def track_streams() -> None:
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, _LineTracker):
            setattr(sys, name, _LineTracker(stream))


def end_activation() -> None:
    """Frame the activation's logs (docs/actions-new.md, "Logs"), then flush both streams
    so the invoker finds the frame as soon as it has the response."""
    for stream in (sys.stdout, sys.stderr):
        if not getattr(stream, "at_line_start", True):
            stream.write("\n")
        stream.write(SENTINEL + "\n")
        stream.flush()


def parse_json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None


# -- the action container ------------------------------------------------------------------


class ActionProxy:
    """One action container's state: its code, once initialized, and the models it serves."""

    def __init__(self, settings: ServerSettings, plane: DataPlane, loader: ModelLoader) -> None:
        self.settings = settings
        self.plane = plane
        self.loader = loader
        self.code: action_init.UserAction | None = None
        self.initialized = False
        self.image_action = ImageAction(
            lambda: self.plane, settings.max_body_bytes, settings.max_json_bytes
        )
        self._init_value: Any = None
        self._init_lock = asyncio.Lock()
        # One activation at a time, as the invoker expects of a runtime that does not
        # declare concurrency (docs/concurrency.md: __OW_ALLOW_CONCURRENT).
        self._run_gate: contextlib.AbstractAsyncContextManager[Any] = (
            contextlib.nullcontext() if settings.openwhisk_concurrent else asyncio.Lock()
        )
        self._store_settings: EmbeddingSettings | None = None
        self._store: EmbeddingStore | None = None
        self._store_lock = threading.Lock()  # concurrent activations open it once
        self._extracted: list[Path] = []
        """Zip extraction folders (up to openwhisk_max_unzip_bytes each), removed at
        shutdown: a process that outlives its container must not leave them behind."""

    async def close(self) -> None:
        await self.plane.close()
        for root in self._extracted:
            shutil.rmtree(root, ignore_errors=True)
        self._extracted.clear()

    async def loaded(self) -> None:
        """Wait for the image's models: /init answers once they are ready, so no /run
        meets one still loading."""
        await self.loader.wait()  # no thread blocked on a hanging download (model_loader.py)

    def embedding_store(self) -> EmbeddingStore:
        """The store for action code, from the environment as /init left it: the loader's
        own (and its cache) when that names the same store."""
        with self._store_lock:
            if self._store is None:
                settings = self._store_settings or self._resolve_store_settings()
                if settings == self.loader.embedding_settings:
                    self._store = self.loader.embedding_store()
                else:
                    from kindling.embeddings.store import EmbeddingStore

                    self._store = EmbeddingStore.from_settings(settings, self.loader.registry)
            return self._store

    def _resolve_store_settings(self) -> EmbeddingSettings:
        # Read at /init, after the action's env is exported (it may name the store), as
        # `kindling serve` resolves it (--redis over KINDLING_REDIS_URL); absolute, before a
        # zip action changes the working directory.
        settings = self.settings.embedding_settings()
        self._store_settings = settings.replace(store_dir=settings.store_dir.absolute())
        return self._store_settings

    async def init(self, message: Any) -> None:
        async with self._init_lock:
            if self.initialized:
                print(ALREADY_INITIALIZED, file=sys.stderr, flush=True)
                raise AlreadyInitialized(ALREADY_INITIALIZED)
            spec = action_init.InitSpec.parse(message)
            await self.loaded()
            # Before the code loads, which may read them (openwhisk-runtime-go, SetEnv).
            action_init.export_env(spec.env)
            self._resolve_store_settings()
            if spec.code and spec.binary:
                await self._init_zip(spec)
            elif spec.code:
                self.code = await asyncio.to_thread(
                    action_init.UserAction.load, spec.code, action_init.MAIN_FILE, spec.main
                )
            self.initialized, self._init_value = True, message

    async def _init_zip(self, spec: action_init.InitSpec) -> None:
        root = Path(tempfile.mkdtemp(prefix="kindling-action-"))
        self._extracted.append(root)
        try:
            limit = self.settings.openwhisk_max_unzip_bytes
            await asyncio.to_thread(action_init.unpack, spec.code, root, limit)
            folders = action_init.model_folders(root)
            has_main = (root / action_init.MAIN_FILE).is_file()
            if not folders and not has_main:
                main = action_init.MAIN_FILE
                message = f"Zip file does not include {main} or a model folder (config.yaml)"
                print(message, file=sys.stderr, flush=True)  # openwhisk-runtime-python's wording
                raise action_init.ActionInitError(f"Cannot start action: {message}")
            if folders:
                from kindling.runtime.model import LoadOptions

                threads = self.settings.threads or available_cpus()
                options = LoadOptions.of(self.settings, threads)
                timeline = self.plane.timeline
                loaded = await asyncio.to_thread(
                    action_init.load_models,
                    folders,
                    options,
                    timeline,
                    self.embedding_store,
                )
        except BaseException:
            # Nothing serves from it yet: a failed /init (a retry may follow) leaves nothing.
            self._extracted.remove(root)
            shutil.rmtree(root, ignore_errors=True)
            raise
        if folders:
            # A zip's model replaces a built-in one of its name.
            await self.plane.add_models({m.name: m for m in loaded})
        if has_main:
            self.code = await asyncio.to_thread(action_init.UserAction.from_folder, root, spec.main)

    async def run(self, message: Any) -> Outcome:
        async with self._run_gate:
            try:
                return await self._run(message)
            except KindlingError as exc:
                return Outcome(status_of(exc), error_body(exc))
            finally:
                end_activation()

    async def _run(self, message: Any) -> Outcome:
        if not isinstance(message, dict):
            raise InvalidInput("/run takes a JSON object")
        value = message.get("value", {})
        # The activation context: every other key as __OW_<KEY> (docs/actions-new.md).
        action_init.export_env({k: v for k, v in message.items() if k != "value"}, prefix="__OW_")
        await self.loaded()
        if self.code is None:
            body, result = await self.image_action.run(value)
            return Outcome(200, body, result)
        result = await asyncio.to_thread(self.code, value)
        if not isinstance(result, dict | list):
            return Outcome(502, orjson.dumps({"error": NOT_A_DICT}))
        try:
            return Outcome(200, orjson.dumps(result, option=DUMPS), result)
        except orjson.JSONEncodeError as exc:
            return Outcome(502, orjson.dumps({"error": f"The action's result is not JSON: {exc}"}))

    async def knative(self, message: Any, request: Request) -> Response:
        """Knative's single entrypoint: {"init", "activation", "value"} in one POST, the
        result returned as the HTTP response (openwhisk-runtime-nodejs, knative.js)."""
        if not isinstance(message, dict) or not {"init", "activation"} & message.keys():
            raise InvalidInput("a Knative request carries 'init' and/or 'activation' with 'value'")
        init = message.get("init")
        if init is not None and not (self.initialized and self._init_value == {"value": init}):
            await self.init({"value": init})
        if "activation" not in message:
            return Response(b'{"ok":true}')
        activation = message.get("activation") or {}
        value = message.get("value") or {}
        if not isinstance(activation, dict) or not isinstance(value, dict):
            raise InvalidInput("'activation' and 'value' must be objects")
        # The HTTP context a web action gets (knative.js preProcessHTTPContext).
        value = {
            "__ow_method": request.method,
            "__ow_headers": request.headers,
            "__ow_path": "",
        } | value
        outcome = await self.run({**activation, "value": value})
        return http_response(outcome)


# RFC 9110 §5.1: a field name is a token (§5.6.2).
FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: a field value is visible characters (obs-text included), SP and HTAB; never
# CR or LF, which would end the field early (response splitting), NUL or other controls.
FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# Fields the server writes itself, framing the response and the connection (RFC 9112 §6,
# RFC 9110 §7.6.1, the Date it sends): an action's would contradict them, and a second
# Content-Length desynchronizes the connection. Dropped, as OpenWhisk's controller (akka-
# http: "Explicitly set HTTP header ... is ignored") drops them from a web action's.
SERVER_FIELDS = frozenset(
    (
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
        "date",
    )
)


def _header_values(name: str, value: Any) -> list[str]:
    """A result header's values: a string, number or boolean, or a list of them (the
    controller's WebActions.headersFromJson); anything else is an invalid result."""
    if isinstance(value, list | tuple):
        return [v for item in value for v in _header_values(name, item)]
    if isinstance(value, bool):
        return [str(value).lower()]
    if isinstance(value, str | int | float):
        text = str(value)
        if FIELD_VALUE.fullmatch(text):
            return [text]
        raise InvalidActionResult(
            f"the result's header {name!r} has a value that is not a valid HTTP field value "
            "(CR, LF, NUL or another control character, or a character past U+00FF)"
        )
    raise InvalidActionResult(
        f"the result's header {name!r} must be a string, number or boolean (or a list of "
        f"them), got {type(value).__name__}"
    )


def _result_headers(headers: Any) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if not isinstance(headers, dict):
        raise InvalidActionResult("the result's 'headers' must be an object")
    fields = []
    for name, value in headers.items():
        if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
            raise InvalidActionResult(f"the result's header name {name!r} is not an HTTP token")
        if name.lower() not in SERVER_FIELDS:
            fields += [(name.lower(), v) for v in _header_values(name, value)]
    return fields


def _result_status(value: Any) -> int:
    """statusCode: a whole number or a string of digits (the controller takes both), 200
    to 599: a 1xx is not a final response, and a client would wait for the real one."""
    if value is None:
        return 200
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int or not 200 <= value <= 599:
        raise InvalidActionResult(f"the result's statusCode {value!r} is not an HTTP status")
    return value


def http_response(outcome: Outcome) -> Response:
    """An activation's result as the HTTP response itself, when it says how with
    statusCode/headers/body (docs/webactions.md, "Handling HTTP requests with actions").
    A result that cannot be such a response is InvalidActionResult: an error, as OpenWhisk's
    controller answers one ("Response is not valid 'message/http'"), never sent in part."""
    result = outcome.result
    if outcome.status != 200 or not isinstance(result, dict) or not HTTP_FIELDS & result.keys():
        return Response(outcome.body, outcome.status)
    status = never_503(_result_status(result.get("statusCode")))
    fields = _result_headers(result.get("headers"))
    content_type = next((v for k, v in fields if k == "content-type"), None)
    headers = [(k.encode(), v.encode("latin-1")) for k, v in fields if k != "content-type"]
    body = result.get("body")
    if body is None or body == "":
        data, status = b"", 204 if status == 200 else status
    elif isinstance(body, str):
        if content_type is not None and not text_media(content_type):
            try:
                data = base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidActionResult("the result's body is not base64") from None
        else:
            data, content_type = body.encode(), content_type or "text/html"
    else:
        data = orjson.dumps(body, option=DUMPS)
    media = JSON if content_type is None else content_type.encode("latin-1")
    return Response(data, status, media, headers)


def create_openwhisk_app(settings: ServerSettings, plane: DataPlane, loader: ModelLoader) -> App:
    proxy = ActionProxy(settings, plane, loader)
    knative = settings.openwhisk_platform == "knative"
    track_streams()

    async def handle(request: Request) -> Response:
        path = request.path
        if path not in routes:
            raise RouteNotFound(f"no route for {path}")
        if request.method != "POST":
            raise MethodNotAllowed(f"{request.method} is not allowed on {path}", ["POST"])
        if path == "/run":
            try:
                message = parse_json(await request.body())
            except KindlingError as exc:  # still an activation: its logs need their frame
                end_activation()
                raise exc from None
            outcome = await proxy.run(message)
            return Response(outcome.body, outcome.status)
        message = parse_json(await request.body())
        if path == "/init":
            try:
                await proxy.init(message)
            except AlreadyInitialized:
                raise
            except KindlingError:
                # A failed init is reported with its logs (OW_LOG_INIT_ERROR in the Python
                # runtime's image): frame them like an activation's.
                end_activation()
                raise
            return Response(b'{"ok":true}')
        return await proxy.knative(message, request)

    routes = {"/init", "/run"} | ({"/"} if knative else set())

    def error(exc: KindlingError) -> Response:
        response = error_response(exc)
        response.status = status_of(exc)
        return response

    def bind_action_api() -> None:
        action.bind(lambda: proxy.plane, asyncio.get_running_loop(), proxy.embedding_store)

    return App(handle, error, startup=bind_action_api, shutdown=proxy.close)
