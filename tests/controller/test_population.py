"""The synthetic population and the single-function variants (population.py, workloads.py),
the population's sums (sim_population.py), and the engine's shortcuts: idle seconds skipped,
a search that stops at its first cold request, a pod start drawn from samples. Simulated
time only; everything is seeded."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kindling.controller import population, profiles, simcli, workloads
from kindling.controller.baselines import KeepAlive
from kindling.controller.sim_pods import Engine
from kindling.controller.sim_population import run_population
from kindling.controller.simulate import (
    POLICIES,
    SimOptions,
    make_engine,
    make_policy,
    run_policy,
)


def test_the_population_follows_the_published_shares() -> None:
    """Shahrad et al. ATC'20: 15.6 % timers (Fig. 3), and 45 % of the rest invoked at most
    hourly on average (Fig. 5a); the same seed is the same population."""
    pop = population.population(3000, seed=5)
    assert pop == population.population(3000, seed=5)
    assert pop != population.population(3000, seed=6)
    classes = Counter(f.cls for f in pop)
    assert set(classes) == set(population.CLASSES)
    assert classes["timer"] / len(pop) == pytest.approx(0.156, abs=0.03)
    others = [f for f in pop if f.cls != "timer"]
    assert classes["rare"] / len(others) == pytest.approx(0.45, abs=0.04)
    assert max(f.daily for f in pop) <= population.MAX_DAILY


def test_a_function_is_the_same_each_day_and_its_arrivals_are_not() -> None:
    pop = population.population(200, seed=1)
    timer = next(f for f in pop if f.cls == "timer")
    counts = timer.counts(0)
    assert counts.sum() == population.DAY_MIN // timer.period_min
    assert (np.flatnonzero(counts) % timer.period_min == timer.phase_min % timer.period_min).all()
    bursty = next(f for f in pop if f.cls == "bursty")
    assert (bursty.counts(0) == bursty.counts(0)).all()
    assert (bursty.counts(0) != bursty.counts(1)).any()
    wake = population.Function(7, "wake", "http", 2000.0, 1)
    day = wake.counts(0)
    assert day.sum() > 0 and (day == 0).mean() > 0.8  # long silences, short bursts


def test_the_trace_file_replays_a_function(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pop = population.population(5, seed=2)
    path = tmp_path / "day.csv"
    population.write_trace(pop, path, day=4)
    rows = workloads.parse_trace(path)
    assert [r.function for r in rows] == [f.name for f in pop]
    assert all((r.counts == f.counts(4)).all() for r, f in zip(rows, pop, strict=True))
    busiest = max(pop, key=lambda f: f.counts(4).sum())
    argv = ["--workload", "trace", "--trace", str(path), "--function", busiest.name]
    assert simcli.main([*argv, "--policy", "knative-kpa", "--json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["requests"] + 0 <= busiest.counts(4).sum()  # those after the warm-up count


def test_variants_are_named_workloads() -> None:
    for name in workloads.VARIANTS:
        w = workloads.make(name, seed=1, duration_s=7200.0)
        assert w.remake is not None and w.remake(2).end_s == w.end_s
    assert workloads.make("timer-15m", 1, 7200.0).requests == 8
    calm = workloads.make("diurnal", 1, 3600.0, burst_factor=2.0)
    wild = workloads.make("diurnal", 1, 3600.0, burst_factor=8.0)
    assert wild.offered_rps is not None and calm.offered_rps is not None
    assert wild.offered_rps.max() > 3 * calm.offered_rps.max() / 2
    with pytest.raises(ValueError, match="bursts"):
        workloads.make("diurnal", 1, 3600.0, burst_s=(60.0, 10.0))


def test_population_sums_are_the_functions_sums() -> None:
    """Summed per policy and per class; one process or two, the same figures."""
    profile = profiles.load()
    pop = population.population(6, seed=3)
    names = ["knative-kpa", "kindling"]
    opts = SimOptions(pod_overhead_s=0.3)
    one = run_population(names, pop, profile, 0, opts, duration_s=7200.0, jobs=1)
    two = run_population(names, pop, profile, 0, opts, duration_s=7200.0, jobs=2)
    assert one.to_json() == two.to_json()
    for name in names:
        alone = [
            run_policy(name, workloads.function_workload(f, 0, 7200.0), profile, 0, opts)
            for f in pop
        ]
        total = one.total[name]
        assert total.cold_requests == sum(r.cold_requests for r in alone)
        assert total.pod_seconds == pytest.approx(sum(r.pod_seconds for r in alone))
        assert total.requests == sum(r.requests for r in alone)
        assert sum(c[name].functions for c in one.by_class.values()) == len(pop)


def test_the_population_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "pop.csv"
    argv = ["--workload", "population", "--functions", "3", "--duration", "3600"]
    assert simcli.main([*argv, "--jobs", "1", "--json", "--write-trace", str(trace)]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["policy"] for d in docs] == list(POLICIES)
    for doc in docs:
        assert doc["functions"] == 3 and doc["by_class"]
        assert {"cold_requests", "slo_violations", "p99_ms", "pods_started", "pod_seconds"} <= set(
            doc
        )
    assert len(workloads.parse_trace(trace)) == 3
    assert simcli.main([*argv, "--jobs", "1", "--policy", "kindling"]) == 0
    assert "population: 3 synthetic functions" in capsys.readouterr().out
    assert simcli.main([*argv, "--pareto", str(tmp_path)]) == 2


class EverySecond:
    """A policy without resume_at: the engine calls it every second, skipping nothing."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[attr-defined]

    def on_second(self, engine: Engine, t: float) -> None:
        self.inner.on_second(engine, t)  # type: ignore[attr-defined]

    def on_arrival(self, engine: Engine, t: float) -> None:
        self.inner.on_arrival(engine, t)  # type: ignore[attr-defined]


@pytest.mark.parametrize("workload", ["rare", "timer-15m", "wake"])
@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "kpa-static-floor"])
def test_skipping_idle_seconds_changes_nothing(workload: str, policy: str) -> None:
    profile = profiles.load()
    w = workloads.make(workload, seed=2, duration_s=6 * 3600.0)
    opts = SimOptions(pod_overhead_s=0.3)
    runs = []
    for wrap in (False, True):
        e = make_engine(w, profile, 2, opts)
        p = make_policy(policy, profile, opts)
        e.run(EverySecond(p) if wrap else p)
        tl = e.timeline
        runs.append(
            (e.cold.tolist(), e.start.tolist(), e.pod_seconds(), tl.pods, tl.ready_pods, tl.cold)
        )
    assert runs[0] == runs[1]


def test_a_search_stops_at_its_first_cold_request() -> None:
    profile = profiles.load()
    w = workloads.make("timer-5m", seed=1, duration_s=7200.0)
    full = run_policy("knative-kpa", w, profile, 1)
    cut = run_policy("knative-kpa", w, profile, 1, stop_on_cold=True)
    assert full.cold_requests > 1 and cut.cold_requests == 1 and cut.requests < full.requests


def test_each_pod_draws_its_start_from_the_samples() -> None:
    """Two measured pod starts, 1 s and 3 s: each cold request waits the runtime's start plus
    one of them, and both occur."""
    arrivals = np.arange(0.0, 40 * 400.0, 400.0) + 1.0
    e = Engine(
        arrivals,
        np.full(len(arrivals), 0.01),
        arrivals[-1] + 200,
        np.random.default_rng(0),
        np.array([0.5]),
        pod_overhead_s=np.array([1.0, 3.0]),
    )
    e.run(KeepAlive(10.0), 0)  # a pod per request at once, gone between them
    waits = sorted({round(float(x), 6) for x in e.latencies_s() - 0.01})
    assert waits == [1.5, 3.5]
