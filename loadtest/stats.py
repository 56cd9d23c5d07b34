"""Latency and rate statistics over request records, as the papers' tables report them.

Latency figures are over successful (2xx) responses: a fast error would otherwise improve
p99. Errors count in the success ratio, which paper 001 reports beside the latency.
Percentiles use numpy's default (linear interpolation between order statistics).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kindling.loadtest.records import RequestRecord


@dataclass(frozen=True)
class LatencyStats:
    requests: int
    ok: int
    success_ratio: float | None
    mean_ms: float | None
    p50_ms: float | None
    p99_ms: float | None
    min_ms: float | None
    max_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measured(records: Iterable[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if r.measured]


def latency_stats(records: Sequence[RequestRecord]) -> LatencyStats:
    n = len(records)
    ok = np.array([r.latency_ms for r in records if r.ok], dtype=float)
    ratio = ok.size / n if n else None
    if not ok.size:
        return LatencyStats(n, 0, ratio, None, None, None, None, None)
    p50, p99 = np.percentile(ok, [50, 99])
    return LatencyStats(
        requests=n,
        ok=int(ok.size),
        success_ratio=ratio,
        mean_ms=float(ok.mean()),
        p50_ms=float(p50),
        p99_ms=float(p99),
        min_ms=float(ok.min()),
        max_ms=float(ok.max()),
    )


def mean_in_flight(records: Sequence[RequestRecord], span_s: float) -> float | None:
    """Little's law, measured: summed request time over the span's length."""
    if span_s <= 0:
        return None
    busy = sum(r.latency_ms for r in records if not math.isnan(r.latency_ms)) / 1000
    return busy / span_s


def by_stage(records: Iterable[RequestRecord]) -> dict[str, list[RequestRecord]]:
    """Records grouped by stage, in the order stages first appear."""
    groups: dict[str, list[RequestRecord]] = {}
    for r in records:
        groups.setdefault(r.stage, []).append(r)
    return groups


def by_cold_flag(records: Iterable[RequestRecord]) -> dict[str, list[RequestRecord]]:
    """Paper 002's split, by the runtime's Kindling-Cold-Start header."""
    out: dict[str, list[RequestRecord]] = {"cold": [], "warm": []}
    for r in records:
        if r.cold is not None:
            out["cold" if r.cold else "warm"].append(r)
    return out


@dataclass(frozen=True)
class RateSeries:
    """Per-bin rates over the run: what was offered, what came back, and how well."""

    bin_s: float
    starts_s: np.ndarray
    offered: np.ndarray
    """Requests scheduled (open loop) or sent (closed loop) per second in each bin."""
    achieved: np.ndarray
    """Successful responses per second, by completion time."""
    success_ratio: np.ndarray
    """Of the requests sent in the bin, the share that succeeded (NaN: none sent)."""


def rate_series(records: Sequence[RequestRecord], end_s: float, bins: int = 100) -> RateSeries:
    bin_s = max(end_s / bins, 1e-3)
    n = max(1, math.ceil(end_s / bin_s))
    edges = np.arange(n + 1) * bin_s

    def hist(values: Iterable[float]) -> np.ndarray:
        return np.histogram(np.fromiter(values, dtype=float), bins=edges)[0].astype(float)

    offered = hist(r.sent_s if math.isnan(r.scheduled_s) else r.scheduled_s for r in records)
    achieved = hist(r.done_s for r in records if r.ok)
    sent = hist(r.sent_s for r in records)
    ok_sent = hist(r.sent_s for r in records if r.ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(sent > 0, ok_sent / sent, np.nan)
    return RateSeries(bin_s, edges[:-1], offered / bin_s, achieved / bin_s, ratio)


def schedule_lag(records: Sequence[RequestRecord]) -> dict[str, float] | None:
    """How late sends were against the schedule (open loop): the client's own health."""
    lags = np.array(
        [r.sent_s - r.scheduled_s for r in records if not math.isnan(r.scheduled_s)], dtype=float
    )
    if not lags.size:
        return None
    return {
        "p50_ms": float(np.percentile(lags, 50) * 1e3),
        "p99_ms": float(np.percentile(lags, 99) * 1e3),
        "max_ms": float(lags.max() * 1e3),
    }
