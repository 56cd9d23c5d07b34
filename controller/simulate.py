"""Simulate one model's pods under each policy on the same arrivals, and sweep the knobs.

    run_policy("kindling", workload, profile, seed) -> SimResult

A deterministic discrete-event simulation (sim_pods.Engine) of a Knative revision, fed
one workload (workloads.py) and the model's measured cold-start and service-time samples
(profiles.py). Every policy sees the same arrivals and the same service time per request
(common random numbers), so differences are the policies'.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from kindling.controller.baselines import HybridHistogram, KeepAlive, Kindling, KnativeKpa
from kindling.controller.forecast import DAY_S, Ewma, Forecaster, Holt, Seasonal
from kindling.controller.kpa import KpaConfig
from kindling.controller.policy import WarmPolicy
from kindling.controller.profiles import Profile
from kindling.controller.settings import ControllerSettings
from kindling.controller.sim_pods import Engine, Timeline
from kindling.controller.workloads import SCALE_TO_ZERO_S, Workload

POLICIES = ("knative-kpa", "kpa-static-floor", "keepalive-10m", "hybrid-histogram", "kindling")
# The static floor's search stops here: a floor this high is a fleet, not a setting.
MAX_STATIC_FLOOR = 64
# The SLO a request is judged by: 250 ms end to end. A warm MobileNetV2 request takes
# ~7-12 ms here (profiles.json), a cold one waits for a ~0.4 s runtime start, so the SLO
# separates "served warm, perhaps queued" from "waited on a pod start".
SLO_MS = 250.0
# Kindling's scrape interval: Prometheus' rate over a 15 s scrape (a common
# scrape_interval; the controller's own /metrics scrape uses the same).
SCRAPE_S = 15.0
# How long a removed pod stays Terminating, holding its resources: the queue-proxy's drain
# on SIGTERM waits a quiet period of 30 s after its last request (knative/serving v0.50.0
# pkg/queue/sharedmain/main.go drainSleepDuration, the Drainer's QuietPeriod), unless the
# pod's grace period, which Knative sets to the Revision's timeoutSeconds (default 300 s),
# ends it first. Every policy's pods pay it: they are all a Revision's pods.
DRAIN_S = 30.0
# A Prometheus scraping the runtimes as the chart's ServiceMonitor does (values.yaml
# metrics.serviceMonitor.interval: 30s), for the "prometheus" input.
PROMETHEUS_SCRAPE_S = 30.0


@dataclass(frozen=True)
class SimOptions:
    container_concurrency: int = 1
    # What a cluster adds to the runtime's own cold start (scheduling, sandbox, container
    # start, routing): each pod draws one of `pod_overhead_samples` (measured on the real
    # node, profiles.pod_start()) when there are any, else adds `pod_overhead_s`. The
    # policies that plan ahead (Kindling) are told the median, as the controller is.
    pod_overhead_s: float = 0.0
    pod_overhead_samples: tuple[float, ...] = ()
    drain_s: float = DRAIN_S
    slo_ms: float = SLO_MS
    scrape_s: float = SCRAPE_S
    forecaster: str = "holt"
    # What Kindling's forecaster reads (baselines.Kindling.input): "exact" every scrape_s;
    # "scrape" or "prometheus" as the deployed controller reads them, every
    # KINDLING_INTERVAL_S (10 s) over KINDLING_WINDOW_S (60 s) for Prometheus' rate.
    input: str = "scrape"
    prometheus_scrape_s: float = PROMETHEUS_SCRAPE_S
    # The seasonal forecaster's period: configured, as a user would (a day), never read
    # from the workload's generator (the diurnal workload's day is 3600 s: --season-s 3600).
    season_s: float = DAY_S
    # Knobs the Pareto sweep turns (defaults: each policy as published).
    margin_k: float = 2.0
    cold_cost_s: float = WarmPolicy.cold_cost_s
    keep_alive_s: float = 600.0
    hybrid_head: float = 0.05
    hybrid_tail: float = 0.99
    hybrid_margin: float = 0.10
    kpa_utilization: float = 0.7
    # The revision's own autoscaling annotations, as the chart writes them (kindling
    # advise searches them): autoscaling.knative.dev/target (None: unset, the KPA aims at
    # containerConcurrency x utilization), min-scale (the user's floor, which the
    # controller also keeps: WarmPolicy.min_scale) and max-scale (0: no limit).
    kpa_target: float | None = None
    min_scale: int = 0
    max_scale: int = 0
    # kpa-static-floor's min-scale; None: the smallest with no cold request on another
    # seed's arrivals (static_floor()).
    static_floor: int | None = None
    # Arrivals before this are not counted, nor pod-seconds before it: every policy starts
    # from the same arbitrary state (one warm pod, no history), and the transient is
    # deleted as a steady-state simulation does (Law & Kelton, "Simulation Modeling and
    # Analysis", warm-up period). 60 s: one KPA stable window, four Kindling samples.
    warmup_s: float = 60.0
    # autoscaling.knative.dev/initial-scale: the pods up and ready at 0 (the Revision was
    # created before the run), and the KPA's own starting scale. Knative's default 1; 0 for
    # a Revision created at zero, as the chart's real runs compared with this one start.
    initial_scale: int = 1
    # Live through "yesterday" first: the run starts on the workload of the seed the static
    # floor is tuned on (Workload.remake(seed + 1)) and goes straight on into the evaluated
    # one, and only the evaluated one is counted. A controller that has been running
    # comes to a day with the past days' history, as a user comes to it with the floor
    # they set from yesterday; without it every learning policy starts each run knowing
    # nothing while the floor starts tuned. Every policy gets the same history.
    history: bool = False


@dataclass
class SimResult:
    policy: str
    workload: str
    requests: int
    cold_requests: int
    p50_ms: float
    p99_ms: float
    slo_ms: float
    slo_violations: int
    pod_seconds: float
    pods_started: int
    unserved: int
    knob: dict[str, float] = field(default_factory=dict)
    timeline: Timeline | None = None
    latencies_ms: np.ndarray | None = field(default=None, repr=False)
    """Every counted request's latency (sim_population bins them)."""

    def to_json(self) -> dict[str, Any]:
        doc = asdict(replace(self, timeline=None, latencies_ms=None))
        doc.pop("timeline")
        doc.pop("latencies_ms")
        for key in ("p50_ms", "p99_ms", "pod_seconds"):
            doc[key] = round(doc[key], 3)
        return doc


def make_forecaster(name: str, season_s: float = DAY_S) -> Forecaster:
    if name == "holt":
        return Holt()
    if name == "ewma":
        return Ewma()
    if name == "seasonal":
        return Seasonal(period_s=season_s)  # 96 bins of it, as forecast.py's default
    raise ValueError(f"unknown forecaster {name!r} (holt, ewma, seasonal)")


def make_policy(name: str, profile: Profile, opts: SimOptions) -> Any:
    kpa_config = KpaConfig(
        container_concurrency=opts.container_concurrency,
        target_utilization=opts.kpa_utilization,
        target_annotation=opts.kpa_target,
        min_scale=opts.min_scale,
        max_scale=opts.max_scale,
        initial_scale=opts.initial_scale,
    )
    if name == "knative-kpa":
        return KnativeKpa(kpa_config)
    if name == "kpa-static-floor":
        if opts.static_floor is None:
            raise ValueError("kpa-static-floor needs its floor (SimOptions.static_floor)")
        floor = max(opts.min_scale, opts.static_floor)
        return KnativeKpa(replace(kpa_config, min_scale=floor), name)
    if name == "keepalive-10m":
        return KeepAlive(opts.keep_alive_s)
    if name == "hybrid-histogram":
        return HybridHistogram(opts.hybrid_head, opts.hybrid_tail, opts.hybrid_margin)
    if name == "kindling":
        # The deployed controller's policy, from its settings' defaults (the loop builds it
        # the same way), with the knobs the sweep turns.
        settings = replace(
            ControllerSettings(), margin_k=opts.margin_k, cold_cost_s=opts.cold_cost_s
        )
        policy = settings.warm_policy(
            cold_start_s=profile.median_cold_start_s + opts.pod_overhead_s,
            concurrency_target=kpa_config.target,
            min_scale=opts.min_scale,
            max_scale=opts.max_scale or None,
        )
        deployed = opts.input != "exact"
        return Kindling(
            policy=policy,
            forecaster=make_forecaster(opts.forecaster, opts.season_s),
            service_time_s=profile.mean_service_s,
            scrape_s=ControllerSettings.interval_s if deployed else opts.scrape_s,
            config=kpa_config,
            input=opts.input,
            window_s=ControllerSettings.window_s,
            prometheus_scrape_s=opts.prometheus_scrape_s,
        )
    raise ValueError(f"unknown policy {name!r} (known: {', '.join(POLICIES)}, all)")


def make_engine(workload: Workload, profile: Profile, seed: int, opts: SimOptions) -> Engine:
    """A run's engine: the workload's arrivals, the model's measured cold starts and the
    pod starts of `opts`. Common random numbers: one service time per request, the same
    for every policy on the same seed."""
    service = profile.sample_service(np.random.default_rng([seed, 1]), workload.requests)
    return Engine(
        workload.arrivals,
        service,
        workload.end_s,
        np.random.default_rng([seed, 2]),
        np.asarray(profile.cold_start_s),
        opts.container_concurrency,
        np.asarray(opts.pod_overhead_samples or (opts.pod_overhead_s,)),
        opts.drain_s,
    )


def run_policy(
    name: str,
    workload: Workload,
    profile: Profile,
    seed: int = 0,
    opts: SimOptions | None = None,
    knob: dict[str, float] | None = None,
    stop_on_cold: bool = False,
) -> SimResult:
    """One policy on one workload. `stop_on_cold`: end the run at the first counted cold
    request (a search for a setting with none needs no more; the rest is not simulated)."""
    opts = opts or SimOptions()
    if name == "kpa-static-floor" and opts.static_floor is None:
        floor, tuned_on = static_floor(workload, profile, seed, opts)
        opts = replace(opts, static_floor=floor)
        knob = {"min_scale": floor, "tuned_on_seed": tuned_on, **(knob or {})}
    since = min(opts.warmup_s, workload.end_s)
    if opts.history:
        workload, since = with_history(workload, seed)
    engine = make_engine(workload, profile, seed, opts)
    policy = make_policy(name, profile, opts)
    if stop_on_cold:
        engine.stop_on_cold_after = since
    engine.run(policy, opts.initial_scale)
    latency_ms = engine.latencies_s(since) * 1e3
    counted = engine.counted(since)
    served = len(latency_ms)
    requests = int(counted.sum())
    unserved = requests - served
    p50, p99 = (float(np.percentile(latency_ms, q)) if served else float("nan") for q in (50, 99))
    return SimResult(
        policy=name,
        workload=workload.name,
        requests=requests,
        cold_requests=int(engine.cold[: engine.arrived][counted].sum()),
        p50_ms=p50,
        p99_ms=p99,
        slo_ms=opts.slo_ms,
        slo_violations=int((latency_ms > opts.slo_ms).sum()) + unserved,
        pod_seconds=engine.pod_seconds(since),
        pods_started=engine.pods_started(since),
        unserved=unserved,
        knob=knob or {},
        timeline=engine.timeline.after(int(since)) if opts.history else engine.timeline,
        latencies_ms=latency_ms,
    )


def with_history(workload: Workload, seed: int) -> tuple[Workload, float]:
    """`workload` preceded by yesterday's (its remake on seed + 1, the static floor's tuning
    data), and the time the evaluated part starts: yesterday without its closing silence
    (every workload ends with SCALE_TO_ZERO_S of it), so the days join as in a running
    cluster. A workload that cannot be remade is its own yesterday."""
    yesterday = workload.remake(seed + 1) if workload.remake is not None else workload
    last = float(yesterday.arrivals[-1]) if yesterday.requests else 0.0
    shift = max(yesterday.end_s - SCALE_TO_ZERO_S, last)
    return (
        replace(
            workload,
            arrivals=np.concatenate([yesterday.arrivals, workload.arrivals + shift]),
            end_s=shift + workload.end_s,
            offered_rps=None,
        ),
        shift,
    )


def static_floor(
    workload: Workload, profile: Profile, seed: int, opts: SimOptions
) -> tuple[int, int]:
    """The smallest min-scale under which the plain KPA had no cold request, and the seed
    it was chosen on: the next one's arrivals of the same workload, never the evaluated
    seed's (a user sets a floor from yesterday's traffic, not today's). A workload that
    cannot be remade from a seed is its own tuning data, said by the seed returned."""
    tuning, tuned_on = workload, seed
    if workload.remake is not None:
        tuned_on = seed + 1
        tuning = workload.remake(tuned_on)
    for floor in range(max(opts.min_scale, 0), MAX_STATIC_FLOOR):
        trial = replace(opts, min_scale=floor, static_floor=None, history=False)
        trial_run = run_policy("knative-kpa", tuning, profile, tuned_on, trial, stop_on_cold=True)
        if trial_run.cold_requests == 0:
            return floor, tuned_on
    return MAX_STATIC_FLOOR, tuned_on


def run_all(
    names: list[str], workload: Workload, profile: Profile, seed: int, opts: SimOptions
) -> list[SimResult]:
    return [run_policy(n, workload, profile, seed, opts) for n in names]


# -- the Pareto sweep ------------------------------------------------------------------------

# Each policy's knob and the values swept; the published default is among them.
SWEEPS: dict[str, tuple[str, tuple[float, ...]]] = {
    "knative-kpa": ("kpa_utilization", (0.3, 0.5, 0.7, 0.9)),
    "kpa-static-floor": ("static_floor", (0, 1, 2, 3, 4, 6, 8, 12)),
    "keepalive-10m": ("keep_alive_s", (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)),
    "hybrid-histogram": ("hybrid_margin", (0.0, 0.1, 0.5, 1.0, 3.0, 9.0)),
    "kindling": ("margin_k", (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0)),
}


def sweep(
    names: list[str], workload: Workload, profile: Profile, seed: int, opts: SimOptions
) -> dict[str, list[SimResult]]:
    out: dict[str, list[SimResult]] = {}
    for name in names:
        knob, values = SWEEPS[name]
        runs = []
        for value in values:
            o = SimOptions(**{**asdict(opts), knob: value})
            result = run_policy(name, workload, profile, seed, o, {knob: value})
            result.timeline = result.latencies_ms = None
            runs.append(result)
        out[name] = runs
    return out


def dominates(a: SimResult, b: SimResult) -> bool:
    """a is no worse than b on cold requests and pod-seconds, and better on one."""
    no_worse = a.cold_requests <= b.cold_requests and a.pod_seconds <= b.pod_seconds
    return no_worse and (a.cold_requests < b.cold_requests or a.pod_seconds < b.pod_seconds)


def frontier_dominates(ours: list[SimResult], theirs: list[SimResult]) -> bool:
    """Every point of `theirs` is dominated by some point of `ours`."""
    return all(any(dominates(a, b) for a in ours) for b in theirs)
