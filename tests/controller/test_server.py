"""The controller's /metrics, /healthz and /readyz, served for real on a free port."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from kindling.cluster.processes import free_port
from kindling.controller.server import STALL_INTERVALS, Health, serve
from kindling.controller.telemetry import ControllerMetrics

pytestmark = pytest.mark.integration


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served() -> Iterator[tuple[str, ControllerMetrics, Clock]]:
    metrics, clock = ControllerMetrics(), Clock()
    port = free_port()
    server = serve(port, metrics, Health(metrics, 10.0, clock), host="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{port}", metrics, clock
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def test_probes_follow_the_loop(served: tuple[str, ControllerMetrics, Clock]) -> None:
    url, metrics, clock = served
    assert _get(url + "/healthz")[0] == 200  # starting counts as alive
    assert _get(url + "/readyz") == (503, "the loop has not run yet\n")
    metrics.heartbeat(clock.now)
    assert _get(url + "/readyz")[0] == 200
    clock.now += STALL_INTERVALS * 10.0 + 1
    status, why = _get(url + "/healthz")
    assert status == 503 and "last ran" in why


def test_metrics_are_prometheus_text(served: tuple[str, ControllerMetrics, Clock]) -> None:
    url, metrics, _ = served
    metrics.errors.labels("input").inc()
    status, body = _get(url + "/metrics")
    assert status == 200
    assert 'kindling_controller_errors_total{stage="input"} 1.0' in body


def test_other_paths_and_methods_are_refused(
    served: tuple[str, ControllerMetrics, Clock],
) -> None:
    url, _, _ = served
    assert _get(url + "/admin")[0] == 404
    request = urllib.request.Request(url + "/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    with refused.value:
        assert refused.value.code == 501
