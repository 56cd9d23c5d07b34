"""The control loop on its own: a recording actuator and a scripted metrics source stand in
for the API server and Prometheus (both implement the controller's own interfaces; the
real ones are tested against a real API server and a real Prometheus elsewhere). Time is
what each test passes: nothing reads the clock."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

import pytest
from prometheus_client import generate_latest

from kindling.controller.inputs import InputUnavailable, ModelRef, ModelSample
from kindling.controller.kube import Retryable
from kindling.controller.loop import Controller
from kindling.controller.policy import IDLE_ZERO, PREWARM, STALE, STEP_ASIDE
from kindling.controller.settings import ControllerSettings
from kindling.controller.targets import Target
from kindling.controller.telemetry import ControllerMetrics

REF = ModelRef("ml", "mobilenet-v2", "mobilenet_v2")


def _target(**changes: object) -> Target:
    base = Target(REF, 0, None, 1.0, ("mobilenet-v2-00001",), 1, "http://mobilenet-v2.ml")
    return replace(base, **changes)  # type: ignore[arg-type]


@dataclass
class Recorder:
    """An Actuator that records what the loop asks of it."""

    targets: list[Target] = field(default_factory=lambda: [_target()])
    calls: list[tuple[str, int | None]] = field(default_factory=list)
    fail_discover: bool = False

    def discover(self) -> list[Target]:
        if self.fail_discover:
            raise Retryable("503 from the API server", 503)
        return list(self.targets)

    def set_warm(self, target: Target, pods: int) -> None:
        self.calls.append(("set", pods))

    def release(self, target: Target) -> None:
        self.calls.append(("release", None))


@dataclass
class Script:
    """A MetricsSource answering a fixed rate (None: the source is down)."""

    rate: float | None = 0.0
    service_time_s: float = 0.1
    cold_start_s: float | None = 0.3

    def sample(self, ref: ModelRef, now: float) -> ModelSample:
        if self.rate is None:
            raise InputUnavailable("connection refused")
        busy = self.rate > 0
        return ModelSample(
            now, self.rate, self.service_time_s if busy else None, None, self.cold_start_s, 1
        )

    def forget(self, ref: ModelRef) -> None:
        self.forgotten = ref


def _controller(
    actuator: Recorder, source: Script, **settings: object
) -> tuple[Controller, list[Target]]:
    woken: list[Target] = []
    s = ControllerSettings.from_env({"KINDLING_NAMESPACE": "ml", "KINDLING_POD_NAME": "c"})
    s = replace(s, **settings)  # type: ignore[arg-type]
    return Controller(s, actuator, source, ControllerMetrics(), woken.append), woken


def test_traffic_raises_the_warm_pods_and_says_why() -> None:
    actuator, source = Recorder(), Script(rate=50.0)
    controller, _ = _controller(actuator, source)
    (outcome,) = controller.tick(1000.0)
    # 50 req/s x 0.1 s = 5 in flight at concurrency 1: at least 5 pods.
    assert outcome.applied and outcome.decision.pods >= 5
    assert actuator.calls == [("set", outcome.decision.pods)]
    assert "forecast" in outcome.decision.reason
    # The same decision again writes nothing.
    controller.tick(1010.0)
    assert len(actuator.calls) == 1


def test_at_the_users_own_floor_it_gives_the_value_back_once() -> None:
    actuator, source = Recorder(targets=[_target(user_min_scale=2)]), Script(rate=50.0)
    controller, _ = _controller(actuator, source, idle_to_zero_s=30.0, cooldown_s=0.0)
    controller.tick(1000.0)
    assert actuator.calls[-1][0] == "set"
    source.rate = 0.0
    outcomes = []
    for t in range(1010, 1200, 10):
        outcomes += controller.tick(float(t))
    releases = [c for c in actuator.calls if c[0] == "release"]
    assert releases == [("release", None)]
    assert outcomes[-1].decision.pods == 2  # the user's floor, theirs to keep


def test_idle_traffic_goes_to_zero_through_release() -> None:
    actuator, source = Recorder(), Script(rate=5.0)
    controller, _ = _controller(actuator, source, idle_to_zero_s=60.0, cooldown_s=0.0)
    controller.tick(1000.0)
    source.rate = 0.0
    rules = [o.decision.rule for t in range(1010, 1400, 10) for o in controller.tick(float(t))]
    assert IDLE_ZERO in rules
    assert actuator.calls[-1] == ("release", None)


def test_metrics_down_holds_and_never_goes_to_zero() -> None:
    actuator, source = Recorder(), Script(rate=20.0)
    controller, _ = _controller(actuator, source, idle_to_zero_s=60.0)
    (first,) = controller.tick(1000.0)
    source.rate = None
    outcomes = [o for t in range(1010, 2000, 10) for o in controller.tick(float(t))]
    assert {o.decision.pods for o in outcomes} == {first.decision.pods}
    assert outcomes[-1].decision.rule == STALE
    assert all(call[0] == "set" for call in actuator.calls)
    assert controller.metrics.errors.labels("input")._value.get() == len(outcomes)


def test_an_api_server_that_is_away_changes_nothing() -> None:
    actuator, source = Recorder(fail_discover=True), Script(rate=20.0)
    controller, _ = _controller(actuator, source)
    assert controller.tick(1000.0) == []
    assert actuator.calls == [] and controller.ticks == 1


def test_a_revision_at_zero_gets_a_warm_up_request() -> None:
    actuator = Recorder(targets=[_target(ready_pods=0)])
    controller, woken = _controller(actuator, Script(rate=20.0))
    (outcome,) = controller.tick(1000.0)
    assert outcome.woke and [t.ref for t in woken] == [REF]


def test_dry_run_decides_and_writes_nothing() -> None:
    actuator = Recorder()
    controller, _ = _controller(actuator, Script(rate=20.0), dry_run=True)
    (outcome,) = controller.tick(1000.0)
    assert outcome.decision.pods > 0 and not outcome.applied and actuator.calls == []


def test_a_model_that_goes_is_forgotten() -> None:
    actuator = Recorder()
    controller, _ = _controller(actuator, Script(rate=20.0))
    controller.tick(1000.0)
    assert REF in controller.models
    actuator.targets = []
    controller.tick(1010.0)
    assert controller.models == {}
    assert controller.source.forgotten == REF  # type: ignore[attr-defined]
    exposed = controller.metrics.registry.get_sample_value(
        "kindling_controller_desired_pods",
        {"namespace": "ml", "workload": "mobilenet-v2", "model": "mobilenet_v2"},
    )
    assert exposed is None


def test_release_all_restores_every_model_it_set() -> None:
    actuator = Recorder()
    controller, _ = _controller(actuator, Script(rate=20.0))
    controller.tick(1000.0)
    controller.release_all()
    assert actuator.calls[-1] == ("release", None)
    calls = len(actuator.calls)
    controller.release_all()  # nothing set any more: nothing to give back
    assert len(actuator.calls) == calls


def test_the_loop_acts_only_while_leading_and_survives_a_failing_tick() -> None:
    actuator, source = Recorder(), Script(rate=20.0)
    controller, _ = _controller(actuator, source, interval_s=0.001)
    stop = threading.Event()
    leads = iter([False, True, True, False, True])
    clock = iter(float(t) for t in range(1000, 2000, 10))

    def leading() -> bool:
        value = next(leads, None)
        if value is None:
            stop.set()
            return False
        return value

    calls = {"n": 0}
    real_tick = controller.tick

    def flaky_tick(now: float) -> list[object]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("a bug in one tick")
        return real_tick(now)  # type: ignore[return-value]

    controller.tick = flaky_tick  # type: ignore[method-assign]
    controller.run(stop, leading, clock=lambda: next(clock))
    assert calls["n"] == 3  # the three leading turns, the failing one included
    assert controller.metrics.errors.labels("tick")._value.get() == 1


@pytest.mark.parametrize("forecaster", ["holt", "ewma", "seasonal"])
def test_every_forecaster_setting_runs(forecaster: str) -> None:
    controller, _ = _controller(Recorder(), Script(rate=20.0), forecaster=forecaster)
    (outcome,) = controller.tick(1000.0)
    assert outcome.decision.pods >= 2


def test_a_model_at_zero_with_no_series_is_seen_as_idle_not_as_missing() -> None:
    # No pod, so no series in Prometheus: that is a rate of zero, not missing data.
    actuator = Recorder(targets=[_target(ready_pods=0)])
    controller, _ = _controller(actuator, Script(rate=None))
    (outcome,) = controller.tick(1000.0)
    assert outcome.decision.rule != STALE
    assert controller.models[REF].forecaster.last_rate == 0.0
    assert controller.metrics.errors.labels("input")._value.get() == 0


def _pods_under(rates: list[float], margin_k: float | None, global_k: float) -> list[int]:
    """The pods decided for `rates` (one per 10 s tick) with the model's own margin and the
    controller's global one."""
    actuator, source = Recorder(targets=[_target(margin_k=margin_k)]), Script()
    controller, _ = _controller(actuator, source, margin_k=global_k)
    pods = []
    for i, rate in enumerate(rates):
        source.rate = rate
        pods += [o.decision.pods for o in controller.tick(1000.0 + 10 * i)]
    return pods


def test_a_models_own_margin_wins_over_the_global_one() -> None:
    # A rate that swings: the forecast errs, so the margin k x error adds pods.
    rates = [20.0, 60.0] * 10
    own_zero = _pods_under(rates, margin_k=0.0, global_k=8.0)
    own_eight = _pods_under(rates, margin_k=8.0, global_k=0.0)
    # Absent (None), the global one applies: the same decisions as the model's own value.
    assert own_zero == _pods_under(rates, margin_k=None, global_k=0.0)
    assert own_eight == _pods_under(rates, margin_k=None, global_k=8.0)
    assert own_eight[-1] > own_zero[-1]


def test_a_periodic_model_is_prewarmed_and_its_window_is_exported() -> None:
    """A request every 300 s: after a few gaps the loop learns a pre-warm window, raises the
    floor (and wakes the Revision) before the next request is due, and /metrics shows the
    window; the decision's rule says which part of the policy chose it."""
    actuator, source = Recorder(targets=[_target(ready_pods=0)]), Script(rate=0.0)
    controller, woken = _controller(actuator, source)
    outcomes = []
    for t in range(1000, 1000 + 12 * 300, 10):
        source.rate = 0.1 if (t - 1000) % 300 == 0 else 0.0
        outcomes += controller.tick(float(t))
    rules = [o.decision.rule for o in outcomes]
    assert PREWARM in rules and STEP_ASIDE in rules
    assert woken, "a floor raised at zero pods wakes the Revision"
    text = generate_latest(controller.metrics.registry).decode()
    start = [
        line for line in text.splitlines() if 'edge="start"' in line and not line.startswith("#")
    ]
    assert start and 200 < float(start[0].split()[-1]) < 300
