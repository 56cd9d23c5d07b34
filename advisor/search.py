"""Step 2 of `kindling advise`: the settings a user controls, each simulated and priced.

    search(measurement, workload, Space(slo_p99_ms=250)) -> Search

A candidate is one measured `RuntimeSetting` (threads, max_batch_size, queue delay) with
its pod resources, one measured concurrency as Knative's `containerConcurrency` (cc), the
KPA target (autoscaling.knative.dev/target, a fraction of cc), the user's min-scale and
the pre-warm controller's margin_k. Each is played by the simulator (controller.simulate,
Knative's KPA alone or with Kindling's WarmPolicy) on the chosen workload with the
measured cold starts and the latencies measured at cc, and priced by the pod-seconds it
used times its requests' price (`Resources.price_per_s`, OpenCost's allocation).

Pruned before simulating, each counted in `Search.pruned` by reason:
- a measured p99 at cc already over the SLO (a request's simulated latency is its wait
  plus a service time drawn from those very latencies, so the simulated p99 is not lower),
  or the p99 of the service times drawn for the workload's requests over it (exactly:
  each latency is at least its service time);
- a (setting, cc) whose latencies are no better than another setting's at the same cc
  at no lower price (the same knobs on the other one serve at least as fast, no dearer);
- branch and bound: candidates are simulated cheapest lower bound first (pod-seconds >=
  the counted requests' service time / cc, and >= min-scale pods over the whole window),
  and the rest are dropped once the bound reaches the cost of the `keep`-th cheapest
  candidate that met the SLO. What is dropped cannot be among the `keep` cheapest.

Nothing else is assumed: more min-scale or margin can cost less (warm pods spare the KPA
a panic that over-provisions), so every variant under the bound is simulated, and the
search is exact: a tighter SLO never gets a cheaper pick than a looser one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kindling.advisor.measurements import (
    LoadPoint,
    Measurement,
    MeasurementError,
    RuntimeSetting,
    SettingResult,
)
from kindling.controller.kpa import KpaConfig
from kindling.controller.profiles import Profile
from kindling.controller.simulate import SimOptions, SimResult, run_policy
from kindling.controller.workloads import Workload
from kindling.errors import KindlingError
from kindling.loadtest.bench_memory import MARGIN as MEMORY_MARGIN
from kindling.loadtest.cost import SelfHosted

# A pod's price is what its requests are allocated of a node, per resource, as OpenCost
# allocates a cluster's cost (opencost/opencost configs/default.json, custom pricing:
# $0.031611 per vCPU-hour, $0.004237 per GiB-hour). At those prices an EC2 m5.large (2 vCPU,
# 8 GiB) comes to $0.097/h, within 1.2 % of its on-demand $0.096 (loadtest/cost.py), so the
# figures stay in the load tests' currency; unlike "the share of a node it blocks", every
# MiB and millicore is paid for, so of two pods that serve alike the smaller wins.
CPU_HOUR = 0.031611
GIB_HOUR = 0.004237
PRICE_SOURCE = "OpenCost's default prices: $0.031611/vCPU-h, $0.004237/GiB-h"
# Memory limits are rounded up to 16 MiB: finer than bench_memory's 32 MiB, as the advisor
# measures each setting's own peak rather than one figure for every setting.
MEMORY_ROUND_MIB = 16
# Knative's container-concurrency-target-percentage default, 70 % (kpa.KpaConfig): the
# KPA aims at min(target, cc) x this many requests in flight per pod.
KNATIVE_UTILIZATION = KpaConfig().target_utilization
POLICIES = ("kindling", "knative-kpa")
# The chart's own values, for a model's default entry (embedding table, resources). Beside
# the source in a checkout; an installed wheel has no chart (None: given explicitly).
CHART_VALUES = Path(__file__).resolve().parents[1] / "charts" / "kindling" / "values.yaml"


class AdviceError(KindlingError):
    """The advisor cannot answer: a search space it cannot search, or memory it cannot size."""


@dataclass(frozen=True)
class Space:
    """What the search varies and what it must meet."""

    slo_p99_ms: float
    # The largest share of cold requests allowed (None: no bound).
    max_cold_ratio: float | None = None
    # "kindling": KPA plus the pre-warm controller; "knative-kpa": no controller.
    policy: str = "kindling"
    # autoscaling.knative.dev/target as fractions of cc: 1.0 leaves Knative's 70 % of cc,
    # 0.5 aims at 35 %, headroom for bursts at twice the pods.
    target_fractions: tuple[float, ...] = (1.0, 0.5)
    min_scales: tuple[int, ...] = (0, 1, 2)
    # CPU per pod as fractions of its threads (a CFS quota below one core per thread): a
    # light model need not block a whole core per pod. Only for measured threads.
    cpu_fractions: tuple[float, ...] = (1.0, 0.5, 0.25)
    # The pre-warm margin in forecast errors (WarmPolicy.margin_k; the controller's default
    # is 2); only with policy "kindling".
    margins_k: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    # autoscaling.knative.dev/max-scale: the chart's default (modelDefaults.autoscaling),
    # so the simulated pods stop where the deployed ones will.
    max_scale: int = 10
    # Added to each measured cold start: a pod's scheduling, sandbox and image pull, which
    # a runtime measured outside a cluster leaves out (the chart's
    # controller.podStartSeconds on a cluster, 0 to replay against a bare runtime).
    pod_overhead_s: float = 0.0
    seed: int = 0
    # Memory (MiB) and CPU (cores) for a setting measured without them (a URL): else the
    # chart's entry for the model, else its modelDefaults.
    memory_mib: float | None = None
    cpu: float | None = None
    # How many of the cheapest SLO-meeting candidates are simulated for sure: the pick and
    # its runners-up.
    keep: int = 4
    chart_values: Path | None = CHART_VALUES

    def __post_init__(self) -> None:
        if not (math.isfinite(self.slo_p99_ms) and self.slo_p99_ms > 0):
            raise AdviceError(f"the p99 SLO must be > 0 ms, got {self.slo_p99_ms}")
        if self.max_cold_ratio is not None and not 0 <= self.max_cold_ratio <= 1:
            raise AdviceError(
                f"the cold-request bound is a ratio in [0, 1], not {self.max_cold_ratio}"
            )
        if self.policy not in POLICIES:
            raise AdviceError(f"policy {self.policy!r}: one of {', '.join(POLICIES)}")
        if not self.target_fractions or any(not 0 < f <= 1 for f in self.target_fractions):
            raise AdviceError("target fractions of containerConcurrency must be in (0, 1]")
        if not self.cpu_fractions or any(not 0 < f <= 1 for f in self.cpu_fractions):
            raise AdviceError("CPU fractions of the threads must be in (0, 1]")
        if not self.min_scales or any(m < 0 for m in self.min_scales):
            raise AdviceError("min-scales must be >= 0")
        if not self.margins_k or any(not k >= 0 for k in self.margins_k):
            raise AdviceError("pre-warm margins must be >= 0")
        if self.max_scale < 0 or (self.max_scale and self.max_scale < max(self.min_scales)):
            raise AdviceError(f"max-scale {self.max_scale} is below a min-scale searched")
        if self.keep < 1:
            raise AdviceError("keep at least the pick")


@dataclass(frozen=True)
class Resources:
    """A pod's requests, equal to its limits (Guaranteed QoS: the measured figures hold)."""

    cpu: float  # cores
    memory_mib: int
    cpu_source: str
    memory_source: str

    @property
    def price_per_hour(self) -> float:
        return self.cpu * CPU_HOUR + self.memory_mib / 1024 * GIB_HOUR

    def pricing(self) -> SelfHosted:
        """loadtest/cost.py's self-hosted model, one pod to a "node" priced as the pod."""
        return SelfHosted(self.price_per_hour, 1.0, PRICE_SOURCE)

    @property
    def price_per_s(self) -> float:
        return self.pricing().pod_price_per_s


@dataclass(frozen=True)
class Candidate:
    setting: RuntimeSetting
    resources: Resources
    container_concurrency: int
    target: float  # autoscaling.knative.dev/target
    min_scale: int
    margin_k: float | None  # None: no controller
    point: LoadPoint  # what was measured at containerConcurrency in flight

    @property
    def effective_target(self) -> float:
        """In-flight requests per pod the KPA aims at (Knative's ResolveMetricTarget)."""
        return min(self.target, self.container_concurrency) * KNATIVE_UTILIZATION

    @property
    def measured_p99_ms(self) -> float:
        return float(np.percentile(self.point.latencies_ms, 99))

    def label(self) -> str:
        k = "" if self.margin_k is None else f"-k{self.margin_k:g}"
        return (
            f"{self.setting.label()}{cpu_label(self.setting, self.resources)}"
            f"-cc{self.container_concurrency}-T{self.target:g}-m{self.min_scale}{k}"
        )


@dataclass(frozen=True)
class Outcome:
    """One candidate, simulated and priced."""

    candidate: Candidate
    sim: SimResult  # without its timeline
    peak_pods: int
    cost_usd: float  # over the counted window

    @property
    def cold_ratio(self) -> float:
        return self.sim.cold_requests / self.sim.requests if self.sim.requests else 0.0

    @property
    def per_million_usd(self) -> float | None:
        return self.cost_usd / self.sim.requests * 1e6 if self.sim.requests else None

    def misses(self, space: Space) -> str | None:
        """Why it fails the space's bounds, or None when it meets them."""
        why = []
        p99 = self.sim.p99_ms
        if not p99 <= space.slo_p99_ms or self.sim.unserved:
            why.append(f"p99 {p99:.0f} ms > SLO {space.slo_p99_ms:g} ms")
            if self.sim.unserved:
                why[-1] += f" ({self.sim.unserved} requests never served)"
        if space.max_cold_ratio is not None and self.cold_ratio > space.max_cold_ratio:
            why.append(f"cold {self.cold_ratio:.2%} > bound {space.max_cold_ratio:.2%}")
        return "; ".join(why) or None

    def rank(self) -> tuple[float, float, float, int, float, str]:
        """Cheapest first; on a tie the lower p99 and cold share, then the fewer kept
        pods (min-scale, margin), then the label: deterministic."""
        c = self.candidate
        p99 = self.sim.p99_ms if math.isfinite(self.sim.p99_ms) else math.inf
        return (self.cost_usd, p99, self.cold_ratio, c.min_scale, c.margin_k or 0.0, c.label())


# Reasons in Search.pruned.
OVER_SLO = "measured p99 at cc already over the SLO"
DOMINATED = "setting no faster than a cheaper one at the same cc"
DRAWN_OVER_SLO = "service times drawn for the workload already over the SLO at p99"
BOUND = "cannot be among the cheapest (branch and bound)"


@dataclass(frozen=True)
class Search:
    measurement: Measurement
    workload: str
    workload_description: str
    space: Space
    outcomes: tuple[Outcome, ...]  # every simulated candidate, cheapest first
    considered: int  # candidates in the grid
    pruned: dict[str, int] = field(default_factory=dict)

    @property
    def simulated(self) -> int:
        return len(self.outcomes)

    def meeting(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.misses(self.space) is None]


# -- resources -------------------------------------------------------------------------------


def memory_mib_for(peak_rss_mib: float) -> int:
    """The memory request and limit for a measured peak: bench_memory's 10 % headroom,
    rounded up to 16 MiB; never below the peak."""
    mib = math.ceil(peak_rss_mib * MEMORY_MARGIN / MEMORY_ROUND_MIB) * MEMORY_ROUND_MIB
    return max(mib, math.ceil(peak_rss_mib))


def chart_entry(model: str, values: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chart's default `models` entry for this model ({} if none) and `modelDefaults`
    ({} with no chart)."""
    if values is None or not values.is_file():
        return {}, {}
    doc = yaml.safe_load(values.read_text()) or {}
    entry = next((m for m in doc.get("models") or [] if m.get("name") == model), {})
    return dict(entry), dict(doc.get("modelDefaults") or {})


def parse_quantity(value: Any, unit: str) -> float | None:
    """A Kubernetes quantity in cores (unit "cpu") or MiB (unit "memory"); None if unset."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    suffixes = {
        "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
        "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4,
    }  # fmt: skip
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            number = float(text[: -len(suffix)]) * suffixes[suffix]
            break
    else:
        number = float(text)
    return number if unit == "cpu" else number / 1024**2


def _chart_resource(model: str, space: Space, kind: str, unit: str) -> tuple[float, str] | None:
    entry, defaults = chart_entry(model, space.chart_values)
    for where, node in (
        (f"the chart's {model} entry", entry),
        ("the chart's modelDefaults", defaults),
    ):
        resources = node.get("resources") or {}
        for side in ("limits", "requests"):
            value = parse_quantity((resources.get(side) or {}).get(unit), unit)
            if value is not None:
                return value, f"{where} (resources.{side}.{unit} {resources[side][unit]})"
    return None


def resources_for(model: str, result: SettingResult, space: Space) -> Resources:
    setting = result.setting
    if setting.threads is not None:
        cpu = float(setting.threads)
        cpu_source = f"one core per thread ({setting.label()})"
    elif space.cpu is not None:
        cpu, cpu_source = space.cpu, f"--cpu {space.cpu:g} (threads unknown at a URL)"
    else:
        found = _chart_resource(model, space, "cpu", "cpu")
        if found is None:
            raise AdviceError(f"{setting.label()}: threads unknown and no CPU given (--cpu)")
        cpu, where = found
        cpu_source = f"{where}: threads unknown at a URL"
    if result.peak_rss_mib is not None:
        memory = memory_mib_for(result.peak_rss_mib)
        memory_source = (
            f"peak RSS {result.peak_rss_mib:.0f} MiB at max_batch_size "
            f"{setting.max_batch_size} ({setting.label()}) + {MEMORY_MARGIN - 1:.0%}, "
            f"rounded up to {MEMORY_ROUND_MIB} MiB"
        )
    elif space.memory_mib is not None:
        memory = math.ceil(space.memory_mib)
        memory_source = f"--memory {memory} MiB (no peak RSS measured at a URL)"
    else:
        found = _chart_resource(model, space, "memory", "memory")
        if found is None:
            raise AdviceError(
                f"{setting.label()}: no peak RSS measured (a URL) and no memory given (--memory)"
            )
        memory = math.ceil(found[0])
        memory_source = f"{found[1]}: no peak RSS measured at a URL"
    return Resources(cpu, memory, cpu_source, memory_source)


def cpu_label(setting: RuntimeSetting, resources: Resources) -> str:
    """ "@0.25cpu" when the pod's CPU is below one core per thread, else ""."""
    if setting.threads is None or resources.cpu >= setting.threads:
        return ""
    return f"@{resources.cpu:g}cpu"


def throttled(
    result: SettingResult, resources: Resources, space: Space
) -> list[tuple[SettingResult, Resources]]:
    """The setting at each CPU fraction of its threads. Under a CFS quota of q cores for t
    threads (Linux Documentation/scheduler/sched-bwc.rst: the group runs `quota` per
    `period`, then waits for the next), a busy pod gets q/t of the CPU time it had, so each
    measured latency is stretched by t/q and the rate shrinks by q/t. For a short request
    on an idle pod that is pessimistic (it runs at full speed until the quota is spent),
    which an SLO can afford; the runtime does not spin under such a quota (KINDLING_SPIN
    auto), as it did not when measured."""
    threads = result.setting.threads
    if threads is None:
        return [(result, resources)]
    out = []
    for fraction in sorted(set(space.cpu_fractions), reverse=True):
        if fraction == 1.0:
            out.append((result, resources))
            continue
        cpu = round(threads * fraction, 3)
        stretch = threads / cpu
        points = tuple(
            LoadPoint(
                p.concurrency,
                tuple(round(v * stretch, 4) for v in p.latencies_ms),
                round(p.throughput_rps / stretch, 3),
            )
            for p in result.points
        )
        source = (
            f"{cpu:g} core(s) for {threads} thread(s): measured latencies x{stretch:g} "
            "(CFS quota, sched-bwc)"
        )
        out.append((replace(result, points=points), replace(resources, cpu=cpu, cpu_source=source)))
    return out


# -- candidates ------------------------------------------------------------------------------


def profile_for(measurement: Measurement, point: LoadPoint) -> Profile:
    """The simulator's samples for a pod at cc = point.concurrency: the measured cold
    starts, and as service times the latencies measured with cc requests in flight (the
    time a request holds one of the pod's cc slots when all are taken: slightly
    pessimistic when fewer are, as a pod then batches less and answers sooner)."""
    return Profile(
        measurement.model,
        tuple(measurement.cold_start_s),
        tuple(ms / 1e3 for ms in point.latencies_ms),
    )


def _stats(point: LoadPoint) -> tuple[float, float, float]:
    lat = np.asarray(point.latencies_ms)
    return (float(lat.mean()), float(np.percentile(lat, 50)), float(np.percentile(lat, 99)))


def _dominated(a: tuple[Resources, LoadPoint, str], b: tuple[Resources, LoadPoint, str]) -> bool:
    """b serves cc at least as fast (mean, p50, p99) at no higher price: a is not needed.
    Exact ties keep the first label, so one of two equal settings stays."""
    (ra, pa, la), (rb, pb, lb) = a, b
    sa, sb = _stats(pa), _stats(pb)
    if rb.price_per_s > ra.price_per_s or any(y > x for x, y in zip(sa, sb, strict=True)):
        return False
    strict = rb.price_per_s < ra.price_per_s or any(y < x for x, y in zip(sa, sb, strict=True))
    return strict or lb < la


def candidates(
    measurement: Measurement, space: Space
) -> tuple[list[Candidate], int, dict[str, int]]:
    """The grid after the static prunes: (candidates, grid size, pruned by reason)."""
    knobs = len(space.min_scales) * (len(space.margins_k) if space.policy == "kindling" else 1)
    pairs: list[tuple[SettingResult, Resources, LoadPoint]] = []
    considered = 0
    pruned = {OVER_SLO: 0, DOMINATED: 0}
    variants = [
        variant
        for measured in measurement.settings
        for variant in throttled(measured, resources_for(measurement.model, measured, space), space)
    ]
    for result, resources in variants:
        for point in result.points:
            n = len(_targets(point.concurrency, space)) * knobs
            considered += n
            if _stats(point)[2] > space.slo_p99_ms:
                pruned[OVER_SLO] += n
                continue
            pairs.append((result, resources, point))
    kept = []
    for result, resources, point in pairs:
        me = (resources, point, result.setting.label() + cpu_label(result.setting, resources))
        rivals = [
            (r, p, s.setting.label() + cpu_label(s.setting, r))
            for s, r, p in pairs
            if p.concurrency == point.concurrency and (s, r) != (result, resources)
        ]
        if any(_dominated(me, rival) for rival in rivals):
            pruned[DOMINATED] += len(_targets(point.concurrency, space)) * knobs
        else:
            kept.append((result, resources, point))
    margins: tuple[float | None, ...] = space.margins_k if space.policy == "kindling" else (None,)
    out = [
        Candidate(result.setting, resources, point.concurrency, target, m, k, point)
        for result, resources, point in kept
        for target in _targets(point.concurrency, space)
        for m in space.min_scales
        for k in margins
    ]
    return out, considered, pruned


def _targets(cc: int, space: Space) -> list[float]:
    return sorted({round(f * cc, 3) for f in space.target_fractions}, reverse=True)


# -- simulating ------------------------------------------------------------------------------


def sim_options(candidate: Candidate, space: Space) -> SimOptions:
    return SimOptions(
        container_concurrency=candidate.container_concurrency,
        pod_overhead_s=space.pod_overhead_s,
        slo_ms=space.slo_p99_ms,
        margin_k=candidate.margin_k if candidate.margin_k is not None else SimOptions.margin_k,
        kpa_target=candidate.target,
        min_scale=candidate.min_scale,
        max_scale=space.max_scale,
    )


def simulate(
    candidate: Candidate, measurement: Measurement, workload: Workload, space: Space
) -> Outcome:
    result = run_policy(
        space.policy,
        workload,
        profile_for(measurement, candidate.point),
        space.seed,
        sim_options(candidate, space),
    )
    assert result.timeline is not None
    peak = max(result.timeline.pods, default=0)
    result = replace(result, timeline=None)
    cost = candidate.resources.pricing().cost(result.pod_seconds)
    return Outcome(candidate, result, peak, cost)


def lower_bound_pod_s(
    candidate: Candidate, workload: Workload, space: Space, work_s: float
) -> float:
    """Pod-seconds no run of this candidate can go under: each pod serves at most cc
    requests at once (`work_s`: the counted requests' service time), and min-scale pods
    exist over the whole counted window (the KPA keeps them from its first tick)."""
    window = workload.end_s - min(SimOptions.warmup_s, workload.end_s)
    return max(work_s / candidate.container_concurrency, candidate.min_scale * window)


def _drawn(
    measurement: Measurement, point: LoadPoint, workload: Workload, seed: int
) -> tuple[float, float]:
    """(total service seconds, p99 ms) of the counted requests' service times, drawn as
    the simulator draws them (run_policy: common random numbers, seed [seed, 1])."""
    service = profile_for(measurement, point).sample_service(
        np.random.default_rng([seed, 1]), workload.requests
    )
    counted = service[workload.arrivals >= min(SimOptions.warmup_s, workload.end_s)]
    if not len(counted):
        return 0.0, 0.0
    return float(counted.sum()), float(np.percentile(counted, 99) * 1e3)


Progress = Callable[[int, int, Outcome], None]


def search(
    measurement: Measurement,
    workload: Workload,
    space: Space,
    progress: Progress | None = None,
) -> Search:
    """Simulate the grid, cheapest lower bound first, until the `keep` cheapest that meet
    the space's bounds are known. `progress(done, at_most, outcome)` after each run."""
    if workload.requests == 0:
        raise MeasurementError(f"workload {workload.name} has no requests to simulate")
    grid, considered, pruned = candidates(measurement, space)
    # A pod is its setting at its CPU (a quota stretches the latencies: throttled()).
    drawn: dict[tuple[RuntimeSetting, float, int], tuple[float, float]] = {}
    for c in grid:
        key = (c.setting, c.resources.cpu, c.container_concurrency)
        if key not in drawn:
            drawn[key] = _drawn(measurement, c.point, workload, space.seed)
    pruned[DRAWN_OVER_SLO] = 0
    bounds = []
    for c in grid:
        work_s, p99_ms = drawn[(c.setting, c.resources.cpu, c.container_concurrency)]
        if p99_ms > space.slo_p99_ms:
            pruned[DRAWN_OVER_SLO] += 1
            continue
        cost = lower_bound_pod_s(c, workload, space, work_s) * c.resources.price_per_s
        bounds.append((cost, c.label(), c))
    # Cheapest bound first; ties in a fixed order, so the search is deterministic.
    bounds.sort(key=lambda b: (b[0], b[2].min_scale, b[2].margin_k or 0.0, b[1]))
    outcomes: list[Outcome] = []
    best: list[float] = []  # costs of the SLO-meeting outcomes, ascending
    pruned[BOUND] = 0
    for i, (bound, _, candidate) in enumerate(bounds):
        if len(best) >= space.keep and bound >= best[space.keep - 1]:
            pruned[BOUND] = len(bounds) - i
            break
        outcome = simulate(candidate, measurement, workload, space)
        outcomes.append(outcome)
        if outcome.misses(space) is None:
            best = sorted([*best, outcome.cost_usd])
        if progress is not None:
            progress(len(outcomes), len(bounds) - i - 1 + len(outcomes), outcome)
    return Search(
        measurement,
        workload.name,
        workload.description,
        space,
        tuple(sorted(outcomes, key=Outcome.rank)),
        considered,
        pruned,
    )
