"""The advisor's search and pick on synthetic measurements (no runtime): memory never
below the measured peak, a tighter SLO never cheaper, a heavier model never smaller,
rarer bursts never more min-scale, the pruning exact, no SLO-meeting candidate an error.
Simulated time only; every measurement and workload is seeded."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from kindling.advisor.measurements import LoadPoint, Measurement, RuntimeSetting, SettingResult
from kindling.advisor.pick import NoCandidateMeetsSlo, pick
from kindling.advisor.search import (
    BOUND,
    DOMINATED,
    OVER_SLO,
    AdviceError,
    Resources,
    Search,
    Space,
    candidates,
    lower_bound_pod_s,
    memory_mib_for,
    search,
)
from kindling.controller import workloads
from kindling.controller.simulate import SimOptions
from kindling.controller.workloads import Workload

CONCURRENCIES = (1, 2, 4, 8, 16)
BATCHES = ((1, 0.0), (8, 2.0))


def measurement(
    model: str = "mobilenet_v2",
    base_ms: float = 7.0,
    rss_mib: float = 300.0,
    threads: tuple[int | None, ...] = (1, 2),
    batches: tuple[tuple[int, float], ...] = BATCHES,
    concurrencies: tuple[int, ...] = CONCURRENCIES,
    cold_start_s: tuple[float, ...] = (0.35, 0.37, 0.40),
    peak: bool = True,
    seed: int = 0,
) -> Measurement:
    """A model as the runtime behaves: a request takes base_ms / threads^0.7 alone; a batch
    of n takes (0.45 + 0.55 n) of that; c callers wait ceil(c / n) batches and the queue
    delay; each latency log-normal around that. Peak RSS grows with batch and threads."""
    rng = np.random.default_rng(seed)
    settings = []
    for t in threads:
        alone = base_ms / (t or 2) ** 0.7
        for batch, delay in batches:
            points = []
            for c in concurrencies:
                n = min(c, batch)
                mean = math.ceil(c / n) * alone * (0.45 + 0.55 * n) + (delay if n > 1 else 0.0)
                latencies = tuple(float(x) for x in mean * rng.lognormal(0.0, 0.15, 200))
                points.append(LoadPoint(c, latencies, c / mean * 1e3))
            rss = rss_mib * (1 + 0.01 * batch) + 15 * (t or 2) if peak else None
            settings.append(SettingResult(RuntimeSetting(t, batch, delay), tuple(points), rss))
    return Measurement(model, "synthetic", 32, cold_start_s, tuple(settings))


# The properties below hold for any grid and any workload: they are checked on half of
# mmpp-120 (7,500 requests in 125 s, still a dozen bursts) and, but for the pick's own test,
# on two of the three CPU fractions and two of the four margins. A search then simulates
# about 120 candidates instead of 264, each half as long: the file runs in a quarter of the
# time (it was the suite's slowest in-process file).
GRID = {"cpu_fractions": (1.0, 0.5), "margins_k": (0.0, 2.0)}


def half_mmpp() -> Workload:
    return workloads.make("mmpp-120", seed=0, duration_s=125.0)


@pytest.fixture(scope="module")
def mmpp() -> Workload:
    return half_mmpp()


@pytest.fixture(scope="module")
def at_60ms(mmpp: Workload) -> Search:
    """The default grid searched for p99 <= 60 ms: shared by the tests that only read it."""
    return search(measurement(), mmpp, Space(slo_p99_ms=60, **GRID))


def test_memory_is_the_peak_plus_headroom_and_never_below_it(mmpp: Workload) -> None:
    for peak in (0.4, 15.9, 16.0, 412.0, 1000.1):
        mib = memory_mib_for(peak)
        assert mib >= peak * 1.10 and mib % 16 == 0 and mib - peak * 1.10 < 16
    m = measurement()
    peaks = {r.setting: r.peak_rss_mib for r in m.settings}
    grid, _, _ = candidates(m, Space(slo_p99_ms=1000))
    assert grid
    for c in grid:
        assert c.resources.memory_mib >= peaks[c.setting]
        # One core per thread, or a CFS quota of a fraction of it (Space.cpu_fractions).
        assert c.resources.cpu / c.setting.threads in (1.0, 0.5, 0.25)
    advice = pick(search(m, mmpp, Space(slo_p99_ms=100, **GRID)))
    best = advice.pick.candidate
    assert best.resources.memory_mib >= peaks[best.setting]
    assert f"at max_batch_size {best.setting.max_batch_size}" in best.resources.memory_source


def test_a_setting_measured_at_a_url_takes_the_memory_given_or_the_charts() -> None:
    m = measurement(threads=(None,), batches=((1, 0.0),), peak=False)
    given = candidates(m, Space(slo_p99_ms=100, memory_mib=700, cpu=1.5))[0][0].resources
    assert (given.memory_mib, given.cpu) == (700, 1.5)
    assert "--memory" in given.memory_source and "--cpu" in given.cpu_source
    # mobilenet_v2's entry in charts/kindling/values.yaml (608Mi, bench_memory's figure);
    # CPU from modelDefaults' limit.
    chart = candidates(m, Space(slo_p99_ms=100))[0][0].resources
    assert chart.memory_mib == 608 and "the chart's mobilenet_v2 entry" in chart.memory_source
    assert chart.cpu == 2.0 and "modelDefaults" in chart.cpu_source
    with pytest.raises(AdviceError, match="--memory"):
        candidates(m, Space(slo_p99_ms=100, chart_values=None, cpu=1.0))


def test_a_cpu_quota_below_the_threads_stretches_the_measured_latencies() -> None:
    m = measurement(threads=(2,), batches=((1, 0.0),))
    (measured,) = m.settings
    grid, _, _ = candidates(m, Space(slo_p99_ms=10_000, cpu_fractions=(1.0, 0.25)))
    by_cpu = {(c.resources.cpu, c.container_concurrency): c for c in grid}
    for point in measured.points:
        full, quarter = by_cpu[2.0, point.concurrency], by_cpu[0.5, point.concurrency]
        assert full.point == point and "one core per thread" in full.resources.cpu_source
        # 0.5 cores for 2 threads: a quarter of the CPU time, each latency x4.
        stretched = [v * 4 for v in point.latencies_ms]
        assert quarter.point.latencies_ms == pytest.approx(stretched, abs=1e-3)
        assert quarter.point.throughput_rps == pytest.approx(point.throughput_rps / 4, rel=1e-3)
        assert "@0.5cpu" in quarter.label() and "sched-bwc" in quarter.resources.cpu_source


def test_the_price_is_the_requests_at_opencosts_prices() -> None:
    # OpenCost's default custom prices: $0.031611 per vCPU-hour, $0.004237 per GiB-hour.
    pod = Resources(0.5, 512, "", "")
    assert pod.price_per_s * 3600 == pytest.approx(0.5 * 0.031611 + 0.5 * 0.004237)
    # An m5.large's worth (2 vCPU, 8 GiB) for an hour: its on-demand $0.096 within 1.2 %.
    assert Resources(2.0, 8192, "", "").pricing().cost(3600) == pytest.approx(0.096, rel=0.012)
    # Every MiB counts: of two pods alike but for memory, the smaller is cheaper.
    assert Resources(0.5, 256, "", "").price_per_s < pod.price_per_s


def test_a_tighter_slo_never_yields_a_cheaper_answer(mmpp: Workload) -> None:
    m = measurement()
    costs = []
    for slo in (20.0, 40.0, 80.0, 160.0, 320.0):
        advice = pick(search(m, mmpp, Space(slo_p99_ms=slo, **GRID)))
        assert advice.pick.sim.p99_ms <= slo
        costs.append(advice.pick.cost_usd)
    assert costs == sorted(costs, reverse=True)
    assert costs[0] > costs[-1]  # the SLO matters here at all


def test_a_heavier_model_gets_at_least_as_much_cpu_and_memory(mmpp: Workload) -> None:
    # Kim CNN-like: 3 ms alone, 150 MiB; MobileNetV2-like on one core: 40 ms, 600 MiB.
    space = Space(slo_p99_ms=45, **GRID)
    light = pick(search(measurement("kim_cnn", 3.0, 150.0), mmpp, space))
    heavy = pick(search(measurement("mobilenet_v2", 40.0, 600.0), mmpp, space))
    lr, hr = light.pick.candidate.resources, heavy.pick.candidate.resources
    assert hr.cpu >= lr.cpu and hr.memory_mib >= lr.memory_mib
    assert (hr.cpu, hr.memory_mib) != (lr.cpu, lr.memory_mib)  # and the advice differs


def bursty(every_s: float, duration_s: float = 1800.0, seed: int = 0) -> Workload:
    """20 req/s with 10 s bursts of 80 req/s every `every_s`, then 120 s of silence."""
    rng = np.random.default_rng(seed)
    rate = np.full(int(duration_s), 20.0)
    for start in np.arange(every_s / 2, duration_s, every_s):
        rate[int(start) : int(start) + 10] = 80.0
    counts = rng.poisson(rate)
    arrivals = np.sort(np.repeat(np.arange(len(rate)), counts) + rng.uniform(0, 1, counts.sum()))
    return Workload(f"bursts-{every_s:g}s", arrivals, duration_s + 120.0, "synthetic bursts")


@pytest.mark.parametrize("policy", ["knative-kpa", "kindling"])
def test_rarer_bursts_yield_no_more_min_scale(policy: str) -> None:
    # One pod serves 50 req/s (20 ms), so each burst waits on pod starts (1 s).
    rng = np.random.default_rng(1)
    latencies = tuple(float(x) for x in 20.0 * rng.lognormal(0.0, 0.1, 200))
    m = Measurement(
        "m", "synthetic", 1, (1.0, 1.2, 0.9),
        (SettingResult(RuntimeSetting(1, 1, 0.0), (LoadPoint(1, latencies, 50.0),), 200.0),),
    )  # fmt: skip
    space = Space(
        slo_p99_ms=300,
        policy=policy,
        min_scales=(0, 1, 2, 3, 4),
        target_fractions=(1.0,),
        margins_k=GRID["margins_k"],
    )
    often = pick(search(m, bursty(every_s=120), space)).pick.candidate.min_scale
    rarely = pick(search(m, bursty(every_s=1800), space)).pick.candidate.min_scale
    assert rarely <= often
    if policy == "knative-kpa":  # without the pre-warm controller, only min-scale helps
        assert rarely < often


def test_no_candidate_meeting_the_slo_is_an_error(mmpp: Workload) -> None:
    m = measurement()
    # Below what one request takes alone: nothing is even simulated.
    nothing = search(m, mmpp, Space(slo_p99_ms=1.0))
    assert nothing.simulated == 0 and nothing.pruned[OVER_SLO] == nothing.considered
    with pytest.raises(NoCandidateMeetsSlo, match="lowest measured p99 is") as raised:
        pick(nothing)
    assert raised.value.exit_code == 1 and raised.value.closest is None
    # Simulated, but each burst after an idle spell waits on a 30 s pod start: no pod is
    # kept warm (min-scale 0, no controller) and none may be cold.
    cold = measurement(cold_start_s=(30.0,))
    arrivals = np.concatenate([np.linspace(100, 110, 500), np.linspace(400, 410, 500)])
    idle = Workload("idle-bursts", arrivals, 530.0, "two bursts after idle spells")
    space = Space(slo_p99_ms=1000, max_cold_ratio=0.0, policy="knative-kpa", min_scales=(0,))
    failed = search(cold, idle, space)
    assert failed.simulated > 0 and not failed.meeting()
    with pytest.raises(NoCandidateMeetsSlo, match="closest") as raised:
        pick(failed)
    assert raised.value.closest is not None and raised.value.closest.sim.cold_requests > 0


def test_pruning_keeps_the_pick_and_runners_up_of_the_full_grid(
    mmpp: Workload, at_60ms: Search
) -> None:
    pruned = at_60ms
    full = search(measurement(), mmpp, Space(slo_p99_ms=60, keep=10**6, **GRID))
    assert pruned.pruned[BOUND] > 0 and full.pruned[BOUND] == 0
    assert pruned.pruned[DOMINATED] > 0  # b8 is faster than b1 above one in flight
    advice = pick(pruned)
    labels = [o.candidate.label() for o in (advice.pick, *(r.outcome for r in advice.runners_up))]
    assert labels == [o.candidate.label() for o in full.meeting()[:4]]
    # The bound is a lower bound on every run.
    for o in full.outcomes:
        service = np.asarray(o.candidate.point.latencies_ms) / 1e3
        drawn = np.random.default_rng([0, 1]).choice(service, size=mmpp.requests)
        work = drawn[mmpp.arrivals >= SimOptions.warmup_s].sum()
        assert o.sim.pod_seconds >= lower_bound_pod_s(o.candidate, mmpp, full.space, work) - 1e-6


def test_the_pick_is_the_cheapest_and_the_runners_up_say_why(mmpp: Workload) -> None:
    steps: list[tuple[int, int]] = []
    result = search(measurement(), mmpp, Space(slo_p99_ms=60), lambda i, n, _: steps.append((i, n)))
    advice = pick(result)
    assert [i for i, _ in steps] == list(range(1, result.simulated + 1))
    assert all(i <= n for i, n in steps)
    meeting = result.meeting()
    assert advice.pick is meeting[0]
    assert all(advice.pick.cost_usd <= o.cost_usd for o in meeting)
    assert [r.outcome for r in advice.runners_up] == meeting[1:4]
    for r in advice.runners_up:
        assert "more" in r.why or "same cost" in r.why
    for f in advice.failed:
        assert "> SLO" in f.why or "cold" in f.why


def test_the_search_is_deterministic(mmpp: Workload, at_60ms: Search) -> None:
    a = at_60ms
    b = search(measurement(), mmpp, Space(slo_p99_ms=60, **GRID))
    assert [(o.candidate, o.sim.p99_ms, o.cost_usd) for o in a.outcomes] == [
        (o.candidate, o.sim.p99_ms, o.cost_usd) for o in b.outcomes
    ]


def test_a_bad_space_is_refused() -> None:
    for bad in (
        {"slo_p99_ms": 0},
        {"slo_p99_ms": 100, "policy": "keepalive-10m"},
        {"slo_p99_ms": 100, "target_fractions": (1.5,)},
        {"slo_p99_ms": 100, "max_cold_ratio": 2.0},
        {"slo_p99_ms": 100, "min_scales": (0, 12)},
    ):
        with pytest.raises(AdviceError):
            Space(**bad)  # type: ignore[arg-type]


def test_chart_values_path_is_the_repositorys() -> None:
    assert Space(slo_p99_ms=1).chart_values == (
        Path(__file__).resolve().parents[2] / "charts" / "kindling" / "values.yaml"
    )
