"""The runtime as users run it: a real `kindling serve` process, driven by tritonclient."""

from __future__ import annotations

import gzip
import http.client
import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
import yaml
from google.protobuf import json_format
from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2

from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.store import EmbeddingStore
from kindling.loadtest.bench_runtime import binary_request
from kindling.runtime.text import clean_str_sst
from tests.conftest import SAMPLE_MODELS, RuntimeProcess, launch_runtime, serving

pytestmark = pytest.mark.integration

WORDS = (
    "the a movie film is was great terrible plot actors , ! ? ( ) it's qwxzy "
    "dull brilliant who wrote hamlet shakespeare tragedy play 1603 ; -- éclair"
).split()
DTYPES = {"FP32": np.float32, "INT64": np.int64}
# A drained runtime exits 0; a signal exit is accepted for a stop that races start-up.
DRAINED = (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def runtime(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    process = launch_runtime(
        tmp_path_factory.mktemp("runtime"),
        model_repository,
        env={"KINDLING_MAX_BODY_BYTES": str(8 * 1024 * 1024)},
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(runtime: RuntimeProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(runtime.url, concurrency=16, network_timeout=120)
    yield c
    c.close()


def config_of(repository: Path, model: str) -> dict:
    return yaml.safe_load((repository / model / "config.yaml").read_text())


def sample_inputs(config: dict, batch: int, rng: np.random.Generator, length: int = 9) -> dict:
    """Random tensors, or for text inputs sentences of `length` words (some unknown to
    the demo tables, and one with punctuation clean_str_sst strips)."""
    inputs = {}
    for spec in config["inputs"]:
        if spec["datatype"] == "BYTES":
            sentences = [" ".join(rng.choice(WORDS, length)).encode() for _ in range(batch)]
            inputs[spec["name"]] = np.array(sentences, dtype=object)
            continue
        shape = [
            batch if i == 0 else (length if d == -1 else d) for i, d in enumerate(spec["shape"])
        ]
        inputs[spec["name"]] = rng.standard_normal(shape).astype(DTYPES[spec["datatype"]])
    return inputs


def reference(repository: Path, model: str, inputs: dict) -> dict:
    """The same model run by onnxruntime directly: the ground truth."""
    config = config_of(repository, model)
    session = ort.InferenceSession(str(repository / model / "model.onnx"))
    feed = inputs
    kind = config.get("preprocess", {}).get("kind")
    if kind == "word_vectors":
        feed = word_vectors(repository, config["preprocess"], inputs)
    elif kind == "hf_tokenizer":
        tokenizer = Tokenizer.from_file(str(repository / model / config["preprocess"]["tokenizer"]))
        tokenizer.enable_truncation(config["preprocess"]["max_length"])
        tokenizer.enable_padding()
        enc = tokenizer.encode_batch([s.decode() for s in inputs["text"]])
        feed = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
    names = [o["name"] for o in config["outputs"]]
    return dict(zip(names, session.run(names, feed), strict=True))


def word_vectors(repository: Path, spec: dict, inputs: dict) -> dict:
    """Paper 000's text path done by hand: clean_str_sst, table lookup, zero padding."""
    store = EmbeddingStore.from_settings(EmbeddingSettings(store_dir=repository / ".embeddings"))
    feed = {}
    for served, graph_input in spec["inputs"].items():
        tokens = [clean_str_sst(s.decode())[: spec["max_length"]] for s in inputs[served]]
        length = max(spec["min_length"], *(len(t) for t in tokens))
        rows = []
        for words in tokens:
            vectors = store.lookup(spec["table"], words).vectors if words else np.zeros((0, 1))
            row = np.zeros((length, store.info(spec["table"]).dim), np.float32)
            row[: len(words)] = vectors
            rows.append(row)
        feed[graph_input] = np.stack(rows)
    store.close()
    return feed


def infer(
    client: triton.InferenceServerClient,
    config: dict,
    inputs: dict,
    binary: bool,
    wait: bool = True,
):
    """One tritonclient request; with wait=False an async one (tritonclient's own concurrency:
    its gevent client must not be shared between threads)."""
    tensors = []
    for spec in config["inputs"]:
        array = inputs[spec["name"]]
        t = triton.InferInput(spec["name"], list(array.shape), spec["datatype"])
        t.set_data_from_numpy(array, binary_data=binary)
        tensors.append(t)
    outputs = [
        triton.InferRequestedOutput(o["name"], binary_data=binary) for o in config["outputs"]
    ]
    if wait:
        return client.infer(config["name"], tensors, outputs=outputs)
    return client.async_infer(config["name"], tensors, outputs=outputs)


def infer_concurrently(client, config: dict, inputs: list[dict]) -> list:
    pending = [infer(client, config, x, True, wait=False) for x in inputs]
    return [p.get_result() for p in pending]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", SAMPLE_MODELS)
def test_every_sample_model_matches_onnxruntime(client, model_repository, model, binary):
    config = config_of(model_repository, model)
    inputs = sample_inputs(config, batch=2, rng=np.random.default_rng(7))
    result = infer(client, config, inputs, binary)
    expected = reference(model_repository, model, inputs)
    for name, want in expected.items():
        np.testing.assert_allclose(result.as_numpy(name), want, rtol=1e-4, atol=1e-5)


def test_server_and_model_metadata(client, runtime):
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("mobilenet_v2")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert client.is_model_ready("mobilenet_v2", model_version="1")
    assert client.get_model_config("resnet18")["max_batch_size"] > 0
    assert runtime.get("/v2/models/mobilenet_v2/versions/1")[0] == 200


def test_every_sample_models_config_parses_as_tritons_model_config(client):
    for model in SAMPLE_MODELS:
        doc = client.get_model_config(model)
        # No unknown fields: Triton's tools read it with this same proto.
        config = json_format.ParseDict(doc, model_config_pb2.ModelConfig())
        assert config.name == model and config.platform == "onnxruntime_onnx"
        assert all(t.data_type != model_config_pb2.TYPE_INVALID for t in config.input)
        # The threads, where Triton's onnxruntime backend keeps them (>= 1: the CPU quota).
        assert int(config.parameters["intra_op_thread_count"].string_value) >= 1


def test_triton_repository_and_statistics_extensions(model_repository, start_runtime):
    runtime = start_runtime(model_repository, models=("squeezenet1_1",))
    client = triton.InferenceServerClient(runtime.url)
    try:
        extensions = client.get_server_metadata()["extensions"]
        assert "model_repository" in extensions and "statistics" in extensions
        assert client.get_model_repository_index() == [
            {"name": "squeezenet1_1", "version": "1", "state": "READY", "reason": ""}
        ]
        config = config_of(model_repository, "squeezenet1_1")
        rng = np.random.default_rng(3)
        for _ in range(2):
            infer(client, config, sample_inputs(config, batch=1, rng=rng), True)
        (stats,) = client.get_inference_statistics("squeezenet1_1")["model_stats"]
        assert (stats["name"], stats["version"]) == ("squeezenet1_1", "1")
        assert stats["inference_count"] == 2 and stats["execution_count"] == 2
        assert stats["inference_stats"]["success"]["count"] == 2
        assert stats["inference_stats"]["compute_infer"]["ns"] > 0
        assert stats["batch_stats"][0]["batch_size"] == 1
        every = client.get_inference_statistics()["model_stats"]
        assert [s["name"] for s in every] == ["squeezenet1_1"]
    finally:
        client.close()


def test_cold_start_phases_are_reported(client, runtime):
    parameters = client.get_model_metadata("squeezenet1_1")["parameters"]
    # Flat (OIP $parameters hold no objects): one cold_start_{phase}_s key per phase.
    assert all(isinstance(v, str | int | float | bool) for v in parameters.values())
    phases = {
        k.removeprefix("cold_start_").removesuffix("_s"): v
        for k, v in parameters.items()
        if k.startswith("cold_start_")
    }
    for phase in ("start", "imports", "ready", "model_fetched", "model_session", "model_warmup"):
        assert phase in phases
    assert phases["model_fetched"] <= phases["model_session"] <= phases["model_warmup"]
    metrics = runtime.get("/metrics")[1].decode()
    assert 'kindling_cold_start_phase_seconds{model="squeezenet1_1",phase="session"}' in metrics
    line = next(ln for ln in runtime.log().splitlines() if '"cold_start"' in ln)
    assert set(json.loads(line)["models"]) == set(SAMPLE_MODELS)


def test_cold_start_header_true_once(model_repository, start_runtime):
    runtime = start_runtime(model_repository, models=("squeezenet1_1",))
    config = config_of(model_repository, "squeezenet1_1")
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 3, 224, 224],
                    "data": [0.0] * 150528,
                }
            ]
        }
    ).encode()
    flags = [
        runtime.post("/v2/models/squeezenet1_1/infer", body)[1]["kindling-cold-start"]
        for _ in range(3)
    ]
    assert flags == ["true", "false", "false"]
    assert config["name"] == "squeezenet1_1"
    # The first answer is marked, after ready: a pod's view of the request that woke it.
    metrics = runtime.get("/metrics")[1].decode()
    marks = {
        phase: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        for phase in ("ready", "first_answer")
        if line.startswith(f'kindling_cold_start_phase_seconds{{model="",phase="{phase}"}}')
    }
    assert 0 < marks["ready"] <= marks["first_answer"]


def _read_head(sock: socket.socket) -> bytes:
    """One response head, read a byte at a time so nothing after it is consumed."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"closed after {head!r}")
        head += byte
    return head[:-4]


def _held_infer(runtime: RuntimeProcess, x: np.ndarray) -> tuple[socket.socket, bytes]:
    """A mobilenet_v2 request routed but not sent: its head went out with `Expect:
    100-continue`, and the 100 says the runtime counts it as arriving. Returns the socket
    and the body still to send."""
    body, headers = binary_request(x, binary_output=False)
    sock = socket.create_connection(("127.0.0.1", runtime.port), timeout=60)
    sock.sendall(
        b"POST /v2/models/mobilenet_v2/infer HTTP/1.1\r\nHost: t\r\n"
        b"Inference-Header-Content-Length: %s\r\nContent-Length: %d\r\n"
        b"Expect: 100-continue\r\n\r\n"
        % (headers["Inference-Header-Content-Length"].encode(), len(body))
    )
    assert _read_head(sock) == b"HTTP/1.1 100 Continue"
    return sock, body


def _logits(sock: socket.socket, rows: int) -> np.ndarray:
    response = http.client.HTTPResponse(sock)
    response.begin()
    doc = json.loads(response.read())
    sock.close()
    assert response.status == 200, doc
    return np.array(doc["outputs"][0]["data"], np.float32).reshape(rows, 1000)


def test_concurrent_requests_are_batched_and_get_their_own_rows(
    tmp_path, model_repository, start_runtime
):
    """Requests whose bodies are still arriving when a batch forms join it, and each gets
    its own rows back. All four requests are routed first (their 100 Continue says so);
    the fourth, routed last, sends its body only at the end, so a batch keeps waiting for
    arrivals until the first three fill it to max_batch_size: they land in one onnxruntime
    run whatever order their bodies arrive in and however the machine schedules them."""
    repo = tmp_path / "repo"
    (repo / "mobilenet_v2").mkdir(parents=True)
    config = config_of(model_repository, "mobilenet_v2")
    config["max_batch_size"] = 1 + 2 + 3
    config["batching"] = {"max_queue_delay_ms": 120_000}  # only a hang would wait it out
    (repo / "mobilenet_v2" / "config.yaml").write_text(yaml.safe_dump(config))
    (repo / "mobilenet_v2" / "model.onnx").symlink_to(
        model_repository / "mobilenet_v2" / "model.onnx"
    )
    runtime = start_runtime(repo)
    rng = np.random.default_rng(11)
    inputs = [rng.standard_normal((rows, 3, 224, 224)).astype(np.float32) for rows in (1, 2, 3)]
    last = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    before = _batch_counts(runtime)
    callers = [_held_infer(runtime, x) for x in inputs]
    last_sock, last_body = _held_infer(runtime, last)
    for sock, body in callers:
        sock.sendall(body)
    expected = reference(model_repository, "mobilenet_v2", {"input": np.concatenate(inputs)})
    offset = 0
    for (sock, _), x in zip(callers, inputs, strict=True):
        logits = _logits(sock, len(x))
        np.testing.assert_allclose(
            logits, expected["logits"][offset : offset + len(x)], rtol=1e-4, atol=1e-4
        )
        offset += len(x)
    last_sock.sendall(last_body)
    np.testing.assert_allclose(
        _logits(last_sock, 1),
        reference(model_repository, "mobilenet_v2", {"input": last})["logits"],
        rtol=1e-4,
        atol=1e-4,
    )
    runs, rows = (a - b for a, b in zip(_batch_counts(runtime), before, strict=True))
    assert (runs, rows) == (2, 6 + 1), "the three requests were not run as one batch"


def _batch_counts(runtime: RuntimeProcess) -> tuple[float, float]:
    text = runtime.get("/metrics")[1].decode()
    values = {}
    for line in text.splitlines():
        for suffix in ("_count", "_sum"):
            if line.startswith(f'kindling_batch_size{suffix}{{model="mobilenet_v2"}}'):
                values[suffix] = float(line.split()[-1])
    return values.get("_count", 0.0), values.get("_sum", 0.0)


@pytest.mark.parametrize("model", ["kim_cnn", "sm_cnn"])
def test_variable_length_sentences_are_padded_without_changing_results(
    client, model_repository, model
):
    # Both text CNNs use wide convolutions with zero biases (and SM CNN leaves windows of
    # padding out of its max), so zero-padding a sentence in a batch leaves its output
    # unchanged: each caller must get its unpadded answer.
    config = config_of(model_repository, model)
    rng = np.random.default_rng(3)
    inputs = [sample_inputs(config, batch=1, rng=rng, length=n) for n in (1, 5, 8, 13, 70) * 4]
    results = infer_concurrently(client, config, inputs)
    for x, r in zip(inputs, results, strict=True):
        expected = reference(model_repository, model, x)["probabilities"]
        np.testing.assert_allclose(r.as_numpy("probabilities"), expected, rtol=1e-4, atol=1e-6)


def test_gzip_request_body(client, model_repository):
    config = config_of(model_repository, "squeezenet1_1")
    inputs = sample_inputs(config, batch=1, rng=np.random.default_rng(5))
    t = triton.InferInput("input", [1, 3, 224, 224], "FP32")
    t.set_data_from_numpy(inputs["input"])
    result = client.infer("squeezenet1_1", [t], request_compression_algorithm="gzip")
    expected = reference(model_repository, "squeezenet1_1", inputs)["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-5)


def test_classification_extension(client, model_repository):
    inputs = sample_inputs(
        config_of(model_repository, "squeezenet1_1"), 1, np.random.default_rng(2)
    )
    t = triton.InferInput("input", [1, 3, 224, 224], "FP32")
    t.set_data_from_numpy(inputs["input"])
    result = client.infer(
        "squeezenet1_1", [t], outputs=[triton.InferRequestedOutput("logits", class_count=3)]
    )
    top = result.as_numpy("logits")[0]
    logits = reference(model_repository, "squeezenet1_1", inputs)["logits"][0]
    assert [int(x.split(b":")[1]) for x in top] == list(np.argsort(-logits)[:3])


# -- bad input: a clear {"error"} with the right status, never a 500 -----------------------

IMAGE = {"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": [0.0] * 150528}


def _json(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def _binary_request(header: dict, payload: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + payload, {"Inference-Header-Content-Length": str(len(head))}


BAD_REQUESTS = {
    "unknown model": ("/v2/models/nope/infer", _json({"inputs": [IMAGE]}), {}, 404),
    "unknown version": (
        "/v2/models/mobilenet_v2/versions/9/infer",
        _json({"inputs": [IMAGE]}),
        {},
        404,
    ),
    "invalid json": ("/v2/models/mobilenet_v2/infer", b"{not json", {}, 400),
    "json not an object": ("/v2/models/mobilenet_v2/infer", b"[1, 2]", {}, 400),
    "missing input": (
        "/v2/models/sm_cnn/infer",
        _json(
            {"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["who?"]}]}
        ),
        {},
        400,
    ),
    "vectors to a text model": (
        "/v2/models/kim_cnn/infer",
        _json({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [0.5]}]}),
        {},
        400,
    ),
    "unknown input": (
        "/v2/models/mobilenet_v2/infer",
        _json({"inputs": [{**IMAGE, "name": "image"}]}),
        {},
        400,
    ),
    "wrong shape": (
        "/v2/models/mobilenet_v2/infer",
        _json({"inputs": [{**IMAGE, "shape": [1, 3, 224, 223], "data": [0.0] * 150304}]}),
        {},
        400,
    ),
    "wrong datatype": (
        "/v2/models/mobilenet_v2/infer",
        _json({"inputs": [{**IMAGE, "datatype": "INT64", "data": [0] * 150528}]}),
        {},
        400,
    ),
    "data count mismatch": (
        "/v2/models/mobilenet_v2/infer",
        _json({"inputs": [{**IMAGE, "data": [0.0] * 10}]}),
        {},
        400,
    ),
    "batch too large": (
        "/v2/models/kim_cnn/infer",
        _json(
            {
                "inputs": [
                    {"name": "text", "datatype": "BYTES", "shape": [33], "data": ["a film"] * 33}
                ]
            }
        ),
        {},
        400,
    ),
    "binary size mismatch": (
        "/v2/models/mobilenet_v2/infer",
        *_binary_request(
            {
                "inputs": [
                    {
                        **{k: v for k, v in IMAGE.items() if k != "data"},
                        "parameters": {"binary_data_size": 100},
                    }
                ]
            },
            b"\0" * 100,
        ),
        400,
    ),
    "truncated binary": (
        "/v2/models/mobilenet_v2/infer",
        *_binary_request(
            {
                "inputs": [
                    {
                        **{k: v for k, v in IMAGE.items() if k != "data"},
                        "parameters": {"binary_data_size": 602112},
                    }
                ]
            },
            b"\0" * 1000,
        ),
        400,
    ),
    "header length past body": (
        "/v2/models/mobilenet_v2/infer",
        b"{}",
        {"Inference-Header-Content-Length": "999"},
        400,
    ),
    "header length not a number": (
        "/v2/models/mobilenet_v2/infer",
        b"{}",
        {"Inference-Header-Content-Length": "x"},
        400,
    ),
    "non-utf8 text": (
        "/v2/models/minilm/infer",
        *_binary_request(
            {
                "inputs": [
                    {
                        "name": "text",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 6},
                    }
                ]
            },
            b"\x02\0\0\0\xff\xfe",
        ),
        400,
    ),
    "empty batch": (
        "/v2/models/kim_cnn/infer",
        _json({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [0], "data": []}]}),
        {},
        400,
    ),
    "corrupt gzip": (
        "/v2/models/mobilenet_v2/infer",
        b"not gzip",
        {"Content-Encoding": "gzip"},
        400,
    ),
    "unknown content encoding": (
        "/v2/models/mobilenet_v2/infer",
        b"{}",
        {"Content-Encoding": "br"},
        415,
    ),
    "oversized body": ("/v2/models/mobilenet_v2/infer", b"\0" * (8 * 1024 * 1024 + 1), {}, 413),
    "oversized after gzip": (
        "/v2/models/mobilenet_v2/infer",
        gzip.compress(b" " * (9 * 1024 * 1024)),
        {"Content-Encoding": "gzip"},
        413,
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_clear_error(runtime, case):
    path, body, headers, status = BAD_REQUESTS[case]
    got, _, payload = runtime.post(path, body, headers)
    assert got == status, payload
    error = json.loads(payload)["error"]
    assert isinstance(error, str) and error


def test_unknown_route_and_method_are_json_errors(runtime):
    status, body = runtime.get("/v2/nothing")
    assert status == 404 and "error" in json.loads(body)
    status, headers, body = runtime.post("/v2/health/live", b"")
    assert status == 405 and "error" in json.loads(body)
    assert headers["allow"] == "GET, HEAD"  # RFC 9110: a 405 says what is allowed


def test_server_survives_bad_requests(client, model_repository):
    config = config_of(model_repository, "squeezenet1_1")
    inputs = sample_inputs(config, 1, np.random.default_rng(1))
    result = infer(client, config, inputs, True)
    expected = reference(model_repository, "squeezenet1_1", inputs)["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-5)


# -- lifecycle ------------------------------------------------------------------------


def sigterm_mid_request(runtime: RuntimeProcess, call: Callable[[], np.ndarray]) -> int:
    """SIGTERM `runtime` while `call` (a batch of 16 resnet18 images, any transport) is in
    flight; the call must still get its logits. The process's exit code."""
    outcome: dict = {}

    def caller() -> None:
        try:
            outcome["result"] = call()
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=caller)
    thread.start()
    _wait_in_flight(runtime, "resnet18")
    runtime.process.terminate()
    thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].shape == (16, 1000)
    return runtime.process.wait(30)


def test_sigterm_lets_in_flight_requests_finish(model_repository, start_runtime):
    runtime = start_runtime(model_repository, models=("resnet18",))
    config = config_of(model_repository, "resnet18")
    inputs = sample_inputs(config, batch=16, rng=np.random.default_rng(4))

    def call() -> np.ndarray:
        with triton.InferenceServerClient(runtime.url, network_timeout=120) as client:
            return infer(client, config, inputs, True).as_numpy("logits")

    assert sigterm_mid_request(runtime, call) in DRAINED


def _wait_in_flight(runtime: RuntimeProcess, model: str) -> None:
    deadline = time.monotonic() + 60  # a safety net: only a hang waits this long
    needle = f'kindling_requests_in_flight{{model="{model}"}} 1'
    while time.monotonic() < deadline:
        if needle in runtime.get("/metrics")[1].decode():
            return
        time.sleep(0.005)
    raise TimeoutError("the request never went in flight")


class _ModelHost(BaseHTTPRequestHandler):
    """Serves model downloads: 404 for /missing, hangs on /stall, the file otherwise."""

    release = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/stall":
            self.release.wait(60)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def model_host() -> Iterator[str]:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _ModelHost)) as url:
        try:
            yield url
        finally:
            _ModelHost.release.set()
    _ModelHost.release.clear()


def _remote_model(tmp_path: Path, repository: Path, uri: str) -> Path:
    config = config_of(repository, "squeezenet1_1")
    config["model_uri"] = uri
    (tmp_path / "repo" / "squeezenet1_1").mkdir(parents=True)
    (tmp_path / "repo" / "squeezenet1_1" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "repo"


def test_model_still_loading_is_503_not_a_hang(
    tmp_path, model_repository, model_host, start_runtime
):
    repo = _remote_model(tmp_path, model_repository, f"{model_host}/stall")
    runtime = start_runtime(repo, wait_for="/v2/health/live")
    assert runtime.get("/v2/health/ready")[0] == 503
    status, headers, body = runtime.post(
        "/v2/models/squeezenet1_1/infer", _json({"inputs": [IMAGE]})
    )
    assert status == 503 and "loading" in json.loads(body)["error"]
    assert headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("uri", "message"),
    [("/missing", "HTTP 404"), ("ftp://example.invalid/m.onnx", "not allowed")],
)
def test_model_download_failure_is_reported(
    tmp_path, model_repository, model_host, start_runtime, uri, message
):
    repo = _remote_model(
        tmp_path, model_repository, model_host + uri if uri.startswith("/") else uri
    )
    runtime = start_runtime(repo, wait_for="/v2/health/live")
    deadline = time.monotonic() + 60  # a safety net: only a hang waits this long
    while (
        json.loads(runtime.get("/v2/models/squeezenet1_1")[1])["parameters"]["state"] == "loading"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status, _, body = runtime.post("/v2/models/squeezenet1_1/infer", _json({"inputs": [IMAGE]}))
    assert status == 503 and message in json.loads(body)["error"]
    assert runtime.get("/v2/health/ready")[0] == 503


def test_model_subset_and_optimized_cache_reuse(tmp_path, model_repository, start_runtime):
    repo = tmp_path / "repo"
    repo.mkdir()
    source = model_repository / "squeezenet1_1"
    (repo / "squeezenet1_1").mkdir()
    for name in ("model.onnx", "config.yaml"):
        (repo / "squeezenet1_1" / name).write_bytes((source / name).read_bytes())
    first = start_runtime(
        repo, models=("squeezenet1_1",), env={"KINDLING_OPTIMIZED_CACHE_DELAY_S": "0"}
    )
    assert (
        json.loads(first.get("/v2/models/squeezenet1_1")[1])["parameters"]["optimized_cache_hit"]
        is False
    )
    deadline = time.monotonic() + 60  # a safety net: only a hang waits this long
    while not list((repo / "squeezenet1_1" / ".kindling-cache").glob("*.ort.onnx")):
        assert time.monotonic() < deadline, "the optimized graph was never cached"
        time.sleep(0.05)
    assert first.stop() in DRAINED
    second = start_runtime(repo)
    assert (
        json.loads(second.get("/v2/models/squeezenet1_1")[1])["parameters"]["optimized_cache_hit"]
        is True
    )
    assert second.get("/v2/models/mobilenet_v2")[0] == 404


def test_unknown_model_in_kindling_models_fails_at_start(model_repository, start_runtime):
    runtime = start_runtime(model_repository, models=("nope",), wait_for=None)
    assert runtime.process.wait(30) == 2
    assert "nope" in runtime.log()
