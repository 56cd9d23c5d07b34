"""The control loop: each tick, for every managed model, read its traffic, forecast, decide
the warm pods and set them.

One `tick(now)` is the whole algorithm and reads no clock; `run()` calls it every interval
while this replica leads. Nothing here talks to Kubernetes or to Prometheus directly: the
actuator (knative.py, raw.py) and the metrics source (prometheus.py, scrape.py) do, so the
simulator's policy and this loop are the same code (policy.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kindling.controller.forecast import Ewma, Forecaster, Holt, Seasonal, decay
from kindling.controller.inputs import InputUnavailable, MetricsSource, ModelRef
from kindling.controller.kube import KubeError
from kindling.controller.policy import Decision, PolicyState, WarmPolicy
from kindling.controller.settings import ControllerSettings
from kindling.controller.targets import Actuator, Target
from kindling.controller.telemetry import ControllerMetrics

log = logging.getLogger("kindling.controller")

# Service time is smoothed over samples with this half-life: one slow window (a batch of
# large inputs) should not double the pods. 60 s: the same stable window as the rate.
SERVICE_TIME_HALF_LIFE_S = 60.0

FORECASTERS: dict[str, Callable[[], Forecaster]] = {
    "holt": Holt,
    "ewma": Ewma,
    "seasonal": Seasonal,
}


@dataclass
class ModelState:
    """What the loop remembers for one model between ticks."""

    forecaster: Forecaster
    policy: PolicyState = field(default_factory=PolicyState)
    service_time_s: float | None = None
    service_t: float | None = None
    cold_start_s: float | None = None
    applied: int | None = None  # the pods last set on the cluster (None: nothing set)


@dataclass(frozen=True)
class Outcome:
    """One model's tick, for logs, tests and /metrics."""

    ref: ModelRef
    decision: Decision
    applied: bool
    released: bool = False
    woke: bool = False


class Controller:
    def __init__(
        self,
        settings: ControllerSettings,
        actuator: Actuator,
        source: MetricsSource,
        metrics: ControllerMetrics,
        warmup: Callable[[Target], object] | None = None,
    ) -> None:
        self.settings = settings
        self.actuator = actuator
        self.source = source
        self.metrics = metrics
        self.warmup = warmup
        self.models: dict[ModelRef, ModelState] = {}
        self.targets: dict[ModelRef, Target] = {}
        self.ticks = 0

    # -- one tick ---------------------------------------------------------------------------

    def tick(self, now: float) -> list[Outcome]:
        try:
            targets = self.actuator.discover()
        except KubeError as exc:
            # The API server is away: hold everything as it is; the next tick tries again.
            self.metrics.errors.labels("discover").inc()
            log.warning("discover failed, holding: %s", exc)
            self.ticks += 1
            return []
        seen = {t.ref: t for t in targets}
        for gone in self.models.keys() - seen.keys():
            # Its object is gone, and with it what we set: forget it (bounded memory).
            del self.models[gone]
            self.metrics.forget(gone)
            self.source.forget(gone)
        self.targets = seen
        outcomes = [self._model(target, now) for target in targets]
        self.ticks += 1
        return outcomes

    def _model(self, target: Target, now: float) -> Outcome:
        state = self.models.get(target.ref)
        if state is None:
            state = self.models[target.ref] = ModelState(FORECASTERS[self.settings.forecaster]())
        self._observe(target, state, now)
        policy = self._policy(target, state)
        service_time = state.service_time_s or 0.0
        decision = policy.decide(now, state.forecaster, service_time, state.policy)
        forecast = state.forecaster.forecast(policy.lead_s) if state.forecaster.last_t else 0.0
        self.metrics.decided(target.ref, forecast, decision)
        self.metrics.window(target.ref, policy.idle_window(state.policy))
        return self._apply(target, state, decision)

    def _observe(self, target: Target, state: ModelState, now: float) -> None:
        ref = target.ref
        try:
            sample = self.source.sample(ref, now)
        except InputUnavailable as exc:
            if target.ready_pods == 0:
                # Scaled to zero, no pod reports anything: the rate served is zero, which
                # the forecaster should see (a seasonal profile then still wakes it ahead
                # of its daily burst). Requests that arrive now wake a pod, which reports.
                state.forecaster.observe(max(now, state.forecaster.last_t or now), 0.0)
                return
            # The policy sees the last sample age and holds once it is stale.
            self.metrics.errors.labels("input").inc()
            log.warning("%s/%s: no metrics (%s)", ref.namespace, ref.workload, exc)
            return
        last = state.forecaster.last_t
        if last is not None and sample.t < last:
            return  # an older answer than one already taken (a lagging replica): skip it
        state.forecaster.observe(sample.t, sample.rate_rps)
        if sample.service_time_s is not None and math.isfinite(sample.service_time_s):
            if state.service_time_s is None or state.service_t is None:
                state.service_time_s = sample.service_time_s
            else:
                dt = max(0.0, sample.t - state.service_t)
                keep = decay(dt, SERVICE_TIME_HALF_LIFE_S)
                state.service_time_s = keep * state.service_time_s + (1 - keep) * (
                    sample.service_time_s
                )
            state.service_t = sample.t
        if sample.cold_start_s is not None:
            state.cold_start_s = sample.cold_start_s

    def _policy(self, target: Target, state: ModelState) -> WarmPolicy:
        # The runtime measures exec to model ready; before that the pod is scheduled and its
        # sandbox and container start, which the setting covers.
        return self.settings.warm_policy(
            cold_start_s=self.settings.pod_start_s + (state.cold_start_s or 0.0),
            concurrency_target=target.concurrency_target,
            margin_k=target.margin_k,
            min_scale=target.user_min_scale,
            max_scale=target.user_max_scale,
        )

    def _apply(self, target: Target, state: ModelState, decision: Decision) -> Outcome:
        ref = target.ref
        pods = decision.pods
        # At or under the user's own floor Kindling adds nothing: give the value back.
        release = pods <= target.user_min_scale
        if self.settings.dry_run:
            log.info("%s/%s dry-run: %s", ref.namespace, ref.workload, decision.reason)
            return Outcome(ref, decision, applied=False)
        if (release and state.applied is None) or (not release and state.applied == pods):
            log.debug("%s/%s: %s (unchanged)", ref.namespace, ref.workload, decision.reason)
            return Outcome(ref, decision, applied=False)
        woke = False
        try:
            if release:
                self.actuator.release(target)
                state.applied = None
            else:
                self.actuator.set_warm(target, pods)
                state.applied = pods
                if self.warmup is not None and target.ready_pods == 0:
                    # knative/serving#10327: min-scale does not wake a Revision at zero until
                    # a request reaches it.
                    self.warmup(target)
                    woke = True
        except KubeError as exc:
            self.metrics.errors.labels("actuate").inc()
            log.warning("%s/%s: could not set %d pods: %s", ref.namespace, ref.workload, pods, exc)
            return Outcome(ref, decision, applied=False)
        self.metrics.applied(ref, pods if not release else 0)
        log.info(
            "%s/%s: %s%s",
            ref.namespace,
            ref.workload,
            "released to the user's own min-scale; " if release else "",
            decision.reason,
        )
        return Outcome(ref, decision, applied=True, released=release, woke=woke)

    def release_all(self) -> None:
        """Give every model back its user's own value (on exit or losing the lease)."""
        for ref, state in list(self.models.items()):
            target = self.targets.get(ref)
            if target is None or state.applied is None:
                continue
            try:
                self.actuator.release(target)
                state.applied = None
            except KubeError as exc:
                log.warning("%s/%s: release failed: %s", ref.namespace, ref.workload, exc)

    def forget_applied(self) -> None:
        """After losing the lease: another replica now owns the values; re-apply from
        scratch if this one leads again."""
        for state in self.models.values():
            state.applied = None

    # -- the loop ---------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        leading: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Tick every interval while `leading()`, until `stop` is set. Any failure in a tick
        is logged and counted; the loop itself never dies of one."""
        was_leading = False
        while not stop.is_set():
            lead = leading()
            self.metrics.leader.set(1 if lead else 0)
            if lead:
                started = time.monotonic()
                try:
                    self.tick(clock())
                except Exception:
                    self.metrics.errors.labels("tick").inc()
                    log.exception("tick failed")
                self.metrics.tick_seconds.observe(time.monotonic() - started)
            elif was_leading:
                self.forget_applied()
            was_leading = lead
            self.metrics.heartbeat(clock())
            stop.wait(self.settings.interval_s)
