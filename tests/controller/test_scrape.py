"""ScrapeSource in process: the exposition parser against the runtime's own writer, the delta
math across calls (resets, new pods, pods gone), and a hostile or broken pod, each pod a real
loopback server (live_fixtures.RawServer). Real runtimes are scraped in test_inputs_live.py."""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Callable

import pytest

from kindling.controller.inputs import InputUnavailable, ModelRef
from kindling.controller.scrape import (
    ExpositionError,
    ScrapeSource,
    parse_exposition,
    pod_figures,
)
from kindling.runtime.coldstart import ColdStartTimeline
from kindling.runtime.telemetry import RuntimeMetrics
from tests.controller.live_fixtures import Behavior, RawServer, answer, raw_server

__all__ = ["raw_server"]  # the fixture, imported for pytest

MODEL = "resnet18"
REF = ModelRef("prod", "resnet", MODEL)
Start = Callable[[Behavior], RawServer]


class Pod:
    """A pod's runtime metrics (the runtime's own RuntimeMetrics and writer), served by a
    real loopback server that renders them afresh on every scrape."""

    def __init__(self, start: Start, ready_s: float = 1.5, started_at: float = 0.0) -> None:
        # process_start_time_seconds 0: no start time a scrape can use (a new pod is then a
        # baseline); a positive one places the pod's start against the controller's calls.
        self.timeline = ColdStartTimeline(started_at=started_at)
        self.timeline.process.update(imports=0.25, ready=ready_s + 0.01)
        self.timeline.models[MODEL] = {"fetched": 0.5, "session": 1.0, "ready": ready_s}
        self.metrics = RuntimeMetrics(self.timeline)
        self.up = True
        self.server = start(self._serve)
        self.url = self.server.url

    def _serve(self, conn: socket.socket, stopping: threading.Event) -> None:
        if self.up:
            answer(200, self.metrics.render().encode())(conn, stopping)
        else:
            answer(503, b"draining")(conn, stopping)

    def served(self, n: int, seconds_each: float, status: str = "200", model: str = MODEL) -> None:
        for _ in range(n):
            self.metrics.requests.inc(model, status)
            self.metrics.latency.observe(seconds_each, model, "total")
            self.metrics.latency.observe(seconds_each / 2, model, "compute")

    def restart(self, ready_s: float) -> None:
        """A new process behind the same address: fresh counters, a new timeline."""
        self.timeline = ColdStartTimeline(started_at=0.0)
        self.timeline.models[MODEL] = {"ready": ready_s}
        self.metrics = RuntimeMetrics(self.timeline)


def source(pods: list[Pod]) -> ScrapeSource:
    return ScrapeSource(lambda ref: [p.url for p in pods], timeout_s=5)


# -- the exposition parser ---------------------------------------------------------------


def test_parser_reads_the_runtimes_own_writer(raw_server: Start) -> None:
    pod = Pod(raw_server)
    pod.served(3, 0.5)
    pod.served(1, 0.25, status="503")
    pod.metrics.in_flight.inc(MODEL)
    # A model name that needs escaping in the exposition format, and another model.
    odd = 'we"ird\\name\n'
    pod.served(7, 1.0, model=odd)
    pod.served(2, 1.0, model="other")
    samples = list(parse_exposition(pod.metrics.render()))
    assert ("kindling_requests_total", (("model", odd), ("status", "200")), 7.0) in samples
    figures = pod_figures(pod.metrics.render().encode(), MODEL)
    assert figures.requests == 4
    assert figures.busy_s == 3 * 0.5 + 0.25
    assert figures.done == 4
    assert figures.in_flight == 1
    assert figures.ready_s == 1.5
    assert pod_figures(pod.metrics.render().encode(), odd).requests == 7


def test_parser_format_details() -> None:
    text = (
        "# HELP x A help line with } and {.\n"
        "# TYPE x counter\n"
        "\n"
        'x{a="1",b="} 2",} 3 1700000000000\n'
        "y +Inf\n"
        "z -1.5e-3\r\n"
    )
    assert list(parse_exposition(text)) == [
        ("x", (("a", "1"), ("b", "} 2")), 3.0),
        ("y", (), math.inf),
        ("z", (), -0.0015),
    ]


@pytest.mark.parametrize(
    "line",
    [
        "x 1_000",  # Python's float() takes it; the format does not
        "x infinity",
        "x{a=1} 1",
        'x{a="1"',
        'x{a="1",a="2"} 1',
        'x{a="\\t"} 1',
        "x",
        "1x 2",
        "x 1 2 3",
        "\x00garbage",
    ],
)
def test_parser_refuses_what_is_not_the_format(line: str) -> None:
    with pytest.raises(ExpositionError):
        list(parse_exposition(line))


@pytest.mark.parametrize(
    "body",
    [
        b'kindling_requests_total{model="resnet18",status="200"} NaN\n',
        b'kindling_requests_total{model="resnet18",status="200"} -1\n',
        b'kindling_request_duration_seconds_sum{model="resnet18",phase="total"} +Inf\n',
        b'kindling_requests_in_flight{model="resnet18"} -2\n',
        b"\xff\xfe not utf-8",
    ],
)
def test_impossible_values_refuse_the_scrape(body: bytes) -> None:
    with pytest.raises(ExpositionError):
        pod_figures(body, MODEL)


def test_metrics_url() -> None:
    assert ScrapeSource.metrics_url("http://10.0.0.5:8080") == "http://10.0.0.5:8080/metrics"
    assert ScrapeSource.metrics_url("http://10.0.0.5:8080/") == "http://10.0.0.5:8080/metrics"
    assert ScrapeSource.metrics_url("https://p:8443/stats") == "https://p:8443/stats"


# -- deltas across calls -----------------------------------------------------------------


def test_first_call_is_a_baseline_then_deltas(raw_server: Start) -> None:
    a, b = Pod(raw_server, ready_s=1.5), Pod(raw_server, ready_s=2.25)
    a.served(10, 0.1)  # before the controller looked: not in any rate
    src = source([a, b])
    with pytest.raises(InputUnavailable, match="baseline"):
        src.sample(REF, 100.0)
    a.served(20, 0.05)
    b.served(10, 0.2)
    b.metrics.in_flight.inc(MODEL)
    sample = src.sample(REF, 110.0)
    assert sample.t == 110.0
    assert sample.rate_rps == pytest.approx(3.0)  # 30 requests in 10 s
    assert sample.service_time_s == pytest.approx((20 * 0.05 + 10 * 0.2) / 30)
    assert sample.concurrency == 1
    assert sample.cold_start_s == 2.25  # the slowest pod up
    assert sample.pods == 2
    # No traffic since: rate 0, service time unknown, not an error.
    b.metrics.in_flight.dec(MODEL)
    quiet = src.sample(REF, 115.0)
    assert (quiet.rate_rps, quiet.service_time_s, quiet.concurrency) == (0.0, None, 0.0)


def test_counter_reset_counts_the_new_process_from_zero(raw_server: Start) -> None:
    pod = Pod(raw_server)
    pod.served(100, 0.1)
    src = source([pod])
    with pytest.raises(InputUnavailable):
        src.sample(REF, 0.0)
    pod.restart(ready_s=3.0)
    pod.served(4, 0.5)  # fewer than before: the counter went down
    sample = src.sample(REF, 2.0)
    assert sample.rate_rps == 2.0
    assert sample.service_time_s == 0.5
    assert sample.cold_start_s == 3.0


def test_restart_that_overtook_the_old_count_is_still_a_reset(raw_server: Start) -> None:
    pod = Pod(raw_server, ready_s=1.5)
    pod.served(2, 0.1)
    src = source([pod])
    with pytest.raises(InputUnavailable):
        src.sample(REF, 0.0)
    pod.restart(ready_s=1.75)  # a new timeline tells the new process apart
    pod.served(10, 0.3)
    sample = src.sample(REF, 10.0)
    assert sample.rate_rps == 1.0
    assert sample.service_time_s == pytest.approx(0.3)


def test_new_pod_is_a_baseline_but_counts_as_up(raw_server: Start) -> None:
    a = Pod(raw_server, ready_s=1.0)
    pods = [a]
    src = ScrapeSource(lambda ref: [p.url for p in pods], timeout_s=5)
    with pytest.raises(InputUnavailable):
        src.sample(REF, 0.0)
    b = Pod(raw_server, ready_s=4.0)
    b.served(50, 0.1)  # when, we cannot tell: not in this rate
    pods.append(b)
    a.served(5, 0.2)
    sample = src.sample(REF, 5.0)
    assert sample.rate_rps == 1.0
    assert sample.service_time_s == pytest.approx(0.2)
    assert sample.pods == 2 and sample.cold_start_s == 4.0
    b.served(10, 0.1)
    assert src.sample(REF, 10.0).rate_rps == pytest.approx(2.0)


def test_a_pod_started_since_the_last_call_counts_whole(raw_server: Start) -> None:
    """The request that woke a model from zero: its pod started after the controller's last
    call (process_start_time_seconds), so all it counted is new; one started before that
    call is a baseline, as ever."""
    pods: list[Pod] = []
    src = ScrapeSource(lambda ref: [p.url for p in pods], timeout_s=5)
    with pytest.raises(InputUnavailable):
        src.sample(REF, 1000.0)  # at zero: no pod to scrape
    woken = Pod(raw_server, ready_s=1.0, started_at=1003.0)
    woken.served(1, 0.1)
    old = Pod(raw_server, ready_s=1.0, started_at=900.0)  # up before the last call
    old.served(50, 0.1)
    pods.extend([woken, old])
    sample = src.sample(REF, 1010.0)
    assert sample.rate_rps == pytest.approx(1 / 10)
    assert sample.service_time_s == pytest.approx(0.1) and sample.pods == 2
    woken.served(2, 0.1)
    old.served(3, 0.1)
    assert src.sample(REF, 1020.0).rate_rps == pytest.approx(0.5)


def test_a_loading_pod_answers_but_is_not_up(raw_server: Start) -> None:
    pod = Pod(raw_server)
    del pod.timeline.models[MODEL]["ready"]
    src = source([pod])
    with pytest.raises(InputUnavailable):
        src.sample(REF, 0.0)
    sample = src.sample(REF, 1.0)
    assert (sample.pods, sample.cold_start_s, sample.rate_rps) == (0, None, 0.0)


def test_pod_down_reduces_pods_and_its_gap_is_spanned(raw_server: Start) -> None:
    a, b = Pod(raw_server), Pod(raw_server)
    src = source([a, b])
    with pytest.raises(InputUnavailable):
        src.sample(REF, 0.0)
    b.up = False
    a.served(10, 0.1)
    b.served(30, 0.1)
    sample = src.sample(REF, 10.0)
    assert sample.pods == 1
    assert sample.rate_rps == 1.0  # b's requests wait for its next answer
    b.up = True
    sample = src.sample(REF, 20.0)
    assert sample.pods == 2
    assert sample.rate_rps == pytest.approx(30 / 20)  # b's 30 over its 20 s gap


def test_pods_not_listed_are_forgotten(raw_server: Start) -> None:
    a, b = Pod(raw_server), Pod(raw_server)
    pods = [a, b]
    src = ScrapeSource(lambda ref: [p.url for p in pods], timeout_s=5)
    with pytest.raises(InputUnavailable):
        src.sample(REF, 0.0)
    pods.remove(b)
    src.sample(REF, 1.0)
    assert set(src._seen[REF]) == {a.url}
    src.forget(REF)
    assert REF not in src._seen


def test_all_down_or_none_listed_is_unavailable(raw_server: Start) -> None:
    a = Pod(raw_server)
    a.up = False
    with pytest.raises(InputUnavailable, match=r"no pod answered.*HTTP 503"):
        source([a]).sample(REF, 0.0)
    with pytest.raises(InputUnavailable, match="no pods"):
        source([]).sample(REF, 0.0)


# -- hostile or broken pods --------------------------------------------------------------


def hang(conn: socket.socket, stopping: threading.Event) -> None:
    stopping.wait()


def endless(conn: socket.socket, stopping: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    while not stopping.is_set():
        conn.sendall(b"# filler\n" * 8192)


def redirect(conn: socket.socket, stopping: threading.Event) -> None:
    answer(301, b"", {"Location": "http://169.254.169.254/latest/meta-data/"})(conn, stopping)


@pytest.mark.parametrize(
    ("behavior", "why"),
    [
        (hang, "timed out"),
        (endless, "over 1048576 bytes"),
        (redirect, "not followed"),
        (answer(200, b"<html>hello</html>"), "not a sample"),
        (answer(200, b'kindling_requests_total{model="resnet18"} NaN'), "not a count"),
    ],
)
def test_one_bad_pod_among_good_ones(raw_server: Start, behavior: Behavior, why: str) -> None:
    good = Pod(raw_server)
    bad = raw_server(behavior)
    src = ScrapeSource(lambda ref: [good.url, bad.url], timeout_s=0.5)
    with pytest.raises(InputUnavailable):
        src.sample(REF, 0.0)
    good.served(3, 0.1)
    sample = src.sample(REF, 1.0)
    assert sample.pods == 1 and sample.rate_rps == 3.0
    # Alone, the bad pod is the whole answer, with its reason.
    with pytest.raises(InputUnavailable, match=why):
        ScrapeSource(lambda ref: [bad.url], timeout_s=0.5).sample(REF, 0.0)


def test_many_pods_share_one_deadline(raw_server: Start) -> None:
    # More hanging pods than threads: the later ones start after the deadline and give up
    # at once instead of each waiting its own timeout.
    hung = [raw_server(hang) for _ in range(6)]
    src = ScrapeSource(lambda ref: [h.url for h in hung], timeout_s=0.3, parallel=2)
    with pytest.raises(InputUnavailable, match="no pod answered") as caught:
        src.sample(REF, 0.0)
    assert "no time left" in str(caught.value)


def test_bad_settings_are_refused_up_front() -> None:
    with pytest.raises(ValueError):
        ScrapeSource(lambda ref: [], timeout_s=0)
    with pytest.raises(ValueError):
        ScrapeSource(lambda ref: [], parallel=0)
