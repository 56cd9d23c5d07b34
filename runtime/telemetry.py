"""The runtime's Prometheus metrics (exposed on /metrics)."""

from __future__ import annotations

from kindling.metrics import Registry
from kindling.runtime.coldstart import ColdStartTimeline

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class RuntimeMetrics:
    def __init__(self, timeline: ColdStartTimeline) -> None:
        self.timeline = timeline
        self.registry = Registry()
        r = self.registry
        self.requests = r.counter(
            "kindling_requests_total",
            "Inference requests by model and HTTP status.",
            ("model", "status"),
        )
        self.latency = r.histogram(
            "kindling_request_duration_seconds",
            "Inference latency: queue (waiting for a batch), compute (the batch's run), total.",
            ("model", "phase"),
        )
        self.batch_size = r.histogram(
            "kindling_batch_size", "Rows per onnxruntime run.", ("model",), BATCH_BUCKETS
        )
        self.in_flight = r.gauge(
            "kindling_requests_in_flight", "Inference requests being served.", ("model",)
        )
        self.cold_start = r.gauge(
            "kindling_cold_start_phase_seconds",
            "Seconds from process exec to the end of each cold-start phase.",
            ("model", "phase"),
        )
        # Prometheus' standard name (its client libraries' process collector): the exec's
        # wall-clock time, which puts the phases above on a cluster's clock.
        self.start_time = r.gauge(
            "process_start_time_seconds", "Start time of the process since unix epoch in seconds."
        )
        self.start_time.set(value=timeline.started_at)

    def render(self) -> str:
        # Phases are copied in at scrape time: the timeline is the one source.
        for phase, t in self.timeline.process.items():
            self.cold_start.set("", phase, value=t)
        for model, phases in self.timeline.models.items():
            for phase, t in phases.items():
                self.cold_start.set(model, phase, value=t)
        return self.registry.render()
