"""The controller's own metrics, on its /metrics (prometheus_client: the controller has no
cold-start budget to guard, unlike the runtime).

Per-model series are removed when the model goes, so the label sets stay bounded by the
models that exist.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kindling.controller.idle_window import IdleWindow
from kindling.controller.inputs import ModelRef
from kindling.controller.policy import Decision

MODEL_LABELS = ("namespace", "workload", "model")


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.forecast = Gauge(
            "kindling_controller_forecast_rps",
            "Forecast request rate at now + lead.",
            MODEL_LABELS,
            registry=r,
        )
        self.desired = Gauge(
            "kindling_controller_desired_pods",
            "Warm pods the policy wants.",
            MODEL_LABELS,
            registry=r,
        )
        self.set_pods = Gauge(
            "kindling_controller_applied_pods",
            "Warm pods last set on the cluster (0: the user's own value restored).",
            MODEL_LABELS,
            registry=r,
        )
        self.idle_window = Gauge(
            "kindling_controller_idle_window_seconds",
            "The learned idle window, seconds after the model went idle: a pod is held from "
            "start (0: kept alive) to end; absent while Kindling steps aside.",
            (*MODEL_LABELS, "edge"),
            registry=r,
        )
        self.decisions = Counter(
            "kindling_controller_decisions_total",
            "Decisions by the rule that set them (policy.py).",
            (*MODEL_LABELS, "rule"),
            registry=r,
        )
        self.errors = Counter(
            "kindling_controller_errors_total",
            "Failures by stage: discover, input, actuate, tick.",
            ("stage",),
            registry=r,
        )
        self.leader = Gauge(
            "kindling_controller_leader", "1 while this replica holds the Lease.", registry=r
        )
        self.tick_seconds = Histogram(
            "kindling_controller_tick_seconds", "Time one tick takes, every model.", registry=r
        )
        self.last_loop = Gauge(
            "kindling_controller_last_loop_timestamp_seconds",
            "When the loop last ran (leading or not): liveness.",
            registry=r,
        )
        self._lock = threading.Lock()
        self._rules: dict[ModelRef, set[str]] = {}
        self.last_beat: float | None = None

    def decided(self, ref: ModelRef, forecast_rps: float, decision: Decision) -> None:
        labels = (ref.namespace, ref.workload, ref.model)
        self.forecast.labels(*labels).set(forecast_rps)
        self.desired.labels(*labels).set(decision.pods)
        self.decisions.labels(*labels, decision.rule).inc()
        with self._lock:
            self._rules.setdefault(ref, set()).add(decision.rule)

    def window(self, ref: ModelRef, window: IdleWindow | None) -> None:
        labels = (ref.namespace, ref.workload, ref.model)
        if window is None:
            for edge in ("start", "end"):
                _drop(self.idle_window, *labels, edge)
            return
        self.idle_window.labels(*labels, "start").set(window.start_s)
        self.idle_window.labels(*labels, "end").set(window.end_s)

    def applied(self, ref: ModelRef, pods: int) -> None:
        self.set_pods.labels(ref.namespace, ref.workload, ref.model).set(pods)

    def forget(self, ref: ModelRef) -> None:
        labels = (ref.namespace, ref.workload, ref.model)
        for metric in (self.forecast, self.desired, self.set_pods):
            _drop(metric, *labels)
        self.window(ref, None)
        with self._lock:
            rules = self._rules.pop(ref, set())
        for rule in rules:
            _drop(self.decisions, *labels, rule)

    def heartbeat(self, now: float) -> None:
        self.last_beat = now
        self.last_loop.set(now)


def _drop(metric: Gauge | Counter, *labels: str) -> None:
    """Remove one labelled series; one never set is already gone."""
    try:
        metric.remove(*labels)
    except KeyError:
        pass
