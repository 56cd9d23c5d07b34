"""Shared fixtures: the sample model repository and real runtime processes on free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SAMPLE_MODELS = ("kim_cnn", "sm_cnn", "mobilenet_v2", "squeezenet1_1", "resnet18", "minilm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@dataclass
class RuntimeProcess:
    """A `kindling serve` process on loopback; stopped by the fixture that made it."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    err_path: Path | None = None
    """Where stderr goes when kept apart from stdout (OpenWhisk frames each stream)."""
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.url}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait(self, path: str = "/v2/health/ready", timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"runtime exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.get(path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"runtime not answering 200 on {path} after {timeout} s:\n{self.log()}")

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
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


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
    full_env = {**os.environ, "PORT": str(port), "KINDLING_CACHE_DIR": str(workdir / "cache")}
    if models:
        full_env["KINDLING_MODELS"] = ",".join(models)
    full_env.update(env or {})
    command = [sys.executable, "-m", "kindling", "serve", "--model-repository", str(repository)]
    if openwhisk:
        command += ["--openwhisk", "--port", str(port)]
    command += args
    with contextlib.ExitStack() as files:
        log = files.enter_context(log_path.open("wb"))
        err = files.enter_context(err_path.open("wb")) if err_path else subprocess.STDOUT
        process = subprocess.Popen(command, env=full_env, stdout=log, stderr=err)
    runtime = RuntimeProcess(process, port, log_path, err_path)
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
