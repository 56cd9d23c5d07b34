"""Open-loop arrival schedules: when each request is sent, decided before the run starts.

An arrival schedule is what makes a load test open loop: the client sends request i at
offset i whether or not earlier requests have been answered, so a slow server cannot
lower the offered load (it only lowers the achieved rate, which the report shows).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True, slots=True)
class Arrival:
    """One scheduled request."""

    offset_s: float
    """Seconds after the run's start at which the request is sent."""
    stage: str
    """The workload's stage it belongs to ("high", "20 req/s", "cold", ...)."""
    measured: bool = True
    """False for requests sent only to change the server's state (paper 002 discards the
    first request of its warm series); kept in the CSV, left out of every statistic."""


def scaled(arrivals: Iterable[Arrival], factor: float) -> list[Arrival]:
    """The same arrivals on a timeline compressed (factor < 1) or stretched by `factor`."""
    return [replace(a, offset_s=a.offset_s * factor) for a in arrivals]


def uniform_arrivals(
    rng: np.random.Generator, count: int, start_s: float, end_s: float, stage: str
) -> list[Arrival]:
    """`count` arrivals of a Poisson process on [start, end), conditioned on the count.

    Given their number, a Poisson process's arrival times are i.i.d. uniform on the
    interval, so drawing them this way keeps the total exact (reproducible request
    counts) while the gaps stay exponential-like, as an open-loop client's should.
    """
    times = np.sort(rng.uniform(start_s, end_s, size=count))
    return [Arrival(float(t), stage) for t in times]


def counts_per_window(offsets: Sequence[float], window_s: float, end_s: float) -> np.ndarray:
    """Arrivals in each window [k*w, (k+1)*w) up to end_s: the offered rate's raw series."""
    bins = max(1, int(np.ceil(end_s / window_s)))
    counts, _ = np.histogram(
        np.asarray(offsets, dtype=float), bins=bins, range=(0, bins * window_s)
    )
    return counts
