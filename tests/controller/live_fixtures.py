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

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from kindling.cluster import prometheus as prometheus_server

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


PrometheusServer = prometheus_server.Prometheus


def version() -> str:
    out = subprocess.run(
        [prometheus_server.binary(), "--version"], capture_output=True, text=True, check=True
    )
    return (out.stdout or out.stderr).splitlines()[0]


def start_prometheus(workdir: Path, targets: list[Target]) -> PrometheusServer:
    """Prometheus on a free loopback port, ready (its /-/ready answers 200) on return."""
    job = {
        "job_name": "kubernetes-pods",
        "static_configs": [
            {"targets": [t.address], "labels": {"namespace": t.namespace, "pod": t.pod}}
            for t in targets
        ],
    }
    return prometheus_server.start(workdir, [job], SCRAPE_INTERVAL)


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
        server.stop()


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
