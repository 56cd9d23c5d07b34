"""The simulator's outputs: a table, JSON, a PNG timeline per policy, the Pareto plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kindling.controller.simulate import (
    SWEEPS,
    SimOptions,
    SimResult,
    dominates,
    frontier_dominates,
)


def table(results: list[SimResult], title: str) -> str:
    head = (
        f"{'policy':18}{'requests':>10}{'cold':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'SLO miss':>10}{'started':>9}{'pod-s':>11}{'vs kpa':>9}"
    )
    kpa = next((r for r in results if r.policy == "knative-kpa"), None)
    lines = [title, head, "-" * len(head)]
    for r in results:
        ratio = f"{r.pod_seconds / kpa.pod_seconds:.2f}x" if kpa and kpa.pod_seconds else "-"
        lines.append(
            f"{r.policy:18}{r.requests:>10}{r.cold_requests:>8}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}"
            f"{r.slo_violations:>10}{r.pods_started:>9}{r.pod_seconds:>11.0f}{ratio:>9}"
        )
    if results:
        lines.append(f"SLO: latency <= {results[0].slo_ms:g} ms (wait + service)")
    for r in results:
        if r.policy == "kpa-static-floor" and "tuned_on_seed" in r.knob:
            lines.append(
                f"kpa-static-floor: min-scale {r.knob['min_scale']:g}, the smallest with no "
                f"cold request on seed {r.knob['tuned_on_seed']:g}'s arrivals"
            )
    return "\n".join(lines)


def to_json(results: list[SimResult]) -> list[dict[str, Any]]:
    return [r.to_json() for r in results]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a CI runner
    import matplotlib.pyplot as plt

    return plt


def timeline_png(result: SimResult, path: Path) -> None:
    """Rate and forecast, warm pods, cold requests per second."""
    assert result.timeline is not None
    tl = result.timeline
    plt = _pyplot()
    t = np.arange(1, len(tl.arrivals) + 1)
    fig, (top, mid, bottom) = plt.subplots(
        3, 1, figsize=(10, 7), sharex=True, height_ratios=[3, 2, 1]
    )
    top.plot(t, tl.arrivals, lw=0.6, color="tab:blue", label="arrivals/s")
    forecast = np.asarray(tl.forecast, dtype=float)
    if np.isfinite(forecast).any():
        top.plot(t, forecast, lw=1.2, color="tab:orange", label="forecast at lead (req/s)")
    top.set_ylabel("req/s")
    top.legend(loc="upper right")
    mid.step(t, tl.pods, where="post", color="tab:gray", label="pods (incl. starting)")
    mid.step(t, tl.ready_pods, where="post", color="tab:green", label="ready pods")
    mid.set_ylabel("pods")
    mid.legend(loc="upper right")
    bottom.bar(t, tl.cold, width=1.0, color="tab:red")
    bottom.set_ylabel("cold req")
    bottom.set_xlabel("seconds")
    fig.suptitle(
        f"{result.policy} on {result.workload}: {result.cold_requests} cold requests, "
        f"{result.pod_seconds:.0f} pod-s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto_png(sweeps: dict[str, list[SimResult]], workload: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, runs in sweeps.items():
        xs = [r.pod_seconds for r in runs]
        ys = [r.cold_requests for r in runs]
        ax.plot(xs, ys, marker="o", label=f"{name} ({SWEEPS[name][0]})")
        for r in runs:
            (value,) = r.knob.values()
            ax.annotate(f"{value:g}", (r.pod_seconds, r.cold_requests), fontsize=7)
    ax.set_xlabel("pod-seconds")
    ax.set_ylabel("cold requests")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_title(f"cold requests vs pod-seconds, {workload} (lower left is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto_json(sweeps: dict[str, list[SimResult]]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "points": {name: to_json(runs) for name, runs in sweeps.items()},
    }
    if "kindling" in sweeps:
        ours = sweeps["kindling"]
        # Against the published setting (keep-alive 10 min; hybrid's 10% margin; KPA's
        # 0.7): does some Kindling point have no more cold requests and pod-seconds?
        doc["kindling_dominates_default"] = {
            name: any(dominates(a, b) for a in ours for b in runs if _is_default(b))
            for name, runs in sweeps.items()
            if name != "kindling"
        }
        # Against every swept setting of the baseline.
        doc["kindling_dominates_frontier"] = {
            name: frontier_dominates(ours, runs)
            for name, runs in sweeps.items()
            if name != "kindling"
        }
    return doc


def _is_default(result: SimResult) -> bool:
    ((knob, value),) = result.knob.items()
    return getattr(SimOptions(), knob) == value


def write_pareto(sweeps: dict[str, list[SimResult]], workload: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    png, doc = out / f"pareto-{workload}.png", out / f"pareto-{workload}.json"
    pareto_png(sweeps, workload, png)
    doc.write_text(json.dumps(pareto_json(sweeps), indent=1) + "\n")
    return [png, doc]
