"""The simulated policies: Knative's KPA, a fixed keep-alive, Shahrad et al.'s hybrid
histogram, and Kindling (KPA plus WarmPolicy's min-scale). Each drives sim_pods.Engine.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from kindling.controller.forecast import Forecaster
from kindling.controller.kpa import TICK_INTERVAL_S, Active, Kpa, KpaConfig
from kindling.controller.policy import PolicyState, WarmPolicy
from kindling.controller.sim_pods import Engine


class KnativeKpa:
    """Knative's KPA, `controller/kpa.py`, fed the simulated revision-wide concurrency.

    Each whole second the second's mean concurrency (queued + in service: what the
    queue-proxies and the activator report together) is recorded, as the autoscaler's 1 s
    scrape does, while any pod exists or requests are buffered; every 2 s (multiscaler
    tickInterval) the decider ticks and the Deployment is scaled to the PA's replicas.
    A request arriving while the revision has no pods pokes the decider at once, as the
    activator's immediate stat does (multiscaler Poke).

    Everything is `config-autoscaler`'s defaults (KpaConfig()), with containerConcurrency
    1, so the target is 1 x 0.7. target-burst-capacity stays at its default 211: a pod of
    containerConcurrency 1 never reaches that spare capacity, so the activator stays in
    the path at every scale (as on a real cluster with these settings) and a revision goes
    to zero a stable window after its last traffic (kpa.py's finding), not window + grace.
    """

    name = "knative-kpa"

    def __init__(self, config: KpaConfig | None = None, name: str = "knative-kpa") -> None:
        self.name = name  # "kpa-static-floor": the same KPA with a user's fixed min-scale
        self.config = config or KpaConfig(container_concurrency=1)
        self.kpa = Kpa(self.config)
        self._recorded: float | None = None  # the second a poke already recorded

    def _apply(self, engine: Engine, replicas: int, t: float) -> None:
        engine.scale_to(replicas, t)

    def on_arrival(self, engine: Engine, t: float) -> None:
        if not engine.active_pods() and self.kpa.decider_pods == 0:
            self._poke(engine, t, float(engine.in_system))

    def _poke(self, engine: Engine, t: float, concurrency: float) -> None:
        """The activator reports concurrency at once (not on the next 1 s scrape), once a
        second: a decider at zero ticks at once (multiscaler.Poke)."""
        second = math.floor(t)
        if self._recorded != second:
            self._recorded = second
            if self.kpa.record(second, concurrency):
                self._apply(engine, self.kpa.decide(t, engine.ready_count()).desired_pods, t)

    def at_rest(self, t: float) -> bool:
        """The KPA at zero with nothing to do: its ticks change nothing until traffic
        comes (no metrics in the stable window, so the decider's result is invalid and the
        PA stays Inactive at zero replicas behind the activator)."""
        kpa = self.kpa
        return (
            kpa.replicas == 0
            and kpa.decider_pods == 0
            and kpa.active == Active.INACTIVE
            and kpa.activator_in_path
            and kpa.decider.stable.is_empty(t)
        )

    def resume_at(self, engine: Engine, second: float) -> float:
        """Engine._skip_idle: at rest, nothing until the next arrival."""
        return math.inf if self.at_rest(second) else second

    def on_second(self, engine: Engine, t: float) -> None:
        concurrency = engine.take_concurrency()
        second = t - 1
        if (engine.pods or concurrency > 0) and self._recorded != second:
            if self.kpa.record(second, concurrency):
                self._apply(engine, self.kpa.decide(t, engine.ready_count()).desired_pods, t)
        if t % TICK_INTERVAL_S == 0:
            self._apply(engine, self.kpa.decide(t, engine.ready_count()).desired_pods, t)


class KeepAlive:
    """A fixed keep-alive (AWS Lambda: an instance per concurrent request, kept 10 minutes
    after its last use; Shahrad et al. ATC'20 §4.1 use it as the state of the practice).
    A request that finds no free instance and no starting one to wait for starts one."""

    name = "keepalive-10m"

    def __init__(self, keep_alive_s: float = 600.0) -> None:
        self.keep_alive_s = keep_alive_s

    def window_s(self) -> float:
        return self.keep_alive_s

    def resume_at(self, engine: Engine, second: float) -> float:
        """Engine._skip_idle: with no pod, nothing to keep alive."""
        return math.inf

    def on_arrival(self, engine: Engine, t: float) -> None:
        waiting = len(engine.queue)
        if waiting:
            starting = engine.starting_count() * engine.cc
            for _ in range(math.ceil((waiting - starting) / engine.cc)):
                engine.start_pod(t)

    def on_second(self, engine: Engine, t: float) -> None:
        engine.take_concurrency()
        window = self.window_s()
        for pod in engine.idle_ready():
            if t - pod.last_used >= window:
                engine.remove_pod(pod, t)


# Shahrad et al.'s hybrid histogram policy (USENIX ATC 2020, §4.2). The values below are
# as implemented in the open-source dslab-faas simulator's port of the policy
# (github.com/osukhoroslov/dslab, crates/dslab-faas/src/extra/hybrid_histogram.rs:
# HEAD 0.05, TAIL 0.99, bin_len 60 s, cv_thr 2.0, oob_thr 0.5, hist_margin 0.1,
# arima_margin 0.15, and keep-alive = range, pre-warm 0 while the pattern is uncertain),
# which agree with an OpenWhisk port (cvThreshold 2.0) and with the paper as commonly
# summarised (5th/99th percentiles, 10% margins, 1-minute bins, 4-hour range). The paper's
# own text was not reachable from here to confirm them line by line.
HYBRID_HEAD = 0.05
HYBRID_TAIL = 0.99
HYBRID_MARGIN = 0.10
HYBRID_BIN_S = 60.0
HYBRID_RANGE_S = 4 * 3600.0
HYBRID_CV_THRESHOLD = 2.0
HYBRID_OOB_THRESHOLD = 0.5
HYBRID_ARIMA_MARGIN = 0.15
# Idle times the out-of-bounds forecast fits on: the most recent, so memory stays bounded.
HYBRID_HISTORY = 512
# The forecast's autoregressive orders tried (by AIC), as an automatic ARIMA fit tries its.
HYBRID_AR_ORDERS = (1, 2, 3)


def forecast_idle_s(history: np.ndarray) -> float:
    """The next idle time from the last ones: an AR(p) model of the centred series fitted by
    least squares, p chosen by AIC. The paper fits ARIMA here; an AR model is the part of
    it that a few dozen idle times can pin down (no differencing: idle times do not trend).
    Too few points for a fit: the last one, as dslab-faas does with one sample, or the mean.
    Never negative."""
    n = len(history)
    if n < 4:
        return float(history[-1] if n == 1 else history.mean())
    mean = float(history.mean())
    x = history - mean
    best: tuple[float, float] | None = None  # (aic, forecast)
    for p in HYBRID_AR_ORDERS:
        if n - p < p + 2:
            break
        lags = np.column_stack([x[p - k - 1 : n - k - 1] for k in range(p)])
        target = x[p:]
        coef, *_ = np.linalg.lstsq(lags, target, rcond=None)
        residual = target - lags @ coef
        sigma2 = max(float(residual @ residual) / len(target), 1e-12)
        aic = len(target) * math.log(sigma2) + 2 * p
        forecast = mean + float(coef @ x[::-1][:p])
        if best is None or aic < best[0]:
            best = (aic, forecast)
    predicted = best[1] if best is not None else mean
    return predicted if predicted > 0 else mean


@dataclass
class IdleHistogram:
    """Idle times in `bin_s` bins over [0, range); longer ones are out of bounds."""

    bin_s: float = HYBRID_BIN_S
    range_s: float = HYBRID_RANGE_S
    bins: np.ndarray = field(init=False)
    oob: int = 0

    def __post_init__(self) -> None:
        self.bins = np.zeros(round(self.range_s / self.bin_s), dtype=np.int64)

    def add(self, idle_s: float) -> None:
        index = int(idle_s // self.bin_s)
        if index < len(self.bins):
            self.bins[index] += 1
        else:
            self.oob += 1

    @property
    def total(self) -> int:
        return int(self.bins.sum())

    def cv(self) -> float:
        """Coefficient of variation of the bin counts: high when idle times concentrate
        in a few bins (a pattern), low when spread out."""
        mean = self.bins.mean()
        return float(self.bins.std(ddof=1) / mean) if mean > 0 else 0.0

    def oob_rate(self) -> float:
        seen = self.total + self.oob
        return self.oob / seen if seen else 0.0

    def percentile_bin(self, p: float) -> int:
        """The first bin whose cumulative share reaches p."""
        cumulative = np.cumsum(self.bins) / max(1, self.total)
        return int(min(np.searchsorted(cumulative, p - 1e-12), len(self.bins) - 1))


class HybridHistogram(KeepAlive):
    """Shahrad et al.'s hybrid histogram policy, per application (here: the model).

    It records the application's idle times (from the moment it holds no request to the
    next arrival) in a histogram. While the histogram is representative (CV of its bin
    counts >= 2), the pre-warm window is the head percentile's bin start less the margin
    and the keep-alive window the tail percentile's bin end plus the margin. With a
    pre-warm window, instances are unloaded as soon as the application goes idle and one
    is loaded again when the window ends, kept for the keep-alive window. While the
    histogram is not representative it falls back to keep-alive = the histogram range and
    no pre-warm. When at least half the idle times are out of bounds (over the 4 h range)
    the next idle time is forecast from the recent ones (forecast_idle_s: the paper's
    ARIMA, as an AR model): pre-warm at the forecast less 15 % and keep alive for 30 % of it
    (15 % either side), as dslab-faas's port does.

    Instances are per concurrent request, as in KeepAlive.
    """

    name = "hybrid-histogram"

    def __init__(
        self,
        head: float = HYBRID_HEAD,
        tail: float = HYBRID_TAIL,
        margin: float = HYBRID_MARGIN,
        bin_s: float = HYBRID_BIN_S,
        range_s: float = HYBRID_RANGE_S,
        cv_threshold: float = HYBRID_CV_THRESHOLD,
        oob_threshold: float = HYBRID_OOB_THRESHOLD,
        arima_margin: float = HYBRID_ARIMA_MARGIN,
    ) -> None:
        super().__init__(range_s)
        self.head, self.tail, self.margin = head, tail, margin
        self.cv_threshold, self.oob_threshold = cv_threshold, oob_threshold
        self.arima_margin = arima_margin
        self.histogram = IdleHistogram(bin_s, range_s)
        self.idle_times: deque[float] = deque(maxlen=HYBRID_HISTORY)
        self._forecast: float | None = None  # forecast_idle_s(idle_times), when asked
        self._window: float | None = None  # window_s(), until the next idle time
        self._idle_since: float | None = None
        self._prewarm_at: float | None = None
        self._unloaded = False

    def idle_forecast_s(self) -> float:
        """The next idle time, fitted once per new idle time and only when asked (an
        out-of-bounds pattern), not on every arrival of a busy workload."""
        if self._forecast is None:
            self._forecast = forecast_idle_s(np.asarray(self.idle_times))
        return self._forecast

    def out_of_bounds(self) -> bool:
        return self.histogram.oob_rate() >= self.oob_threshold  # 0 before any idle time

    def representative(self) -> bool:
        h = self.histogram
        return not self.out_of_bounds() and h.cv() >= self.cv_threshold

    def prewarm_s(self) -> float:
        if self.out_of_bounds():
            return self.idle_forecast_s() * (1 - self.arima_margin)
        if not self.representative():
            return 0.0
        h = self.histogram
        return h.percentile_bin(self.head) * h.bin_s * (1 - self.margin)

    def window_s(self) -> float:
        """The keep-alive window; the histogram changes only on an arrival, so it is worked
        out once per idle time, not every simulated second."""
        if self._window is None:
            self._window = self._keep_alive_s()
        return self._window

    def _keep_alive_s(self) -> float:
        if self.out_of_bounds():
            return self.idle_forecast_s() * self.arima_margin * 2
        if not self.representative():
            return self.histogram.range_s
        h = self.histogram
        return (h.percentile_bin(self.tail) + 1) * h.bin_s * (1 + self.margin)

    def on_arrival(self, engine: Engine, t: float) -> None:
        if engine.last_gap is not None:
            self.histogram.add(engine.last_gap)
            self.idle_times.append(engine.last_gap)
            self._forecast = self._window = None
        self._idle_since = None
        self._prewarm_at = None
        self._unloaded = False
        super().on_arrival(engine, t)

    def resume_at(self, engine: Engine, second: float) -> float:
        """Engine._skip_idle: idle and unloaded, nothing until the pre-warm."""
        if self._idle_since is None or (self._prewarm_at is not None and not self._unloaded):
            return second
        return math.inf if self._prewarm_at is None else max(second, math.ceil(self._prewarm_at))

    def on_second(self, engine: Engine, t: float) -> None:
        if engine.in_system == 0 and self._idle_since is None:
            self._idle_since = engine.idle_since if engine.idle_since is not None else 0.0
            prewarm = self.prewarm_s()
            if prewarm > 0:
                self._prewarm_at = self._idle_since + prewarm
        if self._prewarm_at is not None:
            if not self._unloaded:
                for pod in engine.idle_ready():  # unload now, load again at pre-warm
                    engine.remove_pod(pod, t)
                self._unloaded = True
            if t >= self._prewarm_at:
                self._prewarm_at = None
                if not engine.active_pods():
                    engine.start_pod(t)
        super().on_second(engine, t)


@dataclass(frozen=True)
class Tick:
    """One decision of the simulated controller: what it read (None: no answer) with how
    many pods were ready, and what it decided. A recorded run replays these answers to the
    deployed loop (tests/controller/test_loop_replay.py)."""

    t: float
    rate: float | None
    ready_pods: int
    pods: int
    rule: str


# What the simulated controller reads (Kindling.input).
INPUTS = ("exact", "scrape", "prometheus")


@dataclass
class Kindling(KnativeKpa):
    """What the controller does on Knative: the KPA runs as ever, and every scrape
    interval Kindling's WarmPolicy sets the Revision's min-scale, so the warm pods are
    max(the KPA's desire, Kindling's min-scale).

    The policy sees what the controller would: the request rate as its `input` reads it,
    the measured mean service time and cold start. Its pods
    are counted against the KPA's own target (containerConcurrency x 0.7), so both speak
    the same unit.
    """

    policy: WarmPolicy = field(default_factory=lambda: WarmPolicy(cold_start_s=0.4))
    forecaster: Forecaster | None = None
    service_time_s: float = 0.01
    scrape_s: float = 15.0
    config: KpaConfig | None = None
    name: str = "kindling"
    # What the forecaster is fed every scrape_s (inputs.py says what the deployed loop
    # reads): "exact", every arrival counted over the interval, activator-buffered ones
    # included; "scrape", the deployed default: the requests the pods took since the last
    # scrape (their counters' deltas, a pod started since counted whole), and a rate of 0
    # while no pod is ready (no pod answers; loop.py observes 0); "prometheus":
    # sum(rate(...[window_s])) over a Prometheus' samples of those counters every
    # prometheus_scrape_s, and with fewer than two samples in the window no answer (0 at
    # zero pods, else the last rate holds).
    input: str = "exact"
    window_s: float = 60.0
    prometheus_scrape_s: float = 30.0

    def __post_init__(self) -> None:
        KnativeKpa.__init__(self, self.config, self.name)
        if self.forecaster is None:
            from kindling.controller.forecast import Holt

            self.forecaster = Holt()
        self.state = PolicyState()
        self._arrived = 0
        self._served_at_scrape: int | None = None
        self._samples: deque[tuple[float, int]] = deque()  # Prometheus' (t, counter)
        self.decisions: list[tuple[float, int, str]] = []
        self.ticks: list[Tick] = []
        if self.input not in INPUTS:
            raise ValueError(f"input {self.input!r}: one of {', '.join(INPUTS)}")

    def on_arrival(self, engine: Engine, t: float) -> None:
        if self.input == "exact":
            self._arrived += 1
        super().on_arrival(engine, t)

    def _rate(self, engine: Engine, ready: bool) -> float | None:
        """The rate the forecaster sees now (`ready`: a pod is), or None where the deployed
        loop gets no answer and holds."""
        if self.input == "exact":
            rate, self._arrived = self._arrived / self.scrape_s, 0
            return rate
        if self.input == "scrape":
            previous, self._served_at_scrape = self._served_at_scrape, engine.served
            if not ready:
                return 0.0
            # Pods that started since the last scrape count whole (scrape.py); a first scrape
            # of pods that were up before it is a baseline.
            return None if previous is None else (engine.served - previous) / self.scrape_s
        # _scrape, just before at this t, kept only the window's samples.
        if len(self._samples) < 2:
            return None if ready else 0.0
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0)

    def _scrape(self, engine: Engine, t: float) -> None:
        """Prometheus' scrape: the counters exist only while a pod does. Samples older than
        the rate window are dropped every second, so the rest are the window's."""
        if self.input != "prometheus":
            return
        while self._samples and self._samples[0][0] <= t - self.window_s:
            self._samples.popleft()
        if t % self.prometheus_scrape_s == 0 and engine.ready_count() > 0:
            self._samples.append((t, engine.served))

    def resume_at(self, engine: Engine, second: float) -> float:
        """Engine._skip_idle: the KPA at rest, the next decision."""
        if not self.at_rest(second):
            return second
        return math.ceil(second / self.scrape_s) * self.scrape_s

    def on_second(self, engine: Engine, t: float) -> None:
        self._scrape(engine, t)
        if t % self.scrape_s == 0:
            assert self.forecaster is not None
            ready = engine.ready_count()
            rate = self._rate(engine, ready > 0)
            if rate is not None:
                self.forecaster.observe(t, rate)
            decision = self.policy.decide(t, self.forecaster, self.service_time_s, self.state)
            self.ticks.append(Tick(t, rate, ready, decision.pods, decision.rule))
            engine.forecast_now = self.forecaster.forecast(self.policy.lead_s)
            if decision.pods != self.kpa.config.min_scale:
                self.decisions.append((t, decision.pods, decision.rule))
                result = self.kpa.set_min_scale(t, ready, decision.pods)
                self._apply(engine, result.desired_pods, t)
                if decision.pods > 0 and ready == 0:
                    # The deployed controller's warm-up request (loop.py): min-scale does
                    # not wake a Revision at zero until a request reaches it
                    # (knative/serving#10327). The activator reports it in flight, as any
                    # request: a decider at zero ticks at once, a new one at its next tick.
                    self._poke(engine, t, 1.0)
        super().on_second(engine, t)
