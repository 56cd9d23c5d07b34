"""Prometheus metrics in the text exposition format, without prometheus_client.

prometheus_client costs ~20 ms of import on the cold-start path and a lock plus several
dict look-ups per observation; this module does the subset Kindling uses (counters,
gauges, histograms with labels) with one dict look-up per observation. The output follows
the text format 0.0.4: https://prometheus.io/docs/instrumenting/exposition_formats/
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator
from typing import TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets in seconds, from 0.5 ms (a warm small model) to 10 s (a cold start
# behind the Knative activator).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_: str, labels: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help_
        self.label_names = tuple(labels)

    def header(self) -> list[str]:
        help_ = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        return [f"# HELP {self.name} {help_}", f"# TYPE {self.name} {self.kind}"]

    def _check(self, labels: LabelValues) -> None:
        """Called for a label set's first sample only: a wrong count would otherwise
        surface at scrape time and break all of /metrics."""
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {labels}")

    def samples(self) -> Iterator[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_: str, labels: Iterable[str] = ()) -> None:
        super().__init__(name, help_, labels)
        self.values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        current = self.values.get(labels)
        if current is None:
            self._check(labels)
            current = 0.0
        self.values[labels] = current + amount

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def samples(self) -> Iterator[str]:
        for values, total in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, values)} {_number(total)}"


class Gauge(Counter):
    """A value that goes up and down per label set."""

    kind = "gauge"

    def set(self, *labels: str, value: float) -> None:
        if labels not in self.values:
            self._check(labels)
        self.values[labels] = value

    def dec(self, *labels: str, amount: float = 1.0) -> None:
        self.inc(*labels, amount=-amount)


class Histogram(_Metric):
    """Cumulative buckets, sum and count per label set."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_: str,
        labels: Iterable[str] = (),
        buckets: Iterable[float] = LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, help_, labels)
        self.bounds = tuple(sorted(buckets))
        # per label set: [count per bucket (non-cumulative, last is +Inf), sum]
        self.series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        series = self.series.get(labels)
        if series is None:
            self._check(labels)
            series = self.series[labels] = ([0] * (len(self.bounds) + 1), [0.0])
        series[0][bisect.bisect_left(self.bounds, value)] += 1
        series[1][0] += value

    def count(self, *labels: str) -> int:
        series = self.series.get(labels)
        return sum(series[0]) if series else 0

    def samples(self) -> Iterator[str]:
        for values, (counts, total) in sorted(self.series.items()):
            cumulative = 0
            for bound, n in zip((*self.bounds, math.inf), counts, strict=True):
                cumulative += n
                le = _labels(self.label_names, values, f'le="{_number(bound)}"')
                yield f"{self.name}_bucket{le} {cumulative}"
            plain = _labels(self.label_names, values)
            yield f"{self.name}_sum{plain} {_number(total[0])}"
            yield f"{self.name}_count{plain} {cumulative}"


M = TypeVar("M", bound=_Metric)


class Registry:
    """The metrics one process exposes on /metrics."""

    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def register(self, metric: M) -> M:
        self.metrics.append(metric)
        return metric

    def counter(self, name: str, help_: str, labels: Iterable[str] = ()) -> Counter:
        return self.register(Counter(name, help_, labels))

    def gauge(self, name: str, help_: str, labels: Iterable[str] = ()) -> Gauge:
        return self.register(Gauge(name, help_, labels))

    def histogram(
        self,
        name: str,
        help_: str,
        labels: Iterable[str] = (),
        buckets: Iterable[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return self.register(Histogram(name, help_, labels, buckets))

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.metrics:
            lines += metric.header()
            lines += metric.samples()
        return "\n".join(lines) + "\n"
