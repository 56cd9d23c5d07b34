"""The OIP REST transport in-process: routing as a pure function, and `V2Endpoints` over
a data plane with a small fake model (a real `Model` whose onnxruntime session is a
stand-in), as MLServer's tests/rest do. No sockets: requests are `httpserver.Request`s fed
their bodies, answered by the app the server would run.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from kindling.errors import MethodNotAllowed, RouteNotFound
from kindling.runtime.coldstart import ColdStartTimeline
from kindling.runtime.dataplane import DataPlane, triton_config
from kindling.runtime.httpserver import App, BodyBudget, Request, Response
from kindling.runtime.model import Model, ModelState
from kindling.runtime.rest import ROUTES, V2Endpoints, create_app, route
from kindling.runtime.settings import ModelConfig, ServerSettings, TensorSpec
from kindling.runtime.telemetry import RuntimeMetrics

LIMIT = 64 * 1024


class DoublingSession:
    """Stands in for onnxruntime: y = 2x."""

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [feed["x"] * 2]


def fake_model(name: str = "double", state: ModelState = ModelState.READY) -> Model:
    config = ModelConfig(
        name=name,
        path=Path("unused"),
        inputs=(TensorSpec("x", "FP32", (-1, 2)),),
        outputs=(TensorSpec("y", "FP32", (-1, 2)),),
        max_batch_size=4,
        max_queue_delay_ms=0.5,
        resources={"memory": "64Mi"},
        version="3",
    )
    model = Model(config)
    model.state = state
    model.runner = DoublingSession()  # type: ignore[assignment]
    if state is ModelState.FAILED:
        model.error = "no such file"
    return model


@dataclass
class InProcess:
    """The app and the one event loop its requests run on (the batcher's queue and worker
    live in it, as in the server)."""

    app: App
    loop: asyncio.AbstractEventLoop


@pytest.fixture
def app() -> Iterator[InProcess]:
    models = {"double": fake_model(), "broken": fake_model("broken", ModelState.FAILED)}
    plane = DataPlane(models, RuntimeMetrics(ColdStartTimeline()))
    settings = ServerSettings(Path("unused"), max_body_bytes=LIMIT, max_json_bytes=LIMIT)
    loop = asyncio.new_event_loop()
    yield InProcess(create_app(settings, plane), loop)
    loop.run_until_complete(plane.close())
    loop.close()


def call(
    app: InProcess,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[bytes, bytes], dict]:
    """One request through the app, its body already complete; (status, headers, JSON)."""
    headers = {"content-length": str(len(body)), **(headers or {})}

    async def go() -> Response:
        request = Request(method, path, headers, LIMIT, BodyBudget(16 * LIMIT))
        if not request.too_large:
            request.feed(body)
        request.finish()
        return await app.app.respond(request)

    response = app.loop.run_until_complete(go())
    doc = orjson.loads(response.body) if response.content_type == b"application/json" else {}
    return response.status, dict(response.headers), doc


def infer_body(x: list[list[float]], **extra: object) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": [len(x), 2], "data": x}
    return orjson.dumps({"inputs": [tensor], **extra})


# -- routing, a pure function -------------------------------------------------------------


def test_route_names_the_endpoint_and_its_parameters():
    assert route("GET", "/v2") == ("server_metadata", {})
    assert route("GET", "/v2/") == ("server_metadata", {})
    assert route("POST", "/v2/models/m/infer") == ("infer", {"name": "m"})
    assert route("POST", "/v2/models/m/versions/2/infer") == (
        "infer",
        {"name": "m", "version": "2"},
    )
    assert route("GET", "/v2/models/m/versions/2") == (
        "model_metadata",
        {"name": "m", "version": "2"},
    )
    assert route("GET", "/v2/models/stats") == ("statistics", {})
    assert route("GET", "/v2/models/m/stats") == ("statistics", {"name": "m"})
    assert route("GET", "/v2/models/m/config") == ("model_config", {"name": "m"})
    assert route("POST", "/v2/repository/index") == ("repository_index", {})


def test_head_is_served_by_get():
    assert route("HEAD", "/v2/models/m/ready") == ("model_ready", {"name": "m"})


def test_unknown_paths_are_404():
    for path in (
        "/v2/nothing",
        "/v2/models//infer",
        "/v2/models/m/versions//infer",
        "/v2/models/m/a/b",
    ):
        with pytest.raises(RouteNotFound):
            route("GET", path)


def test_a_wrong_method_is_405_with_allow():
    with pytest.raises(MethodNotAllowed) as raised:
        route("POST", "/v2/health/live")
    assert raised.value.allow == ["GET", "HEAD"]
    with pytest.raises(MethodNotAllowed) as raised:
        route("GET", "/v2/models/m/infer")
    assert raised.value.allow == ["POST"]


def test_every_route_has_a_documented_endpoint():
    for methods in ROUTES.values():
        for name in methods.values():
            assert getattr(V2Endpoints, name).__doc__, name


# -- the endpoints, with a fake model ----------------------------------------------------


def test_server_metadata_and_health(app):
    status, _, doc = call(app, "GET", "/v2/")
    assert status == 200
    for extension in ("binary_tensor_data", "model_repository", "statistics"):
        assert extension in doc["extensions"]
    assert call(app, "GET", "/v2/health/live")[0] == 200
    status, _, doc = call(app, "GET", "/v2/health/ready")
    assert status == 503 and "no such file" in doc["error"]


def test_head_answers_the_get_status(app):
    assert call(app, "HEAD", "/v2/models/double/ready")[0] == 200
    assert call(app, "HEAD", "/v2/models/broken/ready")[0] == 503


def test_wrong_method_answer_carries_allow(app):
    status, headers, doc = call(app, "DELETE", "/v2/models/double")
    assert status == 405 and headers[b"allow"] == b"GET, HEAD" and doc["error"]


def test_unknown_model_and_version_are_404(app):
    assert call(app, "GET", "/v2/models/nothing")[0] == 404
    assert call(app, "GET", "/v2/models/double/versions/1")[0] == 404
    assert call(app, "POST", "/v2/models/double/versions/1/infer", infer_body([[1, 2]]))[0] == 404


def test_versions_route_to_the_model(app):
    status, _, doc = call(app, "GET", "/v2/models/double/versions/3")
    assert status == 200 and doc["versions"] == ["3"]
    status, _, doc = call(app, "POST", "/v2/models/double/versions/3/infer", infer_body([[1, 2]]))
    assert status == 200 and doc["model_version"] == "3"


def test_model_metadata_parameters_are_flat(app):
    parameters = call(app, "GET", "/v2/models/double")[2]["parameters"]
    assert parameters["resources_memory"] == "64Mi"
    assert "cold_start_start_s" in parameters
    assert all(isinstance(v, str | int | float | bool) for v in parameters.values())


def test_infer_and_the_cold_start_header(app):
    status, headers, doc = call(
        app, "POST", "/v2/models/double/infer", infer_body([[1, 2]], id="a")
    )
    assert status == 200 and doc["id"] == "a"
    assert doc["outputs"][0]["data"] == [2.0, 4.0]
    assert headers[b"kindling-cold-start"] == b"true"
    assert (
        call(app, "POST", "/v2/models/double/infer", infer_body([[1, 2]]))[1][
            b"kindling-cold-start"
        ]
        == b"false"
    )


def test_an_id_that_is_not_a_string_is_400(app):
    status, _, doc = call(app, "POST", "/v2/models/double/infer", infer_body([[1, 2]], id=7))
    assert status == 400 and "'id' must be a string" in doc["error"]


def test_a_failed_model_is_503_with_retry_after(app):
    status, headers, _ = call(app, "POST", "/v2/models/broken/infer", infer_body([[1, 2]]))
    assert status == 503 and headers[b"retry-after"] == b"1"


def test_too_large_is_413(app):
    status, _, doc = call(app, "POST", "/v2/models/double/infer", b"x" * (LIMIT + 1))
    assert status == 413 and doc["error"]


def test_unsupported_content_encoding_is_415(app):
    body = infer_body([[1, 2]])
    headers = {"content-encoding": "br"}
    assert call(app, "POST", "/v2/models/double/infer", body, headers)[0] == 415
    headers = {"content-encoding": "gzip"}
    assert call(app, "POST", "/v2/models/double/infer", gzip.compress(body), headers)[0] == 200


# -- Triton's extensions -----------------------------------------------------------------


def test_config_parses_as_tritons_model_config(app):
    status, _, doc = call(app, "GET", "/v2/models/double/versions/3/config")
    assert status == 200
    config = json_format.ParseDict(doc, model_config_pb2.ModelConfig())  # no unknown fields
    assert config.max_batch_size == 4
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(config.input[0].dims) == [2]  # without the batch dimension
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.parameters["kindling_resources_memory"].string_value == "64Mi"


def test_config_without_batching_keeps_every_dimension():
    config = ModelConfig(
        name="t",
        path=Path("unused"),
        inputs=(TensorSpec("s", "BYTES", (-1,)), TensorSpec("n", "INT64", (1, 3))),
        outputs=(TensorSpec("o", "FP16", (-1,)),),
        max_batch_size=8,  # but `n` has no batch dimension: Triton's max_batch_size 0
    )
    doc = triton_config(config)
    parsed = json_format.ParseDict(doc, model_config_pb2.ModelConfig())
    assert parsed.max_batch_size == 0 and not parsed.HasField("dynamic_batching")
    assert parsed.input[0].data_type == model_config_pb2.TYPE_STRING
    assert [list(t.dims) for t in parsed.input] == [[-1], [1, 3]]
    batched = triton_config(
        ModelConfig(
            name="b",
            path=Path("unused"),
            inputs=(TensorSpec("s", "BYTES", (-1,)),),
            outputs=(TensorSpec("o", "FP32", (-1, 5)),),
            max_batch_size=8,
        )
    )
    parsed = json_format.ParseDict(batched, model_config_pb2.ModelConfig())
    # Only the batch dimension: Triton's [1] reshaped to [].
    assert list(parsed.input[0].dims) == [1] and list(parsed.input[0].reshape.shape) == []


def test_statistics_count_requests_and_batches(app):
    for _ in range(2):
        call(app, "POST", "/v2/models/double/infer", infer_body([[1, 2], [3, 4]]))
    call(app, "POST", "/v2/models/double/infer", infer_body([[1, 2, 3]]))  # a wrong shape
    status, _, doc = call(app, "GET", "/v2/models/double/stats")
    assert status == 200
    (stats,) = doc["model_stats"]
    assert (stats["name"], stats["version"]) == ("double", "3")
    assert stats["inference_count"] == 4 and stats["execution_count"] == 2
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 2 and inference["fail"]["count"] == 1
    assert inference["compute_infer"]["count"] == 2 and stats["last_inference"] > 0
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"]] == [
        (2, 2)
    ]
    names = {s["name"] for s in call(app, "GET", "/v2/models/stats")[2]["model_stats"]}
    assert names == {"double", "broken"}
    assert call(app, "GET", "/v2/models/nothing/stats")[0] == 404


def test_repository_index(app):
    status, _, index = call(app, "POST", "/v2/repository/index")
    assert status == 200
    by_name = {m["name"]: m for m in index}
    assert by_name["double"] == {"name": "double", "version": "3", "state": "READY", "reason": ""}
    assert (
        by_name["broken"]["state"] == "UNAVAILABLE"
        and "no such file" in by_name["broken"]["reason"]
    )
    ready = call(app, "POST", "/v2/repository/index", b'{"ready": true}')[2]
    assert [m["name"] for m in ready] == ["double"]
    assert call(app, "POST", "/v2/repository/index", b'{"ready": 1}')[0] == 400
    assert call(app, "POST", "/v2/repository/index", b"[")[0] == 400
