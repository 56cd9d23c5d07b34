"""The papers' workloads as load shapes, each with its stage table in class attributes.

Two families, after how the papers drove their servers:

- open loop (`OpenLoopShape`): an arrival schedule fixed before the run (MMPP, step,
  cold/warm, constant, bursts after silence); Locust runs it through one dispatcher user
  (`driver.py`);
- closed loop (`ClosedLoopShape`): C callers, each sending its next request when the last
  is answered (paper 000's fixed concurrency); Locust runs it as C users.

Every shape ends with `tail_s` of zero load, so a scale-to-zero deployment is seen
scaling down before the run stops. `time_scale` multiplies every duration of the
timeline (arrival offsets, levels, gaps, the tail) and leaves open-loop request counts
as they are: `--time-scale 0.1` sends paper 001's 15,000 requests in 87 s instead of 870.

This module is pure (no Locust, no gevent) so the tests can check the shapes in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from kindling.loadtest.mmpp import MMPPSpec, mmpp_arrivals
from kindling.loadtest.schedule import Arrival, scaled, uniform_arrivals

# Knative's autoscaler removes the last pod about 90 s after the last request (stable
# window 60 s + scale-to-zero-grace-period 30 s, knative-serving config-autoscaler
# defaults). 120 s leaves room for the pod's termination, for the tail and for
# paper 002's idle gaps, so each request after a gap finds zero pods.
SCALE_TO_ZERO_S = 120.0


class Shape:
    """A workload's timeline. Class attributes are its stage table; an instance may
    override any of them (`StepShape(steps=3)`), which the report then prints."""

    name: ClassVar[str] = ""
    closed_loop: ClassVar[bool] = False
    tail_s: float = SCALE_TO_ZERO_S
    """Zero load after the last request: scale-down made visible."""

    def __init__(self, time_scale: float = 1.0, **overrides: Any) -> None:
        if time_scale <= 0:
            raise ValueError(f"time scale must be > 0, got {time_scale}")
        for key, value in overrides.items():
            if key.startswith("_") or key not in self.parameter_names():
                known = ", ".join(self.parameter_names())
                raise ValueError(f"{self.name} has no parameter {key!r} (known: {known})")
            setattr(self, key, type(getattr(type(self), key))(value))
        self.time_scale = time_scale

    @classmethod
    def parameter_names(cls) -> list[str]:
        """The stage table's fields: annotated class attributes, base classes first."""
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            for key, hint in vars(klass).get("__annotations__", {}).items():
                if not str(hint).startswith("ClassVar") and key not in names:
                    names.append(key)
        return names

    def parameters(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.parameter_names()}

    def describe(self) -> str:
        return (self.__doc__ or self.name).strip().splitlines()[0]


Windows = dict[str, list[tuple[float, float]]]
"""Stage -> the [start, end) intervals of the timeline it covers (MMPP states alternate)."""


@dataclass(frozen=True)
class OpenLoopPlan:
    """What an open-loop run sends, on the scaled timeline."""

    arrivals: list[Arrival]
    stage_windows: Windows
    """Where each stage lies on the timeline, for its offered and achieved rates."""
    end_s: float
    """When the run stops: the last arrival plus the scale-down tail."""


class OpenLoopShape(Shape):
    def timeline(self, rng: np.random.Generator) -> tuple[list[Arrival], Windows]:
        """Arrivals and stage windows on the unscaled timeline."""
        raise NotImplementedError

    def plan(self, seed: int) -> OpenLoopPlan:
        arrivals, windows = self.timeline(np.random.default_rng(seed))
        f = self.time_scale
        arrivals = scaled(arrivals, f)
        last = arrivals[-1].offset_s if arrivals else 0.0
        return OpenLoopPlan(
            arrivals=arrivals,
            stage_windows={k: [(a * f, b * f) for a, b in w] for k, w in windows.items()},
            end_s=last + self.tail_s * f,
        )


class MMPPShape(OpenLoopShape):
    """Paper 001's bursty load: a two-state MMPP (after MArK), calibrated to Fig. 6's runs."""

    peak_rate: float = 40.0
    requests: int = 15000
    duration_s: float = 870.0
    high_fraction: float = 0.25
    cycles: float = 6.0

    def spec(self) -> MMPPSpec:
        return MMPPSpec(
            self.peak_rate, self.requests, self.duration_s, self.high_fraction, self.cycles
        )

    def timeline(self, rng: np.random.Generator) -> tuple[list[Arrival], Windows]:
        seed = int(rng.integers(2**63))
        arrivals, segments = mmpp_arrivals(self.spec(), seed)
        windows: Windows = {}
        for seg in segments:
            windows.setdefault(seg.state, []).append((seg.start_s, seg.end_s))
        return arrivals, windows


class MMPP40Shape(MMPPShape):
    """Paper 001, Fig. 6: 15,000 requests in about 870 s, 40 req/s at peak."""

    name = "mmpp-40"
    # Mean 17.2 req/s: a quarter of the time at the 40 req/s peak puts the low state
    # near 10 req/s, a 4:1 burst like MArK's traces.
    peak_rate = 40.0
    requests = 15000
    duration_s = 870.0
    high_fraction = 0.25


class MMPP120Shape(MMPPShape):
    """Paper 001, Fig. 6: 15,000 requests in about 250 s, 120 req/s at peak."""

    name = "mmpp-120"
    # Mean 60 req/s: a third of the time at 120 req/s puts the low state near 30 req/s.
    peak_rate = 120.0
    requests = 15000
    duration_s = 250.0
    high_fraction = 1 / 3


class MMPP200Shape(MMPPShape):
    """Paper 001, Fig. 6: 18,000 requests in about 190 s, 200 req/s at peak."""

    name = "mmpp-200"
    # Mean 94.7 req/s: 30 % of the time at 200 req/s puts the low state near 50 req/s.
    peak_rate = 200.0
    requests = 18000
    duration_s = 190.0
    high_fraction = 0.3


class StepShape(OpenLoopShape):
    """Paper 002's step load: 10 parallel requests, then 10 req/s more every 10 s."""

    name = "step"
    # Paper 002 starts with 10 requests sent in parallel and adds 10 req/s every 10 s.
    # Each second of a stage sends its rate as one burst of parallel requests, which is
    # how "N parallel requests per second" reads; `steps` sets where the ramp stops.
    start_rate: float = 10.0
    rate_step: float = 10.0
    step_s: float = 10.0
    steps: int = 10

    def stage_label(self, k: int) -> str:
        return f"{self.start_rate + k * self.rate_step:g} req/s"

    def timeline(self, rng: np.random.Generator) -> tuple[list[Arrival], Windows]:
        arrivals: list[Arrival] = []
        windows: Windows = {}
        for k in range(self.steps):
            rate = self.start_rate + k * self.rate_step
            label = self.stage_label(k)
            start = k * self.step_s
            windows[label] = [(start, start + self.step_s)]
            for second in np.arange(0.0, self.step_s, 1.0):
                arrivals += [Arrival(start + float(second), label)] * round(rate)
        return arrivals, windows


class ConstantShape(OpenLoopShape):
    """Open-loop Poisson arrivals at one rate: a steady baseline or a CI smoke load."""

    name = "constant"
    rate: float = 10.0
    duration_s: float = 60.0

    def timeline(self, rng: np.random.Generator) -> tuple[list[Arrival], Windows]:
        label = f"{self.rate:g} req/s"
        count = round(self.rate * self.duration_s)
        arrivals = uniform_arrivals(rng, count, 0.0, self.duration_s, label)
        return arrivals, {label: [(0.0, self.duration_s)]}


class ColdWarmShape(OpenLoopShape):
    """Paper 002's cold/warm series: requests after idle gaps, then 25 warm ones."""

    name = "cold-warm"
    # Paper 002 separates cold requests by idle periods longer than the platform keeps
    # an idle instance, then measures a warm series: one request discarded (it pays the
    # cold start), then 25 at 1 s intervals. Every cold request, the first included,
    # follows a full gap, so the pod woken by the client's metadata probe (or by an
    # earlier run) has scaled to zero before it is sent.
    cold_requests: int = 5
    gap_s: float = SCALE_TO_ZERO_S
    warm_requests: int = 25
    warm_interval_s: float = 1.0

    def timeline(self, rng: np.random.Generator) -> tuple[list[Arrival], Windows]:
        gap = self.gap_s
        arrivals = [Arrival(gap * (i + 1), "cold") for i in range(self.cold_requests)]
        warm_start = gap * (self.cold_requests + 1)
        arrivals.append(Arrival(warm_start, "warm-up (discarded)", measured=False))
        arrivals += [
            Arrival(warm_start + self.warm_interval_s * (i + 1), "warm")
            for i in range(self.warm_requests)
        ]
        warm_end = warm_start + self.warm_interval_s * (self.warm_requests + 1)
        windows: Windows = {
            "cold": [(0.0, warm_start)],
            "warm-up (discarded)": [(warm_start, warm_start + self.warm_interval_s)],
            "warm": [(warm_start + self.warm_interval_s, warm_end)],
        }
        return arrivals, windows


class BurstsShape(OpenLoopShape):
    """Bursts after silence, each long enough for scale to zero, at a fixed period.

    Poisson arrivals at `rate` for `burst_s`, each burst after `gap_s` of nothing: a batch
    job or a cron-driven client."""

    name = "bursts"
    # Paper 001's advice is pre-warming before bursts; a burst after a silence that
    # emptied the pool is the case it is for. The gap is the scale-to-zero time (above),
    # so every burst starts at zero pods unless something pre-warmed them; the period
    # repeats, so a forecaster has something to learn.
    bursts: int = 3
    gap_s: float = SCALE_TO_ZERO_S
    rate: float = 20.0
    burst_s: float = 30.0

    def timeline(self, rng: np.random.Generator) -> tuple[list[Arrival], Windows]:
        arrivals: list[Arrival] = []
        windows: Windows = {}
        count = round(self.rate * self.burst_s)
        for k in range(self.bursts):
            start = self.gap_s + k * (self.gap_s + self.burst_s)
            label = f"burst {k + 1}"
            arrivals += uniform_arrivals(rng, count, start, start + self.burst_s, label)
            windows[label] = [(start, start + self.burst_s)]
        return arrivals, windows


@dataclass(frozen=True)
class Level:
    """One closed-loop stage: `users` callers from start to end (scaled seconds)."""

    start_s: float
    end_s: float
    users: int
    label: str


class ClosedLoopShape(Shape):
    """Paper 000's fixed concurrency: C callers back to back, for each C in `levels`."""

    name = "concurrency"
    closed_loop = True
    # Paper 000 (Kim CNN on Lambda, Table 1) ran concurrency 5, 10, 20 and 30.
    levels: tuple[int, ...] = (5, 10, 20, 30)
    level_s: float = 60.0

    def __init__(self, time_scale: float = 1.0, **overrides: Any) -> None:
        levels = overrides.pop("levels", None)
        super().__init__(time_scale, **overrides)
        if isinstance(levels, str | int):  # from --set levels=5,10 or levels=5
            levels = str(levels).split(",")
        if levels is not None:
            self.levels = tuple(int(c) for c in levels)
        if not self.levels or min(self.levels) < 1:
            raise ValueError(f"concurrency levels must be >= 1, got {self.levels}")

    @staticmethod
    def label(users: int) -> str:
        return f"c={users}"

    def stages(self) -> list[Level]:
        span = self.level_s * self.time_scale
        stages = [
            Level(i * span, (i + 1) * span, c, self.label(c)) for i, c in enumerate(self.levels)
        ]
        end = len(stages) * span
        stages.append(Level(end, end + self.tail_s * self.time_scale, 0, "scale-down"))
        return stages

    def level_at(self, t: float) -> Level | None:
        """The stage at `t` seconds into the run; None once the tail is over."""
        for level in self.stages():
            if t < level.end_s:
                return level
        return None


SHAPES: dict[str, type[Shape]] = {
    shape.name: shape
    for shape in (
        MMPP40Shape,
        MMPP120Shape,
        MMPP200Shape,
        StepShape,
        ClosedLoopShape,
        ColdWarmShape,
        ConstantShape,
        BurstsShape,
    )
}


def make_shape(name: str, time_scale: float = 1.0, **overrides: Any) -> Shape:
    try:
        shape = SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r} (known: {', '.join(SHAPES)})") from None
    return shape(time_scale, **overrides)
