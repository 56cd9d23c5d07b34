"""A synthetic population (population.py) simulated function by function, summed per policy.

    run_population(["knative-kpa", "kindling"], functions, profile, day, opts) -> Population

Each function is one model's Revision, replayed alone under each policy as
`simulate.run_policy` replays any workload (the static floor tuned on the function's next
day). The sums are per policy, over all functions and per class; p50 and p99 come from
the merged latencies, binned at 2.7 % resolution so that a day of millions of requests
needs no list of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from kindling.controller.population import Function
from kindling.controller.profiles import Profile
from kindling.controller.simulate import SimOptions, SimResult, run_policy
from kindling.controller.workloads import function_workload

# Latency bins, milliseconds: 0.1 ms to 1000 s, 600 per 7 decades (each 2.7 % wide).
LATENCY_EDGES_MS = np.logspace(-1, 6, 601)


@dataclass
class Sum:
    """One policy's results over many functions."""

    policy: str
    functions: int = 0
    requests: int = 0
    cold_requests: int = 0
    slo_violations: int = 0
    pod_seconds: float = 0.0
    pods_started: int = 0
    unserved: int = 0
    latency_hist: np.ndarray = field(default_factory=lambda: np.zeros(600, dtype=np.int64))

    def add(self, result: SimResult, hist: np.ndarray) -> None:
        self.functions += 1
        self.requests += result.requests
        self.cold_requests += result.cold_requests
        self.slo_violations += result.slo_violations
        self.pod_seconds += result.pod_seconds
        self.pods_started += result.pods_started
        self.unserved += result.unserved
        self.latency_hist += hist

    def percentile_ms(self, q: float) -> float:
        """The upper edge of the bin holding the q-th percentile (nan with no request)."""
        total = int(self.latency_hist.sum())
        if not total:
            return float("nan")
        index = int(np.searchsorted(np.cumsum(self.latency_hist), q / 100 * total))
        return float(LATENCY_EDGES_MS[min(index, len(self.latency_hist) - 1) + 1])

    def result(self, workload: str, slo_ms: float) -> SimResult:
        return SimResult(
            policy=self.policy,
            workload=workload,
            requests=self.requests,
            cold_requests=self.cold_requests,
            p50_ms=self.percentile_ms(50),
            p99_ms=self.percentile_ms(99),
            slo_ms=slo_ms,
            slo_violations=self.slo_violations,
            pod_seconds=self.pod_seconds,
            pods_started=self.pods_started,
            unserved=self.unserved,
        )


@dataclass
class Population:
    """Sums per policy, over all functions and per class (population.CLASSES)."""

    total: dict[str, Sum]
    by_class: dict[str, dict[str, Sum]]
    slo_ms: float

    def results(self, workload: str = "population") -> list[SimResult]:
        return [s.result(workload, self.slo_ms) for s in self.total.values()]

    def class_results(self, cls: str) -> list[SimResult]:
        return [s.result(cls, self.slo_ms) for s in self.by_class[cls].values()]

    def to_json(self) -> list[dict[str, Any]]:
        docs = []
        for name, total in self.total.items():
            doc = total.result("population", self.slo_ms).to_json()
            doc["functions"] = total.functions
            doc["by_class"] = {
                cls: {
                    **sums[name].result(cls, self.slo_ms).to_json(),
                    "functions": sums[name].functions,
                }
                for cls, sums in self.by_class.items()
            }
            docs.append(doc)
        return docs


def _one(
    task: tuple[Function, list[str], Profile, int, SimOptions, float | None],
) -> tuple[str, list[tuple[SimResult, np.ndarray]]]:
    function, names, profile, day, opts, duration_s = task
    workload = function_workload(function, day, duration_s)
    out = []
    for name in names:
        result = run_policy(name, workload, profile, day, opts)
        latencies = result.latencies_ms if result.latencies_ms is not None else np.empty(0)
        hist, _ = np.histogram(latencies, LATENCY_EDGES_MS)
        out.append((replace(result, timeline=None, latencies_ms=None), hist))
    return function.cls, out


def _map(tasks: list[Any], jobs: int) -> Iterable[Any]:
    if jobs <= 1:
        return map(_one, tasks)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_one, tasks, chunksize=4))


def run_population(
    names: list[str],
    functions: list[Function],
    profile: Profile,
    day: int,
    opts: SimOptions,
    duration_s: float | None = None,
    jobs: int | None = None,
) -> Population:
    """Every function's `day` under each policy; `jobs` processes (default: the CPUs)."""
    tasks = [(f, names, profile, day, opts, duration_s) for f in functions]
    total = {n: Sum(n) for n in names}
    by_class: dict[str, dict[str, Sum]] = {}
    for cls, runs in _map(tasks, jobs or os.cpu_count() or 1):
        sums = by_class.setdefault(cls, {n: Sum(n) for n in names})
        for result, hist in runs:
            total[result.policy].add(result, hist)
            sums[result.policy].add(result, hist)
    return Population(total, dict(sorted(by_class.items())), opts.slo_ms)
