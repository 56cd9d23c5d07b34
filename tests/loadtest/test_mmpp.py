"""Paper 001's MMPP workloads: totals, durations and per-state rates, with fixed seeds."""

from __future__ import annotations

import numpy as np
import pytest

from kindling.loadtest.mmpp import HIGH, LOW, MMPPSpec, mmpp_arrivals
from kindling.loadtest.shapes import MMPP40Shape, MMPP120Shape, MMPP200Shape, make_shape

# Paper 001, Fig. 6: (peak req/s, requests, seconds).
PAPER = {"mmpp-40": (40, 15000, 870), "mmpp-120": (120, 15000, 250), "mmpp-200": (200, 18000, 190)}
SEEDS = (0, 1, 2, 3)


@pytest.mark.parametrize("name", PAPER)
@pytest.mark.parametrize("seed", SEEDS)
def test_totals_and_duration_match_the_paper(name, seed):
    _, requests, duration = PAPER[name]
    plan = make_shape(name).plan(seed)
    offsets = np.array([a.offset_s for a in plan.arrivals])
    assert len(offsets) == requests
    assert offsets.min() >= 0 and offsets.max() <= duration
    assert offsets.max() > 0.95 * duration  # "about 870 s": the load fills the run
    assert np.all(np.diff(offsets) >= 0)


def _state_rates(spec: MMPPSpec, seed: int) -> dict[str, float]:
    arrivals, segments = mmpp_arrivals(spec, seed)
    time_in = {HIGH: 0.0, LOW: 0.0}
    for seg in segments:
        time_in[seg.state] += seg.end_s - seg.start_s
    counts = {HIGH: 0, LOW: 0}
    for a in arrivals:
        counts[a.stage] += 1
    return {state: counts[state] / time_in[state] for state in counts}


@pytest.mark.parametrize("shape", [MMPP40Shape, MMPP120Shape, MMPP200Shape])
@pytest.mark.parametrize("seed", SEEDS)
def test_peak_rate_is_reached_in_the_high_state(shape, seed):
    spec = shape().spec()
    rates = _state_rates(spec, seed)
    # Poisson counts over tens of seconds at the peak: within 6 % of it.
    assert rates[HIGH] == pytest.approx(spec.peak_rate, rel=0.06)
    assert rates[LOW] == pytest.approx(spec.nominal_low_rate, rel=0.3)
    assert rates[LOW] < 0.8 * spec.peak_rate


@pytest.mark.parametrize("shape", [MMPP40Shape, MMPP120Shape, MMPP200Shape])
def test_one_second_windows_in_the_high_state_are_poisson_at_the_peak(shape):
    spec = shape().spec()
    arrivals, segments = mmpp_arrivals(spec, seed=7)
    offsets = np.array([a.offset_s for a in arrivals])
    counts = []
    for seg in segments:
        if seg.state == HIGH:
            for start in np.arange(np.ceil(seg.start_s), np.floor(seg.end_s) - 1):
                counts.append(np.count_nonzero((offsets >= start) & (offsets < start + 1)))
    counts_ = np.array(counts, dtype=float)
    assert len(counts_) >= 20
    # Mean within 4 standard errors of the peak; dispersion near Poisson's 1.
    stderr = np.sqrt(spec.peak_rate / len(counts_))
    assert abs(counts_.mean() - spec.peak_rate) < 4 * stderr
    assert 0.6 < counts_.var() / counts_.mean() < 1.5


@pytest.mark.parametrize("name", PAPER)
def test_the_whole_run_is_burstier_than_poisson(name):
    plan = make_shape(name).plan(0)
    offsets = np.array([a.offset_s for a in plan.arrivals])
    counts = np.histogram(offsets, bins=int(np.ceil(offsets.max())))[0]
    assert counts.max() >= 0.9 * PAPER[name][0]
    assert counts.var() / counts.mean() > 3  # a Poisson process at one rate gives 1


def test_seeded_runs_are_reproducible():
    a = [x.offset_s for x in make_shape("mmpp-120").plan(11).arrivals]
    b = [x.offset_s for x in make_shape("mmpp-120").plan(11).arrivals]
    c = [x.offset_s for x in make_shape("mmpp-120").plan(12).arrivals]
    assert a == b
    assert a != c


def test_time_scale_compresses_the_timeline_at_the_same_count():
    full = make_shape("mmpp-200").plan(3)
    fast = make_shape("mmpp-200", time_scale=0.1).plan(3)
    assert len(fast.arrivals) == len(full.arrivals) == 18000
    np.testing.assert_allclose(
        [a.offset_s for a in fast.arrivals], [a.offset_s * 0.1 for a in full.arrivals]
    )
    assert fast.end_s == pytest.approx(full.end_s * 0.1)
