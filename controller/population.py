"""A synthetic function population in the Azure Functions 2019 trace format.

    population(n, seed) -> list[Function]; function.counts(day) -> per-minute counts

Drawn from what Shahrad et al. published about Azure Functions ("Serverless in the Wild",
USENIX ATC 2020, §3), as no trace can be downloaded here:

- **Triggers** (Fig. 3, share of functions): HTTP 55 %, timer 15.6 %, queue 15.2 %, and
  event, storage, orchestration and others 14.2 % together (here "event").
- **Invocation frequency** (Fig. 5a, per application, over 8 orders of magnitude): 45 % are
  invoked once an hour or less on average, 81 % once a minute or less. Non-timer functions
  draw their mean daily count log-uniformly within those three bands (1-24, 24-1440 and
  1440 up to `MAX_DAILY` a day); `MAX_DAILY` caps the top band at 5 req/s, which keeps a
  500-function day to minutes of simulation (a function that busy is never idle, so under
  every policy its pods are warm; the variants' MMPP and diurnal runs cover high rates).
- **Regularity** (Fig. 6, CV of inter-arrival times): timers are periodic (CV near 0;
  periods of 1, 5, 15 and 60 minutes, the common cron settings); HTTP traffic follows the
  day (Fig. 8's diurnal pattern) and a share of it, with queues and events, comes in bursts
  (CV well above 1); some functions wake from long silence for a short burst.

Each function's class (what the evaluation reports by) is in its name: `f0042-timer-5m`.
A function's parameters come from the population's seed; its arrivals from a day seed, so
`counts(day + 1)` is the same function on another day: what a user tunes a static floor on.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DAY_MIN = 1440
# Fig. 3: function share per trigger.
TRIGGERS = {"http": 0.55, "timer": 0.156, "queue": 0.152, "event": 0.142}
# Fig. 5a: the bands of mean daily invocations and their shares (45 % at most hourly, 36 %
# more but at most once a minute, the rest more often).
MAX_DAILY = 5 * 86400
RATE_BANDS = ((1.0, 24.0, 0.45), (24.0, 1440.0, 0.36), (1440.0, float(MAX_DAILY), 0.19))
# Cron periods of timer functions, minutes, equally likely.
TIMER_PERIODS_MIN = (1, 5, 15, 60)
# The share of HTTP functions whose traffic comes in bursts (queues and events always do),
# and of those that wake from silence: a 10-minute burst after 1-4 h of nothing.
HTTP_BURSTY = 0.3
WAKE_SHARE = 0.1
WAKE_SILENCE_MIN = (60, 240)
WAKE_BURST_MIN = 10
# A bursty function's bursts: on for 2-20 minutes at 3-10x its base, off between them so
# that its daily total stays its drawn mean.
BURST_MIN = (2, 20)
BURST_FACTOR = (3.0, 10.0)
BURSTS_PER_DAY = (2, 24)

CLASSES = ("timer", "rare", "sparse", "steady", "bursty", "wake")


@dataclass(frozen=True)
class Function:
    """One function's parameters; `counts(day)` draws a day of it."""

    index: int
    cls: str
    trigger: str
    daily: float  # mean invocations a day (timers: 1440 / period)
    seed: int
    period_min: int = 0  # timers
    phase_min: int = 0  # timers: the minute of the first firing
    amplitude: float = 0.0  # the daily swing, 0..1 of the mean
    peak_min: int = 0  # the minute of the daily peak

    @property
    def name(self) -> str:
        kind = f"timer-{self.period_min}m" if self.cls == "timer" else self.cls
        return f"f{self.index:04d}-{kind}"

    def counts(self, day: int = 0, minutes: int = DAY_MIN) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.index, day])
        if self.cls == "timer":
            out = np.zeros(minutes, dtype=np.int64)
            out[self.phase_min % self.period_min :: self.period_min] = 1
            return out
        rate = self._daily_curve(minutes)
        if self.cls == "wake":
            rate = self._wake(rate, rng)
        elif self.cls == "bursty":
            rate = self._bursts(rate, rng)
        return rng.poisson(rate).astype(np.int64)

    def _daily_curve(self, minutes: int) -> np.ndarray:
        """The mean per minute over the day: a cosine peaking at peak_min (Fig. 8)."""
        t = np.arange(minutes)
        swing = self.amplitude * np.cos(2 * np.pi * (t - self.peak_min) / DAY_MIN)
        return self.daily / DAY_MIN * (1 + swing)

    def _bursts(self, rate: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Bursts at a multiple of the base; the base shrinks so the day's mean holds."""
        on = np.zeros(len(rate), dtype=bool)
        for _ in range(int(rng.integers(*BURSTS_PER_DAY, endpoint=True))):
            start = int(rng.integers(0, len(rate)))
            on[start : start + int(rng.integers(*BURST_MIN, endpoint=True))] = True
        factor = rng.uniform(*BURST_FACTOR)
        weight = np.where(on, factor, 1.0)
        return rate * weight * len(rate) / weight.sum()

    def _wake(self, rate: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Nothing, then a WAKE_BURST_MIN burst, after each 1-4 h silence; the bursts carry
        the day's mean."""
        out = np.zeros(len(rate))
        t = int(rng.integers(*WAKE_SILENCE_MIN))
        while t < len(rate):
            out[t : t + WAKE_BURST_MIN] = 1.0
            t += WAKE_BURST_MIN + int(rng.integers(*WAKE_SILENCE_MIN))
        on = out.sum()
        return out * rate.sum() / on if on else out


def _band(rng: np.random.Generator) -> float:
    """A mean daily count from Fig. 5a's bands, log-uniform within the band."""
    shares = np.array([b[2] for b in RATE_BANDS])
    lo, hi, _ = RATE_BANDS[int(rng.choice(len(RATE_BANDS), p=shares / shares.sum()))]
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw(index: int, seed: int, rng: np.random.Generator) -> Function:
    trigger = str(rng.choice(list(TRIGGERS), p=np.array(list(TRIGGERS.values())) / 1.0))
    common = {"index": index, "trigger": trigger, "seed": seed}
    daily_swing = {"amplitude": float(rng.uniform(0, 0.9)), "peak_min": int(rng.integers(DAY_MIN))}
    if trigger == "timer":
        period = int(rng.choice(TIMER_PERIODS_MIN))
        phase = int(rng.integers(period))
        return Function(
            cls="timer", daily=DAY_MIN / period, period_min=period, phase_min=phase, **common
        )
    daily = _band(rng)
    if daily <= RATE_BANDS[0][1]:
        cls = "rare"
    elif trigger == "http" and rng.uniform() < WAKE_SHARE:
        cls = "wake"
    elif trigger != "http" or rng.uniform() < HTTP_BURSTY:
        cls = "bursty"
    else:
        cls = "sparse" if daily <= RATE_BANDS[1][1] else "steady"
    return Function(cls=cls, daily=daily, **common, **daily_swing)


def population(n: int, seed: int) -> list[Function]:
    """n functions drawn from the published distributions, the same for the same seed."""
    if n < 1:
        raise ValueError(f"a population needs at least one function, got {n}")
    rng = np.random.default_rng([seed, 0xF00])
    return [draw(i, seed, rng) for i in range(n)]


def write_trace(functions: list[Function], path: Path, day: int = 0) -> None:
    """The population's day as an Azure Functions 2019 invocations-per-minute CSV, which
    `kindling controller simulate --workload trace --trace CSV --function NAME` replays."""
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["HashOwner", "HashApp", "HashFunction", "Trigger", *range(1, DAY_MIN + 1)])
        for f in functions:
            out.writerow(["synthetic", f.name, f.name, f.trigger, *f.counts(day).tolist()])
