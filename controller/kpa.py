"""Knative's Pod Autoscaler (KPA), ported from its source for the simulator.

Everything here is read from Knative Serving 1.23 (``knative.dev/serving`` v0.50.0):

- ``pkg/autoscaler/aggregation/bucketing.go``: ``TimedFloat64Buckets`` (plain average, the
  default "linear" algorithm) and ``WeightedFloat64Buckets`` ("weighted-exponential"), both
  with 1 s buckets (``config.BucketSize``); ported as ``WindowBuckets``.
- ``pkg/autoscaler/metrics/collector.go``: ``collection.record`` writes each 1 s scrape into
  a stable-window and a panic-window bucket set; ``StableAndPanicConcurrency`` reads both
  and answers ``ErrNoData`` while the stable buckets are empty; ``Kpa.record``.
- ``pkg/autoscaler/scaling/autoscaler.go``: ``autoscaler.Scale``, the decider: stable and
  panic pod counts, rate limits, activation-scale, panic mode, scale-down delay, excess
  burst capacity; ported as ``Decider.scale``. ``multiscaler.go``: the 2 s tick
  (``tickInterval``), the invalid result that keeps the last scale (``tickScaler``) and
  ``Poke``, which ticks at once when the scale is 0 and concurrency arrives.
- ``pkg/reconciler/autoscaling/kpa/scaler.go``: ``scaler.scale`` (min/max and initial scale
  bounds, ``applyBounds``) and ``handleScaleToZero`` (the PA must be Active for a stable
  window, then Inactive, and backed by the activator for the grace period or inactive for
  max(grace, retention) before the Deployment goes to 0); ported as ``Kpa._reconcile``.
- ``pkg/reconciler/autoscaling/kpa/kpa.go``: ``ReconcileKind`` (the SKS goes to Serve mode
  only when want > 0 and excess burst capacity >= 0, otherwise the activator is in the
  path), ``computeActiveCondition`` and ``activeThreshold``; ``pkg/reconciler/
  serverlessservice/serverlessservice.go``: the activator backs the revision while in
  Proxy mode or while no pod is ready (``MarkActivatorEndpointsPopulated``).

Simplifications (the rest is line for line):

- Time is seconds as a float; callers ``record`` once per second (the scraper's
  ``scrapeTickInterval``), including zeros while any pod exists and nothing while the
  revision has no pods, as the scraper does (``emptyStat`` is not recorded). The caller
  passes revision-wide concurrency: pods' own plus the activator's proxied requests, which
  Knative records from two sources but sums to the same figure.
- The PA reconciler runs once per ``decide`` call (each 2 s tick and each poke) and again at
  once when it changes the PA's Active condition (a status update re-enqueues the PA in
  Knative). Knative instead reconciles on events and re-enqueues for the exact remaining
  time (``enqueueCB(pa, sw-af)``, ``enqueueCB(pa, to)``); here such waits end on the first
  tick at or after that time, at most one tick late.
- The activator probe (``activatorProbe``) is taken to succeed at once, SKS mode changes
  and endpoint programming are instant, and the pod counter's ready count is the
  ``ready_pods`` the caller passes. Only the concurrency metric is modelled, not RPS.
- Annotations are fields of ``KpaConfig`` (min/max scale, initial and activation scale,
  target, windows); their validation (``annotation_validation.go``) is not repeated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

# pkg/autoscaler/config/config.go: BucketSize, the width of one metric bucket.
BUCKET_SIZE_S = 1.0
# pkg/autoscaler/scaling/multiscaler.go: tickInterval, how often Scale() runs.
TICK_INTERVAL_S = 2.0
# pkg/apis/autoscaling/register.go: TargetMin, the smallest target ResolveMetricTarget gives.
TARGET_MIN = 0.01
# pkg/autoscaler/aggregation/bucketing.go: constants of the weighted average.
_MIN_EXPONENT = 0.2
_WEIGHT_PRECISION = 0.9999
_PRECISION_DIGITS = 6


@dataclass(frozen=True)
class KpaConfig:
    """``config-autoscaler`` defaults (config/core/configmaps/autoscaler.yaml and
    ``defaultConfig`` in pkg/autoscaler/config/config.go) plus the per-revision knobs."""

    # container-concurrency-target-percentage "70" (defaultTargetUtilization = 0.7).
    target_utilization: float = 0.7
    # container-concurrency-target-default "100": the soft target when the revision's
    # containerConcurrency is 0 (unlimited).
    container_concurrency_target_default: float = 100.0
    # The revision's spec.containerConcurrency; 0 means unlimited (ResolveMetricTarget).
    container_concurrency: int = 0
    # autoscaling.knative.dev/target annotation; None when unset (ResolveMetricTarget).
    target_annotation: float | None = None
    # stable-window "60s".
    stable_window_s: float = 60.0
    # panic-window-percentage "10.0": 10% of the stable window, 6 s (resources/metric.go).
    panic_window_percentage: float = 10.0
    # panic-threshold-percentage "200.0" (MakeDecider divides by 100).
    panic_threshold_percentage: float = 200.0
    # max-scale-up-rate "1000.0".
    max_scale_up_rate: float = 1000.0
    # max-scale-down-rate "2.0".
    max_scale_down_rate: float = 2.0
    # enable-scale-to-zero "true".
    enable_scale_to_zero: bool = True
    # scale-to-zero-grace-period "30s".
    scale_to_zero_grace_period_s: float = 30.0
    # scale-to-zero-pod-retention-period "0s".
    scale_to_zero_pod_retention_period_s: float = 0.0
    # scale-down-delay "0s".
    scale_down_delay_s: float = 0.0
    # target-burst-capacity "211"; 0 puts the activator in the path only at zero, -1 always.
    target_burst_capacity: float = 211.0
    # initial-scale "1".
    initial_scale: int = 1
    # min-scale "0" and max-scale "0" (0 = no maximum), or the revision's annotations.
    min_scale: int = 0
    max_scale: int = 0
    # autoscaling.knative.dev/activation-scale: no config-map key; unset acts as 1
    # (Scale() only looks at values above 1).
    activation_scale: int = 1
    # metric-aggregation-algorithm annotation: "linear" (default) or "weighted-exponential".
    aggregation: str = "linear"
    # config-deployment progress-deadline "600s" (ProgressDeadlineDefault) plus scaler.go's
    # activationTimeoutBuffer of 30 s: how long the PA may stay Activating.
    activation_timeout_s: float = 600.0 + 30.0
    # Spec.Reachability != Unreachable: the revision is routed traffic.
    reachable: bool = True

    @property
    def total_value(self) -> float:
        """Per-pod capacity: ``total`` in ResolveMetricTarget (reconciler/autoscaling/
        resources/target.go)."""
        total = float(self.container_concurrency or self.container_concurrency_target_default)
        if self.target_annotation is not None:
            total = self.target_annotation
            if self.container_concurrency:
                total = min(self.target_annotation, float(self.container_concurrency))
        return total

    @property
    def target(self) -> float:
        """``target`` in ResolveMetricTarget: total × utilization, at least TargetMin."""
        return max(TARGET_MIN, self.total_value * self.target_utilization)

    @property
    def panic_window_s(self) -> float:
        """MakeMetric (reconciler/autoscaling/resources/metric.go): the percentage of the
        stable window, rounded to a whole second (Go's Round: half away from zero), at
        least one bucket."""
        panic = math.floor(self.stable_window_s * self.panic_window_percentage / 100.0 + 0.5)
        return max(float(panic), BUCKET_SIZE_S)

    @property
    def panic_threshold(self) -> float:
        return self.panic_threshold_percentage / 100.0


class WindowBuckets:
    """``TimedFloat64Buckets`` / ``WeightedFloat64Buckets`` (aggregation/bucketing.go).

    A ring of ``ceil(window / granularity)`` buckets indexed by whole granules of time.
    Buckets are kept as integer indices (``timeToIndex``); a write into a later bucket
    zeroes the skipped ones; a gap of a whole window resets the partial-window start.
    """

    def __init__(self, window_s: float, granularity_s: float, weighted: bool = False) -> None:
        self.window_s = window_s
        self.granularity_s = granularity_s
        nb = math.ceil(window_s / granularity_s)
        self.buckets = [0.0] * nb
        self.window_total = 0.0
        self.first_write: int | None = None
        self.last_write: int | None = None
        # computeSmoothingCoeff: enough decay that the weights sum to weightPrecision.
        self.weighted = weighted
        self.smoothing = max(1 - math.pow(1 - _WEIGHT_PRECISION, 1 / nb), _MIN_EXPONENT)

    def _index(self, t: float) -> int:
        return math.floor(t / self.granularity_s)

    def _since_last(self, now: int) -> float:
        assert self.last_write is not None
        return (now - self.last_write) * self.granularity_s

    def is_empty(self, t: float) -> bool:
        """IsEmpty: nothing written for more than a window."""
        return self.last_write is None or self._since_last(self._index(t)) > self.window_s

    def record(self, t: float, value: float) -> None:
        """TimedFloat64Buckets.Record."""
        b = self._index(t)
        n = len(self.buckets)
        if self.last_write != b:
            if self.last_write is not None and not (
                b * self.granularity_s + self.window_s > self.last_write * self.granularity_s
            ):
                return  # older than a window before the last write: ignored
            if self.first_write is None or self.first_write > b:
                self.first_write = b
            if self.last_write is None or b > self.last_write:
                if self.last_write is None or self._since_last(b) >= self.window_s:
                    # No writes for a whole window: start a fresh partial window.
                    self.first_write = b
                    self.buckets = [0.0] * n
                    self.window_total = 0.0
                else:
                    for i in range(self.last_write + 1, b + 1):
                        self.window_total -= self.buckets[i % n]
                        self.buckets[i % n] = 0.0
                self.last_write = b
        self.buckets[b % n] += value
        self.window_total += value

    def average(self, t: float) -> float:
        return self._weighted_average(t) if self.weighted else self._plain_average(t)

    def _plain_average(self, t: float) -> float:
        """TimedFloat64Buckets.WindowAverage: the mean over the valid buckets (a partial
        window right after the first write, or after writes stopped)."""
        if self.last_write is None or self.first_write is None:
            return 0.0
        if self.window_total == 0.0:
            return 0.0  # every bucket is zero (a revision with pods and no traffic)
        now = self._index(t)
        n = len(self.buckets)
        d = self._since_last(now)
        if d <= 0:
            num_b = min(self.last_write - self.first_write + 1, n)
            return round(self.window_total / num_b, _PRECISION_DIGITS)
        if d < self.window_s:
            ret = self.window_total
            for i in range(self.last_write + 1, now + 1):
                ret -= self.buckets[i % n]
            num_b = min(self.last_write - self.first_write + 1, n - (now - self.last_write))
            return round(ret / num_b, _PRECISION_DIGITS)
        return 0.0

    def _weighted_average(self, t: float) -> float:
        """WeightedFloat64Buckets.WindowAverage: newest bucket weighted most."""
        if self.is_empty(t):
            return 0.0
        assert self.last_write is not None
        now = self._index(t)
        n = len(self.buckets)
        num_b = n
        multiplier = self.smoothing
        if now > self.last_write:
            num_z = now - self.last_write
            multiplier *= math.pow(1 - self.smoothing, num_z)
            num_b -= num_z
        start = self.last_write + n
        ret = 0.0
        for i in range(num_b):
            ret += self.buckets[(start - i) % n] * multiplier
            multiplier *= 1 - self.smoothing
        return ret


class _MaxTimeWindow:
    """max.TimeWindow (aggregation/max/timewindow.go): the largest value recorded over the
    last ``ceil(duration / granularity)`` granules, for scale-down-delay."""

    def __init__(self, duration_s: float, granularity_s: float) -> None:
        self.size = math.ceil(duration_s / granularity_s)
        self.granularity_s = granularity_s
        self.entries: dict[int, int] = {}

    def record(self, t: float, value: int) -> None:
        index = math.floor(t / self.granularity_s)
        self.entries[index] = max(value, self.entries.get(index, value))
        self.entries = {i: v for i, v in self.entries.items() if index - i < self.size}

    def current(self) -> int:
        return max(self.entries.values())


@dataclass(frozen=True)
class DeciderResult:
    """scaling.ScaleResult: DesiredPodCount, ExcessBurstCapacity, ScaleValid."""

    desired_pods: int
    excess_bc: int
    valid: bool


class Decider:
    """autoscaler.go's ``autoscaler``: the per-revision decider and its panic state."""

    def __init__(self, config: KpaConfig, start_t: float = 0.0, ready_pods: int = 0) -> None:
        self.config = config
        weighted = config.aggregation in ("weighted-exponential", "weightedExponential")
        self.stable = WindowBuckets(config.stable_window_s, BUCKET_SIZE_S, weighted)
        self.panic = WindowBuckets(config.panic_window_s, BUCKET_SIZE_S, weighted)
        # newAutoscaler: a decider created over more than one ready pod starts panicking,
        # so a restarted autoscaler, which lost its metrics, does not scale down at once.
        self.panic_time: float | None = start_t if ready_pods > 1 else None
        self.max_panic_pods = ready_pods
        self.delay_window = (
            _MaxTimeWindow(config.scale_down_delay_s, TICK_INTERVAL_S)
            if config.scale_down_delay_s > 0
            else None
        )

    @property
    def panicking(self) -> bool:
        return self.panic_time is not None

    def record(self, t: float, concurrency: float) -> None:
        """collector.go collection.record: one sample into both windows."""
        self.stable.record(t, concurrency)
        self.panic.record(t, concurrency)

    def scale(self, t: float, ready_pods: int) -> DeciderResult:
        """autoscaler.go autoscaler.Scale."""
        spec = self.config
        # StableAndPanicConcurrency: ErrNoData while the stable buckets are empty, unless
        # nothing is scraped (target-burst-capacity -1: the activator reports everything).
        if spec.target_burst_capacity != -1 and self.stable.is_empty(t):
            return DeciderResult(0, 0, valid=False)
        observed_stable = self.stable.average(t)
        observed_panic = self.panic.average(t)
        # "Use 1 if there are zero current pods."
        ready = max(1.0, float(ready_pods))
        # At least one more pod, however small the rate (ceil); at most ready/rate fewer.
        max_scale_up = math.ceil(spec.max_scale_up_rate * ready)
        max_scale_down = math.floor(ready / spec.max_scale_down_rate) if spec.reachable else 0
        dspc = math.ceil(observed_stable / spec.target)
        dppc = math.ceil(observed_panic / spec.target)
        desired_stable = int(min(max(dspc, max_scale_down), max_scale_up))
        desired_panic = int(min(max(dppc, max_scale_down), max_scale_up))
        if spec.activation_scale > 1:
            if dspc > 0 and spec.activation_scale > desired_stable:
                desired_stable = spec.activation_scale
            if dppc > 0 and spec.activation_scale > desired_panic:
                desired_panic = spec.activation_scale

        over_threshold = dppc / ready >= spec.panic_threshold
        if self.panic_time is None and over_threshold:
            self.panic_time = t  # "PANICKING."
        elif over_threshold:
            self.panic_time = t  # still over: extend the panic
        elif self.panic_time is not None and self.panic_time + spec.stable_window_s < t:
            # "Un-panicking." once a stable window passed without crossing the threshold.
            self.panic_time = None
            self.max_panic_pods = 0

        desired = desired_stable
        if self.panic_time is not None:
            # Provision for the larger of the two, and never scale down while panicking.
            desired = max(desired, desired_panic)
            self.max_panic_pods = max(self.max_panic_pods, desired)
            desired = self.max_panic_pods

        if spec.reachable and self.delay_window is not None:
            self.delay_window.record(t, desired)
            desired = self.delay_window.current()

        # EBC = total capacity - target burst capacity - panic concurrency.
        if spec.target_burst_capacity == 0:
            excess = 0.0
        elif spec.target_burst_capacity > 0:
            total = ready_pods * spec.total_value
            excess = math.floor(total - spec.target_burst_capacity - observed_panic)
        else:
            excess = -1.0
        return DeciderResult(desired, int(excess), valid=True)


class Active(Enum):
    """The PA's Active condition (pa_lifecycle.go): Unknown is "Activating"."""

    ACTIVATING = "activating"
    ACTIVE = "active"
    INACTIVE = "inactive"


@dataclass(frozen=True)
class ScaleResult:
    """One tick's outcome.

    ``desired_pods`` is the Deployment's replicas after the PA reconciler acted (what the
    simulator should converge its pods to); ``decider_pods`` is the decider's own
    DesiredPodCount before bounds and scale-to-zero (-1 before any metrics);
    ``activator_in_path`` is whether requests go through the activator, which buffers
    them while no pod is ready.
    """

    desired_pods: int
    panicking: bool
    excess_bc: int
    decider_pods: int = -1
    active: Active = Active.ACTIVATING
    activator_in_path: bool = True


_SCALE_UNKNOWN = -1  # scaler.go scaleUnknown


class Kpa:
    """The decider plus the PA reconciler's scaling for one revision.

    Usage per simulated second: ``record(t, concurrency)``; if it returns True (a poke),
    call ``decide`` at once; and call ``decide(t, ready_pods)`` on every 2 s tick.
    """

    def __init__(self, config: KpaConfig | None = None, start_t: float = 0.0) -> None:
        self.config = config or KpaConfig()
        self.decider = Decider(self.config, start_t)
        # The multiscaler's latest valid result; -1 until metrics arrive.
        self.decider_pods = _SCALE_UNKNOWN
        self.excess_bc = 0
        # revision/resources/deploy.go: the Deployment is created at initial-scale.
        self.replicas = self.config.initial_scale
        # A new PA's Active condition is Unknown (Activating).
        self.active = Active.ACTIVATING
        self.active_since = start_t
        self.scale_target_initialized = False
        # The SKS starts in Proxy mode with no pods: the activator backs the revision.
        self.activator_in_path = True
        self.proxy_since = start_t

    def record(self, t: float, concurrency: float) -> bool:
        """Record revision-wide concurrency for the second at ``t``. Returns True when
        multiscaler.Poke would tick the decider at once (scale 0, concurrency seen)."""
        self.decider.record(t, concurrency)
        return self.decider_pods == 0 and concurrency != 0

    def decide(self, t: float, ready_pods: int) -> ScaleResult:
        """A decider tick (tickScaler) followed by the PA reconcile it informs."""
        result = self.decider.scale(t, ready_pods)
        if result.valid:  # tickScaler: an invalid result keeps the latest scale
            self.decider_pods = result.desired_pods
            self.excess_bc = result.excess_bc
        return self._settle(t, ready_pods)

    def set_min_scale(self, t: float, ready_pods: int, min_scale: int) -> ScaleResult:
        """A changed ``autoscaling.knative.dev/min-scale`` annotation: the PA reconciles
        at once with the decider's latest result (kpa.go ReconcileKind reads
        ``decider.Status.DesiredScale``; no decider tick), as an update to the PA does."""
        if min_scale < 0:
            raise ValueError(f"min-scale must be >= 0, got {min_scale}")
        if min_scale != self.config.min_scale:
            self.config = replace(self.config, min_scale=min_scale)
            self.decider.config = self.config
        return self._settle(t, ready_pods)

    def _settle(self, t: float, ready_pods: int) -> ScaleResult:
        """Reconcile the PA until its Active condition stops changing (a change updates the
        PA, which re-enqueues it), and report where it settled."""
        for _ in range(3):
            before = self.active
            self._reconcile(t, ready_pods)
            if self.active == before:
                break
        return ScaleResult(
            desired_pods=self.replicas,
            panicking=self.decider.panicking,
            excess_bc=self.excess_bc,
            decider_pods=self.decider_pods,
            active=self.active,
            activator_in_path=self.activator_in_path,
        )

    def _bounds(self) -> tuple[int, int]:
        """PodAutoscaler.ScaleBounds: min-scale only while reachable."""
        cfg = self.config
        return (cfg.min_scale if cfg.reachable else 0), cfg.max_scale

    def _reconcile(self, t: float, ready_pods: int) -> None:
        """kpa.go ReconcileKind from the scaler call on."""
        want = self._scale(t, self.decider_pods)
        # The activator leaves the path only when want > 0 and there is spare burst capacity.
        serve = want > 0 and self.excess_bc >= 0
        # serverlessservice.go: activator endpoints while in Proxy mode or with no pods.
        in_path = (not serve) or ready_pods == 0
        if in_path and not self.activator_in_path:
            self.proxy_since = t
        self.activator_in_path = in_path
        self._compute_active_condition(t, want, ready_pods)

    def _scale(self, t: float, desired: int) -> int:
        """scaler.go scaler.scale; returns ``want`` and applies replicas when it should."""
        cfg = self.config
        if desired < 0 and self.active != Active.ACTIVATING:
            return desired  # "Metrics are not yet being collected."
        min_scale, max_scale = self._bounds()
        if cfg.initial_scale > 1 and not self.scale_target_initialized and cfg.reachable:
            min_scale = max(cfg.initial_scale, min_scale)
        # applyBounds
        if desired < min_scale:
            desired = min_scale
        if max_scale != 0 and desired > max_scale:
            desired = max_scale
        desired, apply = self._handle_scale_to_zero(t, desired)
        if apply:
            self.replicas = desired
        return desired

    def _handle_scale_to_zero(self, t: float, desired: int) -> tuple[int, bool]:
        """scaler.go handleScaleToZero."""
        cfg = self.config
        if desired != 0:
            return desired, True
        if not cfg.enable_scale_to_zero:
            return 1, True
        in_status_for = t - self.active_since
        if self.active == Active.ACTIVATING:
            if in_status_for > cfg.activation_timeout_s:  # CanFailActivation
                return desired, True
            return _SCALE_UNKNOWN, False
        if self.active == Active.ACTIVE:
            if in_status_for >= cfg.stable_window_s:
                return desired, False  # want 0 marks the PA Inactive; replicas stay
            return 1, True  # at most 1 for the rest of the stable window
        # Inactive; the activator probe is taken to succeed.
        retention = cfg.scale_to_zero_pod_retention_period_s
        if in_status_for >= max(cfg.scale_to_zero_grace_period_s, retention):
            return desired, True
        if retention > 0 and in_status_for < retention:
            return desired, False
        proxy_for = t - self.proxy_since if self.activator_in_path else 0.0
        if cfg.scale_to_zero_grace_period_s - proxy_for <= 0:
            return desired, True  # "Fast path scaling to 0"
        return desired, False

    def _compute_active_condition(self, t: float, want: int, ready_pods: int) -> None:
        """kpa.go computeActiveCondition with activeThreshold."""
        min_scale, _ = self._bounds()
        if self.scale_target_initialized:
            min_ready = max(min_scale, 1)
        else:
            min_ready = max(min_scale, self.config.initial_scale)
        if ready_pods >= min_ready:
            self.scale_target_initialized = True

        if want == 0 or min_ready == 0:
            self._set_active(t, Active.INACTIVE)
        elif ready_pods < min_ready:
            if want > 0 or self.active != Active.INACTIVE:
                self._set_active(t, Active.ACTIVATING)
            else:
                self._set_active(t, Active.INACTIVE)
        elif want > 0 or self.active != Active.INACTIVE:
            self._set_active(t, Active.ACTIVE)

    def _set_active(self, t: float, status: Active) -> None:
        # Conditions keep their LastTransitionTime unless the status changes.
        if status != self.active:
            self.active = status
            self.active_since = t
