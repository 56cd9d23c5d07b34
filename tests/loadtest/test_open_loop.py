"""The open-loop schedule holds when the server is slow (a real slow server on loopback)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from kindling.loadtest.records import read_csv
from kindling.loadtest.shapes import ConstantShape
from tests.loadtest.conftest import run_loadtest

DELAY_S = 1.0


class SlowServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SlowHandler)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.served = 0


class SlowHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SlowServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.in_flight += 1
            self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
        time.sleep(DELAY_S)  # every answer takes a second
        with self.server.lock:
            self.server.in_flight -= 1
            self.server.served += 1
        body = json.dumps({"model_name": "kim_cnn", "outputs": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Kindling-Cold-Start", "false")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # /metrics and anything else: not found, quickly
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    server = SlowServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


RATE, DURATION = 20.0, 3.0


def run_constant(server: SlowServer, out, *extra: str):
    port = server.server_address[1]
    return run_loadtest(
        "--target",
        f"http://127.0.0.1:{port}",
        "--model",
        "kim_cnn",
        "--workload",
        "constant",
        "--set",
        f"rate={RATE}",
        "--set",
        f"duration_s={DURATION}",
        "--tail",
        "0.5",
        "--metadata-url",
        "none",
        "--pods",
        "none",
        "--timeout",
        "10",
        "--seed",
        "4",
        "--out",
        str(out),
        *extra,
    )


@pytest.mark.integration
@pytest.mark.slow
def test_schedule_holds_under_a_slow_server(slow_server, out_dir):
    result = run_constant(slow_server, out_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    records = read_csv(out_dir / "requests.csv")
    plan = ConstantShape(rate=RATE, duration_s=DURATION, tail_s=0.5).plan(4)
    assert len(records) == len(plan.arrivals) == 60
    # Every request was sent at its scheduled time, not when an earlier one came back;
    # a closed loop would have sent ~DURATION requests per caller.
    scheduled = np.array(sorted(r.scheduled_s for r in records))
    np.testing.assert_allclose(scheduled, [a.offset_s for a in plan.arrivals], atol=1e-5)
    lag = np.array([r.sent_s - r.scheduled_s for r in records])
    assert lag.min() >= -1e-3 and lag.max() < 0.3  # generous: a busy 2-core CI runner
    assert all(r.ok for r in records)
    assert min(r.latency_ms for r in records) >= DELAY_S * 1e3 * 0.95
    # Little's law: 20 req/s x 1 s in flight; the server saw them at once.
    assert slow_server.most_in_flight >= 12
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["offered"]["offered_rate"] == pytest.approx(RATE, rel=0.15)


@pytest.mark.integration
@pytest.mark.slow
def test_arrivals_past_the_in_flight_limit_are_dropped_not_delayed(slow_server, out_dir):
    result = run_constant(slow_server, out_dir, "--max-in-flight", "5")
    assert result.returncode == 1, result.stdout + result.stderr  # errors breach the SLO
    records = read_csv(out_dir / "requests.csv")
    assert len(records) == 60  # every arrival is accounted for
    dropped = [r for r in records if r.error.startswith("dropped")]
    sent = [r for r in records if r.ok]
    assert len(dropped) >= 20 and all(r.status == 0 for r in dropped)
    assert max(r.sent_s - r.scheduled_s for r in sent) < 0.3
    assert slow_server.most_in_flight <= 5
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["offered"]["dropped"] == len(dropped)
    assert summary["offered"]["requests"] == 60
