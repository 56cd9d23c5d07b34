"""OIP over gRPC: a real `kindling serve` process with KINDLING_GRPC_PORT set, driven by
tritonclient.grpc (sync and aio) and by Triton's generated stub for typed contents."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tg_aio
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from kindling.cluster.processes import free_port
from tests.conftest import SAMPLE_MODELS, RuntimeProcess, launch_runtime
from tests.runtime.test_serve import config_of, reference, sample_inputs, sigterm_mid_request

pytestmark = pytest.mark.integration

MAX_BODY = 8 * 1024 * 1024
# InferTensorContents field per datatype the sample models take (grpc_service.proto).
TYPED_FIELD = {"FP32": "fp32_contents", "INT64": "int64_contents", "BYTES": "bytes_contents"}


class GrpcRuntime:
    def __init__(self, process: RuntimeProcess, grpc_port: int) -> None:
        self.process = process
        self.url = f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="module")
def runtime(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GrpcRuntime]:
    grpc_port = free_port()
    process = launch_runtime(
        tmp_path_factory.mktemp("grpc"),
        model_repository,
        env={"KINDLING_GRPC_PORT": str(grpc_port), "KINDLING_MAX_BODY_BYTES": str(MAX_BODY)},
    )
    yield GrpcRuntime(process, grpc_port)
    assert process.stop() == 0  # drained: gRPC and HTTP stop together, exit 0


@pytest.fixture(scope="module")
def client(runtime: GrpcRuntime) -> Iterator[tg.InferenceServerClient]:
    c = tg.InferenceServerClient(runtime.url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(runtime: GrpcRuntime) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(runtime.url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def triton_inputs(config: dict, inputs: dict, module=tg) -> list:
    tensors = []
    for spec in config["inputs"]:
        array = inputs[spec["name"]]
        tensor = module.InferInput(spec["name"], list(array.shape), spec["datatype"])
        tensor.set_data_from_numpy(array)  # raw_input_contents, as tritonclient always sends
        tensors.append(tensor)
    return tensors


def assert_matches(result, expected: dict) -> None:
    for name, want in expected.items():
        np.testing.assert_allclose(result.as_numpy(name), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", SAMPLE_MODELS)
def test_raw_contents_match_onnxruntime(client, model_repository, model):
    config = config_of(model_repository, model)
    inputs = sample_inputs(config, batch=2, rng=np.random.default_rng(7))
    result = client.infer(model, triton_inputs(config, inputs), request_id="r1")
    assert result.get_response().id == "r1"
    assert_matches(result, reference(model_repository, model, inputs))


@pytest.mark.parametrize("model", SAMPLE_MODELS)
def test_typed_contents_match_onnxruntime(stub, model_repository, model):
    config = config_of(model_repository, model)
    inputs = sample_inputs(config, batch=2, rng=np.random.default_rng(8))
    request = service_pb2.ModelInferRequest(model_name=model)
    for spec in config["inputs"]:
        array = inputs[spec["name"]]
        tensor = request.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=array.shape)
        getattr(tensor.contents, TYPED_FIELD[spec["datatype"]]).extend(array.reshape(-1).tolist())
    response = stub.ModelInfer(request, timeout=120)
    result = tg.InferResult(response)
    assert_matches(result, reference(model_repository, model, inputs))


def test_aio_client_on_every_model(runtime, model_repository):
    async def run() -> None:
        client = tg_aio.InferenceServerClient(runtime.url)
        try:
            assert await client.is_server_ready()
            for model in SAMPLE_MODELS:
                config = config_of(model_repository, model)
                inputs = sample_inputs(config, batch=3, rng=np.random.default_rng(9))
                tensors = triton_inputs(config, inputs, tg_aio)
                # Concurrent requests: the batcher serves them together, each its own rows.
                results = await asyncio.gather(*(client.infer(model, tensors) for _ in range(4)))
                expected = reference(model_repository, model, inputs)
                for result in results:
                    assert_matches(result, expected)
        finally:
            await client.close()

    asyncio.run(run())


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mobilenet_v2") and client.is_model_ready("minilm", "1")
    server = client.get_server_metadata()
    assert server.name == "kindling"
    assert {"binary_tensor_data", "classification"} <= set(server.extensions)
    meta = client.get_model_metadata("mobilenet_v2", as_json=True)
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": ["-1", "3", "224", "224"]}
    ]


@pytest.mark.parametrize("model", SAMPLE_MODELS)
def test_model_config_is_tritons(client, model_repository, model):
    response = client.get_model_config(model)
    # Re-parse strictly: unknown fields would raise.
    config = model_config_pb2.ModelConfig.FromString(response.config.SerializeToString())
    assert config.name == model
    yaml_config = config_of(model_repository, model)
    assert [i.name for i in config.input] == [i["name"] for i in yaml_config["inputs"]]
    assert all(i.data_type != model_config_pb2.TYPE_INVALID for i in config.input)


def test_repository_index_and_statistics(client, model_repository):
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {m["name"] for m in index} == set(SAMPLE_MODELS)
    assert all(m["state"] == "READY" for m in index)
    before = client.get_inference_statistics("resnet18").model_stats[0].inference_count
    config = config_of(model_repository, "resnet18")
    client.infer(
        "resnet18", triton_inputs(config, sample_inputs(config, 1, np.random.default_rng(1)))
    )
    stats = client.get_inference_statistics("resnet18").model_stats
    assert [s.name for s in stats] == ["resnet18"]
    assert stats[0].inference_count == before + 1
    everything = client.get_inference_statistics()
    assert {s.name for s in everything.model_stats} == set(SAMPLE_MODELS)


def test_classification_over_grpc(client, model_repository):
    config = config_of(model_repository, "squeezenet1_1")
    inputs = sample_inputs(config, 1, np.random.default_rng(2))
    result = client.infer(
        "squeezenet1_1",
        triton_inputs(config, inputs),
        outputs=[tg.InferRequestedOutput("logits", class_count=3)],
    )
    top = result.as_numpy("logits")[0]
    logits = reference(model_repository, "squeezenet1_1", inputs)["logits"][0]
    assert [int(x.split(b":")[1]) for x in top] == list(np.argsort(-logits)[:3])


def _input(name: str, shape: list[int], datatype: str, array: np.ndarray) -> tg.InferInput:
    tensor = tg.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(array)
    return tensor


IMAGE = np.zeros((1, 3, 224, 224), np.float32)


@pytest.mark.parametrize(
    ("model", "make_input", "code", "message"),
    [
        (
            "nope",
            lambda: _input("input", [1, 3, 224, 224], "FP32", IMAGE),
            "NOT_FOUND",
            "not found",
        ),
        (
            "mobilenet_v2",
            lambda: _input("input", [1, 3, 224], "FP32", np.zeros((1, 3, 224), np.float32)),
            "INVALID_ARGUMENT",
            "model expects",
        ),
        (
            "mobilenet_v2",
            lambda: _input("input", [1, 3, 224, 224], "FP64", IMAGE.astype(np.float64)),
            "INVALID_ARGUMENT",
            "must be FP32",
        ),
        (
            "mobilenet_v2",
            lambda: _input(
                "input", [15, 3, 224, 224], "FP32", np.zeros((15, 3, 224, 224), np.float32)
            ),
            "RESOURCE_EXHAUSTED",  # 15 images are 8.6 MiB, past MAX_BODY
            "",
        ),
    ],
    ids=["unknown-model", "bad-shape", "wrong-datatype", "too-large"],
)
def test_errors_map_to_status_codes(client, model, make_input, code, message):
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [make_input()])
    assert caught.value.status() == f"StatusCode.{code}"
    assert message in caught.value.message()
    assert client.is_server_ready()  # and the server goes on


@pytest.mark.parametrize(
    ("datatype", "contents", "message"),
    [
        ("FP33", {"raw": b"\0" * 4}, "unsupported datatype"),
        ("FP16", {"fp32_contents": [0.0]}, "no typed contents"),
        ("FP32", {"int64_contents": [0]}, "goes in contents.fp32_contents"),
        ("FP32", {"fp32_contents": [0.0, 1.0]}, "needs 1 values"),
        ("FP32", {"raw": b"\0" * 3}, "needs 4 bytes"),
    ],
    ids=["unknown-datatype", "fp16-typed", "wrong-field", "count", "raw-size"],
)
def test_malformed_tensors_are_invalid_argument(stub, datatype, contents, message):
    request = service_pb2.ModelInferRequest(model_name="mobilenet_v2")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=[1])
    if "raw" in contents:
        request.raw_input_contents.append(contents["raw"])
    else:
        ((field, values),) = contents.items()
        getattr(tensor.contents, field).extend(values)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


@pytest.mark.parametrize(
    "body",
    [b"\xff\xff\xff\xff", b"\x0a\x80", b"\x0a\x05ab", b"garbage that is not protobuf"],
    ids=["garbage", "truncated-varint", "length-past-the-end", "text"],
)
@pytest.mark.parametrize("rpc", ["ModelInfer", "ModelMetadata", "ServerLive"])
def test_a_malformed_message_is_invalid_argument_without_internals(runtime, body, rpc):
    """Bytes that are no protobuf message of the RPC's type: the client's error, said in
    the words of the protocol, with no Python exception in the text."""
    with grpc.insecure_channel(runtime.url) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{rpc}")
        with pytest.raises(grpc.RpcError) as caught:
            call(body, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    details = caught.value.details()
    assert "protobuf message" in details
    assert "Error" not in details and "Exception" not in details and "Traceback" not in details


def test_unknown_model_metadata_is_not_found(client):
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def _imported(runtime: RuntimeProcess) -> set[str]:
    """Modules the process imported (PYTHONPROFILEIMPORTTIME, as -X importtime, on stderr)."""
    lines = [ln for ln in runtime.log().splitlines() if ln.startswith("import time:")]
    return {ln.rsplit("|", 1)[1].strip() for ln in lines[1:]}


@pytest.mark.parametrize("enabled", [False, True], ids=["off", "on"])
def test_grpc_imported_only_when_enabled(model_repository, start_runtime, enabled):
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    if enabled:
        env["KINDLING_GRPC_PORT"] = str(free_port())
    runtime = start_runtime(model_repository, models=("kim_cnn",), env=env)
    assert runtime.get("/v2/models/kim_cnn")[0] == 200
    assert runtime.stop() == 0
    imported = _imported(runtime)
    assert "kindling.runtime.lifecycle" in imported  # the profile was read
    grpc_modules = {m for m in imported if m.split(".")[0] in ("grpc", "google")}
    if enabled:
        assert "grpc" in grpc_modules
    else:
        assert grpc_modules == set()


def test_bytes_elements_count_against_the_json_limit(stub, model_repository):
    """1.4M empty strings (5.6 MB raw) would hold the loop as 11 MB of JSON would: 413."""
    config = config_of(model_repository, "kim_cnn")
    count = 1_400_000  # x BYTES_ELEMENT_COST (8) > KINDLING_MAX_JSON_BYTES' 10 MiB
    request = service_pb2.ModelInferRequest(model_name="kim_cnn")
    request.inputs.add(name=config["inputs"][0]["name"], datatype="BYTES", shape=[count])
    request.raw_input_contents.append(b"\0\0\0\0" * count)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "BYTES elements" in caught.value.details()


def test_grpc_port_in_use_fails_the_start(model_repository, start_runtime):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        runtime = start_runtime(
            model_repository,
            models=("kim_cnn",),
            env={"KINDLING_GRPC_PORT": str(port)},
            wait_for=None,
        )
        assert runtime.process.wait(timeout=60) == 1
    assert "cannot start the gRPC server" in runtime.log()


def test_sigterm_lets_in_flight_rpcs_finish(model_repository, start_runtime):
    grpc_port = free_port()
    runtime = start_runtime(
        model_repository, models=("resnet18",), env={"KINDLING_GRPC_PORT": str(grpc_port)}
    )
    config = config_of(model_repository, "resnet18")
    inputs = sample_inputs(config, batch=16, rng=np.random.default_rng(4))

    def call() -> np.ndarray:
        client = tg.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            result = client.infer("resnet18", triton_inputs(config, inputs), client_timeout=120)
            return result.as_numpy("logits")
        finally:
            client.close()

    assert sigterm_mid_request(runtime, call) == 0
