"""How many warm pods one model needs: forecast ahead, Little's law, hysteresis, idle-to-zero.

`WarmPolicy.decide` is deterministic: it reads the time it is given, a forecaster and the
caller's `PolicyState`, and never the clock, so the controller, the simulator and the tests
drive the same code. Call it after each observation (or more often): idle periods are
tracked from the forecaster's last sample at each call.

Each `Decision` names the rule that set its pod count (`rule`) and says why (`reason`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from kindling.controller.forecast import Forecaster

# Rule names, as carried in Decision.rule and at the start of Decision.reason.
INITIAL = "initial"
STALE = "stale-hold"
NO_DATA = "no-data"
IDLE_ZERO = "idle-to-zero"
SCALE_UP = "scale-up"
SCALE_DOWN = "scale-down"
COOLDOWN = "cooldown"
STEADY = "steady"
FLOOR = "floor"
CEILING = "ceiling"


@dataclass(frozen=True)
class Decision:
    pods: int
    reason: str
    rule: str


# The most recent idle gaps kept: 500 gives a 99th percentile from the 5 longest, and
# bounds memory per model.
IDLE_GAPS_KEPT = 500


@dataclass
class PolicyState:
    """What `WarmPolicy.decide` remembers between calls for one model."""

    # The last decision's pods; seed it with the live value when the controller restarts.
    pods: int | None = None
    # When the desire first went under `pods` (None: it has not).
    below_since: float | None = None
    # (time, desire) over the last cooldown: a scale-down goes to their maximum.
    recent: deque[tuple[float, int]] = field(default_factory=deque)
    # When the rate last went idle (None: active), whether it was ever active, and the
    # lengths of the idle gaps between activity, for the learned idle period.
    idle_since: float | None = None
    seen_active: bool = False
    idle_gaps: deque[float] = field(default_factory=lambda: deque(maxlen=IDLE_GAPS_KEPT))


@dataclass
class WarmPolicy:
    """Settings. Times in seconds, rates in req/s."""

    # The measured cold-start time of the model's pod (the runtime's cold-start timeline).
    cold_start_s: float
    # The controller's own delay from a change in traffic to a patched min-scale: one scrape
    # interval plus one decision tick plus the API round trip. 15 s: a 10 s poll, a 2 s tick
    # (KPA's tick, config-autoscaler), and slack for the patch.
    reaction_delay_s: float = 15.0
    # In-flight requests one pod should carry. 1.0: a CPU inference pod runs one request at
    # a time at full speed (the runtime's batcher only helps when requests queue).
    target_concurrency: float = 1.0
    # Margin in units of the forecast's mean absolute error. 2.0: for roughly normal errors
    # MAE = sigma * sqrt(2/pi) ≈ 0.8 sigma, so 2 MAE ≈ 1.6 sigma, ~95% one-sided cover.
    margin_k: float = 2.0
    # How long the desire must stay lower before scaling down. 60 s: KPA's stable window
    # (config-autoscaler stable-window), so Kindling gives pods back no faster than Knative.
    cooldown_s: float = 60.0
    # The most one scale-down step gives back, as a fraction of the pods. 0.5: KPA's
    # max-scale-down-rate 2.0 (config-autoscaler) halves at most per step.
    max_down_fraction: float = 0.5
    # Idle time before dropping to zero; None learns it from the idle gaps seen (below).
    idle_to_zero_s: float | None = None
    # Used until enough gaps are seen. 600 s: AWS Lambda's fixed 10-minute keep-alive
    # (Shahrad et al., "Serverless in the Wild", USENIX ATC 2020, §4).
    default_idle_to_zero_s: float = 600.0
    # Learned idle period bounds. 90 s: never quicker than Knative itself (60 s stable window
    # plus 30 s scale-to-zero-grace-period, config-autoscaler). 4 h: the histogram range of
    # Shahrad et al.'s hybrid histogram policy.
    min_idle_to_zero_s: float = 90.0
    max_idle_to_zero_s: float = 4 * 3600.0
    # The learned keep-alive covers this quantile of idle gaps, plus a margin: Shahrad et
    # al.'s hybrid histogram keeps alive to the 99th percentile of idle times plus 10%.
    idle_quantile: float = 0.99
    idle_margin: float = 0.10
    # Gaps needed before the learned value replaces the default: the 99th percentile of
    # fewer than ten gaps is just the largest one.
    min_idle_gaps: int = 10
    # A rate at or under this counts as idle. 0.01 req/s (under one request per 100 s):
    # Prometheus' rate() of an unchanged counter is exactly 0, so this only forgives a stray
    # request or two in a window.
    idle_rate_rps: float = 0.01
    # Zero only if the chance of a request arriving within the lead, were the forecast rate
    # Poisson, is under this: P = 1 - exp(-rate * lead). 5%: one wake-up in twenty pays a
    # cold start.
    zero_risk: float = 0.05
    # No sample for this long means the metrics are missing: hold. 120 s: two of
    # Prometheus' default 1 m scrape intervals (global.scrape_interval).
    stale_after_s: float = 120.0
    # The user's own min-scale and max-scale (None: unbounded, Knative's max-scale 0).
    min_scale: int = 0
    max_scale: int | None = None

    def __post_init__(self) -> None:
        for name in ("cold_start_s", "reaction_delay_s", "margin_k", "cooldown_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (math.isfinite(self.target_concurrency) and self.target_concurrency > 0):
            raise ValueError("target_concurrency must be > 0")
        if not 0 < self.max_down_fraction <= 1:
            raise ValueError("max_down_fraction must be in (0, 1]")
        if not 0 < self.zero_risk < 1:
            raise ValueError("zero_risk must be in (0, 1)")
        if self.min_scale < 0 or (self.max_scale is not None and self.max_scale < self.min_scale):
            raise ValueError("need 0 <= min_scale <= max_scale")

    @property
    def lead_s(self) -> float:
        """How far ahead to forecast: a pod asked for now is ready after this long."""
        return self.cold_start_s + self.reaction_delay_s

    def pods_for(self, rate_rps: float, service_time_s: float) -> float:
        """Little's law (Little 1961, "A proof for the queuing formula L = λW", Operations
        Research 9(3)): in-flight requests = arrival rate x time in service, over the
        concurrency one pod should carry."""
        return rate_rps * service_time_s / self.target_concurrency

    def learned_idle_to_zero_s(self, state: PolicyState) -> float:
        """The idle period before zero: set, learned from idle gaps, or the default."""
        if self.idle_to_zero_s is not None:
            return self.idle_to_zero_s
        if len(state.idle_gaps) < self.min_idle_gaps:
            return self.default_idle_to_zero_s
        gaps = sorted(state.idle_gaps)
        tail = gaps[min(len(gaps) - 1, math.ceil(self.idle_quantile * len(gaps)) - 1)]
        learned = tail * (1 + self.idle_margin)
        return min(self.max_idle_to_zero_s, max(self.min_idle_to_zero_s, learned))

    def decide(
        self, now: float, forecaster: Forecaster, service_time_s: float, state: PolicyState
    ) -> Decision:
        """The warm pods wanted at `now`; updates `state` (the caller keeps it per model)."""
        if not (math.isfinite(service_time_s) and service_time_s >= 0):
            raise ValueError(f"service_time_s must be a finite number >= 0, not {service_time_s}")
        decision = self._decide(now, forecaster, service_time_s, state)
        state.pods = decision.pods
        return decision

    def _decide(
        self, now: float, forecaster: Forecaster, service_time_s: float, state: PolicyState
    ) -> Decision:
        last_t = forecaster.last_t
        if last_t is None or now - last_t > self.stale_after_s:
            return self._hold(now, last_t, state)
        self._track_idle(last_t, forecaster.last_rate or 0.0, state)

        lead = self.lead_s
        rate = forecaster.forecast(lead)
        error = forecaster.error()
        load = self.pods_for(rate + self.margin_k * error, service_time_s)
        # Round away float dust first: 10 req/s x 0.1 s is 1.0000000000000002, not 2 pods.
        little = math.ceil(round(load, 9))
        why = (
            f"forecast {rate:.3g} req/s at +{lead:.0f}s + {self.margin_k:g}x error "
            f"{error:.3g} -> {load:.3g} pods at concurrency {self.target_concurrency:g}"
        )

        idle_for = now - state.idle_since if state.idle_since is not None else 0.0
        keep_alive = self.learned_idle_to_zero_s(state)
        wake_risk = -math.expm1(-rate * lead)
        if state.idle_since is not None and idle_for >= keep_alive and wake_risk < self.zero_risk:
            desired = 0
            rule = IDLE_ZERO
            why = (
                f"idle {idle_for:.0f}s >= {keep_alive:.0f}s and a request within the lead is "
                f"unlikely ({wake_risk:.1%} < {self.zero_risk:.0%}); {why}"
            )
            state.below_since = None
            state.recent.clear()
            return self._bounded(desired, rule, why)

        # Until the idle period has run, keep at least one pod warm (a keep-alive).
        desired = max(little, 1)
        if little < 1:
            why += f"; keep-alive 1 pod, idle {idle_for:.0f}s < {keep_alive:.0f}s"
        state.recent.append((now, desired))
        while state.recent and state.recent[0][0] < now - self.cooldown_s:
            state.recent.popleft()

        current = state.pods
        if current is None or desired > current:
            state.below_since = None
            return self._bounded(desired, SCALE_UP if current is not None else INITIAL, why)
        if desired == current:
            state.below_since = None
            return self._bounded(current, STEADY, why)

        # desired < current: give pods back only after a cooldown of lower desire, to the
        # highest desire seen within the cooldown, and by at most max_down_fraction a step.
        if state.below_since is None:
            state.below_since = now
        waited = now - state.below_since
        if waited < self.cooldown_s:
            return self._bounded(
                current,
                COOLDOWN,
                f"{why}; want {desired}, lower for {waited:.0f}s of {self.cooldown_s:.0f}s",
            )
        window_max = max(d for _, d in state.recent)
        step_floor = math.ceil(current * (1 - self.max_down_fraction))
        target = max(window_max, step_floor)
        if target >= current:
            return self._bounded(
                current, COOLDOWN, f"{why}; want {desired}, window max {window_max} holds {current}"
            )
        if target == window_max:
            state.below_since = None  # settled: a further drop waits a fresh cooldown
        return self._bounded(
            target,
            SCALE_DOWN,
            f"{why}; lower for {waited:.0f}s >= {self.cooldown_s:.0f}s, "
            f"{current} -> {target} (window max {window_max}, step limit {step_floor})",
        )

    def _hold(self, now: float, last_t: float | None, state: PolicyState) -> Decision:
        """Missing metrics: hold the last decision; never scale to zero on no data."""
        if last_t is None:
            if state.pods is None:
                return self._bounded(0, NO_DATA, "no samples yet: nothing set beyond min-scale")
            return self._bounded(state.pods, STALE, f"no samples yet: hold {state.pods}")
        age = now - last_t
        if state.pods is None:
            return self._bounded(
                0,
                NO_DATA,
                f"last sample {age:.0f}s old > {self.stale_after_s:.0f}s and no "
                "earlier decision: nothing set beyond min-scale",
            )
        return self._bounded(
            state.pods,
            STALE,
            f"last sample {age:.0f}s old > {self.stale_after_s:.0f}s: hold {state.pods}",
        )

    def _track_idle(self, last_t: float, last_rate: float, state: PolicyState) -> None:
        if last_rate <= self.idle_rate_rps:
            if state.idle_since is None:
                state.idle_since = last_t
        elif state.idle_since is not None:
            if state.seen_active:
                state.idle_gaps.append(last_t - state.idle_since)
            state.idle_since = None
        if last_rate > self.idle_rate_rps:
            state.seen_active = True

    def _bounded(self, pods: int, rule: str, why: str) -> Decision:
        """Clamp to the user's min-scale and max-scale, naming the bound when it decides."""
        if pods < self.min_scale:
            return Decision(
                self.min_scale,
                f"{FLOOR}: min-scale {self.min_scale} over {rule} {pods} ({why})",
                FLOOR,
            )
        if self.max_scale is not None and pods > self.max_scale:
            return Decision(
                self.max_scale,
                f"{CEILING}: max-scale {self.max_scale} under {rule} {pods} ({why})",
                CEILING,
            )
        return Decision(pods, f"{rule}: {pods} pods ({why})", rule)
