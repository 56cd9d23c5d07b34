"""The deployed loop decides as the simulator does, on the same series, through either input.

The simulator runs Kindling on a workload that scales up and down with a daily curve
(half a compressed day) and on one that learns an idle window and pre-warms (a 5-minute
timer for an hour), and records what it read at every decision (baselines.Tick). Real HTTP
servers on loopback then answer as the cluster would have at each decision: a Prometheus
answering the loop's PromQL queries at each query's `time` (the `prometheus` input), or a
runtime pod's /metrics (the `scrape` input, the chart's default: one pod per stretch of
ready pods, a new one started since the last scrape when the Revision wakes). `Controller.run`
(the loop `kindling controller run` runs: leadership gate, ticks, error handling) runs on a
clock that moves one interval per wait, through the real PrometheusSource or ScrapeSource.
Every decision, pods and rule, must be the simulator's.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kindling.controller import profiles, workloads
from kindling.controller.baselines import Kindling, Tick
from kindling.controller.inputs import MetricsSource, ModelRef
from kindling.controller.loop import Controller
from kindling.controller.prometheus import PrometheusSource
from kindling.controller.scrape import ScrapeSource
from kindling.controller.settings import ControllerSettings
from kindling.controller.simulate import SimOptions, make_engine, make_policy
from kindling.controller.targets import Target
from kindling.controller.telemetry import ControllerMetrics
from tests.conftest import reply_json, serving

REF = ModelRef("ml", "mobilenet-v2", "mobilenet_v2")
OVERHEAD_S = 0.3
INTERVAL_S = ControllerSettings.interval_s

# (input, workload): seconds simulated.
SERIES = {
    ("prometheus", "diurnal"): 1800.0,
    ("scrape", "diurnal"): 1800.0,
    ("scrape", "timer-5m"): 3600.0,
}


def simulated_ticks(profile: profiles.Profile, source: str, name: str) -> list[Tick]:
    workload = workloads.make(name, seed=3, duration_s=SERIES[source, name])
    opts = SimOptions(input=source, pod_overhead_s=OVERHEAD_S)
    policy = make_policy("kindling", profile, opts)
    assert isinstance(policy, Kindling)
    make_engine(workload, profile, 3, opts).run(policy)
    return policy.ticks


class Replay(ThreadingHTTPServer):
    """Answers from the recorded ticks at the clock's (or the query's) time."""

    def __init__(self, ticks: list[Tick], profile: profiles.Profile, clock: list[float]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.by_time = {t.t: t for t in ticks}
        self.profile = profile
        self.clock = clock
        self.asked: list[float] = []
        self.pods = pod_lives(ticks)

    def prometheus(self, now: float) -> dict[str, object]:
        """/api/v1/query at `now`: the recorded rate, and the profile's figures."""
        self.asked.append(now)
        tick = self.by_time[now]
        result = []
        if tick.rate is not None:
            values = {
                "rate": tick.rate,
                # busy / done is the loop's service time: the simulator's mean, exactly.
                "busy": self.profile.mean_service_s,
                "done": 1.0,
                "cold_start": self.profile.median_cold_start_s,
                "pods": float(tick.ready_pods),
            }
            result = [{"metric": {"q": q}, "value": [now, repr(v)]} for q, v in values.items()]
        return {"status": "success", "data": {"resultType": "vector", "result": result}}

    def endpoints(self, ref: ModelRef) -> list[str]:
        pod = self.pods[self.clock[0]]
        host, port = self.server_address[:2]
        return [] if pod is None else [f"http://{host}:{port}/pod{pod.number}/metrics"]

    def exposition(self, path: str) -> str | None:
        """A runtime pod's /metrics now, or None for a pod that is not up."""
        self.asked.append(self.clock[0])
        pod = self.pods[self.clock[0]]
        if pod is None or path != f"/pod{pod.number}/metrics":
            return None
        m = f'model="{REF.model}"'
        return (
            f"process_start_time_seconds {pod.started!r}\n"
            f"kindling_requests_total{{{m}}} {pod.requests}\n"
            f'kindling_request_duration_seconds_sum{{{m},phase="total"}} '
            f"{pod.timed * self.profile.mean_service_s!r}\n"
            f'kindling_request_duration_seconds_count{{{m},phase="total"}} {pod.timed}\n'
            f'kindling_cold_start_phase_seconds{{{m},phase="ready"}} '
            f"{self.profile.median_cold_start_s!r}\n"
        )


@dataclass(frozen=True)
class Pod:
    """One pod's /metrics at one tick: its identity, its process start, its counters."""

    number: int
    started: float
    requests: int = 0
    timed: int = 0


def pod_lives(ticks: list[Tick]) -> dict[float, Pod | None]:
    """Per tick, what the scrape input's pod says then (None: no pod ready). The simulator
    counts every request served since the previous tick, and a pod that started since it
    whole: one pod per stretch of ready ticks, started between the tick before and this
    one, its counter the sum of the recorded rates x the interval. Every tick adds one timed
    request, so the scrape's service time is the simulator's mean."""
    lives: dict[float, Pod | None] = {}
    pod: Pod | None = None
    for tick in ticks:
        if not tick.ready_pods:
            pod = None
        else:
            if pod is None:
                pod = Pod(len(lives) + 1, tick.t - INTERVAL_S / 2)
            served = round((tick.rate or 0.0) * INTERVAL_S)
            pod = replace(pod, requests=pod.requests + served, timed=pod.timed + 1)
        lives[tick.t] = pod
    return lives


class _Handler(BaseHTTPRequestHandler):
    server: Replay

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/api/v1/query":
            query = urllib.parse.parse_qs(url.query)
            reply_json(self, self.server.prometheus(float(query["time"][0])))
            return
        text = self.server.exposition(url.path)
        body = (text or "no such pod\n").encode()
        self.send_response(200 if text is not None else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=list(SERIES), ids=lambda key: "-".join(key))
def replay(request: pytest.FixtureRequest) -> Iterator[tuple[str, Replay]]:
    profile = profiles.load()
    ticks = simulated_ticks(profile, *request.param)
    server = Replay(ticks, profile, [ticks[0].t])
    with serving(server):
        yield request.param[0], server


class Cluster:
    """The actuator: one Knative Service whose ready pods are the simulator's at each tick."""

    def __init__(self, ticks: dict[float, Tick], clock: list[float]) -> None:
        self.ticks, self.clock = ticks, clock

    def discover(self) -> list[Target]:
        ready = self.ticks[self.clock[0]].ready_pods
        # The KPA's target: containerConcurrency 1 x 0.7 utilisation, as the simulator's.
        return [Target(REF, 0, None, 0.7, ("mobilenet-v2-00001",), ready, None)]

    def set_warm(self, target: Target, pods: int) -> None:
        pass

    def release(self, target: Target) -> None:
        pass


class Ticker(threading.Event):
    """The loop's stop event: each wait moves the clock one interval; set after the last."""

    def __init__(self, times: list[float], clock: list[float]) -> None:
        super().__init__()
        self.times, self.clock = iter(times[1:]), clock

    def wait(self, timeout: float | None = None) -> bool:
        following = next(self.times, None)
        if following is None:
            self.set()
        else:
            self.clock[0] = following
        return self.is_set()


def test_the_loop_makes_the_simulators_decisions(replay: tuple[str, Replay]) -> None:
    kind, server = replay
    ticks = list(server.by_time.values())
    settings = ControllerSettings.from_env(
        {
            "KINDLING_NAMESPACE": "ml",
            "KINDLING_POD_NAME": "c",
            "KINDLING_PROMETHEUS_URL": f"http://127.0.0.1:{server.server_address[1]}",
            # The simulator adds the measured pod start to the runtime's cold start.
            "KINDLING_POD_START_S": str(OVERHEAD_S),
        }
    )
    clock = server.clock
    woken: list[Target] = []
    source: MetricsSource = (
        PrometheusSource(settings.prometheus_url, window_s=settings.window_s)
        if kind == "prometheus"
        else ScrapeSource(server.endpoints)
    )
    controller = Controller(
        settings, Cluster(server.by_time, clock), source, ControllerMetrics(), woken.append
    )
    decided: list[tuple[float, int, str]] = []
    tick = controller.tick

    def recording(now: float) -> list[object]:
        outcomes = tick(now)
        decided.extend((now, o.decision.pods, o.decision.rule) for o in outcomes)
        return list(outcomes)

    controller.tick = recording  # type: ignore[method-assign]
    controller.run(Ticker([t.t for t in ticks], clock), clock=lambda: clock[0])
    if kind == "prometheus":
        assert server.asked == [t.t for t in ticks]
    else:  # a pod is scraped at every tick it is up
        assert server.asked == [t.t for t in ticks if t.ready_pods]
    assert decided == [(t.t, t.pods, t.rule) for t in ticks]
    assert controller.metrics.errors.labels("tick")._value.get() == 0


def test_the_replayed_series_exercise_every_rule_and_answer() -> None:
    """Together the series hold the forecast's rules, the idle window's, and every kind
    of answer: none, at zero pods, and a rate."""
    profile = profiles.load()
    ticks = [t for key in SERIES for t in simulated_ticks(profile, *key)]
    rules = {t.rule for t in ticks}
    wanted = {"scale-up", "scale-down", "cooldown", "steady", "step-aside", "pre-warm"}
    assert wanted | {"idle-to-zero", "stale-hold", "no-data"} <= rules, rules
    assert any(t.rate is None for t in ticks)
    assert any(t.ready_pods == 0 for t in ticks)
    assert any(t.rate and t.ready_pods for t in ticks)
