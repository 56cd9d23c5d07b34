"""summary.json, report.md and the plots of a run directory, with tables in the papers' shapes.

- per stage, paper 000's Table 1: concurrency, throughput, mean, p50 and p99 latency, and
  cost per 10^6 requests (pay per request, self-hosted, always-on);
- per workload, paper 001: requests, average latency, success ratio, cost of the workload;
- cold against warm, paper 002: by the runtime's Kindling-Cold-Start header.

`kindling loadtest report DIR...` rebuilds them, and with several runs writes one
paper-001 table with a row per workload.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kindling.loadtest import plots
from kindling.loadtest.summary import RunData, summarize

COST_NAMES = {
    "pay_per_request": "pay per request",
    "self_hosted": "self-hosted",
    "always_on": "always-on",
}


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def dollars(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1:
        return f"${value:,.2f}"
    # Three significant digits, never in e-notation: $0.0000519, not $5.19e-05.
    return "$" + np.format_float_positional(value, precision=3, fractional=False, trim="-")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _scale_note(f: float) -> str:
    if f == 1:
        return "1 (the papers' timeline)"
    how = f"compressed {1 / f:g}-fold" if f < 1 else f"stretched {f:g}-fold"
    return f"{f:g}: timeline {how} at the same request count; rates are {1 / f:g}x the paper's"


def stage_table(summary: dict[str, Any]) -> list[str]:
    closed = summary["offered"]["open_loop"] is False
    header = [
        "stage",
        "concurrency" if closed else "mean in flight",
        "requests",
        "throughput (req/s)",
        "mean (ms)",
        "p50 (ms)",
        "p99 (ms)",
        *(f"$/10^6 {name}" for name in COST_NAMES.values()),
    ]
    rows = []
    for s in summary["stages"]:
        concurrency = s["concurrency"]
        rows.append(
            [
                s["stage"],
                "-"
                if concurrency is None
                else f"{concurrency:g}"
                if closed
                else f"{concurrency:.2f}",
                str(s["requests"]),
                rate(s["throughput"]),
                ms(s["mean_ms"]),
                ms(s["p50_ms"]),
                ms(s["p99_ms"]),
                *(dollars(s["cost"][key]["per_million"]) for key in COST_NAMES),
            ]
        )
    return table(header, rows)


def workload_row(summary: dict[str, Any]) -> list[str]:
    o, c = summary["overall"], summary["cost"]
    return [
        summary["run"]["workload"],
        summary["run"]["model"],
        f"{summary['run']['time_scale']:g}",
        str(o["requests"]),
        ms(o["mean_ms"]),
        ratio(o["success_ratio"]),
        *(dollars(c[key]["total"]) for key in COST_NAMES),
    ]


WORKLOAD_HEADER = [
    "workload",
    "model",
    "time scale",
    "requests",
    "average latency (ms)",
    "success ratio",
    *(f"cost, {name}" for name in COST_NAMES.values()),
]


def cold_warm_table(summary: dict[str, Any]) -> list[str]:
    def row(label: str, s: dict[str, Any]) -> list[str]:
        latencies = ("mean_ms", "p50_ms", "p99_ms", "min_ms", "max_ms")
        return [label, str(s["ok"]), *(ms(s[k]) for k in latencies)]

    rows = [row(name, s) for name, s in summary["cold_warm"].items()]
    by_stage = {s["stage"]: s for s in summary["stages"]}
    rows += [
        row(f"{stage} series", by_stage[stage]) for stage in ("cold", "warm") if stage in by_stage
    ]
    return table(
        ["requests", "count", "mean (ms)", "p50 (ms)", "p99 (ms)", "min (ms)", "max (ms)"], rows
    )


def cost_lines(summary: dict[str, Any]) -> list[str]:
    model = summary["cost"]["model"]
    p, h, a = model["pay_per_request"], model["self_hosted"], model["always_on"]
    pods = summary["pods"]
    pod_note = f"{pods['pod_seconds']:.1f} pod-seconds from {pods['source']}"
    if pods.get("assumed"):
        pod_note += " (nothing sampled: one pod assumed for the whole run)"
    if pods.get("restarts"):
        pod_note += f", {pods['restarts']} process restart(s) seen"
    rows = [
        [
            "pay per request",
            f"${np.format_float_positional(p['price_per_gb_s'])}/GB-s x {p['memory_mb']:g} MB, "
            f"billed per {p['granularity_ms']:g} ms, "
            f"+ ${p['per_request_fee'] * 1e6:.2f} per 10^6 requests; "
            "duration = client latency (an upper bound)",
            p["source"],
        ],
        [
            "self-hosted",
            f"{pod_note} x ${h['node_price_per_hour']:g}/node-hour "
            f"/ {h['pods_per_node']:g} pods per node",
            h["source"],
        ],
        [
            "always-on",
            f"{a['nodes']:g} node(s) x {summary['run']['wall_s']:.1f} s "
            f"x ${a['node_price_per_hour']:g}/hour",
            a["source"],
        ],
    ]
    return table(["model", "how", "prices"], rows)


def markdown(summary: dict[str, Any]) -> str:
    run, overall, offered = summary["run"], summary["overall"], summary["offered"]
    slo = summary["slo"]
    lines = [
        f"# Load test: {run['workload']} on {run['model']}",
        "",
        f"- target: `{run['target']}` ({run['protocol']}, {run['encoding']} tensors, "
        f"request kind {run['kind']})",
        f"- workload: {run['description']}",
        f"- parameters: {', '.join(f'{k}={v}' for k, v in run['parameters'].items())}",
        f"- time scale: {_scale_note(run['time_scale'])}",
        f"- seed {run['seed']}; started {run['started_at']}; "
        f"{run['wall_s']:.1f} s including the scale-down tail",
        f"- client: Locust {run['client']['locust']}, "
        f"{run['client']['pool_size']} distinct request bodies",
        "",
        "## Offered against achieved",
        "",
    ]
    lag = offered["schedule_lag"]
    lines += table(
        ["", "requests", "rate (req/s)", "peak 1 s (req/s)"],
        [
            [
                "offered"
                + ("" if offered["open_loop"] else " (closed loop: what the callers sent)"),
                str(offered["requests"]),
                rate(offered["offered_rate"]),
                "-" if offered["peak_offered_1s"] is None else str(offered["peak_offered_1s"]),
            ],
            ["achieved (2xx)", str(overall["ok"]), rate(offered["achieved_rate"]), "-"],
        ],
    )
    notes = [f"over {offered['span_s']:.1f} s"]
    if offered["dropped"]:
        notes.append(f"{offered['dropped']} arrivals dropped by the client's in-flight limit")
    if lag:
        notes.append(
            f"send lag behind the schedule p50 {lag['p50_ms']:.1f} ms, "
            f"p99 {lag['p99_ms']:.1f} ms, max {lag['max_ms']:.1f} ms"
        )
    lines += ["", "; ".join(notes) + ".", ""]
    lines += ["## Per stage (paper 000, Table 1)", ""]
    lines += stage_table(summary)
    lines += [
        "",
        "Latency over successful requests; throughput is successful responses per second "
        "of the stage.",
        "",
        "## The workload (paper 001)",
        "",
    ]
    lines += table(WORKLOAD_HEADER, [workload_row(summary)])
    lines += ["", "## Cold against warm (paper 002)", ""]
    lines += cold_warm_table(summary)
    lines += [
        "",
        "By the runtime's `Kindling-Cold-Start` header "
        "(true on the first request a process serves).",
        "",
        "## Cost model",
        "",
    ]
    lines += cost_lines(summary)
    lines += ["", "## SLO", ""]
    gates = [f"p99 <= {slo['p99_ms']:g} ms" if slo["p99_ms"] is not None else "p99 not gated"]
    gates.append(
        f"error ratio <= {slo['error_ratio']:g}"
        if slo["error_ratio"] is not None
        else "error ratio not gated"
    )
    verdict = "met" if slo["passed"] else "missed: " + "; ".join(slo["violations"])
    lines += [
        f"{', '.join(gates)}: **{verdict}** (p99 {ms(overall['p99_ms'])} ms, "
        f"success ratio {ratio(overall['success_ratio'])}).",
        "",
    ]
    lines += ["## Figures", ""]
    lines += [f"![{name}]({name})" for name in plots.FILES]
    lines += [
        "",
        "Raw data: `requests.csv` (one row per request), `pods.csv`, `run.json`, `summary.json`.",
        "",
    ]
    return "\n".join(lines)


@dataclass
class Report:
    out: Path
    summary: dict[str, Any]

    def headline(self) -> str:
        o, s = self.summary["overall"], self.summary["slo"]
        verdict = "SLO met" if s["passed"] else "SLO missed: " + "; ".join(s["violations"])
        return (
            f"{o['requests']} requests, success ratio {ratio(o['success_ratio'])}, "
            f"mean {ms(o['mean_ms'])} ms, p50 {ms(o['p50_ms'])} ms, p99 {ms(o['p99_ms'])} ms; "
            f"{verdict}. Report: {self.out / 'report.md'}"
        )


def write_report(out: Path) -> Report:
    data = RunData.load(out)
    summary = summarize(data)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(markdown(summary))
    run = summary["run"]
    title = f"{run['workload']} on {run['model']} (time scale {run['time_scale']:g})"
    plots.latency_over_time(data.records, data.samples, run["wall_s"], title, out / "latency.png")
    plots.latency_cdf(data.records, title, out / "latency_cdf.png")
    plots.stages(summary["stages"], data.closed_loop, title, out / "stages.png")
    return Report(out, summary)


def combined(summaries: Sequence[dict[str, Any]]) -> str:
    """Paper 001's table over several runs: one row per workload."""
    lines = ["# Workloads (paper 001)", ""]
    lines += table(WORKLOAD_HEADER, [workload_row(s) for s in summaries])
    return "\n".join(lines) + "\n"
