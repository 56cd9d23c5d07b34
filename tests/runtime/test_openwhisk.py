"""OpenWhisk mode: the runtime as a docker action, driven as an invoker drives it.

The conformance cases are apache/openwhisk's BasicActionRunnerTests (and its helpers'
checkStreams: one sentinel per stream per activation, nothing else on the streams unless
the action wrote it), then openwhisk-runtime-python's PythonBasicTests and
PythonActionLoopExtraTests, then this runtime's own: models in a zip, the action API
with the embedding store, the image's own OIP action, web actions and Knative.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
import yaml

from kindling.errors import InvalidInput, PayloadTooLarge
from kindling.runtime.action_init import ActionInitError, InitSpec, env_text, unpack
from kindling.runtime.settings import ServerSettings
from kindling.runtime.text import clean_str_sst
from tests.conftest import RuntimeProcess, StartRuntime

SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"
CHARTS = Path(__file__).resolve().parents[2] / "charts" / "openwhisk"
integration = pytest.mark.integration

ECHO = """
import sys
def main(args):
    print('hello stdout')
    print('hello stderr', file=sys.stderr)
    return args
"""


@dataclass
class Action:
    """An action container as the test suite's ActionContainer sees it."""

    runtime: RuntimeProcess

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.runtime.port, timeout=120)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            headers = {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()
        # Every response carries Content-Length (the invoker's client reads by it).
        assert headers.get("content-length") == str(len(data))
        assert response.status != 503
        return response.status, headers, json.loads(data) if data else None

    def init(self, code: str = "", main: str = "main", **value: Any) -> tuple[int, Any]:
        binary = value.pop("binary", False)
        payload = {"value": {"code": code, "main": main, "binary": binary, **value}}
        status, _, body = self.post("/init", json.dumps(payload).encode())
        return status, body

    def run(self, args: Any, **context: Any) -> tuple[int, Any]:
        status, _, body = self.post("/run", json.dumps({"value": args, **context}).encode())
        return status, body

    def streams(self, sentinels: int = 1) -> tuple[str, str]:
        """checkStreams: `sentinels` frames on each stream, each alone on its line; returns
        the streams without them."""
        out, err = self.runtime.streams()
        for name, text in (("stdout", out), ("stderr", err)):
            assert text.count(SENTINEL) == sentinels, f"{name}:\n{text}"
            assert all(line == SENTINEL for line in text.splitlines() if SENTINEL in line)
        return out.replace(SENTINEL, "").strip(), err.replace(SENTINEL, "").strip()


StartAction = Callable[..., Action]


@pytest.fixture
def start_action(start_runtime: StartRuntime, tmp_path: Path) -> StartAction:
    def start(repository: Path | None = None, **kwargs: Any) -> Action:
        if repository is None:  # no built-in models: the fastest container to start
            repository = tmp_path / "empty-repository"
            repository.mkdir(exist_ok=True)
        env = {"KINDLING_REDIS_URL": "", **kwargs.pop("env", {})}
        return Action(start_runtime(repository, openwhisk=True, env=env, **kwargs))

    return start


def zip_code(files: dict[str, str | bytes]) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return base64.b64encode(buffer.getvalue()).decode()


def model_folder(source: Path, name: str, config: dict | None = None) -> dict[str, bytes]:
    """A model repository folder for a zip: `source`'s graph under a new name."""
    config = dict(config or yaml.safe_load((source / "config.yaml").read_text()))
    config["name"] = name
    return {
        f"{name}/model.onnx": (source / "model.onnx").read_bytes(),
        f"{name}/config.yaml": yaml.safe_dump(config).encode(),
    }


def onnx_reference(model: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(model)).run(None, feed)


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 224, 224)).astype(np.float32)


def oip_json(tensor: np.ndarray, name: str = "input") -> dict[str, Any]:
    return {
        "name": name,
        "datatype": "FP32",
        "shape": list(tensor.shape),
        "data": tensor.ravel().tolist(),
    }


# -- BasicActionRunnerTests ---------------------------------------------------------------


@integration
def test_init_with_no_code_serves_the_image(start_action):
    action = start_action()
    assert action.init("", "")[0] == 200  # the image has a code stub: its own models


@integration
def test_init_with_no_content(start_action):
    action = start_action()
    status, _, _ = action.post("/init", b"{}")
    assert status == 200
    assert action.post("/init", b"")[0] == 403  # that was the one initialization


@integration
def test_result_that_is_not_a_dictionary_is_502(start_action):
    action = start_action()
    assert action.init("def main(args):\n    return 'not a json object'\n")[0] == 200
    assert action.run({}) == (502, {"error": "The action did not return a dictionary or array."})
    assert action.streams() == ("", "")


@integration
def test_init_twice_is_refused(start_action):
    action = start_action()
    assert action.init("def main(args):\n    return args\n")[0] == 200
    status, body = action.init("def main(args):\n    return args\n")
    assert (status, body) == (403, {"error": "Cannot initialize the action more than once."})
    out, err = action.streams(sentinels=0)
    assert "Cannot initialize the action more than once." in out + err


@integration
def test_non_standard_entry_point(start_action):
    action = start_action()
    assert action.init("def niam(args):\n    return args\n", main="niam")[0] == 200
    assert action.run({"string": "hello"}) == (200, {"string": "hello"})
    assert action.streams() == ("", "")


@integration
def test_echo_with_logs_framed_per_activation(start_action):
    action = start_action()
    assert action.init(ECHO)[0] == 200
    argss = [
        {"string": "hello"},
        {"string": "❄ ☃ ❄"},
        {"numbers": [42, 1]},
        {"object": {"a": "A"}},
    ]
    for args in argss:
        assert action.run(args) == (200, args)
    out, err = action.streams(sentinels=len(argss))
    assert [line for line in out.splitlines() if line] == ["hello stdout"] * len(argss)
    assert [line for line in err.splitlines() if line] == ["hello stderr"] * len(argss)


@integration
def test_unicode_in_source_arguments_logs_and_result(start_action):
    action = start_action()
    code = 'def main(args):\n    s = args["delimiter"] + " ☃ " + args["delimiter"]\n    print(s)\n    return {"winter": s}\n'
    assert action.init(code)[0] == 200
    assert action.run({"delimiter": "❄"}) == (200, {"winter": "❄ ☃ ❄"})
    out, _ = action.streams()
    assert "❄ ☃ ❄" in out


@integration
def test_activation_context_is_exported(start_action):
    action = start_action(env={"__OW_API_HOST": "xyz"})
    code = """
import os
def main(args):
    keys = ["api_host", "api_key", "namespace", "action_name", "action_version",
            "activation_id", "transaction_id", "deadline"]
    return {k: os.environ["__OW_" + k.upper()] for k in keys}
"""
    assert action.init(code)[0] == 200
    context = {
        "api_key": "abc",
        "namespace": "zzz",
        "action_name": "xxx",
        "action_version": "0.0.1",
        "activation_id": "iii",
        "transaction_id": "ttt",
        "deadline": "123",
    }
    status, result = action.run({}, **context)
    assert status == 200
    assert result == {"api_host": "xyz", **context}
    assert (
        action.run({}, **{**context, "deadline": 1700000000000})[1]["deadline"] == "1700000000000"
    )
    assert action.streams(sentinels=2) == ("", "")


@integration
def test_init_env_is_exported_before_the_code_loads(start_action):
    action = start_action()
    code = """
import os
AT_IMPORT = {k: os.environ[k] for k in ("ARRAY", "OBJECT", "STRING", "NUMBER", "BOOL", "NULL")}
def main(args):
    return AT_IMPORT
"""
    env = {
        "ARRAY": ["a", "b"],
        "OBJECT": {"a": "A"},
        "STRING": "xyz",
        "NUMBER": 3,
        "BOOL": True,
        "NULL": None,
    }
    assert action.init(code, env=env)[0] == 200
    status, result = action.run({})
    assert status == 200
    assert json.loads(result["ARRAY"]) == ["a", "b"]
    assert json.loads(result["OBJECT"]) == {"a": "A"}
    assert (result["STRING"], result["NUMBER"], result["BOOL"], result["NULL"]) == (
        "xyz",
        "3",
        "true",
        "",
    )


@integration
def test_large_input(start_action):
    action = start_action()
    assert action.init("def main(args):\n    return args\n")[0] == 200
    arg = {"arg": "a" * 1048561}
    assert action.run(arg) == (200, arg)


# -- PythonBasicTests, PythonActionLoopExtraTests -----------------------------------------


@integration
def test_zip_with_main_and_a_sibling_module(start_action):
    action = start_action()
    code = zip_code(
        {
            "__main__.py": "from echo import echo\ndef niam(args):\n    return echo(args)\n",
            "echo.py": "def echo(args):\n    return {'echo': args}\n",
            "workfile": "read by relative path",
        }
    )
    assert action.init(code, main="niam", binary=True)[0] == 200
    assert action.run({"msg": "it works"}) == (200, {"echo": {"msg": "it works"}})
    assert action.streams() == ("", "")


@integration
def test_zip_action_reads_files_by_relative_path(start_action):
    action = start_action()
    code = zip_code(
        {
            "__main__.py": "def main(args):\n    with open('workfile') as f:\n        return {'file': f.read()}\n",
            "workfile": "this is a test string",
        }
    )
    assert action.init(code, binary=True)[0] == 200
    assert action.run({}) == (200, {"file": "this is a test string"})


@integration
def test_zip_without_main_or_model_is_502_with_a_clear_message(start_action):
    action = start_action()
    code = zip_code({"echo.py": "def echo(args):\n    return {'echo': args}\n"})
    status, body = action.init(code, main="echo", binary=True)
    assert status == 502
    assert "__main__.py" in body["error"]
    out, err = action.streams()
    assert out == "" and "Zip file does not include" in err


@integration
@pytest.mark.parametrize(
    ("code", "error"),
    [
        (' 10 PRINT "Hello!"\n 20 GOTO 10\n', "IndentationError"),  # the reference's code
        ("def main(args)\n    return args\n", "SyntaxError"),
    ],
)
def test_syntax_error_at_init_is_502_with_a_traceback(start_action, code, error):
    action = start_action()
    status, body = action.init(code)
    assert status == 502
    assert body["error"].startswith(f"Cannot start action: {error}")
    out, err = action.streams()
    assert out == "" and "Traceback" in err and error in err


@integration
def test_import_error_and_exit_at_init_are_502(start_action):
    for code in (
        "import iamnotsupported\ndef main(args):\n    pass\n",
        "import sys\nsys.exit(1)\n",
    ):
        action = start_action()
        status, body = action.init(code)
        assert status == 502 and "Cannot start action" in body["error"], body
        assert "Traceback" in action.streams()[1]


@integration
def test_missing_entry_point_is_502(start_action):
    action = start_action()
    status, body = action.init("def main(args):\n    return args\n", main="nope")
    assert status == 502 and "'nope'" in body["error"]


@integration
def test_exception_in_main_is_an_application_error(start_action):
    action = start_action()
    code = "def div(x, y):\n    return x / y\n\ndef main(args):\n    return {'divBy0': div(5, 0)}\n"
    assert action.init(code)[0] == 200
    assert action.run({}) == (200, {"error": "division by zero"})
    out, err = action.streams()
    assert out == "" and "Traceback" in err and "ZeroDivisionError" in err


@integration
def test_exit_in_main_does_not_stop_the_runtime(start_action):
    action = start_action()
    assert action.init("import sys\ndef main(args):\n    sys.exit(1)\n")[0] == 200
    status, body = action.run({})
    assert status == 200 and "error" in body
    assert action.run({})[0] == 200
    assert action.runtime.process.poll() is None


@integration
def test_application_error_and_array_result(start_action):
    action = start_action()
    code = "def main(args):\n    return args['reply']\n"
    assert action.init(code)[0] == 200
    assert action.run({"reply": {"error": "sorry"}}) == (200, {"error": "sorry"})
    assert action.run({"reply": ["a", 1, {"b": None}]}) == (200, ["a", 1, {"b": None}])
    assert action.run({"reply": None})[0] == 502
    assert action.streams(sentinels=3) == ("", "")


@integration
def test_output_without_newline_still_gets_the_sentinel_on_its_own_line(start_action):
    action = start_action()
    code = "import sys\ndef main(args):\n    print('partial', end='')\n    sys.stderr.write('partial')\n    return {}\n"
    assert action.init(code)[0] == 200
    assert action.run({})[0] == 200
    assert action.streams() == ("partial", "partial")


# Each run counts the runs in progress and waits until all three are (or `wait` passes):
# concurrent runs all meet there, however slowly the callers start; serialized ones each
# wait alone, and no two may ever be in progress together.
RUNS_IN_PROGRESS = """
import threading
lock, all_in = threading.Lock(), threading.Event()
active = peak = 0
def main(args):
    global active, peak
    with lock:
        active += 1
        peak = max(peak, active)
        if active == 3:
            all_in.set()
    all_in.wait(args["wait"])
    with lock:
        active -= 1
        return {"peak": peak}
"""


@integration
@pytest.mark.parametrize("concurrent", [False, True], ids=["serialized", "concurrent"])
def test_runs_are_serialized_unless_concurrency_is_allowed(start_action, concurrent):
    env = {"__OW_ALLOW_CONCURRENT": "true"} if concurrent else {}
    action = start_action(env=env)
    assert action.init(RUNS_IN_PROGRESS)[0] == 200
    # Concurrent: only a hang waits the minute. Serialized: each run waits long enough for
    # the other callers' requests to arrive, to give a broken gate the chance to show.
    wait = 60 if concurrent else 0.2
    results: list[tuple[int, Any]] = []
    callers = [
        threading.Thread(target=lambda: results.append(action.run({"wait": wait})))
        for _ in range(3)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert [status for status, _ in results] == [200] * 3, results
    assert max(body["peak"] for _, body in results) == (3 if concurrent else 1)
    action.streams(sentinels=3)


@integration
def test_zip_extraction_is_removed_after_a_failed_init_and_at_shutdown(start_action):
    """A zip is unpacked into a temporary folder (up to openwhisk_max_unzip_bytes): a
    refused /init leaves nothing, and a stopped runtime removes the folder it ran from."""
    action = start_action()
    tmp_dir = action.runtime.tmp_dir
    assert tmp_dir is not None

    def extracted() -> list[Path]:
        return list(tmp_dir.glob("kindling-action-*"))

    refused = zip_code({"echo.py": "def echo(args):\n    return {'echo': args}\n"})
    assert action.init(refused, main="echo", binary=True)[0] == 502
    assert extracted() == []
    accepted = zip_code({"__main__.py": "def main(args):\n    return args\n"})
    assert action.init(accepted, binary=True)[0] == 200  # the retry an invoker may make
    assert len(extracted()) == 1
    assert action.run({"a": 1}) == (200, {"a": 1})
    assert action.runtime.stop() == 0
    assert extracted() == []


# -- models: the image's own action, models in a zip, the action API ----------------------


@integration
def test_image_action_serves_oip_requests_and_never_503(start_action, model_repository, tmp_path):
    repo = tmp_path / "repo"
    (repo / "broken").mkdir(parents=True)
    (repo / "broken" / "config.yaml").write_text(
        (model_repository / "squeezenet1_1" / "config.yaml")
        .read_text()
        .replace("squeezenet1_1", "broken")
    )
    (repo / "squeezenet1_1").symlink_to(model_repository / "squeezenet1_1")
    action = start_action(repo)
    assert action.init()[0] == 200
    x = image(1)
    status, result = action.run({"model_name": "squeezenet1_1", "inputs": [oip_json(x)]})
    assert status == 200, result
    assert result["model_name"] == "squeezenet1_1" and result["outputs"][0]["name"] == "logits"
    expected = onnx_reference(model_repository / "squeezenet1_1" / "model.onnx", {"input": x})[0]
    np.testing.assert_allclose(
        np.array(result["outputs"][0]["data"]).reshape(1, 1000), expected, rtol=1e-4, atol=1e-5
    )
    # The model that failed to load, an unknown one, a bad request: the action's errors.
    for value, needle in [
        ({"model_name": "broken", "inputs": [oip_json(x)]}, "failed to load"),
        ({"model_name": "nope", "inputs": [oip_json(x)]}, "not found"),
        ({"model_name": "squeezenet1_1", "inputs": []}, "inputs"),
        ({"inputs": [oip_json(x)]}, "model_name"),
    ]:
        status, result = action.run(value)
        assert status == 200 and needle in result["error"], result
    # As a web action too: the web client gets 502 with Retry-After, never 503.
    status, result = action.run(web(path="/v2/models/broken/infer", inputs=[oip_json(x)]))
    assert status == 200 and result["statusCode"] == 502, result
    assert result["headers"]["Retry-After"] == "1" and "failed to load" in result["body"]["error"]
    action.streams(sentinels=6)


@integration
def test_zip_with_a_model_repository_folder(start_action, model_repository):
    action = start_action(model_repository, models=("squeezenet1_1",))
    source = model_repository / "squeezenet1_1"
    code = zip_code(
        {
            **model_folder(source, "squeeze_zip"),
            "__main__.py": """
from kindling.runtime.action import models
def main(args):
    x = args["x"]
    return {"models": models.names(),
            "zip": models.infer("squeeze_zip", {"input": x})["logits"],
            "image": models.infer("squeezenet1_1", {"input": x})["logits"]}
""",
        }
    )
    assert action.init(code, binary=True)[0] == 200
    x = image(2)
    status, result = action.run({"x": x.tolist()})
    assert status == 200, result
    assert result["models"] == ["squeeze_zip", "squeezenet1_1"]
    expected = onnx_reference(source / "model.onnx", {"input": x})[0]
    for key in ("zip", "image"):
        np.testing.assert_allclose(
            np.array(result[key], np.float32), expected, rtol=1e-4, atol=1e-5
        )
    assert action.streams() == ("", "")  # loading models writes nothing into the logs


@integration
def test_zip_with_only_a_model_is_served_by_the_image_action(start_action, model_repository):
    action = start_action()
    source = model_repository / "squeezenet1_1"
    assert action.init(zip_code(model_folder(source, "squeeze_zip")), binary=True)[0] == 200
    x = image(3)
    status, result = action.run({"inputs": [oip_json(x)]})  # the only model: no name needed
    assert status == 200 and result["model_name"] == "squeeze_zip", result
    expected = onnx_reference(source / "model.onnx", {"input": x})[0]
    np.testing.assert_allclose(
        np.array(result["outputs"][0]["data"]).reshape(1, 1000), expected, rtol=1e-4, atol=1e-5
    )


@integration
def test_zip_with_a_broken_model_is_502(start_action, model_repository):
    action = start_action()
    files = model_folder(model_repository / "squeezenet1_1", "squeeze_zip")
    files["squeeze_zip/model.onnx"] = b"not onnx"
    status, body = action.init(zip_code(files), binary=True)
    assert status == 502 and "squeeze_zip" in body["error"]


@integration
def test_zip_that_is_unsafe_or_not_a_zip_is_refused(start_action):
    action = start_action()
    status, body = action.init(zip_code({"../evil.py": "x = 1"}), binary=True)
    assert status == 502 and "leaves the action folder" in body["error"]
    assert action.init(base64.b64encode(b"not a zip").decode(), binary=True)[0] == 502
    assert action.init("%%% not base64", binary=True)[0] == 400


@integration
def test_kim_cnn_handler_with_the_embedding_store(start_action, model_repository, tmp_path):
    from kindling.embeddings.backend_file import FileBackend
    from kindling.embeddings.table_loader import load_table

    words = ["a", "gripping", ",", "funny", "film", "the", "plot", "!"]
    vectors = np.random.default_rng(0).standard_normal((len(words), 300)).astype(np.float32)
    glove = tmp_path / "vectors.txt"
    glove.write_text(
        "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in zip(words, vectors, strict=True))
    )
    store = tmp_path / "store"
    load_table(FileBackend(store), "sst300", glove, "glove", grace=0.0)

    handler = (CHARTS / "actions" / "kim_cnn.py").read_text()
    config = yaml.safe_load((CHARTS / "models" / "kim_cnn_vectors" / "config.yaml").read_text())
    code = zip_code(
        {
            "__main__.py": handler,
            **model_folder(model_repository / "kim_cnn", "kim_cnn_vectors", config),
        }
    )
    action = start_action()
    env = {"KINDLING_EMBEDDINGS_DIR": str(store), "KIM_CNN_TABLE": "sst300"}
    assert action.init(code, binary=True, env=env)[0] == 200

    sentence = "A gripping , funny film with no plot twists !"  # SST is pre-tokenized
    status, result = action.run({"sentence": sentence})
    assert status == 200, result
    tokens = clean_str_sst(sentence)
    table = dict(zip(words, vectors, strict=True))
    feed = np.zeros((1, len(tokens), 300), np.float32)
    for i, token in enumerate(tokens):
        feed[0, i] = table.get(token, 0.0)
    expected = onnx_reference(model_repository / "kim_cnn" / "model.onnx", {"embeddings": feed})[0][
        0
    ]
    np.testing.assert_allclose(result["probabilities"], expected, rtol=1e-4, atol=1e-6)
    assert result["label"] == int(expected.argmax())
    assert result["oov"] == [t for t in tokens if t not in table]
    # A missing table is the action's error, not the container's.
    assert "not found" in action.run({"sentence": "film", "table": "nope"})[1]["error"]


@integration
def test_image_text_model_and_default_store_in_openwhisk_mode(start_action, model_repository):
    config = yaml.safe_load((model_repository / "kim_cnn" / "config.yaml").read_text())
    # The sample repository's kim_cnn takes text, its demo table in the repository's store.
    assert config["preprocess"]["kind"] == "word_vectors"
    assert (model_repository / ".embeddings" / config["preprocess"]["table"]).exists()
    action = start_action(
        model_repository, models=("kim_cnn",), env={"KINDLING_EMBEDDINGS_DIR": ""}
    )
    code = """
from kindling.runtime.action import embeddings, models
def main(args):
    if "inputs" in args:
        return models.infer("kim_cnn", {"text": args["inputs"]})
    return {"dim": int(embeddings.vectors(args["table"], ["film"]).shape[1])}
"""
    assert action.init(code)[0] == 200
    # The repository's .embeddings is action code's store too, as it is the text models'.
    table = config["preprocess"]["table"]
    assert action.run({"table": table}) == (200, {"dim": 300})
    status, result = action.run({"inputs": ["a gripping , funny film", "dull"]})
    assert status == 200, result
    probabilities = np.array(result["probabilities"])
    assert probabilities.shape == (2, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@integration
def test_action_code_reads_redis_given_by_the_redis_flag(start_action, tmp_path):
    """`kindling serve --openwhisk --redis URL`: action code's `embeddings` read that Redis,
    the flag over KINDLING_REDIS_URL (blank here); the table is in no file store."""
    from kindling.embeddings.backend import open_backend
    from kindling.embeddings.redis_server import RedisServer
    from kindling.embeddings.settings import EmbeddingSettings
    from kindling.embeddings.table_loader import load_table
    from tests.embeddings.conftest import require_redis

    require_redis()
    words = ["film", "plot"]
    vectors = np.arange(2 * 4, dtype=np.float32).reshape(2, 4)
    glove = tmp_path / "vectors.txt"
    glove.write_text(
        "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in zip(words, vectors, strict=True))
    )
    server = RedisServer(tmp_path / "redis").start()
    try:
        backend = open_backend(EmbeddingSettings(url=server.url).for_loading())
        try:
            load_table(backend, "only_in_redis", glove, "glove", grace=0.0)
        finally:
            backend.close()
        action = start_action(args=("--redis", server.url))
        code = """
from kindling.runtime.action import embeddings
def main(args):
    return {"rows": embeddings.vectors("only_in_redis", args["words"]).tolist()}
"""
        assert action.init(code)[0] == 200
        assert action.run({"words": ["plot", "film"]}) == (200, {"rows": vectors[::-1].tolist()})
    finally:
        server.stop()


# -- web actions ---------------------------------------------------------------------------


def web(method: str = "post", path: str = "", headers: dict | None = None, **value: Any) -> dict:
    return {"__ow_method": method, "__ow_headers": headers or {}, "__ow_path": path, **value}


@integration
def test_web_action_with_json_body_and_oip_paths(start_action, model_repository):
    action = start_action(model_repository, models=("squeezenet1_1",))
    assert action.init()[0] == 200
    x = image(4)
    expected = onnx_reference(model_repository / "squeezenet1_1" / "model.onnx", {"input": x})[0]

    for path in ("", "/v2/models/squeezenet1_1/infer", "/v2/models/squeezenet1_1/versions/1/infer"):
        status, result = action.run(
            web(path=path, headers={"content-type": "application/json"}, inputs=[oip_json(x)])
        )
        assert status == 200 and result["statusCode"] == 200, result
        assert result["headers"]["Content-Type"] == "application/json"
        logits = np.array(result["body"]["outputs"][0]["data"]).reshape(1, 1000)
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)

    metadata = action.run(web("get", "/v2/models/squeezenet1_1"))[1]
    assert metadata["statusCode"] == 200 and metadata["body"]["name"] == "squeezenet1_1"
    assert action.run(web("get", "/v2"))[1]["body"]["name"] == "kindling"
    for value, code in [
        (web("get", "/v2/models/squeezenet1_1/infer"), 405),
        (web("post", "/v2/models/nope/infer", inputs=[oip_json(x)]), 404),
        (web("post", "/elsewhere"), 404),
        (web("post", "", inputs=[{**oip_json(x), "shape": [1, 3, 224, 223]}]), 400),
    ]:
        status, result = action.run(value)
        assert status == 200 and result["statusCode"] == code and "error" in result["body"], result


@integration
def test_raw_web_action_with_a_binary_oip_body(start_action, model_repository):
    action = start_action(model_repository, models=("squeezenet1_1",))
    assert action.init()[0] == 200
    x = image(5)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    wanted = [triton.InferRequestedOutput("logits", binary_data=True)]
    body, json_size = triton.InferenceServerClient.generate_request_body([tensor], outputs=wanted)
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(json_size),
    }
    value = web(
        path="/v2/models/squeezenet1_1/infer",
        headers=headers,
        __ow_body=base64.b64encode(body).decode(),
        __ow_query="",
    )
    status, result = action.run(value)
    assert status == 200 and result["statusCode"] == 200, result
    assert result["headers"]["Content-Type"] == "application/octet-stream"
    answer = triton.InferenceServerClient.parse_response_body(
        base64.b64decode(result["body"]),
        header_length=int(result["headers"]["Inference-Header-Content-Length"]),
    )
    expected = onnx_reference(model_repository / "squeezenet1_1" / "model.onnx", {"input": x})[0]
    np.testing.assert_allclose(answer.as_numpy("logits"), expected, rtol=1e-4, atol=1e-5)

    # Raw web actions get JSON bodies base64-encoded too (docs/webactions.md).
    json_body = base64.b64encode(json.dumps({"inputs": [oip_json(x)]}).encode()).decode()
    value = web(
        path="/v2/models/squeezenet1_1/infer",
        headers={"content-type": "application/json"},
        __ow_body=json_body,
    )
    status, result = action.run(value)
    assert result["statusCode"] == 200, result


@integration
def test_web_action_user_code_sees_the_http_context(start_action):
    action = start_action()
    code = "import base64\ndef main(args):\n    return {'method': args['__ow_method'], 'path': args['__ow_path'], 'body': base64.b64decode(args['__ow_body']).decode()}\n"
    assert action.init(code)[0] == 200
    value = web(
        "put",
        "/x/y",
        {"content-type": "application/octet-stream"},
        __ow_body=base64.b64encode(b"raw").decode(),
    )
    assert action.run(value) == (200, {"method": "put", "path": "/x/y", "body": "raw"})


# -- OpenWhisk on Knative ------------------------------------------------------------------


def post_root(action: Action, doc: dict) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", action.runtime.port, timeout=120)
    try:
        conn.request(
            "POST", "/", body=json.dumps(doc).encode(), headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@integration
def test_knative_single_entrypoint(start_action, model_repository):
    action = start_action(
        model_repository, models=("squeezenet1_1",), env={"__OW_RUNTIME_PLATFORM": "knative"}
    )
    code = """
import os
def main(args):
    if args.get("html"):
        return {"statusCode": 201, "headers": {"X-Kind": "demo"}, "body": "<p>hi</p>"}
    return {"name": os.environ.get("__OW_ACTION_NAME"), "method": args["__ow_method"], "x": args.get("x")}
"""
    init = {"name": "demo", "main": "main", "code": code, "binary": False}
    activation = {"action_name": "/ns/demo", "activation_id": "a1", "namespace": "ns"}
    status, _, body = post_root(action, {"init": init, "activation": activation, "value": {"x": 1}})
    assert status == 200, body
    assert json.loads(body) == {"name": "/ns/demo", "method": "POST", "x": 1}
    # Later requests carry the same init (a stem cell) or none at all.
    status, _, body = post_root(action, {"init": init, "activation": activation, "value": {"x": 2}})
    assert json.loads(body)["x"] == 2
    status, headers, body = post_root(action, {"activation": activation, "value": {"html": True}})
    assert (status, headers["x-kind"], headers["content-type"], body) == (
        201,
        "demo",
        "text/html",
        b"<p>hi</p>",
    )
    assert post_root(action, {"init": {**init, "code": "def main(a):\n    return a\n"}})[0] == 403
    assert post_root(action, {"value": {}})[0] == 400


@integration
def test_knative_image_action_answers_oip_as_http(start_action, model_repository):
    action = start_action(
        model_repository, models=("squeezenet1_1",), env={"__OW_RUNTIME_PLATFORM": "knative"}
    )
    x = image(6)
    status, headers, body = post_root(
        action, {"activation": {}, "value": {"inputs": [oip_json(x)]}}
    )
    assert status == 200 and headers["content-type"] == "application/json", body
    expected = onnx_reference(model_repository / "squeezenet1_1" / "model.onnx", {"input": x})[0]
    np.testing.assert_allclose(
        np.array(json.loads(body)["outputs"][0]["data"]).reshape(1, 1000),
        expected,
        rtol=1e-4,
        atol=1e-5,
    )
    status, _, body = post_root(
        action, {"activation": {}, "value": {"model_name": "nope", "inputs": [oip_json(x)]}}
    )
    assert status == 404 and "error" in json.loads(body)


@integration
def test_routes_and_methods(start_action):
    action = start_action()
    assert action.post("/", b"{}")[0] == 404  # POST / is Knative's only
    assert action.post("/v2/health/ready", b"")[0] == 404
    assert action.runtime.get("/run")[0] == 405
    assert action.post("/run", b"{not json")[0] == 400
    action.streams(sentinels=1)  # a /run that could not even be parsed is still framed


# -- units: no process ---------------------------------------------------------------------


def test_port_is_8080_or_the_flag_unless_on_knative():
    env = {"PORT": "9999", "KINDLING_OPENWHISK": "true"}
    assert ServerSettings.from_env(env).port == 8080
    assert ServerSettings.from_env(env, port=7000).port == 7000
    assert ServerSettings.from_env({**env, "__OW_RUNTIME_PLATFORM": "knative"}).port == 9999
    assert ServerSettings.from_env({"PORT": "9999"}, openwhisk=True).port == 8080
    settings = ServerSettings.from_env({"KINDLING_OPENWHISK": "1", "__OW_ALLOW_CONCURRENT": "true"})
    assert settings.openwhisk and settings.openwhisk_concurrent and settings.log_level == "warning"


def test_env_text_follows_the_reference_runtimes():
    assert [env_text(v) for v in ("s", 3, 2.5, True, False, None, ["a"], {"a": 1})] == [
        "s",
        "3",
        "2.5",
        "true",
        "false",
        "",
        '["a"]',
        '{"a":1}',
    ]


def test_init_spec_parsing():
    assert (
        InitSpec.parse(None) == InitSpec() == InitSpec.parse({}) == InitSpec.parse({"value": None})
    )
    spec = InitSpec.parse({"value": {"code": "x", "main": "niam", "binary": True, "env": {"A": 1}}})
    assert (spec.code, spec.main, spec.binary, spec.env) == ("x", "niam", True, {"A": 1})
    for bad in (
        [],
        {"value": ["x"]},
        {"value": {"code": 1}},
        {"value": {"main": "a.b"}},
        {"value": {"env": ["x"]}},
    ):
        with pytest.raises(InvalidInput):
            InitSpec.parse(bad)


def _zip_bytes(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    "name", ["../up.py", "/abs.py", "a/../../up.py", "C:/win.py", "a\\..\\..\\up.py"]
)
def test_unpack_refuses_paths_leaving_the_folder(tmp_path, name):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ActionInitError, match="leaves the action folder"):
        unpack(_zip_bytes([(name, b"x")]), root, 1 << 20)
    assert not list(tmp_path.rglob("*.py"))


def test_unpack_refuses_links_and_bombs(tmp_path):
    link = zipfile.ZipInfo("link")
    link.external_attr = 0o120777 << 16  # a symlink, as `zip --symlinks` stores it
    with pytest.raises(ActionInitError, match="link"):
        unpack(_zip_bytes([(link, b"/etc/passwd")]), tmp_path, 1 << 20)
    with pytest.raises(PayloadTooLarge):
        unpack(_zip_bytes([("big", b"\0" * 4096)]), tmp_path, 1024)
    unpack(_zip_bytes([("dir/", b""), ("dir/ok.txt", b"ok")]), tmp_path, 1024)
    assert (tmp_path / "dir" / "ok.txt").read_bytes() == b"ok"


@pytest.fixture
def no_bound_runtime() -> Iterator[None]:
    from kindling.runtime import action

    saved, action._binding = action._binding, None
    yield
    action._binding = saved


def test_action_api_outside_the_runtime_says_so(no_bound_runtime):
    from kindling.runtime.action import models

    with pytest.raises(RuntimeError, match="--openwhisk"):
        models.names()


def test_examples_are_in_the_manifest():
    manifest = yaml.safe_load((CHARTS / "manifest.yaml").read_text())
    actions = manifest["packages"]["kindling"]["actions"]
    for model in ("kim_cnn", "sm_cnn", "mobilenet_v2", "squeezenet1_1", "resnet18", "minilm"):
        spec = actions[model]
        assert spec["docker"] and spec["inputs"]["model_name"] == model
        assert spec["limits"]["memorySize"] and spec["limits"]["timeout"] and spec["web"]
