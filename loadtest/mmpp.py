"""A two-state Markov-modulated Poisson process (MMPP-2), calibrated to paper 001's runs.

Paper 001 took its bursty workloads from MArK (Zhang et al., USENIX ATC '19): a Poisson
process whose rate switches between a low and a high state, the sojourn in each state
exponential. Its three runs (Fig. 6) are named by their peak rate and fix a request total
and a duration: 15,000 requests in about 870 s at 40 req/s peak, 15,000 in about 250 s at
120 req/s, 18,000 in about 190 s at 200 req/s.

Calibration. The high state's rate is the named peak, so the peak is reached whenever the
process is high. The state path is drawn first, on [0, duration]; the low state's rate is
then the one that makes the path's expected total equal the paper's total. Finally the
arrivals are drawn conditioned on that total: given N arrivals, an inhomogeneous Poisson
process's times are i.i.d. with density proportional to its rate, so each state segment
gets a multinomial share of N, spread uniformly inside it. The totals and the duration
are therefore exact, the rates per state are the model's, and a seed fixes everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kindling.loadtest.schedule import Arrival

HIGH, LOW = "high", "low"


@dataclass(frozen=True)
class MMPPSpec:
    peak_rate: float
    """Requests/s in the high state: the rate that names the workload."""
    requests: int
    """Arrivals in the whole run (paper 001's total)."""
    duration_s: float
    """Length of the run (paper 001's duration)."""
    high_fraction: float
    """Long-run share of time in the high state: mean high sojourn / mean cycle."""
    cycles: float
    """Mean number of low-high cycles in the run: sets the mean sojourn lengths."""

    @property
    def mean_rate(self) -> float:
        return self.requests / self.duration_s

    @property
    def nominal_low_rate(self) -> float:
        """The low rate at the stationary high share; each path's own differs a little."""
        return (self.mean_rate - self.high_fraction * self.peak_rate) / (1 - self.high_fraction)


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    state: str
    rate: float


def state_path(spec: MMPPSpec, rng: np.random.Generator) -> list[tuple[float, float, str]]:
    """Alternating exponential sojourns on [0, duration], the first state stationary."""
    cycle = spec.duration_s / spec.cycles
    mean = {HIGH: spec.high_fraction * cycle, LOW: (1 - spec.high_fraction) * cycle}
    state = HIGH if rng.random() < spec.high_fraction else LOW
    path: list[tuple[float, float, str]] = []
    t = 0.0
    while t < spec.duration_s:
        end = min(spec.duration_s, t + rng.exponential(mean[state]))
        path.append((t, end, state))
        t, state = end, LOW if state == HIGH else HIGH
    return path


def calibrated_segments(
    spec: MMPPSpec, rng: np.random.Generator, tolerance: float = 0.25, attempts: int = 10000
) -> list[Segment]:
    """A state path whose calibrated low rate is within `tolerance` of the nominal one.

    With a handful of cycles per run the time spent high varies a lot from path to path,
    and so would the low rate that restores the total (from near zero to near the peak).
    Paths outside the tolerance are redrawn from the same generator: the run keeps the
    burst ratio the spec describes, and the result stays a function of the seed.
    """
    nominal = spec.nominal_low_rate
    for _ in range(attempts):
        path = state_path(spec, rng)
        high_s = sum(end - start for start, end, state in path if state == HIGH)
        low_s = spec.duration_s - high_s
        if high_s <= 0 or low_s <= 0:
            continue
        low_rate = (spec.requests - spec.peak_rate * high_s) / low_s
        if abs(low_rate - nominal) <= tolerance * nominal and low_rate < spec.peak_rate:
            rates = {HIGH: spec.peak_rate, LOW: low_rate}
            return [Segment(s, e, state, rates[state]) for s, e, state in path]
    raise ValueError(f"no MMPP path near the nominal low rate for {spec} in {attempts} tries")


def mmpp_arrivals(spec: MMPPSpec, seed: int) -> tuple[list[Arrival], list[Segment]]:
    """Exactly `spec.requests` arrivals on [0, duration], and the state path behind them."""
    rng = np.random.default_rng(seed)
    segments = calibrated_segments(spec, rng)
    weights = np.array([seg.rate * (seg.end_s - seg.start_s) for seg in segments])
    counts = rng.multinomial(spec.requests, weights / weights.sum())
    arrivals: list[Arrival] = []
    for seg, n in zip(segments, counts, strict=True):
        times = rng.uniform(seg.start_s, seg.end_s, size=n)
        arrivals += [Arrival(float(t), seg.state) for t in times]
    arrivals.sort(key=lambda a: a.offset_s)
    return arrivals, segments
