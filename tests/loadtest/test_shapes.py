"""Step, constant, cold/warm, bursts and concurrency shapes: counts and rates per window."""

from __future__ import annotations

import numpy as np
import pytest

from kindling.loadtest.schedule import counts_per_window
from kindling.loadtest.shapes import (
    SCALE_TO_ZERO_S,
    SHAPES,
    ClosedLoopShape,
    ColdWarmShape,
    OpenLoopShape,
    StepShape,
    make_shape,
)


def offsets(plan) -> np.ndarray:
    return np.array([a.offset_s for a in plan.arrivals])


def test_step_starts_at_10_and_adds_10_per_second_every_10_seconds():
    plan = StepShape().plan(0)
    counts = counts_per_window(offsets(plan), 1.0, 100.0)
    expected = np.repeat(np.arange(10, 101, 10), 10)  # paper 002: +10 req/s every 10 s
    np.testing.assert_array_equal(counts, expected)
    assert len(plan.arrivals) == 5500
    # Each second's requests leave together: "10 parallel requests" at t = 0.
    assert np.count_nonzero(offsets(plan) == 0.0) == 10
    assert plan.stage_windows["30 req/s"] == [(20.0, 30.0)]


def test_step_at_time_scale_keeps_counts_per_stage():
    plan = StepShape(time_scale=0.1, steps=3).plan(0)
    counts = counts_per_window(offsets(plan), 0.1, 3.0)
    np.testing.assert_array_equal(counts, np.repeat([10, 20, 30], 10))
    assert plan.end_s == pytest.approx(2.9 + SCALE_TO_ZERO_S * 0.1)


def test_constant_rate_is_poisson_with_an_exact_total():
    plan = make_shape("constant", rate=50.0, duration_s=200.0).plan(5)
    counts = counts_per_window(offsets(plan), 1.0, 200.0)
    assert counts.sum() == 10000
    assert counts.mean() == pytest.approx(50.0)
    assert 0.7 < counts.var() / counts.mean() < 1.3  # Poisson: variance = mean
    gaps = np.diff(offsets(plan))
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.1)  # exponential gaps


def test_bursts_follow_silences_long_enough_to_reach_zero():
    plan = make_shape("bursts", bursts=2, rate=10.0, burst_s=20.0).plan(3)
    gap = SCALE_TO_ZERO_S
    assert plan.stage_windows == {
        "burst 1": [(gap, gap + 20.0)],
        "burst 2": [(2 * gap + 20.0, 2 * gap + 40.0)],
    }
    for label, [(start, end)] in plan.stage_windows.items():
        inside = [a.offset_s for a in plan.arrivals if a.stage == label]
        assert len(inside) == 200 and start <= min(inside) and max(inside) < end
    assert plan.end_s == pytest.approx(max(offsets(plan)) + SCALE_TO_ZERO_S)


def test_cold_warm_series_follows_paper_002():
    plan = ColdWarmShape(cold_requests=3, gap_s=150.0).plan(0)
    cold = [a for a in plan.arrivals if a.stage == "cold"]
    assert [a.offset_s for a in cold] == [150.0, 300.0, 450.0]  # each after a full gap
    discarded = [a for a in plan.arrivals if not a.measured]
    assert len(discarded) == 1 and discarded[0].offset_s == 600.0
    warm = [a.offset_s for a in plan.arrivals if a.stage == "warm"]
    assert len(warm) == 25
    np.testing.assert_allclose(np.diff([discarded[0].offset_s, *warm]), 1.0)
    assert plan.end_s == warm[-1] + SCALE_TO_ZERO_S


def test_cold_warm_default_gap_outlasts_knative_scale_to_zero():
    # Knative: 60 s stable window + 30 s scale-to-zero grace before the last pod goes.
    assert ColdWarmShape().gap_s > 90.0


def test_concurrency_sweep_levels_and_tail():
    shape = ClosedLoopShape(time_scale=0.5)
    stages = shape.stages()
    assert [s.users for s in stages] == [5, 10, 20, 30, 0]  # paper 000, Table 1, then 0
    assert stages[1].start_s == 30.0 and stages[1].end_s == 60.0
    assert shape.level_at(45.0).users == 10
    assert shape.level_at(stages[-1].end_s - 0.01).users == 0
    assert shape.level_at(stages[-1].end_s + 0.01) is None


def test_concurrency_levels_from_any_list():
    assert ClosedLoopShape(levels=[1, 16]).levels == (1, 16)
    assert ClosedLoopShape(levels="2,4,8").levels == (2, 4, 8)  # --set levels=2,4,8
    with pytest.raises(ValueError):
        ClosedLoopShape(levels=[0])


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_shape_runs_down_to_zero(name):
    shape = make_shape(name, time_scale=0.01)
    if isinstance(shape, OpenLoopShape):
        plan = shape.plan(0)
        assert plan.end_s - plan.arrivals[-1].offset_s == pytest.approx(shape.tail_s * 0.01)
    else:
        assert shape.stages()[-1].users == 0


def test_unknown_parameters_and_workloads_are_refused():
    with pytest.raises(ValueError, match="no parameter"):
        make_shape("step", rate=3)
    with pytest.raises(ValueError, match="unknown workload"):
        make_shape("mmpp-90")
    assert StepShape(steps="4").steps == 4  # --set values arrive as strings or numbers


def test_stage_tables_are_class_attributes():
    assert StepShape.start_rate == 10.0 and StepShape.rate_step == 10.0
    assert StepShape(steps=2).parameters()["steps"] == 2
    assert StepShape.steps == 10  # an instance's override leaves the class alone
