"""The KPA model against hand-computed cases from Knative's source (controller/kpa.py).

Every expected tick below is worked out in the test's comments from the formulas in
autoscaler.go Scale(), bucketing.go WindowAverage and scaler.go handleScaleToZero.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from kindling.controller.kpa import Active, Kpa, KpaConfig, ScaleResult, WindowBuckets

Load = Callable[[int], float | None]
Ready = Callable[[int], int]


def run(kpa: Kpa, start: int, end: int, load: Load, ready: Ready) -> dict[int, ScaleResult]:
    """Each second: record load(s) (None: nothing scraped), then on even seconds tick."""
    out: dict[int, ScaleResult] = {}
    for s in range(start, end + 1):
        value = load(s)
        if value is not None and kpa.record(s, value):
            out[s] = kpa.decide(s, ready(s))  # multiscaler.Poke
        if s % 2 == 0:
            out[s] = kpa.decide(s, ready(s))
    return out


def const(value: float) -> Load:
    return lambda s: value


def pods(n: int) -> Ready:
    return lambda s: n


def test_config_defaults_match_config_autoscaler() -> None:
    cfg = KpaConfig()
    assert cfg.target == pytest.approx(70.0)  # 100 × 70 %
    assert cfg.panic_window_s == 6.0  # 10 % of 60 s
    assert cfg.panic_threshold == 2.0
    assert (cfg.max_scale_up_rate, cfg.max_scale_down_rate) == (1000.0, 2.0)
    assert (cfg.scale_to_zero_grace_period_s, cfg.scale_to_zero_pod_retention_period_s) == (
        30.0,
        0.0,
    )
    assert cfg.initial_scale == 1 and cfg.activation_scale == 1
    assert KpaConfig(container_concurrency=10).target == pytest.approx(7.0)
    # The target annotation cannot exceed containerConcurrency (ResolveMetricTarget).
    assert KpaConfig(container_concurrency=4, target_annotation=10).total_value == 4


@pytest.mark.parametrize(
    ("cc", "concurrency", "expected"),
    [(0, 150.0, 3), (10, 30.0, 5), (1, 5.0, 8), (4, 12.0, 5)],
)
def test_steady_load_gives_ceil_of_concurrency_over_target(
    cc: int, concurrency: float, expected: int
) -> None:
    assert expected == math.ceil(concurrency / ((cc or 100) * 0.7))
    kpa = Kpa(KpaConfig(container_concurrency=cc))
    results = run(kpa, 0, 200, const(concurrency), pods(expected))
    assert {r.desired_pods for t, r in results.items() if t >= 60} == {expected}
    assert not any(r.panicking for r in results.values())


def test_panic_threshold_is_on_the_rounded_up_pod_count() -> None:
    # One ready pod: panic when ceil(avg / 70) / 1 >= 2, so any panic average above 70.
    calm = Kpa()
    run(calm, 0, 10, const(70.0), pods(1))
    assert not calm.decider.panicking
    hot = Kpa()
    run(hot, 0, 0, const(70.5), pods(1))
    assert hot.decider.panicking


def burst(s: int) -> float:
    """100 in flight, 400 for the 20 seconds 100..119."""
    return 400.0 if 100 <= s < 120 else 100.0


def test_burst_enters_panic_when_panic_average_crosses_twice_ready_capacity() -> None:
    kpa = Kpa()
    results = run(kpa, 0, 98, burst, pods(2))
    assert not results[98].panicking
    # Tick 100: the 6 s panic window holds 5 × 100 + 400: avg 150, ceil(150/70) = 3 pods,
    # 3 / 2 ready = 1.5 < 2.
    kpa.record(99, 100.0)
    kpa.record(100, 400.0)
    assert kpa.decider.panic.average(100) == pytest.approx(150.0)
    assert not kpa.decide(100, 2).panicking
    # Tick 102: 3 × 100 + 3 × 400: avg 250, ceil(250/70) = 4 pods, 4 / 2 = 2.0: panic.
    kpa.record(101, 400.0)
    kpa.record(102, 400.0)
    assert kpa.decider.panic.average(102) == pytest.approx(250.0)
    r = kpa.decide(102, 2)
    assert r.panicking
    # Desired is the larger of stable (57 × 100 + 3 × 400) / 60 = 115 -> 2 and panic 4.
    assert r.desired_pods == 4


def test_panic_holds_the_peak_and_ends_one_stable_window_after_the_last_crossing() -> None:
    results = run(Kpa(), 0, 240, burst, pods(2))
    # Tick 106 on: panic window all 400 -> ceil(400/70) = 6 pods.
    assert results[106].desired_pods == 6
    # Tick 122: seconds 117..122 = 3 × 400 + 3 × 100 -> 250 -> 4 pods, 4/2 >= 2: the last
    # crossing. Tick 124: 400 + 5 × 100 -> 150 -> 3 pods, 1.5: below the threshold.
    # Un-panic needs panicTime + 60 s < now: 182 is not, 184 is.
    panicking = [t for t in range(0, 241, 2) if results[t].panicking]
    assert panicking == list(range(102, 183, 2))
    # No scale-down while panicking: stable wants 3 at tick 150 ((20 × 400 + 40 × 100)/60
    # = 200 -> 3) and panic 2, yet the decider keeps its peak of 6.
    assert {results[t].desired_pods for t in range(106, 183, 2)} == {6}
    # Out of panic at 184: stable over 125..184 is all 100 -> 2 pods.
    assert results[184].desired_pods == 2


@pytest.mark.parametrize(("ready", "expected"), [(10, 5), (7, 3), (5, 2), (2, 1)])
def test_scale_down_is_limited_to_half_the_ready_pods_per_tick(ready: int, expected: int) -> None:
    # 10 in flight wants 1 pod; max-scale-down-rate 2 allows floor(ready / 2) at the least.
    kpa = Kpa()
    kpa.record(0, 10.0)
    r = kpa.decide(0, ready)
    assert (r.desired_pods, r.panicking) == (expected, False)


def test_scale_up_is_limited_by_max_scale_up_rate() -> None:
    # 1000 in flight wants ceil(1000/70) = 15 pods; a rate of 2 allows ceil(2 × ready).
    kpa = Kpa(KpaConfig(max_scale_up_rate=2.0))
    steps = []
    ready = 3
    for t in range(0, 8, 2):
        kpa.record(t, 1000.0)
        kpa.record(t + 1, 1000.0)
        ready = kpa.decide(t, ready).desired_pods
        steps.append(ready)
    assert steps == [6, 12, 15, 15]
    # "grow at least by a single pod": rate 1.1 on 2 pods allows ceil(2.2) = 3.
    slow = Kpa(KpaConfig(max_scale_up_rate=1.1))
    slow.record(0, 1000.0)
    assert slow.decide(0, 2).desired_pods == 3
    # The default 1000 does not bind: from zero ready pods (counted as 1) straight to 15.
    fast = Kpa()
    fast.record(0, 1000.0)
    assert fast.decide(0, 0).desired_pods == 15


def traffic_until_100(s: int) -> float:
    """10 in flight for seconds 0..99, then zeros scraped from the idle pod."""
    return 10.0 if s < 100 else 0.0


def test_scale_to_zero_waits_the_stable_window_then_the_grace_period() -> None:
    # target-burst-capacity 0: the activator is in the path only at zero, so the SKS is in
    # Serve mode until the PA goes inactive and the full grace period applies.
    kpa = Kpa(KpaConfig(target_burst_capacity=0))
    results = run(kpa, 0, 240, traffic_until_100, pods(1))
    # The last non-zero bucket, 99, leaves the 60-bucket ring once bucket 159 is written, so
    # the stable average is 10/60 at tick 158 (1 pod) and 0 at tick 160.
    assert results[158].decider_pods == 1
    assert results[160].decider_pods == 0
    # 160: Active for 160 s >= the stable window -> PA Inactive, activator in the path,
    # replicas kept. 190 = 160 + 30 s grace: InactiveFor >= grace -> replicas 0.
    assert results[160].active == Active.INACTIVE and results[160].activator_in_path
    assert [t for t in range(0, 241, 2) if results[t].desired_pods == 0] == list(range(190, 241, 2))


def test_scale_to_zero_fast_path_when_the_activator_was_already_in_the_path() -> None:
    # Defaults: one pod's capacity 100 - target burst capacity 211 < 0, so the activator
    # has been in the path all along ("NOTE: this period might actually be 0", config-
    # autoscaler): ProxyFor >= grace and the pod goes as soon as the PA is inactive.
    results = run(Kpa(), 0, 240, traffic_until_100, pods(1))
    assert all(results[t].activator_in_path for t in range(0, 241, 2))
    assert results[158].desired_pods == 1
    assert results[160].desired_pods == 0


def test_pod_retention_period_keeps_the_last_pod() -> None:
    kpa = Kpa(KpaConfig(scale_to_zero_pod_retention_period_s=90.0))
    results = run(kpa, 0, 300, traffic_until_100, pods(1))
    # Inactive at 160, then max(grace 30, retention 90) -> 250.
    assert results[248].desired_pods == 1
    assert results[250].desired_pods == 0


def test_initial_scale_one_and_idle_new_revision() -> None:
    kpa = Kpa()
    # Before metrics and before the pod is ready: the Deployment's initial-scale replicas.
    r = kpa.decide(0, 0)
    assert (r.desired_pods, r.decider_pods, r.active) == (1, -1, Active.ACTIVATING)
    # The pod becomes ready at 2 and is scraped idle: Active from 2, held at 1 for a
    # stable window (handleScaleToZero "Sleeping additionally"), then scaled to zero at 62.
    results = run(kpa, 1, 100, lambda s: 0.0 if s >= 2 else None, lambda s: 1 if s >= 2 else 0)
    assert results[2].active == Active.ACTIVE
    assert results[60].desired_pods == 1
    assert results[62].desired_pods == 0


def test_initial_scale_above_one_holds_until_reached() -> None:
    kpa = Kpa(KpaConfig(initial_scale=3))
    results = run(kpa, 0, 20, const(0.0), lambda s: 3 if s >= 10 else 1)
    assert {results[t].desired_pods for t in range(0, 9, 2)} == {3}
    assert results[8].active == Active.ACTIVATING
    assert results[10].active == Active.ACTIVE
    assert kpa.scale_target_initialized


def test_min_scale_and_max_scale_bound_the_replicas() -> None:
    floor = Kpa(KpaConfig(min_scale=2))
    results = run(floor, 0, 400, lambda s: 50.0 if s < 10 else 0.0, pods(2))
    assert {r.desired_pods for r in results.values()} == {2}
    ceiling = Kpa(KpaConfig(max_scale=4))
    results = run(ceiling, 0, 60, const(2000.0), lambda s: 1 if s < 10 else 4)
    assert results[0].decider_pods == math.ceil(2000 / 70)  # the decider asks for 29
    assert {r.desired_pods for r in results.values()} == {4}


def scaled_to_zero(config: KpaConfig) -> Kpa:
    """A new revision never called: zero replicas at 62 (see the idle test)."""
    kpa = Kpa(config)
    run(kpa, 0, 200, lambda s: 0.0 if s <= 62 else None, lambda s: 1 if s <= 62 else 0)
    assert kpa.replicas == 0
    return kpa


@pytest.mark.parametrize(("activation_scale", "expected"), [(1, 1), (3, 3)])
def test_activation_scale_from_zero(activation_scale: int, expected: int) -> None:
    kpa = scaled_to_zero(KpaConfig(activation_scale=activation_scale))
    # One request reaches the activator at 201: it reports concurrency 1 and pokes the
    # decider, which ticks at once; ceil(1/70) = 1 pod, raised to the activation scale.
    assert kpa.record(201, 1.0)
    r = kpa.decide(201, 0)
    assert r.desired_pods == expected
    assert r.active == Active.ACTIVATING and r.activator_in_path
    r = kpa.decide(210, expected)
    assert r.active == Active.ACTIVE


def test_record_pokes_only_at_zero() -> None:
    kpa = Kpa()
    kpa.record(0, 5.0)
    kpa.decide(0, 1)
    assert not kpa.record(1, 5.0)  # scale 1: the 2 s ticker suffices


def test_plain_window_average_over_partial_and_stale_windows() -> None:
    b = WindowBuckets(60.0, 1.0)
    b.record(0, 60.0)
    assert b.average(0) == 60.0  # one valid bucket
    for s in (1, 2, 3):
        b.record(s, 0.0)
    assert b.average(3) == 15.0  # four valid buckets
    # No writes for 2 s: those buckets leave the window instead of counting as zero.
    assert b.average(5) == 15.0
    assert b.average(64) == 0.0  # a whole window without data


def test_weighted_window_average_weights_recent_buckets() -> None:
    b = WindowBuckets(6.0, 1.0, weighted=True)
    for s in range(6):
        b.record(s, 10.0)
    # computeSmoothingCoeff: 1 - (1 - 0.9999)^(1/6), so a full window weighs ~0.9999.
    assert b.average(5) == pytest.approx(10.0 * 0.9999, rel=1e-6)
    early = WindowBuckets(6.0, 1.0, weighted=True)
    late = WindowBuckets(6.0, 1.0, weighted=True)
    for s in range(6):
        early.record(s, 10.0 if s < 3 else 0.0)
        late.record(s, 0.0 if s < 3 else 10.0)
    assert late.average(5) > early.average(5)
