"""A real Prometheus server (Debian's `prometheus`, `make prometheus`) on a free port,
scraping given targets, with a temporary config and storage; and waiting on its answers.

The targets carry the labels Prometheus' Kubernetes pod discovery gives a pod annotated
`prometheus.io/scrape: "true"` (`namespace`, `pod`; see controller/prometheus.py), so the
PrometheusSource's default selector is what is under test.

And `RawServer`: a real loopback TCP server whose answers the test writes byte by byte, for
the faults (silence, a trickle, garbage, a redirect, a huge body) real servers do not show
on demand.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from kindling.cluster.processes import free_port
from tests.conftest import stop_process

# A safety net for waits on events that normally take a few scrape intervals.
SAFETY_S = 60.0
# Scrape every second: config, so the test's events come quickly; nothing asserts on it.
SCRAPE_INTERVAL = "1s"

T = TypeVar("T")


def wait_until(probe: Callable[[], T | None], what: str, safety_s: float = SAFETY_S) -> T:
    """Poll `probe` until it returns something other than None; the timeout is a safety net
    that fails the test, never a condition it waits for."""
    deadline = time.monotonic() + safety_s
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting after {safety_s} s for {what}")
        time.sleep(0.05)


@dataclass
class Target:
    address: str  # host:port
    namespace: str
    pod: str


@dataclass
class PrometheusServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query (the test's own look, independent of the
        code under test)."""
        params = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=10) as r:
            answer = json.loads(r.read())
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The single value of `promql`, or None while it has none."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    assert found, "prometheus is not installed: run `make prometheus` (Debian's package)"
    return found


def version() -> str:
    out = subprocess.run(
        [prometheus_binary(), "--version"], capture_output=True, text=True, check=True
    )
    return (out.stdout or out.stderr).splitlines()[0]


def start_prometheus(workdir: Path, targets: list[Target]) -> PrometheusServer:
    """Prometheus on a free loopback port, ready (its /-/ready answers 200) on return."""
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": "kubernetes-pods",
                "static_configs": [
                    {"targets": [t.address], "labels": {"namespace": t.namespace, "pod": t.pod}}
                    for t in targets
                ],
            }
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = workdir / "prometheus.log"
    command = [
        prometheus_binary(),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = PrometheusServer(process, port, log_path)

    def ready() -> bool | None:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=5) as r:
                return True if r.status == 200 else None
        except OSError:
            return None

    try:
        wait_until(ready, "prometheus to be ready")
    except BaseException:
        stop_process(process)
        raise
    return server


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[Target]], PrometheusServer]]:
    """A factory of Prometheus servers, all stopped when the test ends."""
    started: list[PrometheusServer] = []

    def start(targets: list[Target]) -> PrometheusServer:
        workdir = tmp_path / f"prometheus-{len(started)}"
        workdir.mkdir()
        server = start_prometheus(workdir, targets)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_process(server.process)


# -- canned answers from a real loopback server --------------------------------------------

# A connection's behavior: the socket (request head already read) and the server's stop
# event, which a behavior that holds the connection must end on.
Behavior = Callable[[socket.socket, threading.Event], None]


class RawServer:
    """A TCP server on a free loopback port that reads each request's head, records its
    request line and headers, and lets `behavior` write whatever it likes: a canned HTTP
    answer, garbage, a trickle, or nothing at all. Used for the faults a real Prometheus or
    runtime would never show on demand."""

    def __init__(self, behavior: Behavior) -> None:
        self.behavior = behavior
        self.requests: list[str] = []  # request heads, as received
        self.stopping = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._one, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            try:
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                self.requests.append(head.decode("latin-1"))
                self.behavior(conn, self.stopping)
            except OSError:
                pass  # the client gave up: what the fault cases expect

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=SAFETY_S)


def answer(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None) -> Behavior:
    """A plain HTTP/1.1 answer with a Content-Length, then close."""

    def behave(conn: socket.socket, _: threading.Event) -> None:
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    return behave


@pytest.fixture
def raw_server() -> Iterator[Callable[[Behavior], RawServer]]:
    """A factory of RawServers, all closed when the test ends."""
    servers: list[RawServer] = []

    def start(behavior: Behavior) -> RawServer:
        server = RawServer(behavior)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
