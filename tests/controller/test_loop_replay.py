"""The deployed loop decides as the simulator does, on the same series.

The simulator runs Kindling with the `prometheus` input on two workloads, one that scales
up and down with a daily curve (half a compressed day) and one that learns an idle window
and pre-warms (a 1-minute timer for an hour), and records what it read at every decision
(baselines.Tick). A real HTTP server on loopback then answers the
loop's PromQL queries with those recorded values, as a Prometheus would at each query's
`time`, and `Controller.run` (the loop `kindling controller run` runs: leadership gate,
ticks, error handling) runs on a clock that moves one interval per wait, through the real
PrometheusSource. Every decision, pods and rule, must be the simulator's.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kindling.controller import profiles, workloads
from kindling.controller.baselines import Kindling, Tick
from kindling.controller.inputs import ModelRef
from kindling.controller.loop import Controller
from kindling.controller.prometheus import PrometheusSource
from kindling.controller.settings import ControllerSettings
from kindling.controller.simulate import SimOptions, make_engine, make_policy
from kindling.controller.targets import Target
from kindling.controller.telemetry import ControllerMetrics
from tests.conftest import reply_json, serving

REF = ModelRef("ml", "mobilenet-v2", "mobilenet_v2")
OVERHEAD_S = 0.3


WORKLOADS = {"diurnal": 1800.0, "timer-1m": 3600.0}


def simulated_ticks(profile: profiles.Profile, name: str) -> list[Tick]:
    workload = workloads.make(name, seed=3, duration_s=WORKLOADS[name])
    opts = SimOptions(input="prometheus", pod_overhead_s=OVERHEAD_S)
    policy = make_policy("kindling", profile, opts)
    assert isinstance(policy, Kindling)
    make_engine(workload, profile, 3, opts).run(policy)
    return policy.ticks


class Replay(ThreadingHTTPServer):
    """/api/v1/query answered from the recorded ticks, by the query's `time`."""

    def __init__(self, ticks: list[Tick], profile: profiles.Profile) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.by_time = {t.t: t for t in ticks}
        self.profile = profile
        self.asked: list[float] = []

    def answer(self, now: float) -> dict[str, object]:
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


class _Handler(BaseHTTPRequestHandler):
    server: Replay

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        reply_json(self, self.server.answer(float(query["time"][0])))

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=list(WORKLOADS))
def replay(request: pytest.FixtureRequest) -> Iterator[Replay]:
    profile = profiles.load()
    server = Replay(simulated_ticks(profile, request.param), profile)
    with serving(server):
        yield server


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


def test_the_loop_makes_the_simulators_decisions(replay: Replay) -> None:
    ticks = list(replay.by_time.values())
    settings = ControllerSettings.from_env(
        {
            "KINDLING_NAMESPACE": "ml",
            "KINDLING_POD_NAME": "c",
            "KINDLING_PROMETHEUS_URL": f"http://127.0.0.1:{replay.server_address[1]}",
            # The simulator adds the measured pod start to the runtime's cold start.
            "KINDLING_POD_START_S": str(OVERHEAD_S),
        }
    )
    clock = [ticks[0].t]
    woken: list[Target] = []
    source = PrometheusSource(settings.prometheus_url, window_s=settings.window_s)
    controller = Controller(
        settings, Cluster(replay.by_time, clock), source, ControllerMetrics(), woken.append
    )
    decided: list[tuple[float, int, str]] = []
    tick = controller.tick

    def recording(now: float) -> list[object]:
        outcomes = tick(now)
        decided.extend((now, o.decision.pods, o.decision.rule) for o in outcomes)
        return list(outcomes)

    controller.tick = recording  # type: ignore[method-assign]
    controller.run(Ticker([t.t for t in ticks], clock), clock=lambda: clock[0])
    assert replay.asked == [t.t for t in ticks]
    assert decided == [(t.t, t.pods, t.rule) for t in ticks]
    assert controller.metrics.errors.labels("tick")._value.get() == 0


def test_the_replayed_series_exercise_every_rule_and_answer() -> None:
    """Together the two series hold the forecast's rules, the idle window's, and every kind
    of answer: none, at zero pods, and a rate."""
    profile = profiles.load()
    ticks = [t for name in WORKLOADS for t in simulated_ticks(profile, name)]
    rules = {t.rule for t in ticks}
    wanted = {"scale-up", "scale-down", "cooldown", "steady", "step-aside", "pre-warm"}
    assert wanted | {"idle-to-zero", "stale-hold", "no-data"} <= rules, rules
    assert any(t.rate is None for t in ticks)
    assert any(t.ready_pods == 0 for t in ticks)
    assert any(t.rate and t.ready_pods for t in ticks)
