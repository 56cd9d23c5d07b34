"""The CI gate: service-level objectives checked against a run's figures.

Exit codes, for CI: 0 every objective met; 1 an objective missed; 2 bad usage; 3 the run
itself failed (no load was measured). The Locust process sets its exit code from the same
check, in a `quitting` listener (Locust's documented pattern).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kindling.loadtest.stats import LatencyStats

EXIT_MET = 0
EXIT_MISSED = 1
EXIT_USAGE = 2
EXIT_FAILED = 3


@dataclass(frozen=True)
class SLO:
    p99_ms: float | None = None
    """Most p99 latency of successful requests allowed; None: not gated."""
    error_ratio: float | None = 0.01
    """Most share of failed requests allowed; None: not gated."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def violations(slo: SLO, stats: LatencyStats) -> list[str]:
    """What the run missed, in words; empty when every objective was met."""
    missed = []
    if stats.requests == 0:
        return ["no request was measured"]
    error_ratio = 1 - (stats.success_ratio or 0.0)
    if slo.error_ratio is not None and error_ratio > slo.error_ratio:
        missed.append(f"error ratio {error_ratio:.4f} > {slo.error_ratio:g}")
    if slo.p99_ms is not None:
        if stats.p99_ms is None:
            missed.append("p99 latency: no successful request")
        elif stats.p99_ms > slo.p99_ms:
            missed.append(f"p99 latency {stats.p99_ms:.1f} ms > {slo.p99_ms:g} ms")
    return missed


def exit_code(slo: SLO, stats: LatencyStats) -> int:
    return EXIT_MISSED if violations(slo, stats) else EXIT_MET
