"""Model downloads under stress: total deadlines, redirects, checks before caching, a
cache shared by processes, the model_uri root, and SIGTERM while a download hangs.

Origins are real HTTP servers on loopback; the runtimes are real `kindling serve`
processes. Tests wait on events (a request arriving, a log line, a state), never on time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml

from kindling.errors import ModelLoadError
from kindling.runtime import fetch
from kindling.runtime.coldstart import ColdStartTimeline
from kindling.runtime.fetch import evict, fetch_model
from kindling.runtime.model import LoadOptions, Model, ModelState
from kindling.runtime.settings import ConfigError, ModelConfig, ServerSettings
from tests.conftest import RuntimeProcess, StartRuntime, free_port
from tests.runtime.origin import LoopbackOrigin, serving
from tests.runtime.test_fetch import MODEL, leftovers

ALL = ("file", "http", "https", "s3")
SAFETY_S = 60.0  # only ever reached when the behaviour under test is broken
# Holds the download lock of a file, as another process downloading it would; writes a
# half-done partial file beside it and says so.
HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
with open(sys.argv[2], "wb") as f:
    f.write(b"half a model")
print("locked", flush=True)
sys.stdin.read()
"""

# A server whose one request runs a thread that never returns, as /init's wait for a
# hanging download did: asyncio.Runner and the interpreter both join such threads on exit.
STUCK_APP = """
import asyncio, sys, threading
from kindling.runtime.httpserver import App, Response
from kindling.runtime.lifecycle import run_app

async def handle(request):
    print("stuck", flush=True)
    await asyncio.to_thread(threading.Event().wait)
    return Response(b"")

async def listening():
    print("listening", flush=True)

app = App(handle, error=lambda exc: Response(exc.message.encode(), exc.status_code))
sys.exit(run_app(app, "127.0.0.1", int(sys.argv[1]), 1 << 20, 5.0, 0.2, listening))
"""

Route = Callable[[BaseHTTPRequestHandler], None]


class Origin(LoopbackOrigin):
    """A loopback HTTP server with scripted routes, counting the GETs of each path."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, Route] = {}
        self.stop = threading.Event()
        """Set at teardown: trickles end, gates open."""
        self.gate = threading.Event()
        """Held requests (`held`) answer once this is set."""
        self.arrived = threading.Event()
        """Set when a held request has arrived."""

    def answer(self, handler: BaseHTTPRequestHandler, seen: int) -> None:
        route = self.routes.get(handler.path)
        if route is None:
            handler.send_error(404)
        else:
            route(handler)

    # -- routes --------------------------------------------------------------------------

    def body(self, data: bytes, content_type: str = "application/octet-stream") -> Route:
        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            try:
                h.wfile.write(data)
            except OSError:  # the client gave up (a runtime stopped mid-download)
                pass

        return route

    def held(self, data: bytes) -> Route:
        """`data`, once the test opens the gate."""

        def route(h: BaseHTTPRequestHandler) -> None:
            self.arrived.set()
            self.gate.wait(SAFETY_S)
            self.body(data)(h)

        return route

    def trickle(self, h: BaseHTTPRequestHandler) -> None:
        """Promise a megabyte, then send a byte at a time until the client hangs up."""
        h.send_response(200)
        h.send_header("Content-Length", str(1 << 20))
        h.end_headers()
        try:
            while not self.stop.is_set():
                h.wfile.write(b"\x08")
                self.stop.wait(0.05)
        except OSError:  # the client gave up: what the test wants
            pass

    def redirect(self, location: str) -> Route:
        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(302)
            h.send_header("Location", location)
            h.send_header("Content-Length", "0")
            h.end_headers()

        return route


@pytest.fixture
def origin(monkeypatch: pytest.MonkeyPatch) -> Iterator[Origin]:
    server = Origin()
    with serving(server, monkeypatch), warnings.catch_warnings():
        # urllib's HTTPError responses of refused redirects are reaped by gc, not by us.
        warnings.filterwarnings("ignore", "unclosed", ResourceWarning)
        try:
            yield server
        finally:
            server.stop.set()
            server.gate.set()


def cached(cache: Path, uri: str, sha256: str | None = None) -> Path:
    key = uri if sha256 is None else f"{uri}\nsha256={sha256}"
    return cache / "downloads" / hashlib.sha256(key.encode()).hexdigest() / "model.onnx"


@pytest.fixture(scope="session")
def tiny_onnx() -> bytes:
    """A real ONNX model small enough to load in no time: y = relu(x), x of shape [-1, 4]."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what any onnxruntime >= 1.18 loads
    return model.SerializeToString()


def tiny_config(name: str, model_uri: str | None = None) -> dict:
    config: dict = {
        "name": name,
        "max_batch_size": 8,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }
    if model_uri is not None:
        config["model_uri"] = model_uri
    return config


def add_model(repo: Path, name: str, model_uri: str | None = None, data: bytes = b"") -> None:
    folder = repo / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(tiny_config(name, model_uri)))
    if model_uri is None:
        (folder / "model.onnx").write_bytes(data)


# -- the total deadline ----------------------------------------------------------------------


@pytest.mark.timeout(SAFETY_S)
def test_trickling_origin_times_out_in_total(origin, tmp_path):
    origin.routes["/m.onnx"] = origin.trickle
    uri = f"{origin.url}/m.onnx"
    with pytest.raises(ModelLoadError, match=r"timed out after 0\.3 s"):
        fetch_model(uri, ALL, tmp_path, 0.3)
    assert not cached(tmp_path, uri).exists()
    assert leftovers(tmp_path) == []


@pytest.mark.timeout(SAFETY_S)
def test_waiting_for_another_process_is_bounded_by_the_timeout(origin, tmp_path):
    origin.routes["/m.onnx"] = origin.body(MODEL)
    uri = f"{origin.url}/m.onnx"
    target = cached(tmp_path, uri)
    target.parent.mkdir(parents=True)
    with holding_lock(target):
        with pytest.raises(ModelLoadError, match=r"another process's download .* timed out"):
            fetch_model(uri, ALL, tmp_path, 0.3)
    assert origin.count("/m.onnx") == 0


def test_a_crashed_writer_leaves_nothing_in_the_way(origin, tmp_path):
    origin.routes["/m.onnx"] = origin.body(MODEL)
    uri = f"{origin.url}/m.onnx"
    target = cached(tmp_path, uri)
    target.parent.mkdir(parents=True)
    with holding_lock(target) as holder:
        holder.kill()  # the kernel releases its flock; its partial file stays
        holder.wait()
        assert leftovers(tmp_path) != []
        assert fetch_model(uri, ALL, tmp_path, 5.0).read_bytes() == MODEL
    assert origin.count("/m.onnx") == 1
    assert leftovers(tmp_path) == []


@contextlib.contextmanager
def holding_lock(target: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding `target`'s download lock, with a partial file written."""
    lock, partial = target.with_name(fetch.LOCK_NAME), target.with_name("model.onnx.part1")
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock), str(partial)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"locked\n"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


# -- redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "scheme"),
    [("ftp://127.0.0.1:9/m.onnx", "ftp"), ("file:///etc/passwd", "file")],
)
def test_redirect_to_a_scheme_not_allowed_is_refused(origin, tmp_path, location, scheme):
    origin.routes["/m.onnx"] = origin.redirect(location)
    uri = f"{origin.url}/m.onnx"
    # file is allowed as a model_uri, never as a redirect from an origin
    with pytest.raises(ModelLoadError, match=f"redirects to a '{scheme}' URL"):
        fetch_model(uri, (*ALL, "ftp"), tmp_path, 5.0)
    assert origin.count("/m.onnx") == 1  # refused, not retried
    assert not cached(tmp_path, uri).exists()


def test_redirect_to_https_when_only_http_is_allowed_is_refused(origin, tmp_path):
    origin.routes["/m.onnx"] = origin.redirect("https://127.0.0.1:9/m.onnx")
    with pytest.raises(ModelLoadError, match="redirects to a 'https' URL"):
        fetch_model(f"{origin.url}/m.onnx", ("http",), tmp_path, 5.0)


def test_redirect_within_the_allowlist_is_followed(origin, tmp_path):
    origin.routes["/old.onnx"] = origin.redirect("/m.onnx")
    origin.routes["/m.onnx"] = origin.body(MODEL)
    path = fetch_model(f"{origin.url}/old.onnx", ALL, tmp_path, 5.0)
    assert path.read_bytes() == MODEL
    assert origin.count("/old.onnx") == origin.count("/m.onnx") == 1


def test_redirects_are_capped(origin, tmp_path):
    for hop in range(20):
        origin.routes[f"/hop{hop}"] = origin.redirect(f"/hop{hop + 1}")
    with pytest.raises(ModelLoadError, match="redirect not followed"):
        fetch_model(f"{origin.url}/hop0", ALL, tmp_path, 5.0)
    assert sum(origin.gets.values()) == fetch.MAX_REDIRECTS + 1  # and not retried


# -- nothing unchecked is cached -------------------------------------------------------------


def test_not_onnx_is_not_cached_and_the_fixed_origin_is_used(origin, tmp_path):
    uri = f"{origin.url}/m.onnx"
    origin.routes["/m.onnx"] = origin.body(b"<html>502 Bad Gateway</html>", "text/html")
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        fetch_model(uri, ALL, tmp_path, 5.0)
    assert not cached(tmp_path, uri).exists()
    assert leftovers(tmp_path) == []

    origin.routes["/m.onnx"] = origin.body(MODEL)  # the origin is fixed
    assert fetch_model(uri, ALL, tmp_path, 5.0).read_bytes() == MODEL


def test_a_bad_file_already_in_the_cache_is_replaced(origin, tmp_path):
    origin.routes["/m.onnx"] = origin.body(MODEL)
    uri = f"{origin.url}/m.onnx"
    target = cached(tmp_path, uri)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"<html>cached by a Kindling that did not check</html>")
    assert fetch_model(uri, ALL, tmp_path, 5.0).read_bytes() == MODEL
    assert origin.count("/m.onnx") == 1


def test_checksum_mismatch_is_refused_and_not_cached(origin, tmp_path):
    origin.routes["/m.onnx"] = origin.body(MODEL)
    uri = f"{origin.url}/m.onnx"
    wrong = hashlib.sha256(b"another model").hexdigest()
    with pytest.raises(ModelLoadError, match=f"not config.yaml's model_sha256 {wrong}"):
        fetch_model(uri, ALL, tmp_path, 5.0, sha256=wrong)
    assert origin.count("/m.onnx") == 1  # a different file, not a transient error
    assert not list((tmp_path / "downloads").rglob("model.onnx"))
    assert leftovers(tmp_path) == []


def test_checksum_match_is_cached_under_its_own_key(origin, tmp_path):
    origin.routes["/m.onnx"] = origin.body(MODEL)
    uri = f"{origin.url}/m.onnx"
    digest = hashlib.sha256(MODEL).hexdigest()
    path = fetch_model(uri, ALL, tmp_path, 5.0, sha256=digest)
    assert path == cached(tmp_path, uri, digest) != cached(tmp_path, uri)
    assert path.read_bytes() == MODEL
    assert fetch_model(uri, ALL, tmp_path, 5.0, sha256=digest) == path
    assert origin.count("/m.onnx") == 1


def test_a_download_onnxruntime_cannot_load_is_evicted(origin, tmp_path, tiny_onnx):
    uri = f"{origin.url}/m.onnx"
    settings = ServerSettings(
        model_repository=tmp_path, cache_dir=tmp_path / "cache", optimized_cache=False
    )
    config = ModelConfig.from_dict(tiny_config("m", uri), tmp_path / "m")

    def load() -> Model:
        model = Model(config)
        timeline = ColdStartTimeline(started_at=time.time())
        model.fetch(LoadOptions.of(settings, 1), timeline)
        model.load(
            LoadOptions.of(settings, 1), timeline, embedding_store=lambda: pytest.fail("no store")
        )
        return model

    origin.routes["/m.onnx"] = origin.body(MODEL)  # ONNX framing, not a graph ORT loads
    broken = load()
    assert broken.state is ModelState.FAILED
    assert broken.error is not None and "removed from the download cache" in broken.error
    assert not cached(tmp_path / "cache", uri).exists()

    origin.routes["/m.onnx"] = origin.body(tiny_onnx)  # the origin is fixed
    assert load().state is ModelState.READY
    assert origin.count("/m.onnx") == 2


def test_evict_leaves_a_file_another_process_replaced(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"first")
    fetched = path.stat()
    (tmp_path / "new").write_bytes(b"second")
    (tmp_path / "new").replace(path)  # another process renamed a new download into place
    assert evict(path, fetched) is False
    assert path.read_bytes() == b"second"
    assert evict(path, path.stat()) is True
    assert not path.exists()


# -- KINDLING_MODEL_URI_ROOT -------------------------------------------------------------------


@pytest.fixture
def root(tmp_path) -> Path:
    inside = tmp_path / "root" / "m.onnx"
    inside.parent.mkdir()
    inside.write_bytes(MODEL)
    (tmp_path / "secret.onnx").write_bytes(MODEL)
    (inside.parent / "link.onnx").symlink_to(tmp_path / "secret.onnx")
    return inside.parent


def test_root_allows_files_inside(root, tmp_path):
    assert fetch_model(str(root / "m.onnx"), ALL, tmp_path, 1.0, root=root) == root / "m.onnx"
    assert fetch_model((root / "m.onnx").as_uri(), ALL, tmp_path, 1.0, root=root).is_file()


@pytest.mark.parametrize("name", ["../secret.onnx", "link.onnx"], ids=["dotdot", "symlink"])
@pytest.mark.parametrize("as_uri", [True, False], ids=["file-uri", "plain-path"])
def test_root_refuses_files_outside(root, tmp_path, name, as_uri):
    path = root / name
    uri = f"file://{path}" if as_uri else str(path)
    with pytest.raises(ModelLoadError, match="outside KINDLING_MODEL_URI_ROOT"):
        fetch_model(uri, ALL, tmp_path, 1.0, root=root)


# -- settings ----------------------------------------------------------------------------------


def test_download_settings_from_env(tmp_path):
    env = {"KINDLING_MODEL_URI_ROOT": str(tmp_path), "KINDLING_DOWNLOAD_TIMEOUT_S": "12.5"}
    settings = ServerSettings.from_env(env=env)
    assert settings.model_uri_root == tmp_path
    assert settings.download_timeout_s == 12.5
    defaults = ServerSettings.from_env(env={})
    assert defaults.model_uri_root is None
    assert defaults.download_timeout_s == 300.0


@pytest.mark.parametrize("value", ["0", "-1"])
def test_download_timeout_must_be_positive(value):
    with pytest.raises(ConfigError, match="KINDLING_DOWNLOAD_TIMEOUT_S"):
        ServerSettings.from_env(env={"KINDLING_DOWNLOAD_TIMEOUT_S": value})


def test_model_sha256_in_config(tmp_path):
    digest = hashlib.sha256(b"m").hexdigest()
    config = {**tiny_config("m", "http://example/m.onnx"), "model_sha256": digest.upper()}
    assert ModelConfig.from_dict(config, tmp_path).model_sha256 == digest
    assert ModelConfig.from_dict(tiny_config("m"), tmp_path).model_sha256 is None
    with pytest.raises(ConfigError, match="model_sha256 must be 64 hex digits"):
        ModelConfig.from_dict({**config, "model_sha256": "abc"}, tmp_path)


# -- real runtime processes --------------------------------------------------------------------


def state_of(runtime: RuntimeProcess, model: str) -> dict:
    status, body = runtime.get(f"/v2/models/{model}")
    assert status == 200, body
    return json.loads(body)["parameters"]


def wait_until(condition: Callable[[], bool], runtime: RuntimeProcess, what: str) -> None:
    deadline = time.monotonic() + SAFETY_S
    while not condition():
        if runtime.process.poll() is not None:
            raise AssertionError(
                f"runtime exited with {runtime.process.returncode}:\n{runtime.log()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"never {what}:\n{runtime.log()}")
        time.sleep(0.02)


def wait_for_line(runtime: RuntimeProcess, line: str) -> None:
    wait_until(lambda: line in runtime.log(), runtime, f"logged {line!r}")


def exit_code(runtime: RuntimeProcess) -> int:
    try:
        return runtime.process.wait(SAFETY_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after SIGTERM:\n{runtime.log()}") from None


@pytest.mark.integration
def test_a_hanging_download_fails_in_time_and_holds_up_no_other_model(
    origin, tmp_path, tiny_onnx, start_runtime: StartRuntime
):
    origin.routes["/slow.onnx"] = origin.trickle
    repo = tmp_path / "repo"
    add_model(repo, "a_slow", f"{origin.url}/slow.onnx")  # first in the loader's order
    add_model(repo, "b_local", data=tiny_onnx)
    runtime = start_runtime(
        repo, env={"KINDLING_DOWNLOAD_TIMEOUT_S": "1"}, wait_for="/v2/models/b_local/ready"
    )
    wait_until(lambda: state_of(runtime, "a_slow")["state"] == "failed", runtime, "failed")
    assert "timed out after 1 s" in state_of(runtime, "a_slow")["error"]
    assert runtime.get("/v2/models/b_local/ready")[0] == 200
    assert runtime.get("/v2/health/ready")[0] == 503  # every model ready, or not ready


@pytest.mark.integration
def test_sigterm_during_a_hanging_download_exits(
    origin, tmp_path, tiny_onnx, start_runtime: StartRuntime
):
    origin.routes["/slow.onnx"] = origin.trickle
    repo = tmp_path / "repo"
    add_model(repo, "a_slow", f"{origin.url}/slow.onnx")
    add_model(repo, "b_local", data=tiny_onnx)
    runtime = start_runtime(
        repo, env={"KINDLING_DOWNLOAD_TIMEOUT_S": "600"}, wait_for="/v2/models/b_local/ready"
    )
    assert state_of(runtime, "a_slow")["state"] == "loading"
    assert runtime.get("/v2/health/ready")[0] == 503
    runtime.process.send_signal(signal.SIGTERM)
    assert exit_code(runtime) == 0


@pytest.mark.integration
def test_sigterm_during_start_up_exits_zero(origin, tmp_path, tiny_onnx, start_runtime):
    origin.routes["/m.onnx"] = origin.held(tiny_onnx)
    repo = tmp_path / "repo"
    add_model(repo, "m", f"{origin.url}/m.onnx")
    runtime = start_runtime(repo, wait_for=None)
    # The download has begun: the loader thread runs, the event loop likely not yet.
    assert origin.arrived.wait(SAFETY_S)
    runtime.process.send_signal(signal.SIGTERM)
    assert exit_code(runtime) == 0
    assert "Traceback" not in runtime.log()


@pytest.mark.integration
def test_processes_sharing_a_cache_download_once(
    origin, tmp_path, tiny_onnx, start_runtime: StartRuntime
):
    origin.routes["/m.onnx"] = origin.held(tiny_onnx)
    repo = tmp_path / "repo"
    add_model(repo, "m", f"{origin.url}/m.onnx")
    env = {"KINDLING_CACHE_DIR": str(tmp_path / "shared-cache")}
    first = start_runtime(repo, env=env, wait_for=None)
    assert origin.arrived.wait(SAFETY_S)  # the first is downloading, held by the origin
    second = start_runtime(repo, env=env, wait_for=None)
    third = start_runtime(repo, env=env, wait_for=None)
    for waiter in (second, third):
        wait_for_line(waiter, "waiting for another process's download")
    third.process.send_signal(signal.SIGTERM)  # a waiter told to stop stops
    assert exit_code(third) == 0
    origin.gate.set()
    first.wait()
    second.wait()
    assert origin.count("/m.onnx") == 1
    assert state_of(second, "m")["state"] == "ready"


@pytest.mark.integration
def test_sigterm_ends_the_process_whatever_a_thread_is_blocked_on():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", STUCK_APP, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == b"listening\n"
        with socket.create_connection(("127.0.0.1", port), timeout=SAFETY_S) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            assert process.stdout.readline() == b"stuck\n"
            process.send_signal(signal.SIGTERM)
            assert process.wait(SAFETY_S) == 0  # at most KINDLING_GRACEFUL_TIMEOUT_S (0.2 s)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


@pytest.mark.parametrize(("spin", "flag"), [(True, "1"), (False, "0")])
def test_the_spin_setting_reaches_the_served_session(tmp_path, tiny_onnx, spin, flag):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.onnx").write_bytes(tiny_onnx)
    settings = ServerSettings(
        model_repository=tmp_path, cache_dir=tmp_path / "cache", optimized_cache=False, spin=spin
    )
    model = Model(ModelConfig.from_dict(tiny_config("m"), tmp_path / "m"))
    timeline = ColdStartTimeline(started_at=time.time())
    model.fetch(LoadOptions.of(settings, 1), timeline)
    model.load(
        LoadOptions.of(settings, 1), timeline, embedding_store=lambda: pytest.fail("no store")
    )
    assert model.state is ModelState.READY, model.error
    options = model.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == flag
