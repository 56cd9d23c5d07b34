"""Shared fixtures: the sample model repository and real runtime processes on free ports,
and the skip policy of `make test`."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kindling.cluster.processes import free_port
from kindling.loadtest import benchclient

# The cluster tier's fixtures (`cluster`, `cluster_tools`, `api`, `namespace`): one
# control plane per session for every folder that asks for it.
pytest_plugins = ["tests.cluster.fixtures"]

SAMPLE_MODELS = ("kim_cnn", "sm_cnn", "mobilenet_v2", "squeezenet1_1", "resnet18", "minilm")

# -- skips ------------------------------------------------------------------------------
#
# `make test` installs everything the suite needs (redis-server and redis-cli, the MiniLM
# weights, the sample models) and sets KINDLING_STRICT_SKIPS=1: there a skip means a broken
# setup, so it fails, unless its reason is one the machine cannot help. Only the optional
# reference checks against PyTorch qualify: torch is deliberately not a dependency (about
# 2 GB). `-ra` lists the skips that remain in the run's summary.
ALLOWED_SKIPS = (re.compile(r"could not import '(torch|torchvision|transformers)'"),)


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _enforce_skip_policy(report: pytest.TestReport | pytest.CollectReport) -> None:
    if os.environ.get("KINDLING_STRICT_SKIPS") != "1":
        return
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if any(allowed.search(reason) for allowed in ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped ({reason}), but KINDLING_STRICT_SKIPS=1 (make test) allows only skips "
        f"the machine cannot help: {[p.pattern for p in ALLOWED_SKIPS]}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _enforce_skip_policy(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _enforce_skip_policy(report)
    return report


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM (a server drains on it), then SIGKILL if it has not exited by `timeout`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample models: `make test` passes the built ./models; otherwise build them
    (from ~/.cache/kindling when already built there)."""
    given = os.environ.get("KINDLING_TEST_MODELS")
    if given and all((Path(given) / m / "config.yaml").is_file() for m in SAMPLE_MODELS):
        return Path(given)
    from kindling.modelzoo.cli import main as models_cli

    out = tmp_path_factory.mktemp("models")
    # The command, not build_all: it also loads the text models' demo word vectors.
    assert models_cli(["build", "--out", str(out)]) == 0
    return out


def reply_json(
    handler: http.server.BaseHTTPRequestHandler,
    doc: object,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> None:
    """Answer a test server's request with `doc` as JSON, framed by Content-Length."""
    body = json.dumps(doc).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


@contextlib.contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[str]:
    """Serve `server` (bound on loopback) from a thread; yields its base URL, and shuts it
    down, closes it and joins the thread on exit."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class RuntimeProcess:
    """A `kindling serve` process on loopback; stopped by the fixture that made it."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    err_path: Path | None = None
    """Where stderr goes when kept apart from stdout (OpenWhisk frames each stream)."""
    tmp_dir: Path | None = None
    """The process's TMPDIR: the temporary files it makes are there."""
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.url}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers lower-cased, body); a generous timeout, a safety net only."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request("POST", path, body=body, headers=headers or {})
            response = conn.getresponse()
            fields = {k.lower(): v for k, v in response.getheaders()}
            return response.status, fields, response.read()
        finally:
            conn.close()

    def wait(self, path: str = "/v2/health/ready", timeout: float = 60.0) -> None:
        benchclient.wait_ready(self.port, timeout, path, self.process, self.log)

    def wait_listening(self, timeout: float = 60.0) -> None:
        """Until the port accepts connections: all an OpenWhisk invoker waits for."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"runtime exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"runtime not listening on {self.port} after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace")
        if self.err_path is not None:
            text += self.err_path.read_text(errors="replace")
        return text

    def streams(self) -> tuple[str, str]:
        """(stdout, stderr) as written so far; both are the log with no err_path."""
        out = self.log_path.read_text(encoding="utf-8", errors="replace")
        if self.err_path is None:
            return out, out
        return out, self.err_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        return stop_process(self.process)


StartRuntime = Callable[..., RuntimeProcess]


def launch_runtime(
    workdir: Path,
    repository: Path,
    models: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    wait_for: str | None = "/v2/health/ready",
    openwhisk: bool = False,
    args: tuple[str, ...] = (),
) -> RuntimeProcess:
    """Start `kindling serve` in a real process; `wait_for` None returns before it is ready.

    With `openwhisk`, `kindling serve --openwhisk --port PORT`, its stdout and stderr in
    separate files, waited for until it listens (there is no health route to poll).
    """
    port = free_port()
    log_path = workdir / f"runtime-{port}.log"
    err_path = workdir / f"runtime-{port}.err" if openwhisk else None
    # The process's temporary files (OpenWhisk's zip extractions) land in the test's own
    # folder, never in the system's, even when the process is killed.
    tmp = workdir / f"tmp-{port}"
    tmp.mkdir(exist_ok=True)
    full_env = {
        "KINDLING_CACHE_DIR": str(workdir / "cache"),
        "TMPDIR": str(tmp),
    }
    if models:
        full_env["KINDLING_MODELS"] = ",".join(models)
    full_env.update(env or {})
    args = (*(("--openwhisk", "--port", str(port)) if openwhisk else ()), *args)
    with contextlib.ExitStack() as files:
        log = files.enter_context(log_path.open("wb"))
        err = files.enter_context(err_path.open("wb")) if err_path else subprocess.STDOUT
        process = benchclient.start_runtime(repository, port, full_env, args, log, err)
    runtime = RuntimeProcess(process, port, log_path, err_path, tmp)
    try:
        if wait_for and openwhisk:
            runtime.wait_listening()
        elif wait_for:
            runtime.wait(wait_for)
    except BaseException:
        runtime.stop()
        raise
    return runtime


@pytest.fixture
def start_runtime(tmp_path: Path) -> Iterator[StartRuntime]:
    """A factory of runtime processes, all stopped when the test ends."""
    started: list[RuntimeProcess] = []

    def start(repository: Path, **kwargs: object) -> RuntimeProcess:
        runtime = launch_runtime(tmp_path, repository, **kwargs)  # type: ignore[arg-type]
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        runtime.stop()
