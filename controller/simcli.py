"""`kindling controller simulate`: one model's pods under each policy, on one workload.

kindling controller simulate --workload mmpp-200 --policy all [--json] [--plot DIR]
    [--pareto DIR] [--trace CSV] [--model mobilenet_v2] [--seed 0] [--duration S]
kindling controller simulate --workload population --functions 500 --seed 7 [--jobs 2]
    [--write-trace CSV]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from kindling.controller import population, profiles, sim_report, workloads
from kindling.controller.baselines import INPUTS
from kindling.controller.sim_population import run_population
from kindling.controller.simulate import POLICIES, SimOptions, run_all, sweep


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kindling controller simulate", description=__doc__)
    p.add_argument("--workload", required=True, choices=workloads.NAMES)
    p.add_argument("--policy", default="all", choices=[*POLICIES, "all"])
    p.add_argument("--trace", type=Path, help="Azure Functions 2019 per-minute counts CSV")
    p.add_argument("--function", help="trace rows to replay (HashFunction or HashApp)")
    p.add_argument("--model", default=profiles.DEFAULT_MODEL, help="measured profile to use")
    p.add_argument("--profiles", type=Path, help="a profiles.json (default: the shipped one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, help="workload length, seconds")
    p.add_argument(
        "--functions", type=int, default=500, help="the population's size (--workload population)"
    )
    p.add_argument("--jobs", type=int, help="processes for a population (default: one per CPU)")
    p.add_argument(
        "--write-trace",
        type=Path,
        metavar="CSV",
        help="also write the population's day in the Azure Functions 2019 format",
    )
    p.add_argument(
        "--burst-factor",
        type=float,
        default=workloads.DIURNAL_BURST_FACTOR,
        help="the diurnal workload's burst multiple of the rate",
    )
    p.add_argument(
        "--burst-s",
        type=float,
        nargs=2,
        default=workloads.DIURNAL_BURST_S,
        metavar=("SHORTEST", "LONGEST"),
        help="the diurnal workload's burst lengths, seconds",
    )
    p.add_argument("--margin-k", type=float, default=SimOptions.margin_k)
    p.add_argument("--forecaster", default="holt", choices=("holt", "ewma", "seasonal"))
    p.add_argument(
        "--input",
        default=SimOptions.input,
        choices=INPUTS,
        help="what Kindling's forecaster reads: every arrival per 15 s (exact), or as the "
        "deployed controller reads it every 10 s: the pods' counter deltas (scrape) or "
        "Prometheus' 60 s rate of 30 s scrapes (prometheus)",
    )
    p.add_argument(
        "--season-s",
        type=float,
        default=SimOptions.season_s,
        help="the seasonal forecaster's period, seconds (default a day; the diurnal "
        "workload's compressed day is 3600)",
    )
    p.add_argument("--warmup", type=float, default=SimOptions.warmup_s, help="seconds not counted")
    p.add_argument(
        "--pod-overhead",
        type=float,
        help="seconds a cluster adds to each cold start (default: each pod draws one of the "
        "pod starts measured on a real node, controller/data/pod_start.json; 0 for the "
        "runtime's own cold start alone)",
    )
    p.add_argument(
        "--drain-s",
        type=float,
        default=SimOptions.drain_s,
        help="seconds a removed pod stays Terminating and counted (the queue-proxy's drain)",
    )
    p.add_argument("--slo-ms", type=float, default=SimOptions.slo_ms)
    p.add_argument(
        "--history",
        action="store_true",
        help="run every policy through yesterday first (the next seed's workload, which the "
        "static floor is tuned on) and count only the evaluated day",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per policy")
    p.add_argument("--plot", type=Path, metavar="DIR", help="a PNG timeline per policy")
    p.add_argument("--pareto", type=Path, metavar="DIR", help="sweep each policy's knob")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        profile = profiles.load(args.model, args.profiles)
        overhead, samples = args.pod_overhead, ()
        if overhead is None:
            measured = profiles.pod_start()
            overhead, samples = measured.median_s, measured.overhead_s
        functions = None
        if args.workload == "population":
            functions = population.population(args.functions, args.seed)
            workload = None
        else:
            workload = workloads.make(
                args.workload,
                args.seed,
                args.duration,
                args.trace,
                args.function,
                args.burst_factor,
                tuple(args.burst_s),
            )
    except ValueError as exc:
        print(f"kindling controller simulate: {exc}", file=sys.stderr)
        return 2
    opts = replace(
        SimOptions(),
        pod_overhead_samples=samples,
        margin_k=args.margin_k,
        forecaster=args.forecaster,
        season_s=args.season_s,
        input=args.input,
        warmup_s=args.warmup,
        pod_overhead_s=overhead,
        drain_s=args.drain_s,
        slo_ms=args.slo_ms,
        history=args.history,
    )
    names = list(POLICIES) if args.policy == "all" else [args.policy]
    pod_start = (
        f"a measured pod start (median {overhead:.3g} s) added to each cold start"
        if samples
        else f"{overhead:.3g} s of pod start added to each cold start"
    )
    if functions is not None:
        return _population(args, functions, names, profile, opts, pod_start)
    assert workload is not None
    counted = (
        "after yesterday's run (seed + 1), the day counted"
        if opts.history
        else f"first {opts.warmup_s:g}s not counted"
    )
    results = run_all(names, workload, profile, args.seed, opts)
    if args.json:
        print(json.dumps(sim_report.to_json(results), indent=1))
    else:
        title = (
            f"{workload.name}: {workload.description}; model {args.model}, seed {args.seed}, "
            f"{counted}; {pod_start}"
        )
        print(sim_report.table(results, title))
    if args.plot:
        args.plot.mkdir(parents=True, exist_ok=True)
        for r in results:
            sim_report.timeline_png(r, args.plot / f"{workload.name}-{r.policy}.png")
    if args.pareto:
        sweeps = sweep(names, workload, profile, args.seed, opts)
        written = sim_report.write_pareto(sweeps, workload.name, args.pareto)
        if not args.json:
            doc = sim_report.pareto_json(sweeps)
            print(f"pareto: {', '.join(str(p) for p in written)}")
            for key in ("kindling_dominates_default", "kindling_dominates_frontier"):
                if key in doc:
                    print(f"  {key}: {doc[key]}")
    return 0


def _population(
    args: argparse.Namespace,
    functions: list[population.Function],
    names: list[str],
    profile: profiles.Profile,
    opts: SimOptions,
    pod_start: str,
) -> int:
    if args.plot or args.pareto:
        print(
            "kindling controller simulate: --plot and --pareto take one workload, not a population",
            file=sys.stderr,
        )
        return 2
    if args.write_trace:
        population.write_trace(functions, args.write_trace, args.seed)
    result = run_population(names, functions, profile, args.seed, opts, args.duration, args.jobs)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
        return 0
    print(
        sim_report.table(
            result.results(),
            f"population: {len(functions)} synthetic functions (seed {args.seed}, Shahrad et al. "
            f"ATC'20's distributions), a day each, summed; model {args.model}; {pod_start}",
        )
    )
    for cls, sums in result.by_class.items():
        count = next(iter(sums.values())).functions
        print()
        print(sim_report.table(result.class_results(cls), f"{cls}: {count} functions"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
