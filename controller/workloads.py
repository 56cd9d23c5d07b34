"""Arrival generators for the simulator, all behind one call: `make(name, seed, ...)`.

Every generator returns a `Workload`: sorted arrival times (seconds from 0, a numpy
array), the end of the simulated window and, where the generator knows it, the offered
rate per second (for the plots). A seed fixes everything.

- `mmpp-40`, `mmpp-120`, `mmpp-200`: paper 001's bursty runs, drawn by loadtest.mmpp
  from loadtest.shapes' specs (the same generator the load tests send);
- `step`: loadtest.shapes' StepShape (paper 002: 10 parallel requests a second, 10 more
  every 10 s);
- `bursts`: loadtest.shapes' BurstsShape (bursts of Poisson arrivals, each after a silence
  long enough for scale to zero), seed for seed the arrivals `kindling loadtest run
  --workload bursts` sends, so a real run and its simulation see the same requests;
- `diurnal`: a daily curve with bursts, compressed in time (below);
- `trace`: per-minute invocation counts in the Azure Functions 2019 trace format
  (Shahrad et al., ATC'20; `HashOwner,HashApp,HashFunction,Trigger,1..1440`), each minute
  expanded to a Poisson process conditioned on its count.

Every workload ends with loadtest.shapes' SCALE_TO_ZERO_S (120 s) of silence, so a
policy's scale-down is inside the window whose pod-seconds are counted.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np

from kindling.controller.population import DAY_MIN, TIMER_PERIODS_MIN, Function
from kindling.loadtest.mmpp import mmpp_arrivals
from kindling.loadtest.shapes import (
    SCALE_TO_ZERO_S,
    BurstsShape,
    MMPP40Shape,
    MMPP120Shape,
    MMPP200Shape,
    MMPPShape,
    OpenLoopShape,
    StepShape,
)

SAMPLE_TRACE = "azure-sample.csv"
TRACE_HEAD = ["HashOwner", "HashApp", "HashFunction", "Trigger"]
MINUTE_S = 60.0


@dataclass(frozen=True)
class Workload:
    name: str
    arrivals: np.ndarray
    """Arrival times, seconds, sorted."""
    end_s: float
    """The simulated window: the last arrival's workload plus the scale-down tail."""
    description: str
    offered_rps: np.ndarray | None = None
    """The generator's own rate per whole second, when it has one (plots only)."""
    remake: Callable[[int], Workload] | None = field(default=None, repr=False, compare=False)
    """The same workload from another seed ("yesterday's" traffic, to tune a baseline on)."""

    @property
    def requests(self) -> int:
        return len(self.arrivals)


def _mmpp(shape: MMPPShape, seed: int, duration_s: float | None) -> Workload:
    spec = shape.spec()
    if duration_s is not None:
        # Longer or shorter runs keep the rates and the mean sojourns: the request total
        # and the number of cycles scale with the duration.
        f = duration_s / spec.duration_s
        spec = replace(
            spec, duration_s=duration_s, requests=round(spec.requests * f), cycles=spec.cycles * f
        )
    arrivals, segments = mmpp_arrivals(spec, seed)
    times = np.array([a.offset_s for a in arrivals])
    seconds = math.ceil(spec.duration_s + SCALE_TO_ZERO_S)
    offered = np.zeros(seconds)
    for seg in segments:
        lo, hi = int(seg.start_s), math.ceil(seg.end_s)
        for s in range(lo, hi):  # the rate over each second, weighted by overlap
            overlap = min(seg.end_s, s + 1) - max(seg.start_s, s)
            offered[s] += seg.rate * max(0.0, overlap)
    return Workload(
        shape.name,
        times,
        spec.duration_s + SCALE_TO_ZERO_S,
        f"{shape.describe()} (loadtest.mmpp; {spec.duration_s:.0f}s, {spec.requests} requests)",
        offered,
    )


def _step(seed: int, duration_s: float | None) -> Workload:
    shape = StepShape()
    if duration_s is not None:
        shape = StepShape(steps=max(1, int(duration_s // shape.step_s)))
    return from_shape(shape, seed)


def _bursts(seed: int, duration_s: float | None) -> Workload:
    shape = BurstsShape()
    if duration_s is not None:  # as many whole periods (silence, burst) as fit
        shape = BurstsShape(bursts=max(1, int(duration_s // (shape.gap_s + shape.burst_s))))
    return from_shape(shape, seed)


def from_shape(shape: OpenLoopShape, seed: int) -> Workload:
    """An open-loop load-test shape's arrivals, as the load test sends them (the same
    shape and seed: the same requests at the same offsets)."""
    plan = shape.plan(seed)
    times = np.array([a.offset_s for a in plan.arrivals])
    return Workload(shape.name, times, plan.end_s, shape.describe())


# The diurnal day, compressed: one simulated hour stands for a day (24x), so a two-day
# run is two simulated hours. The rate follows a raised cosine from a night trough to a
# midday peak (the daily pattern of Shahrad et al. ATC'20 §3, Fig. 8), and bursts arrive
# as a Poisson process, each multiplying the rate for a while.
DIURNAL_DAY_S = 3600.0
DIURNAL_DAYS = 2
DIURNAL_PEAK_RPS = 150.0
DIURNAL_TROUGH_RPS = 0.01
# About one burst per compressed "two hours" (five minutes here), 3x the rate for 30-90 s.
DIURNAL_BURSTS_PER_DAY = 12.0
DIURNAL_BURST_FACTOR = 3.0
DIURNAL_BURST_S = (30.0, 90.0)


def diurnal_rate(
    seconds: int,
    day_s: float,
    rng: np.random.Generator,
    burst_factor: float = DIURNAL_BURST_FACTOR,
    burst_s: tuple[float, float] = DIURNAL_BURST_S,
) -> np.ndarray:
    """The offered rate per whole second: the daily curve times the bursts."""
    t = np.arange(seconds) + 0.5
    phase = 2 * np.pi * t / day_s
    base = DIURNAL_TROUGH_RPS + (DIURNAL_PEAK_RPS - DIURNAL_TROUGH_RPS) * (1 - np.cos(phase)) / 2
    factor = np.ones(seconds)
    expected = DIURNAL_BURSTS_PER_DAY * seconds / day_s
    for _ in range(rng.poisson(expected)):
        start = rng.uniform(0, seconds)
        length = rng.uniform(*burst_s)
        lo, hi = int(start), min(seconds, int(start + length))
        factor[lo:hi] = burst_factor
    return base * factor


def _diurnal(
    seed: int,
    duration_s: float | None,
    burst_factor: float = DIURNAL_BURST_FACTOR,
    burst_s: tuple[float, float] = DIURNAL_BURST_S,
) -> Workload:
    rng = np.random.default_rng(seed)
    duration = duration_s if duration_s is not None else DIURNAL_DAYS * DIURNAL_DAY_S
    seconds = math.ceil(duration)
    rate = diurnal_rate(seconds, DIURNAL_DAY_S, rng, burst_factor, burst_s)
    times = _poisson_per_bin(rate, rng.poisson(rate), 1.0, rng)
    offered = np.concatenate([rate, np.zeros(int(SCALE_TO_ZERO_S))])
    return Workload(
        "diurnal",
        times,
        seconds + SCALE_TO_ZERO_S,
        f"a day in {DIURNAL_DAY_S:.0f}s (24x compressed), {duration / DIURNAL_DAY_S:g} days, "
        f"trough {DIURNAL_TROUGH_RPS:g} to peak {DIURNAL_PEAK_RPS:g} req/s, "
        f"x{burst_factor:g} bursts of {burst_s[0]:g}-{burst_s[1]:g}s",
        offered,
    )


def _poisson_per_bin(
    rate: np.ndarray, counts: np.ndarray, bin_s: float, rng: np.random.Generator
) -> np.ndarray:
    """`counts[i]` arrivals uniform in bin i: a Poisson process given each bin's count."""
    starts = np.repeat(np.arange(len(counts)) * bin_s, counts)
    return np.sort(starts + rng.uniform(0.0, bin_s, size=len(starts)))


# -- the Azure Functions 2019 trace format ----------------------------------------------------


def sample_trace_path() -> Path:
    here = Path(__file__).resolve().parent / "data" / SAMPLE_TRACE
    if here.is_file():
        return here
    return Path(str(resources.files("kindling.controller").joinpath("data", SAMPLE_TRACE)))


@dataclass(frozen=True)
class TraceRow:
    owner: str
    app: str
    function: str
    trigger: str
    counts: np.ndarray


def parse_trace(path: Path) -> list[TraceRow]:
    """Rows of an invocations-per-function-per-minute file (Azure Functions 2019 format).

    The header must be HashOwner,HashApp,HashFunction,Trigger then the minutes 1..N in
    order (N = 1440 in the public files; any N >= 1 is accepted for samples); each row
    carries N counts, whole numbers >= 0. Anything else is a ValueError naming the line.
    """
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the trace ({exc.strerror})") from exc
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ValueError(
                f"{path}:1: empty file, expected the header {','.join(TRACE_HEAD)},1.."
            )
        header = [h.strip() for h in header]
        minutes = header[len(TRACE_HEAD) :]
        expected = [str(i) for i in range(1, len(minutes) + 1)]
        if header[: len(TRACE_HEAD)] != TRACE_HEAD or not minutes or minutes != expected:
            raise ValueError(
                f"{path}:1: header must be {','.join(TRACE_HEAD)},1,2,..,N (minutes in order), "
                f"got {','.join(header[:6])}{',..' if len(header) > 6 else ''}"
            )
        rows: list[TraceRow] = []
        for line_no, fields in enumerate(reader, start=2):
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise ValueError(
                    f"{path}:{line_no}: {len(fields)} fields, expected {len(header)} "
                    f"(4 names and {len(minutes)} minutes)"
                )
            try:
                counts = np.array([int(f) for f in fields[len(TRACE_HEAD) :]], dtype=np.int64)
            except ValueError:
                bad = next(f for f in fields[len(TRACE_HEAD) :] if not _is_int(f))
                raise ValueError(
                    f"{path}:{line_no}: invocation count {bad!r} is not a whole number"
                ) from None
            if (counts < 0).any():
                raise ValueError(f"{path}:{line_no}: negative invocation count")
            rows.append(TraceRow(*(f.strip() for f in fields[:4]), counts=counts))
    if not rows:
        raise ValueError(f"{path}:2: no function rows after the header")
    return rows


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def trace_counts(rows: list[TraceRow], select: str | None = None) -> np.ndarray:
    """Per-minute counts of one function, or one app (HashFunction or HashApp equal to
    `select`), or every row summed when `select` is None: one model serving them all."""
    chosen = [r for r in rows if select is None or select in (r.function, r.app)]
    if not chosen:
        raise ValueError(f"no trace row has HashFunction or HashApp {select!r}")
    return np.sum([r.counts for r in chosen], axis=0)


def from_counts(
    name: str, counts: np.ndarray, seed: int, description: str, duration_s: float | None = None
) -> Workload:
    """Per-minute invocation counts replayed: each minute's arrivals uniform within it (a
    Poisson process given the count), as the trace format allows no finer."""
    if duration_s is not None:
        counts = counts[: max(1, math.ceil(duration_s / MINUTE_S))]
    rng = np.random.default_rng(seed)
    times = _poisson_per_bin(counts.astype(float), counts, MINUTE_S, rng)
    offered = np.repeat(counts / MINUTE_S, int(MINUTE_S))
    return Workload(
        name,
        times,
        len(counts) * MINUTE_S + SCALE_TO_ZERO_S,
        f"{description}: {len(counts)} minutes, {int(counts.sum())} invocations",
        offered,
    )


def _trace(seed: int, duration_s: float | None, path: Path | None, select: str | None) -> Workload:
    source = path or sample_trace_path()
    counts = trace_counts(parse_trace(source), select)
    what = source.name + (f" ({select})" if select else "")
    return from_counts("trace", counts, seed, what, duration_s)


def function_workload(function: Function, day: int, duration_s: float | None = None) -> Workload:
    """One synthetic function's day (population.py); remade from another day."""
    workload = from_counts(
        function.name,
        function.counts(day),
        day,
        f"{function.name} ({function.trigger}, {function.daily:.4g} a day on average)",
        duration_s,
    )
    remake = functools.partial(function_workload, function, duration_s=duration_s)
    return replace(workload, remake=remake)


# The single-function variants (population.py's classes with fixed parameters): timers
# every 1-60 minutes, a rare function (4 calls a day), 10-minute bursts after 1-4 h of
# silence, and bursts at 3-10x a base.
VARIANTS: dict[str, Function] = {
    **{
        f"timer-{m}m": Function(0, "timer", "timer", DAY_MIN / m, 0, period_min=m)
        for m in TIMER_PERIODS_MIN
    },
    "rare": Function(0, "rare", "http", 4.0, 0, amplitude=0.5),
    "wake": Function(0, "wake", "http", 2000.0, 0),
    "bursty": Function(0, "bursty", "queue", 20000.0, 0, amplitude=0.5),
}

NAMES = (
    "mmpp-40",
    "mmpp-120",
    "mmpp-200",
    "step",
    "bursts",
    "diurnal",
    "trace",
    *VARIANTS,
    "population",
)


def make(
    name: str,
    seed: int = 0,
    duration_s: float | None = None,
    trace: Path | None = None,
    select: str | None = None,
    burst_factor: float = DIURNAL_BURST_FACTOR,
    burst_s: tuple[float, float] = DIURNAL_BURST_S,
) -> Workload:
    """The named workload, seeded; `duration_s` overrides its length (see each generator);
    `burst_factor` and `burst_s` shape the diurnal workload's bursts. A variant's seed is
    its day (population.Function.counts). The population is many workloads: see
    sim_population."""
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration must be > 0 seconds, got {duration_s}")
    if not (burst_factor >= 1 and 0 < burst_s[0] <= burst_s[1]):
        raise ValueError(
            f"bursts need a factor >= 1 and 0 < shortest <= longest, got "
            f"x{burst_factor} for {burst_s[0]}-{burst_s[1]} s"
        )
    shapes = {"mmpp-40": MMPP40Shape, "mmpp-120": MMPP120Shape, "mmpp-200": MMPP200Shape}
    if name in shapes:
        workload = _mmpp(shapes[name](), seed, duration_s)
    elif name == "step":
        workload = _step(seed, duration_s)
    elif name == "bursts":
        workload = _bursts(seed, duration_s)
    elif name == "diurnal":
        workload = _diurnal(seed, duration_s, burst_factor, burst_s)
    elif name == "trace":
        workload = _trace(seed, duration_s, trace, select)
    elif name in VARIANTS:
        return replace(function_workload(VARIANTS[name], seed, duration_s), name=name)
    else:
        raise ValueError(f"unknown workload {name!r} (known: {', '.join(NAMES)})")
    if name == "trace":
        # Another seed moves the same per-minute counts within their minutes: not another
        # day's traffic, so a trace has nothing to be remade from.
        return workload
    remake = functools.partial(
        make, name, duration_s=duration_s, burst_factor=burst_factor, burst_s=burst_s
    )
    return replace(workload, remake=remake)
