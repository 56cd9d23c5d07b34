"""The controller's HTTP endpoints: /metrics, /healthz (liveness: the loop still turns) and
/readyz (the loop has run once). Standard library only; GET and HEAD only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kindling.controller.telemetry import ControllerMetrics

# The loop is dead if it has not turned in this many intervals: a tick that waits out
# every retry of an API call takes at most a few intervals, never ten.
STALL_INTERVALS = 10


class Health:
    def __init__(
        self, metrics: ControllerMetrics, interval_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.metrics = metrics
        self.limit_s = STALL_INTERVALS * interval_s
        self.clock = clock

    def live(self) -> tuple[bool, str]:
        beat = self.metrics.last_beat
        if beat is None:
            return True, "starting"
        age = self.clock() - beat
        if age > self.limit_s:
            return False, f"the loop last ran {age:.0f}s ago (limit {self.limit_s:.0f}s)"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.metrics.last_beat is None:
            return False, "the loop has not run yet"
        return self.live()


def serve(
    port: int, metrics: ControllerMetrics, health: Health, host: str = "0.0.0.0"
) -> ThreadingHTTPServer:
    """Start the endpoints in a daemon thread; `shutdown()` on the result stops them."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "kindling-controller"
        # A client that opens a connection and sends nothing must not hold a thread.
        timeout = 10

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz", "/readyz"):
                ok, why = health.live() if self.path == "/healthz" else health.ready()
                self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def do_HEAD(self) -> None:
            self.do_GET()

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would drown the decisions in the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="controller-http", daemon=True).start()
    return server
