"""The warm-pod policy: Little's law, bounds, hysteresis, idle-to-zero, missing data."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from kindling.controller.forecast import DAY_S, Ewma, Forecaster, Seasonal
from kindling.controller.idle_window import Gaps, best_window, window_cost
from kindling.controller.policy import (
    CEILING,
    COOLDOWN,
    FLOOR,
    IDLE_ZERO,
    INITIAL,
    NO_DATA,
    PREWARM,
    SCALE_DOWN,
    SCALE_UP,
    STALE,
    STEADY,
    STEP_ASIDE,
    SURPRISES_KEPT,
    Decision,
    PolicyState,
    WarmPolicy,
)


class Stub(Forecaster):
    """Forecasts the last rate seen, with a set error; records the horizons asked."""

    def __init__(self, error: float = 0.0) -> None:
        super().__init__()
        self.value = 0.0
        self.set_error = error
        self.horizons: list[float] = []

    def _first(self, t: float, rate: float) -> None:
        self.value = rate

    def _update(self, t: float, rate: float, dt: float) -> None:
        self.value = rate

    def _predict(self, horizon_s: float) -> float:
        self.horizons.append(horizon_s)
        return self.value

    def error(self) -> float:
        return self.set_error


def one_decision(
    policy: WarmPolicy, rate: float, service_time_s: float, error: float = 0.0
) -> Decision:
    stub = Stub(error)
    stub.observe(100, rate)
    return policy.decide(100, stub, service_time_s, PolicyState())


def assert_reason_names_rule(decision: Decision) -> None:
    assert decision.reason.startswith(f"{decision.rule}: ")


def test_lead_is_cold_start_plus_reaction_delay_and_is_forecast_at() -> None:
    policy = WarmPolicy(cold_start_s=4.5, reaction_delay_s=15)
    assert policy.lead_s == 19.5
    stub = Stub()
    stub.observe(0, 10)
    policy.decide(0, stub, 0.1, PolicyState())
    assert stub.horizons == [19.5]


@pytest.mark.parametrize(
    ("rate", "service_time_s", "concurrency", "error", "k", "pods"),
    [
        (10, 0.1, 1, 0, 2, 1),  # L = 10 x 0.1 = 1.0 in flight, exactly one pod
        (10, 0.25, 1, 0, 2, 3),  # 2.5 -> 3
        (10, 0.25, 1, 1, 2, 3),  # (10 + 2 x 1) x 0.25 = 3.0
        (10, 0.25, 1, 1.2, 2, 4),  # 12.4 x 0.25 = 3.1 -> 4
        (10, 0.25, 2, 1, 2, 2),  # 3.0 over 2 per pod = 1.5 -> 2
        (100, 0.05, 1, 5, 0, 5),  # k = 0: no margin
        (400, 0.05, 4, 0, 2, 5),
    ],
)
def test_littles_law_with_margin(
    rate: float, service_time_s: float, concurrency: float, error: float, k: float, pods: int
) -> None:
    policy = WarmPolicy(cold_start_s=5, target_concurrency=concurrency, margin_k=k)
    assert policy.pods_for(rate, service_time_s) == pytest.approx(
        rate * service_time_s / concurrency
    )
    decision = one_decision(policy, rate, service_time_s, error)
    assert decision.pods == pods
    assert decision.rule == INITIAL
    assert_reason_names_rule(decision)


def test_floor_and_ceiling_bound_the_decision() -> None:
    floor = one_decision(WarmPolicy(cold_start_s=5, min_scale=3), 10, 0.1)
    assert (floor.pods, floor.rule) == (3, FLOOR)
    assert "min-scale 3" in floor.reason
    ceiling = one_decision(WarmPolicy(cold_start_s=5, max_scale=4), 1000, 0.1)
    assert (ceiling.pods, ceiling.rule) == (4, CEILING)
    assert "max-scale 4" in ceiling.reason
    inside = one_decision(WarmPolicy(cold_start_s=5, min_scale=1, max_scale=10), 50, 0.1)
    assert inside.pods == 5


# Hysteresis and bounds tests feed synthetic jumps; max_headroom 1.0 switches the burst
# memory off so each checks its own rule (the burst memory has its own tests below).
NO_BURST_MEMORY = {"max_headroom": 1.0}


class Driver:
    """Feeds a forecaster and asks the policy each tick, as the controller loop does."""

    def __init__(
        self, policy: WarmPolicy, forecaster: Forecaster, service_time_s: float = 0.1
    ) -> None:
        self.policy = policy
        self.forecaster = forecaster
        self.service_time_s = service_time_s
        self.state = PolicyState()
        self.decisions: list[tuple[float, Decision]] = []

    def step(self, t: float, rate: float | None) -> Decision:
        if rate is not None:
            self.forecaster.observe(t, rate)
        decision = self.policy.decide(t, self.forecaster, self.service_time_s, self.state)
        assert_reason_names_rule(decision)
        self.decisions.append((t, decision))
        return decision

    def pods(self) -> list[int]:
        return [d.pods for _, d in self.decisions]


def test_scale_up_is_immediate() -> None:
    driver = Driver(WarmPolicy(cold_start_s=5, **NO_BURST_MEMORY), Stub())
    for t in range(0, 30, 2):
        driver.step(t, 20.0)
    assert driver.decisions[-1][1].pods == 2
    jump = driver.step(30, 90.0)
    assert (jump.pods, jump.rule) == (9, SCALE_UP)


def test_scale_down_waits_the_cooldown_then_steps_by_at_most_half() -> None:
    driver = Driver(WarmPolicy(cold_start_s=5, cooldown_s=60, max_down_fraction=0.5), Stub())
    for t in range(0, 20, 2):
        driver.step(t, 100.0)
    assert driver.decisions[-1][1].pods == 10
    for t in range(20, 80, 2):  # desire 1 from t=20; the cooldown runs to t=80
        decision = driver.step(t, 10.0)
        assert (decision.pods, decision.rule) == (10, COOLDOWN)
    steps = [driver.step(t, 10.0) for t in range(80, 90, 2)]
    assert [d.pods for d in steps] == [5, 3, 2, 1, 1]
    assert [d.rule for d in steps] == [SCALE_DOWN] * 4 + [STEADY]


def test_scale_down_goes_to_the_highest_desire_in_the_cooldown() -> None:
    policy = WarmPolicy(cold_start_s=5, cooldown_s=60, max_down_fraction=1.0, **NO_BURST_MEMORY)
    driver = Driver(policy, Stub())
    driver.step(0, 100.0)
    for t in range(2, 62, 2):
        driver.step(t, 40.0 if t == 50 else 10.0)  # one blip of desire 4 inside the window
    down = driver.step(62, 10.0)
    assert (down.pods, down.rule) == (4, SCALE_DOWN)


def test_a_higher_desire_restarts_the_cooldown() -> None:
    driver = Driver(WarmPolicy(cold_start_s=5, cooldown_s=60, **NO_BURST_MEMORY), Stub())
    driver.step(0, 50.0)
    for t in range(2, 40, 2):
        driver.step(t, 10.0)
    driver.step(40, 50.0)  # back up to the current 5: the lower stretch is over
    for t in range(42, 100, 2):
        assert driver.step(t, 10.0).pods == 5
    assert driver.step(102, 10.0).rule == SCALE_DOWN


@pytest.mark.parametrize(("settings", "most_changes"), [(NO_BURST_MEMORY, 6), ({}, 8)])
def test_no_flapping_on_a_noisy_constant_series(
    settings: dict[str, float], most_changes: int
) -> None:
    noise = random.Random(12)
    driver = Driver(WarmPolicy(cold_start_s=5, **settings), Ewma(), service_time_s=0.1)
    raw_changes = 0
    previous_raw = None
    for i in range(1800):  # one hour at a 2 s tick, 50 req/s +- 20%
        rate = max(0.0, noise.gauss(50, 10))
        driver.step(i * 2.0, rate)
        raw = math.ceil(rate * 0.1)
        raw_changes += previous_raw is not None and raw != previous_raw
        previous_raw = raw
    pods = driver.pods()[150:]  # after five minutes of warm-up
    changes = sum(a != b for a, b in itertools.pairwise(pods))
    assert raw_changes > 500  # the measured rate alone would flap constantly
    # Both margins flip between 7 and 8 pods: 20% noise is twice Poisson's at 100
    # requests a 2 s sample, so the burst memory counts its tail (about x1.3) as surprise,
    # about what 2 MAE adds; at most one change in ~7 minutes either way.
    assert changes <= most_changes
    assert min(pods) >= 5  # the margin keeps the mean load (5 pods) covered
    assert driver.state.headroom < 1.5  # noise is not a burst: no runaway headroom


def test_zero_only_after_the_idle_period() -> None:
    driver = Driver(WarmPolicy(cold_start_s=5, idle_to_zero_s=300), Ewma())
    for t in range(0, 600, 10):
        driver.step(t, 10.0)
    for t in range(600, 1800, 10):  # idle from t=590, the last sample that saw a request
        driver.step(t, 0.0)
    zeros = [(t, d) for t, d in driver.decisions if d.pods == 0]
    assert zeros, "never dropped to zero"
    first_zero, decision = zeros[0]
    assert decision.rule == IDLE_ZERO
    assert all(d.pods >= 1 for t, d in driver.decisions if t < 590 + 300)
    assert all(d.pods == 0 for t, d in driver.decisions if t >= first_zero)
    # The forecast's decay from the last request holds nothing past the keep-alive: it is
    # memory of that request, not foresight.
    assert first_zero == 590 + 300


def test_zero_waits_for_a_forecast_burst() -> None:
    """Seasonal: idle between daily bursts, but the policy does not drop to zero right
    before the next one, and warms pods ahead of it."""

    def burst(t: float) -> float:
        return 100.0 if 9 * 3600 <= t % DAY_S < 9.5 * 3600 else 0.0

    policy = WarmPolicy(cold_start_s=5, reaction_delay_s=15, idle_to_zero_s=300)
    driver = Driver(policy, Seasonal(), service_time_s=0.1)
    start_of_burst = 2 * DAY_S + 9 * 3600
    for t in range(0, int(start_of_burst), 10):
        driver.step(t, burst(t))
    before = [(t, d) for t, d in driver.decisions if start_of_burst - 3600 <= t]
    assert before[0][1].pods == 0  # asleep an hour before
    warm = [t for t, d in before if d.pods >= 10]
    assert warm, "did not pre-warm"
    assert start_of_burst - policy.lead_s <= warm[0] < start_of_burst
    assert driver.forecaster.last_rate == 0.0  # all of it before a single request


def _idle_cycles(driver: Driver, gaps: list[int], t: int = 0) -> int:
    """Activity for one 10 s sample, then `gap` seconds of idle samples, for each gap."""
    for gap in gaps:
        driver.step(t, 5.0)
        t += 10
        for _ in range(gap // 10):
            driver.step(t, 0.0)
            t += 10
    driver.step(t, 5.0)
    return t + 10


def test_a_periodic_model_learns_a_prewarm_window() -> None:
    """Idle gaps of 300 s +- 30 (a 5-minute timer; 310 +- 30 from the last sample that saw
    a request): the window opens before the next one is due and the pod is gone in between;
    with fewer than min_idle_gaps nothing is held."""
    policy = WarmPolicy(cold_start_s=5)
    assert policy.idle_window(PolicyState()) is None  # no gaps: step aside
    driver = Driver(policy, Stub())
    t = _idle_cycles(driver, [300, 270, 330, 300, 290, 310, 280, 320, 300, 300])
    window = policy.idle_window(driver.state)
    assert window is not None and not window.keep_alive
    assert 280 * 0.9 - 1 <= window.start_s <= 280 and 340 <= window.end_s <= 340 * 1.1 + 1
    assert window.cost_s < window.aside_cost_s
    rules = [d.rule for _, d in driver.decisions[-40:]]
    driver.decisions.clear()
    for k in range(1, 40):  # the next idle period, sample by sample
        driver.step(t + 10 * k, 0.0)
    by_time = {round(time - t): d for time, d in driver.decisions}
    assert by_time[100].pods == 0 and by_time[100].rule == IDLE_ZERO
    opened = min(at for at, d in by_time.items() if d.pods >= 1)
    # `t` is the first idle sample, one interval after the idle period began.
    assert window.start_s - policy.lead_s - 10 <= opened < window.start_s - 10
    assert by_time[opened].rule == PREWARM
    assert by_time[380].pods == 0  # the window closed
    assert STEP_ASIDE in rules or IDLE_ZERO in rules


def test_memoryless_rare_gaps_step_aside_and_short_ones_keep_alive() -> None:
    """Exponential gaps: a mean far above the cold start's price holds nothing; a mean far
    below it keeps a pod alive (ski rental's break-even)."""
    rng = np.random.default_rng(0)
    rare = rng.exponential(4 * 3600, 60)
    assert best_window(rare, lead_s=16, kpa_keep_s=60, cold_cost_s=600) is None
    busy = rng.exponential(200, 60) + 60
    window = best_window(busy, lead_s=16, kpa_keep_s=60, cold_cost_s=600)
    assert window is not None and window.keep_alive and window.end_s >= np.quantile(busy, 0.9)


def test_a_window_needs_gaps_it_was_right_for() -> None:
    """One long gap among short ones is no pattern: no window is fitted around it alone."""
    gaps = [30.0] * 8 + [5000.0]
    assert best_window(gaps, lead_s=16, kpa_keep_s=60, cold_cost_s=600, min_gaps=4) is None
    assert best_window([300.0] * 3, lead_s=16, kpa_keep_s=60, cold_cost_s=600, min_gaps=4) is None


def test_gap_costs_by_hand() -> None:
    """A gap inside a keep-alive costs its time beyond the KPA's keep; one past it, the
    window and a cold start; a pre-warm pays from its start, lead before the window."""
    gaps = Gaps([100.0, 1000.0, 20.0, 895.0])
    keep = window_cost(gaps, 0.0, 500.0, 10, 60, 600)
    assert keep == pytest.approx((0 + (100 - 60) + (500 - 60 + 600) + (500 - 60 + 600)) / 4)
    pre = window_cost(gaps, 900.0, 1100.0, 10, 60, 600)
    # 20: the KPA's; 100: before the pod starts, cold; 895: the pod is starting, cold and
    # paid from 890; 1000: warm, paid from 890.
    assert pre == pytest.approx((0 + 600 + (600 + 5) + (1000 - 890)) / 4)


def test_a_fixed_idle_period_is_a_keep_alive() -> None:
    window = WarmPolicy(cold_start_s=5, idle_to_zero_s=45).idle_window(PolicyState())
    assert window is not None and window.keep_alive and window.end_s == 45


def test_missing_data_holds_and_never_drops_to_zero() -> None:
    driver = Driver(WarmPolicy(cold_start_s=5, idle_to_zero_s=300, stale_after_s=120), Ewma())
    for t in range(0, 300, 10):
        driver.step(t, 40.0)
    held = driver.decisions[-1][1].pods
    assert held == 4 + 0  # no error on a constant series: exactly Little's 4
    for t in range(300, 5000, 10):  # the metrics source is gone
        decision = driver.step(t, None)
        assert decision.pods == held
    assert decision.rule == STALE
    assert "old" in decision.reason
    assert driver.step(5000, 40.0).pods == held  # data again: back to deciding


def test_no_data_at_all_sets_nothing_beyond_min_scale() -> None:
    empty = WarmPolicy(cold_start_s=5).decide(0, Ewma(), 0.1, PolicyState())
    assert (empty.pods, empty.rule) == (0, NO_DATA)
    with_floor = WarmPolicy(cold_start_s=5, min_scale=2).decide(0, Ewma(), 0.1, PolicyState())
    assert (with_floor.pods, with_floor.rule) == (2, FLOOR)
    assert NO_DATA in with_floor.reason
    seeded = WarmPolicy(cold_start_s=5).decide(0, Ewma(), 0.1, PolicyState(pods=3))
    assert (seeded.pods, seeded.rule) == (3, STALE)


def test_reasons_say_what_decided() -> None:
    driver = Driver(WarmPolicy(cold_start_s=5, idle_to_zero_s=120, cooldown_s=30), Stub())
    driver.step(0, 30.0)
    driver.step(2, 80.0)
    for t in range(4, 60, 2):
        driver.step(t, 10.0)
    for t in range(60, 400, 10):
        driver.step(t, 0.0)
    driver.step(1000, None)
    rules = {d.rule for _, d in driver.decisions}
    assert rules >= {INITIAL, SCALE_UP, COOLDOWN, SCALE_DOWN, STEADY, IDLE_ZERO, STALE}
    by_rule = {d.rule: d.reason for _, d in driver.decisions}
    assert "forecast" in by_rule[SCALE_UP] and "req/s" in by_rule[SCALE_UP]
    assert "idle" in by_rule[IDLE_ZERO]
    assert "lower for" in by_rule[COOLDOWN]


@pytest.mark.parametrize(
    "settings",
    [
        {"cold_start_s": -1},
        {"cold_start_s": math.nan},
        {"cold_start_s": 1, "target_concurrency": 0},
        {"cold_start_s": 1, "max_down_fraction": 0},
        {"cold_start_s": 1, "min_scale": 5, "max_scale": 2},
        {"cold_start_s": 1, "zero_risk": 1},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        WarmPolicy(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("service_time_s", [-0.1, math.nan, math.inf])
def test_bad_service_time_is_refused(service_time_s: float) -> None:
    stub = Stub()
    stub.observe(0, 1.0)
    with pytest.raises(ValueError):
        WarmPolicy(cold_start_s=5).decide(0, stub, service_time_s, PolicyState())


# -- the burst memory ------------------------------------------------------------------------

# A sample of 30 req/s over 15 s where 10 req/s was forecast: 450 requests, taken at their
# Poisson lower bound 450 - 2 sqrt(450), over the 150 expected.
BURST_RATIO = (450 - 2 * math.sqrt(450)) / 150  # 2.717


def bursty_driver(bursts: list[int], until: int, **settings: float) -> Driver:
    """10 req/s sampled every 15 s, with one 30 req/s sample at each time in `bursts`."""
    driver = Driver(WarmPolicy(cold_start_s=5, **settings), Stub(), service_time_s=0.1)
    for t in range(0, until + 1, 15):
        driver.step(t, 30.0 if t in bursts else 10.0)
    return driver


def test_a_burst_is_a_ratio_over_the_counting_noise() -> None:
    policy = WarmPolicy(cold_start_s=5)
    assert policy._surprise(30.0, 10.0, 15.0) == pytest.approx(BURST_RATIO)
    # 6 requests where 1.5 were forecast: 6 - 2 sqrt(6) = 1.1 < 1.5, counting noise.
    assert policy._surprise(0.4, 0.1, 15.0) == 1.0
    assert policy._surprise(5.0, 10.0, 15.0) == 1.0  # a fall is no surprise
    assert policy._surprise(100.0, 0.0, 15.0) == policy.max_headroom  # a wake from zero
    assert policy._surprise(1000.0, 10.0, 15.0) == policy.max_headroom  # bounded


def test_recurring_bursts_are_remembered_as_headroom() -> None:
    """Three bursts in the hour: the 99th percentile of 200 samples' surprises is the
    second largest, so the headroom is the bursts' ratio, and 10 req/s is warmed as
    10 x 2.717 = 27.2 req/s, 2.72 pods at 0.1 s each: 3, where the forecast alone wants 1."""
    bursts = [600, 1200, 1800]
    driver = bursty_driver(bursts, until=3000)
    assert len(driver.state.surprises) == 3000 // 15 + 1
    assert driver.state.headroom == pytest.approx(BURST_RATIO)
    assert driver.state.peak_rps == 30.0  # the rates' 99th percentile: a burst's
    decision = driver.decisions[-1][1]
    assert (decision.pods, decision.rule) == (3, STEADY)
    assert "burst headroom" in decision.reason
    plain = bursty_driver(bursts, until=3000, **NO_BURST_MEMORY)
    assert plain.decisions[-1][1].pods == 1
    assert plain.state.headroom == 1.0


def test_headroom_stops_at_the_peak() -> None:
    """At the burst itself the forecast is 30 req/s: x2.717 would be 81.5, but the rates
    seen peak at 30, so it warms for peak_factor x 30 req/s: 3 pods (6 at a factor of 2)."""
    driver = bursty_driver([600, 1200, 1800], until=1800)
    assert driver.decisions[-1][1].pods == 3
    doubled = bursty_driver([600, 1200, 1800], until=1800, peak_factor=2.0)
    assert doubled.decisions[-1][1].pods == 6


def test_bursts_are_forgotten_after_the_window() -> None:
    """The first burst (t=600) leaves the hour's window at t=4215 (600 < 4215 - 3600):
    two bursts among 241 samples are under the 99th percentile (the third largest), so
    the headroom is 1 and, a cooldown and halving steps later, the pods are back to 1."""
    driver = bursty_driver([600, 1200, 1800], until=4200)
    assert driver.state.headroom == pytest.approx(BURST_RATIO)
    for t in range(4215, 4500, 15):
        driver.step(t, 10.0)
        if t == 4215:
            assert driver.state.headroom == 1.0
    assert driver.decisions[-1][1].pods == 1
    assert driver.state.surprises[0][0] == 4485 - 3600  # the window: the last hour


def test_a_one_off_burst_is_not_paid_for_all_hour() -> None:
    """One burst is the largest surprise only while the window holds under 100 samples
    (the 99th percentile of n < 100 values is their maximum); then it is the error
    margin's alone, which forgets it in minutes."""
    driver = bursty_driver([600], until=15 * 98)
    assert len(driver.state.surprises) == 99
    assert driver.state.headroom == pytest.approx(BURST_RATIO)
    driver.step(15 * 99, 10.0)
    assert len(driver.state.surprises) == 100
    assert driver.state.headroom == 1.0


def test_the_burst_history_is_bounded() -> None:
    policy = WarmPolicy(cold_start_s=5)
    driver = Driver(policy, Stub(), service_time_s=0.1)
    for t in range(3000):  # a sample a second for 50 minutes: 3000 within the window
        driver.step(t, 30.0 if t % 50 == 0 else 10.0)
    assert len(driver.state.surprises) == SURPRISES_KEPT
    assert driver.state.surprises[0][0] == 3000 - SURPRISES_KEPT
    # Deciding again without a new sample folds nothing in.
    driver.step(3000, None)
    assert len(driver.state.surprises) == SURPRISES_KEPT
    assert driver.state.surprises[-1][0] == 2999


def test_stale_data_leaves_the_burst_memory_alone() -> None:
    """Missing metrics hold the last decision, as before; the window is not touched."""
    driver = bursty_driver([600, 1200, 1800], until=3000)
    held = driver.decisions[-1][1].pods
    kept = list(driver.state.surprises)
    for t in range(3200, 9000, 100):
        decision = driver.step(t, None)
        assert (decision.pods, decision.rule) == (held, STALE)
    assert list(driver.state.surprises) == kept


@pytest.mark.parametrize(
    "settings",
    [{"surprise_quantile": 0}, {"max_headroom": 0.5}, {"peak_factor": math.inf}],
)
def test_bad_burst_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        WarmPolicy(cold_start_s=1, **settings)
