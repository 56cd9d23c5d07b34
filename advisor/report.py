"""Step 4 of `kindling advise`, the reader's side: a markdown report and a PNG of cost
against simulated p99 for every candidate simulated.

    write_report(search, folder, advice, command) -> [report.md, cost_p99.png]

With no advice (no candidate met the SLO: pick.NoCandidateMeetsSlo) the report says so
and shows the closest candidates instead of a pick.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from kindling.advisor.measurements import LoadPoint
from kindling.advisor.pick import Advice, best_measured
from kindling.advisor.search import (
    CPU_HOUR,
    GIB_HOUR,
    KNATIVE_UTILIZATION,
    Outcome,
    Search,
    resources_for,
)
from kindling.controller.simulate import SimOptions

REPORT = "report.md"
PLOT = "cost_p99.png"
# Rows of the failed-candidates table; the rest are counted.
FAILED_ROWS = 15


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a CI runner
    import matplotlib.pyplot as plt

    return plt


def cost_p99_png(search: Search, path: Path, advice: Advice | None = None) -> Path:
    """Each simulated candidate at (simulated p99, cost); the SLO as a line; the pick
    starred. Lower left is better; left of the line meets the SLO."""
    plt = _pyplot()
    space = search.space
    fig, ax = plt.subplots(figsize=(8, 5.5))
    meets = [o for o in search.outcomes if o.misses(space) is None]
    fails = [o for o in search.outcomes if o.misses(space) is not None]
    for group, color, name in (
        (meets, "tab:green", "meets the bounds"),
        (fails, "tab:red", "misses a bound"),
    ):
        shown = [o for o in group if math.isfinite(o.sim.p99_ms)]
        if shown:
            ax.scatter(
                [o.sim.p99_ms for o in shown],
                [o.cost_usd for o in shown],
                s=18,
                alpha=0.6,
                color=color,
                label=f"{name} ({len(group)})",
            )
    ax.axvline(space.slo_p99_ms, color="black", ls="--", lw=1, label=f"SLO {space.slo_p99_ms:g} ms")
    if advice is not None:
        p = advice.pick
        ax.scatter(
            [p.sim.p99_ms],
            [p.cost_usd],
            s=220,
            marker="*",
            color="gold",
            edgecolor="black",
            zorder=5,
            label=f"pick {p.candidate.label()}",
        )
        for r in advice.runners_up:
            o = r.outcome
            ax.annotate(
                o.candidate.label(),
                (o.sim.p99_ms, o.cost_usd),
                fontsize=6,
                xytext=(4, 4),
                textcoords="offset points",
            )
    if search.outcomes and max(o.sim.p99_ms for o in search.outcomes) > 20 * space.slo_p99_ms:
        ax.set_xscale("log")
    ax.set_xlabel("simulated p99 latency (ms)")
    ax.set_ylabel("cost over the window (USD, OpenCost prices)")
    ax.set_title(
        f"{search.measurement.model} on {search.workload}: {search.simulated} candidates "
        f"simulated ({space.policy})"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _threads(n: int | None) -> str:
    return "threads unknown" if n is None else f"{n} thread{'' if n == 1 else 's'}"


def _row(o: Outcome, *extra: str) -> str:
    c = o.candidate
    k = "-" if c.margin_k is None else f"{c.margin_k:g}"
    per_m = o.per_million_usd
    return (
        f"| `{c.label()}` | {c.setting.threads or '?'} | {c.resources.memory_mib} Mi | "
        f"{c.container_concurrency} | {c.target:g} | {c.min_scale} | {k} | "
        f"{o.sim.p99_ms:.1f} | {o.cold_ratio:.2%} | {o.sim.pod_seconds:.0f} | "
        f"${o.cost_usd:.4f} | {'-' if per_m is None else f'${per_m:.2f}'} |"
        + "".join(f" {e} |" for e in extra)
    )


HEAD = (
    "| candidate | threads | memory | cc | target | min-scale | margin k | p99 ms | cold | "
    "pod-s | cost | per 10^6 req |"
)
RULE = "|---|---|---|---|---|---|---|---|---|---|---|---|"


def report_markdown(
    search: Search, advice: Advice | None = None, command: str | None = None
) -> str:
    space, m = search.space, search.measurement
    bound = "" if space.max_cold_ratio is None else f", cold requests <= {space.max_cold_ratio:.2%}"
    out = [f"# Sizing {m.model}: p99 <= {space.slo_p99_ms:g} ms on {search.workload}{bound}", ""]
    if command:
        out += ["```", command, "```", ""]
    if advice is not None:
        p = advice.pick
        c = p.candidate
        out += [
            "## The pick",
            "",
            f"`{c.label()}`: {_threads(c.setting.threads)}, CPU {c.resources.cpu:g} "
            f"and memory {c.resources.memory_mib} Mi (request = limit), containerConcurrency "
            f"{c.container_concurrency}, autoscaling target {c.target:g} (the KPA aims at "
            f"{c.effective_target:g} in flight per pod), min-scale {c.min_scale}"
            + ("" if c.margin_k is None else f", pre-warm margin k {c.margin_k:g}")
            + f", max_batch_size {c.setting.max_batch_size}, max_queue_delay_ms "
            f"{c.setting.max_queue_delay_ms:g}.",
            "",
            f"Simulated on {search.workload}: p50 {p.sim.p50_ms:.1f} ms, "
            f"p99 {p.sim.p99_ms:.1f} ms, "
            f"{p.sim.cold_requests} cold of {p.sim.requests} requests ({p.cold_ratio:.2%}), "
            f"{p.sim.pod_seconds:.0f} pod-seconds (peak {p.peak_pods} pods), ${p.cost_usd:.4f} "
            + (f"(${p.per_million_usd:.2f} per 10^6 requests)." if p.per_million_usd else "."),
            "",
            f"- memory: {c.resources.memory_source}",
            f"- CPU: {c.resources.cpu_source}",
            f"- service time: the {len(c.point.latencies_ms)} latencies measured at "
            f"concurrency {c.container_concurrency} ({c.setting.label()}), p99 "
            f"{c.measured_p99_ms:.1f} ms",
            "",
        ]
    else:
        closest = sorted(search.outcomes, key=lambda o: (o.rank()[1], o.cold_ratio))[:5]
        setting, cc, p99 = best_measured(search)
        out += [
            "## No candidate meets the SLO",
            "",
            f"The lowest p99 measured anywhere is {p99:.1f} ms ({setting} at concurrency {cc}).",
            "",
        ]
        if closest:
            out += ["The closest simulated:", "", HEAD, RULE, *(_row(o) for o in closest), ""]
    out += _inputs(search)
    if advice is not None:
        out += ["## Runners-up", ""]
        if advice.runners_up:
            out += [f"{HEAD} why it lost |", f"{RULE}---|"]
            out += [_row(r.outcome, r.why) for r in advice.runners_up]
        else:
            out.append("None: no other simulated candidate meets the bounds.")
        out.append("")
    failed = [o for o in search.outcomes if o.misses(space) is not None]
    out += ["## Missed the SLO", ""]
    if failed:
        out += [f"{HEAD} why |", f"{RULE}---|"]
        out += [_row(o, o.misses(space) or "") for o in failed[:FAILED_ROWS]]
        if len(failed) > FAILED_ROWS:
            out.append(f"\n... and {len(failed) - FAILED_ROWS} more, costlier.")
    else:
        out.append("None of the candidates simulated.")
    out += ["", "## Cost against p99", "", f"![cost against simulated p99]({PLOT})", ""]
    out += _measurement(search)
    out += _how_to_read(search)
    return "\n".join(out) + "\n"


def _inputs(search: Search) -> list[str]:
    space, m = search.space, search.measurement
    pruned = "; ".join(f"{n} {reason}" for reason, n in search.pruned.items() if n) or "none"
    return [
        "## Inputs",
        "",
        f"- measurement: {m.source}; cold start median {np.median(m.cold_start_s):.3f} s "
        f"({len(m.cold_start_s)} starts)"
        + (f", plus {space.pod_overhead_s:g} s pod start" if space.pod_overhead_s else ""),
        f"- workload: {search.workload}: {search.workload_description}",
        f"- simulator: policy {space.policy}, seed {space.seed}, the first "
        f"{SimOptions.warmup_s:g} s not counted, max-scale {space.max_scale}",
        f"- searched: target {list(space.target_fractions)} x containerConcurrency, min-scale "
        f"{list(space.min_scales)}"
        + (f", margin k {list(space.margins_k)}" if space.policy == "kindling" else ""),
        f"- {search.considered} candidates, {search.simulated} simulated; pruned: {pruned}",
        f"- price: each pod's requests at OpenCost's default prices (${CPU_HOUR}/vCPU-h, "
        f"${GIB_HOUR}/GiB-h: an m5.large's 2 vCPU and 8 GiB come to its $0.096/h within "
        "1.2 %), times the pod-seconds simulated",
        "",
    ]


def _measurement(search: Search) -> list[str]:
    m = search.measurement
    out = ["## The measurement", ""]
    if m.machine:
        out += [", ".join(f"{k}: {v}" for k, v in m.machine.items()), ""]
    out += [
        "| setting | peak RSS | memory | concurrency: p50 / p99 ms | p99 over the SLO from |",
        "|---|---|---|---|---|",
    ]
    for result in m.settings:
        resources = resources_for(m.model, result, search.space)
        peak = "-" if result.peak_rss_mib is None else f"{result.peak_rss_mib:.0f} MiB"
        points = ", ".join(
            f"{p.concurrency}: {np.percentile(p.latencies_ms, 50):.1f} / "
            f"{np.percentile(p.latencies_ms, 99):.1f}"
            for p in result.points
        )
        crossing = slo_crossing(result.points, search.space.slo_p99_ms)
        out.append(
            f"| `{result.setting.label()}` | {peak} | {resources.memory_mib} Mi | {points} "
            f"| {crossing} |"
        )
    return [*out, ""]


def slo_crossing(points: tuple[LoadPoint, ...], slo_ms: float) -> str:
    """The lowest measured concurrency whose p99 is over the SLO: the most one pod of this
    setting can take in flight and still meet it is below that."""
    for p in sorted(points, key=lambda p: p.concurrency):
        if np.percentile(p.latencies_ms, 99) > slo_ms:
            return f"C={p.concurrency}"
    return f"not crossed up to C={max(p.concurrency for p in points)}"


def _how_to_read(search: Search) -> list[str]:
    return [
        "## How to read it",
        "",
        "A candidate is named `t<threads>-b<max_batch_size>-d<queue delay ms>[@<CPU>cpu]-cc"
        "<containerConcurrency>-T<target>-m<min-scale>[-k<margin>]` (`@0.25cpu`: a CFS "
        "quota below one core per thread, its measured latencies stretched to match). Each "
        "was played by the simulator (controller/simulate.py) on the workload, its requests "
        "drawing service times from the latencies measured at its containerConcurrency and "
        "its pods the measured cold starts; the cost is its pod-seconds times its requests' "
        "price. The pick is the cheapest that met the bounds; a tie goes to the lower p99, "
        "then to fewer kept pods. Knative aims at "
        f"{KNATIVE_UTILIZATION:.0%} of min(target, containerConcurrency) in flight per pod.",
        "",
    ]


def write_report(
    search: Search, folder: Path, advice: Advice | None = None, command: str | None = None
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    plot = cost_p99_png(search, folder / PLOT, advice)
    report = folder / REPORT
    report.write_text(report_markdown(search, advice, command))
    return [report, plot]
