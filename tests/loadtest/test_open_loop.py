"""The open-loop schedule holds when the server is slow (a real server on loopback that
holds every answer).

Nothing here depends on timing: the server answers no request until the test releases it,
after every arrival of the schedule is accounted for. An open loop sends (or drops) each
arrival anyway; a closed loop, or one that delays arrivals until a slot frees, would stall
and be caught by the counts.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from kindling.loadtest.records import read_csv
from kindling.loadtest.shapes import ConstantShape
from tests.conftest import reply_json, serving
from tests.loadtest.conftest import loadtest_command

SAFETY_S = 60.0  # only a hang waits this long
RATE, DURATION = 20.0, 3.0
ARRIVALS = 60
# The run's progress line (kindling.loadtest.driver.Run.report_progress).
PROGRESS = re.compile(r"sent (\d+)/(\d+) .* errors (\d+) ")


class HeldServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HeldHandler)
        self.lock = threading.Lock()
        self.release = threading.Event()
        """Set, every request held so far is answered, and later ones at once."""
        self.release_after: int | None = None
        """Set `release` once this many requests have arrived."""
        self.received = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.served = 0


class HeldHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HeldServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        with server.lock:
            server.received += 1
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
            if server.release_after is not None and server.received >= server.release_after:
                server.release.set()
        server.release.wait(SAFETY_S)
        with server.lock:
            server.in_flight -= 1
            server.served += 1
        doc = {"model_name": "kim_cnn", "outputs": []}
        reply_json(self, doc, headers={"Kindling-Cold-Start": "false"})

    def do_GET(self) -> None:  # /metrics and anything else: not found, quickly
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def held_server() -> Iterator[HeldServer]:
    server = HeldServer()
    with serving(server):
        try:
            yield server
        finally:
            server.release.set()


def run_constant(server: HeldServer, out: Path, *extra: str) -> subprocess.Popen[str]:
    """The load test, started; its output (progress lines included) on stdout."""
    port = server.server_address[1]
    command = loadtest_command(
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
        str(SAFETY_S),
        "--progress",
        "0.2",
        "--seed",
        "4",
        "--out",
        str(out),
        *extra,
    )
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(run: subprocess.Popen[str], server: HeldServer) -> tuple[int, str]:
    """Reads the run's output; releases the server once a progress line accounts for every
    arrival (sent, or dropped, which counts as an error while nothing is answered)."""
    lines = []
    with run:
        assert run.stdout is not None
        for line in run.stdout:
            lines.append(line)
            match = PROGRESS.search(line)
            if match and int(match[1]) + int(match[3]) == int(match[2]) == ARRIVALS:
                server.release.set()
        server.release.set()  # the run ended without such a line: the assertions say why
        return run.wait(SAFETY_S), "".join(lines)


@pytest.mark.integration
@pytest.mark.slow
def test_schedule_holds_under_a_slow_server(held_server, out_dir):
    held_server.release_after = ARRIVALS  # nothing is answered until every request is in
    code, output = finish(run_constant(held_server, out_dir), held_server)
    assert code == 0, output
    records = read_csv(out_dir / "requests.csv")
    plan = ConstantShape(rate=RATE, duration_s=DURATION, tail_s=0.5).plan(4)
    assert len(records) == len(plan.arrivals) == ARRIVALS
    # Every request was sent at its scheduled time, not when an earlier one came back:
    # none came back before all 60 were in flight at once.
    scheduled = np.array(sorted(r.scheduled_s for r in records))
    np.testing.assert_allclose(scheduled, [a.offset_s for a in plan.arrivals], atol=1e-5)
    lag = np.array([r.sent_s - r.scheduled_s for r in records])
    assert lag.min() >= -1e-3  # never early
    assert held_server.most_in_flight == held_server.received == ARRIVALS
    assert all(r.ok for r in records)
    assert held_server.served == ARRIVALS
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["offered"]["offered_rate"] == pytest.approx(RATE, rel=0.15)


@pytest.mark.integration
@pytest.mark.slow
def test_arrivals_past_the_in_flight_limit_are_dropped_not_delayed(held_server, out_dir):
    code, output = finish(run_constant(held_server, out_dir, "--max-in-flight", "5"), held_server)
    assert code == 1, output  # errors breach the SLO
    records = read_csv(out_dir / "requests.csv")
    assert len(records) == ARRIVALS  # every arrival is accounted for
    dropped = [r for r in records if r.error.startswith("dropped")]
    sent = [r for r in records if r.ok]
    # While the first five were held, every later arrival was dropped at its time; one
    # delayed until a slot freed would have been sent once the server answered.
    assert (len(sent), len(dropped)) == (5, ARRIVALS - 5), output
    assert all(r.status == 0 for r in dropped)
    assert held_server.received == held_server.most_in_flight == 5
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["offered"]["dropped"] == len(dropped)
    assert summary["offered"]["requests"] == ARRIVALS
