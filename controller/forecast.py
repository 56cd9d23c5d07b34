"""Request-rate forecasters: EWMA, Holt (level and trend) and a seasonal profile.

Every forecaster takes samples (t seconds, rate req/s) in time order, possibly at irregular
intervals, and predicts the rate `horizon_s` after the last sample. Smoothing is
time-aware: a sample `dt` seconds after the previous one gets weight `1 - 2**(-dt/h)` for a
half-life `h`, so ten samples 1 s apart move a forecaster exactly as far as one sample 10 s
later would (Wright 1986, "Forecasting data published at irregular time intervals using an
extension of Holt's method", Management Science 32(4)).

`error()` is a time-aware EWMA of the absolute one-step error (the forecast made at the
previous sample for this sample's time, against what came): the policy's safety margin.
`expected` keeps that one-step forecast for the latest sample, so the policy can also judge
each sample's surprise as a ratio (actual / expected) and remember bursts for longer.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

# The error's half-life, 120 s: a surprise should keep the margin up for a couple of minutes,
# longer than the level takes to catch up (30 s half-life below), so the margin outlasts the
# lag it covers.
ERROR_HALF_LIFE_S = 120.0

# The level's half-life, 30 s: its mean sample age (h / ln 2 ≈ 43 s) is close to the 30 s
# mean age of the 60 s stable window Knative's KPA averages over (config-autoscaler
# stable-window), so the level is as smooth as what the reactive autoscaler acts on.
LEVEL_HALF_LIFE_S = 30.0


def decay(dt: float, half_life_s: float) -> float:
    """The weight an old estimate keeps after `dt` seconds: 2**(-dt/half_life)."""
    return math.pow(2.0, -dt / half_life_s)


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


class Forecaster(ABC):
    """One model's request rate: observe samples, forecast ahead, report recent error."""

    # Whether a rise it forecasts from idle is foresight (a learned profile's coming burst)
    # rather than memory (a smoothed level or trend still decaying from the last request):
    # only such a forecast holds a pod outside the idle window (policy.py).
    foresees_rises: ClassVar[bool] = False

    def __init__(self, error_half_life_s: float = ERROR_HALF_LIFE_S) -> None:
        _check_positive("error_half_life_s", error_half_life_s)
        self._error_half_life_s = error_half_life_s
        self._error = 0.0
        self.last_t: float | None = None
        self.last_rate: float | None = None
        # The forecast made at the previous sample for the latest sample's time (None until
        # a second sample): what `last_rate` is a surprise against.
        self.expected: float | None = None

    def observe(self, t: float, rate: float) -> None:
        """Take the rate measured at time t. Refuses NaN, infinities, negative rates and
        samples older than the last one (ValueError); a repeat of the last timestamp
        carries no weight (no time has passed to weigh it by)."""
        if not math.isfinite(t):
            raise ValueError(f"time must be finite, got {t!r}")
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"rate must be a finite number >= 0, got {rate!r}")
        if self.last_t is None:
            self._first(t, rate)
        else:
            dt = t - self.last_t
            if dt < 0:
                raise ValueError(f"samples must come in time order: {t} after {self.last_t}")
            self.expected = self.forecast(dt)
            miss = abs(rate - self.expected)
            self._error += (1 - decay(dt, self._error_half_life_s)) * (miss - self._error)
            self._update(t, rate, dt)
        self.last_t = t
        self.last_rate = rate

    def forecast(self, horizon_s: float) -> float:
        """The rate expected `horizon_s` after the last sample; 0.0 before any sample."""
        if not (math.isfinite(horizon_s) and horizon_s >= 0):
            raise ValueError(f"horizon must be a finite number >= 0, got {horizon_s!r}")
        if self.last_t is None:
            return 0.0
        return max(0.0, self._predict(horizon_s))

    def error(self) -> float:
        """Recent mean absolute one-step error, req/s."""
        return self._error

    @abstractmethod
    def _first(self, t: float, rate: float) -> None:
        """Start from the first sample."""

    @abstractmethod
    def _update(self, t: float, rate: float, dt: float) -> None:
        """Fold in a sample `dt` >= 0 seconds after the previous one."""

    @abstractmethod
    def _predict(self, horizon_s: float) -> float:
        """The raw forecast; the caller clamps it at zero."""


class Ewma(Forecaster):
    """Exponentially weighted moving average; the forecast is flat at the level."""

    def __init__(
        self, half_life_s: float = LEVEL_HALF_LIFE_S, error_half_life_s: float = ERROR_HALF_LIFE_S
    ) -> None:
        super().__init__(error_half_life_s)
        _check_positive("half_life_s", half_life_s)
        self.half_life_s = half_life_s
        self.level = 0.0

    def _first(self, t: float, rate: float) -> None:
        self.level = rate

    def _update(self, t: float, rate: float, dt: float) -> None:
        self.level += (1 - decay(dt, self.half_life_s)) * (rate - self.level)

    def _predict(self, horizon_s: float) -> float:
        return self.level


# Holt's trend half-life, 120 s (4x the level's): the slope is a difference of levels and so
# noisier than the level; smoothing it longer keeps one noisy sample from swinging it.
TREND_HALF_LIFE_S = 120.0

# The trend's damping time constant, 600 s: leads are a cold start plus a reaction delay
# (seconds to a minute), over which the damped trend still extrapolates almost linearly
# (95% of the straight line at 60 s), while the whole extrapolation is bounded by
# trend x 600 s however far ahead one asks.
TREND_DAMPING_S = 600.0


class Holt(Forecaster):
    """Holt's linear method (level and trend) with a damped trend, in continuous time.

    Damping after Gardner & McKenzie 1985 ("Forecasting trends in time series", Management
    Science 31(10)): their per-step factor phi becomes exp(-dt/tau) per dt seconds, so the
    forecast is level + trend * tau * (1 - exp(-h/tau)), which tends to level + trend * tau
    instead of running away with h. Only the extrapolation is damped, not the trend
    estimate: damping that too (as their recursions do) settles a steady ramp's trend at
    b*s / (1 - phi*(1 - b)) of its slope s, 22% short with these defaults.
    """

    def __init__(
        self,
        level_half_life_s: float = LEVEL_HALF_LIFE_S,
        trend_half_life_s: float = TREND_HALF_LIFE_S,
        damping_s: float = TREND_DAMPING_S,
        error_half_life_s: float = ERROR_HALF_LIFE_S,
    ) -> None:
        super().__init__(error_half_life_s)
        _check_positive("level_half_life_s", level_half_life_s)
        _check_positive("trend_half_life_s", trend_half_life_s)
        _check_positive("damping_s", damping_s)
        self.level_half_life_s = level_half_life_s
        self.trend_half_life_s = trend_half_life_s
        self.damping_s = damping_s
        self.level = 0.0
        self.trend = 0.0  # req/s per second
        self._samples = 0

    def _first(self, t: float, rate: float) -> None:
        self.level = rate
        self._samples = 1

    def _update(self, t: float, rate: float, dt: float) -> None:
        if dt == 0:
            return
        if self._samples == 1:
            # The second sample gives the first slope; starting from zero trend would make
            # every ramp lag by a trend half-life before Holt tracks it.
            self.trend = (rate - self.level) / dt
            self.level = rate
        else:
            predicted = self._predict(dt)
            new_level = predicted + (1 - decay(dt, self.level_half_life_s)) * (rate - predicted)
            slope = (new_level - self.level) / dt
            self.trend += (1 - decay(dt, self.trend_half_life_s)) * (slope - self.trend)
            self.level = new_level
        self._samples += 1

    def _predict(self, horizon_s: float) -> float:
        tau = self.damping_s
        return self.level + self.trend * tau * -math.expm1(-horizon_s / tau)


# Seasonal defaults. One day, the commonest pattern in FaaS traffic (Shahrad et al.,
# "Serverless in the Wild", USENIX ATC 2020, §3: diurnal invocation patterns); pass
# WEEK_S to learn time of day and day of week together.
DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
# 96 bins a day (15 min): enough samples per bin for a stable mean at a 15-60 s scrape
# interval, and fine enough that a burst's start is placed to within 15 minutes.
DAY_BINS = 96
# Each period's bin mean moves the profile half-way: two agreeing periods dominate, and a
# changed pattern is relearned in a few periods.
PERIOD_WEIGHT = 0.5
# Bins trusted fully after two periods: one period may be a one-off.
LEARN_PERIODS = 2


class Seasonal(Forecaster):
    """A periodic profile of the rate (per-bin EWMAs over periods) plus the current offset.

    Additive Holt-Winters in spirit: the forecast for a target time is its bin's profile plus
    a residual (a time-aware EWMA of how far the rate runs above or below the profile now),
    so a day busier than usual stays busier. While the target bin has been seen in fewer
    than `learn_periods` periods, the forecast is blended with a level forecaster (`level`,
    an Ewma by default) in proportion to the periods seen.
    """

    foresees_rises = True

    def __init__(
        self,
        period_s: float = DAY_S,
        bins: int = DAY_BINS,
        *,
        phase_s: float = 0.0,
        period_weight: float = PERIOD_WEIGHT,
        learn_periods: int = LEARN_PERIODS,
        residual_half_life_s: float = LEVEL_HALF_LIFE_S,
        level: Forecaster | None = None,
        error_half_life_s: float = ERROR_HALF_LIFE_S,
    ) -> None:
        super().__init__(error_half_life_s)
        _check_positive("period_s", period_s)
        _check_positive("residual_half_life_s", residual_half_life_s)
        if bins < 1 or learn_periods < 1:
            raise ValueError("bins and learn_periods must be at least 1")
        if not 0 < period_weight <= 1:
            raise ValueError(f"period_weight must be in (0, 1], got {period_weight!r}")
        self.period_s = period_s
        self.bins = bins
        self.bin_s = period_s / bins
        # Epoch seconds are UTC; phase_s shifts to the users' local day (e.g. -5 * 3600).
        self.phase_s = phase_s
        self.period_weight = period_weight
        self.learn_periods = learn_periods
        self.residual_half_life_s = residual_half_life_s
        self.level = level if level is not None else Ewma(error_half_life_s=error_half_life_s)
        self.profile = [0.0] * bins
        self.periods_seen = [0] * bins
        self.residual = 0.0
        # The bin being accumulated: its absolute index (counting from the epoch), sum, count.
        self._open_bin: int | None = None
        self._open_sum = 0.0
        self._open_count = 0

    def bin_of(self, t: float) -> int:
        """The profile bin (0 .. bins-1) holding time t."""
        return self._absolute_bin(t) % self.bins

    def weight(self, bin_index: int) -> float:
        """How far the profile is trusted in a bin: periods seen over learn_periods, capped."""
        return min(1.0, self.periods_seen[bin_index] / self.learn_periods)

    def _absolute_bin(self, t: float) -> int:
        return math.floor((t + self.phase_s) / self.bin_s)

    def _first(self, t: float, rate: float) -> None:
        self.level.observe(t, rate)
        self._accumulate(t, rate)

    def _update(self, t: float, rate: float, dt: float) -> None:
        self.level.observe(t, rate)
        index = self.bin_of(t)
        if self.periods_seen[index] >= self.learn_periods:
            gap = rate - self.profile[index]
            self.residual += (1 - decay(dt, self.residual_half_life_s)) * (gap - self.residual)
        else:
            self.residual *= decay(dt, self.residual_half_life_s)
        self._accumulate(t, rate)

    def _accumulate(self, t: float, rate: float) -> None:
        absolute = self._absolute_bin(t)
        if absolute != self._open_bin:
            self._close_bin()
            self._open_bin = absolute
        self._open_sum += rate
        self._open_count += 1

    def _close_bin(self) -> None:
        if self._open_bin is None or self._open_count == 0:
            return
        index = self._open_bin % self.bins
        mean = self._open_sum / self._open_count
        if self.periods_seen[index] == 0:
            self.profile[index] = mean
        else:
            self.profile[index] += self.period_weight * (mean - self.profile[index])
        self.periods_seen[index] += 1
        self._open_sum = 0.0
        self._open_count = 0

    def _predict(self, horizon_s: float) -> float:
        assert self.last_t is not None  # forecast() answers 0.0 before any sample
        target = self.bin_of(self.last_t + horizon_s)
        w = self.weight(target)
        seasonal = max(0.0, self.profile[target] + self.residual)
        return w * seasonal + (1 - w) * self.level.forecast(horizon_s)
