"""What the controller reads per model, and the interface every metrics source implements.

A source turns the runtimes' own metrics (runtime/telemetry.py: `kindling_requests_total`,
`kindling_request_duration_seconds`, `kindling_requests_in_flight`,
`kindling_cold_start_phase_seconds`) into one `ModelSample` per call: from a Prometheus
server's query API (prometheus.py) or by scraping the pods' /metrics itself (scrape.py).
The loop feeds `rate_rps` to the forecaster and the rest to the policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ModelRef:
    """One model as the controller manages it: the Knative Service (or, in raw mode, the
    Deployment) that serves it, and the model name the runtime labels its metrics with."""

    namespace: str
    workload: str
    model: str


@dataclass(frozen=True)
class ModelSample:
    """One model's traffic over the source's window, as of `t` (Unix seconds)."""

    t: float
    # Requests per second arriving at the model, every pod together.
    rate_rps: float
    # Mean time one request spends in a pod (queue + compute); None when no request
    # finished in the window.
    service_time_s: float | None
    # Mean requests in flight, every pod together; None when unknown.
    concurrency: float | None
    # The most recent measured cold start, exec to model ready (the runtime's cold-start
    # timeline); None until a pod has reported one.
    cold_start_s: float | None
    # Pods that answered (scrape) or series seen (Prometheus).
    pods: int


class InputUnavailable(Exception):
    """The source could not answer for this model now (down, timed out, refused, garbled).
    The loop holds its last decision; it never scales to zero on this."""


class MetricsSource(Protocol):
    def sample(self, ref: ModelRef, now: float) -> ModelSample:
        """This model's traffic as of `now`. Raises InputUnavailable; never hangs past the
        source's own timeout."""
        ...

    def forget(self, ref: ModelRef) -> None:
        """Drop what the source keeps for a model that is no longer managed."""
        ...
