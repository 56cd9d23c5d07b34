"""Forecasters on known series: constants, ramps, steps, daily and weekly patterns."""

from __future__ import annotations

import math

import pytest

from kindling.controller.forecast import DAY_S, WEEK_S, Ewma, Forecaster, Holt, Seasonal


def feed(forecaster: Forecaster, samples: list[tuple[float, float]]) -> Forecaster:
    for t, rate in samples:
        forecaster.observe(t, rate)
    return forecaster


def every(step: float, start: float, stop: float) -> list[float]:
    """Times start, start+step, ... below stop (computed by index: no float drift)."""
    return [start + i * step for i in range(math.ceil((stop - start) / step))]


def all_forecasters() -> list[Forecaster]:
    return [Ewma(), Holt(), Seasonal()]


@pytest.mark.parametrize("forecaster", all_forecasters(), ids=lambda f: type(f).__name__)
def test_constant_series_forecasts_the_constant(forecaster: Forecaster) -> None:
    feed(forecaster, [(t, 7.5) for t in every(15, 0, 3600)])
    for horizon in (0, 10, 60, 600):
        assert forecaster.forecast(horizon) == pytest.approx(7.5)
    assert forecaster.error() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("forecaster", all_forecasters(), ids=lambda f: type(f).__name__)
def test_nothing_observed_forecasts_zero(forecaster: Forecaster) -> None:
    assert forecaster.forecast(30) == 0.0
    assert forecaster.error() == 0.0
    assert forecaster.last_t is None


def ramp(t: float) -> float:
    return 10 + 0.1 * t


def test_holt_forecasts_a_ramp_ahead_while_ewma_lags() -> None:
    samples = [(t, ramp(t)) for t in every(10, 0, 1201)]
    holt = feed(Holt(), samples)
    ewma = feed(Ewma(), samples)
    truth = ramp(1200 + 60)  # 136 req/s a minute after the last sample
    assert holt.forecast(60) == pytest.approx(truth, abs=1.0)
    # A time-aware EWMA lags a ramp by slope x mean sample age (h / ln 2 = 43 s here), and
    # its flat forecast misses the 60 s ahead as well: about 0.1 x (43 + 60) = 10.3 req/s.
    assert truth - ewma.forecast(60) == pytest.approx(0.1 * (30 / math.log(2) + 60), rel=0.05)


def test_holt_damped_trend_cannot_run_away_or_go_negative() -> None:
    holt = feed(Holt(damping_s=600), [(t, ramp(t)) for t in every(10, 0, 601)])
    bound = holt.level + holt.trend * 600  # Gardner-McKenzie damping: level + trend x tau
    assert holt.forecast(1e6) == pytest.approx(bound, rel=1e-6)
    assert holt.forecast(1e6) < 2 * ramp(600)

    falling = feed(Holt(), [(t, max(0.0, 100 - 2 * t)) for t in every(5, 0, 50)])
    assert falling.trend < 0
    assert falling.forecast(3600) == 0.0


def test_ewma_converges_on_a_step_by_the_half_life() -> None:
    ewma = Ewma(half_life_s=30)
    ewma.observe(0, 0.0)
    levels = {}
    for t in every(1, 1, 91):
        ewma.observe(t, 100.0)
        levels[t] = ewma.forecast(0)
    # After n half-lives, 1 - 2**-n of the step is in.
    assert levels[30] == pytest.approx(50.0)
    assert levels[60] == pytest.approx(75.0)
    assert levels[90] == pytest.approx(87.5)


def test_irregular_sampling_weighs_by_elapsed_time() -> None:
    regular = Ewma(half_life_s=30)
    irregular = Ewma(half_life_s=30)
    for f in (regular, irregular):
        f.observe(0, 0.0)
    for t in every(1, 1, 61):
        regular.observe(t, 100.0)
    for t in (0.5, 3, 3.25, 17, 40, 41, 60):  # gaps from 0.25 s to 23 s
        irregular.observe(t, 100.0)
    assert irregular.forecast(0) == pytest.approx(regular.forecast(0))

    times = [0, 3, 4, 11, 30, 31, 32, 58, 90, 91, 140, 200, 203, 260, 300]
    times += [300 + 7 * i + (i % 3) * 3 for i in range(1, 130)]  # gaps of 4, 7 and 10 s
    holt = feed(Holt(), [(t, ramp(t)) for t in times])
    assert holt.forecast(60) == pytest.approx(ramp(times[-1] + 60), abs=1.5)


def test_repeated_timestamp_carries_no_weight() -> None:
    ewma = feed(Ewma(), [(0, 10.0), (10, 10.0)])
    ewma.observe(10, 1000.0)
    assert ewma.forecast(0) == pytest.approx(10.0)


@pytest.mark.parametrize("forecaster", all_forecasters(), ids=lambda f: type(f).__name__)
@pytest.mark.parametrize(
    ("t", "rate"),
    [(10, -1.0), (10, math.nan), (10, math.inf), (math.nan, 1.0), (math.inf, 1.0), (5, 1.0)],
)
def test_bad_samples_are_refused(forecaster: Forecaster, t: float, rate: float) -> None:
    forecaster.observe(6, 1.0)
    with pytest.raises(ValueError):
        forecaster.observe(t, rate)
    assert forecaster.last_t == 6  # a refused sample changes nothing
    assert forecaster.forecast(0) == pytest.approx(1.0)


@pytest.mark.parametrize("horizon", [-1.0, math.nan, math.inf])
def test_bad_horizons_are_refused(horizon: float) -> None:
    with pytest.raises(ValueError):
        Ewma().forecast(horizon)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Ewma(half_life_s=0),
        lambda: Ewma(half_life_s=math.nan),
        lambda: Holt(trend_half_life_s=-1),
        lambda: Holt(damping_s=0),
        lambda: Seasonal(bins=0),
        lambda: Seasonal(period_weight=0),
        lambda: Ewma(error_half_life_s=0),
    ],
)
def test_bad_settings_are_refused(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_error_grows_on_a_surprise_and_decays_after() -> None:
    ewma = feed(Ewma(), [(t, 10.0) for t in every(10, 0, 301)])
    assert ewma.error() == 0.0
    trail = []
    for t in every(10, 310, 1800):
        ewma.observe(t, 50.0)
        trail.append(ewma.error())
    peak = max(trail)
    assert trail[0] > 0  # the first surprising sample already raises it
    assert peak > 5.0
    assert trail[-1] < 0.01 * peak  # the level caught up; the error half-life let it go


@pytest.mark.parametrize("forecaster", all_forecasters(), ids=lambda f: type(f).__name__)
def test_expected_is_the_one_step_forecast_each_sample_met(forecaster: Forecaster) -> None:
    """What the policy's burst memory judges a sample against: the forecast made at the
    previous sample for this sample's time, before this sample moved the forecaster."""
    assert forecaster.expected is None
    forecaster.observe(0, 10.0)
    assert forecaster.expected is None  # nothing forecast the first sample
    feed(forecaster, [(t, 10.0) for t in every(15, 15, 600)])
    assert forecaster.expected == pytest.approx(10.0)
    ahead = forecaster.forecast(15)
    forecaster.observe(600, 30.0)
    assert forecaster.expected == ahead
    assert forecaster.last_rate == 30.0


def daily(t: float) -> float:
    """5 req/s, with a burst of 100 req/s from 09:00 to 09:30 every day."""
    return 100.0 if 9 * 3600 <= t % DAY_S < 9.5 * 3600 else 5.0


def test_seasonal_predicts_the_next_days_burst_before_it_happens() -> None:
    before_burst = 2 * DAY_S + 9 * 3600 - 60  # day 3, 08:59
    samples = [(t, daily(t)) for t in every(60, 0, before_burst + 1)]
    seasonal = feed(Seasonal(period_s=DAY_S, bins=96), samples)
    ewma = feed(Ewma(), samples)
    assert seasonal.last_rate == 5.0  # nothing of the burst seen today yet
    assert seasonal.forecast(60) == pytest.approx(100.0, rel=0.02)  # 09:00
    assert seasonal.forecast(0) == pytest.approx(5.0, rel=0.02)
    assert ewma.forecast(60) == pytest.approx(5.0)  # reactive: blind to it


def test_seasonal_blends_with_the_level_until_bins_are_learned() -> None:
    level = Ewma()
    seasonal = Seasonal(level=level)
    feed(seasonal, [(t, daily(t)) for t in every(60, 0, 9 * 3600 - 59)])
    # Day 1: the 09:00 bin never seen, so the forecast is the level forecaster's.
    assert seasonal.weight(seasonal.bin_of(9 * 3600)) == 0.0
    assert seasonal.forecast(60) == pytest.approx(level.forecast(60))

    one_day = Seasonal()
    feed(one_day, [(t, daily(t)) for t in every(60, 0, DAY_S + 9 * 3600 - 59)])
    # Day 2: seen once, trusted half-way (learn_periods=2).
    assert one_day.forecast(60) == pytest.approx(0.5 * 100 + 0.5 * 5, rel=0.02)


def test_seasonal_follows_a_busier_than_usual_day() -> None:
    now = 2 * DAY_S + 8 * 3600  # day 3, 08:00, running 20 req/s above the profile
    samples = [(t, daily(t)) for t in every(60, 0, 2 * DAY_S + 7 * 3600)]
    samples += [(t, daily(t) + 20) for t in every(60, 2 * DAY_S + 7 * 3600, now + 1)]
    seasonal = feed(Seasonal(), samples)
    assert seasonal.forecast(3600 + 60) == pytest.approx(120.0, rel=0.02)  # 09:01


def weekly(t: float) -> float:
    """5 req/s, with 100 req/s from 10:00 to 11:00 on the third day of each week only."""
    day, second = divmod(t % WEEK_S, DAY_S)
    return 100.0 if day == 2 and 10 * 3600 <= second < 11 * 3600 else 5.0


def test_weekly_profile_tells_the_days_of_the_week_apart() -> None:
    samples = [(t, weekly(t)) for t in every(300, 0, 2 * WEEK_S + 1 * DAY_S + 10 * 3600 - 299)]
    other_day = feed(Seasonal(period_s=WEEK_S, bins=7 * 24), samples)
    assert other_day.forecast(300) == pytest.approx(5.0, rel=0.02)  # day 1, 10:00: quiet

    samples += [
        (t, weekly(t))
        for t in every(300, samples[-1][0] + 300, 2 * WEEK_S + 2 * DAY_S + 10 * 3600 - 299)
    ]
    burst_day = feed(Seasonal(period_s=WEEK_S, bins=7 * 24), samples)
    assert burst_day.last_rate == 5.0
    assert burst_day.forecast(300) == pytest.approx(100.0, rel=0.02)  # day 2, 10:00: burst
