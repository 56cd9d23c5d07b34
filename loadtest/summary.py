"""A run's figures, computed from its raw outputs (run.json, requests.csv, pods.csv).

Everything in summary.json and report.md comes from here, and everything here comes from
the CSV rows plus the run's timeline, so the report can be recomputed and checked.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kindling.loadtest import pods as pods_mod
from kindling.loadtest.cost import CostModel, per_million
from kindling.loadtest.records import RequestRecord, read_csv
from kindling.loadtest.slo import SLO, violations
from kindling.loadtest.stats import (
    by_cold_flag,
    by_stage,
    latency_stats,
    mean_in_flight,
    measured,
    schedule_lag,
)

SCALE_DOWN = "scale-down"


@dataclass
class RunData:
    """A run directory, read back."""

    out: Path
    run: dict[str, Any]
    records: list[RequestRecord]
    samples: list[pods_mod.PodSample]

    @classmethod
    def load(cls, out: Path) -> RunData:
        run = json.loads((out / "run.json").read_text())
        return cls(out, run, read_csv(out / "requests.csv"), pods_mod.read_csv(out / "pods.csv"))

    @property
    def config(self) -> dict[str, Any]:
        return self.run["config"]

    @property
    def cost(self) -> CostModel:
        return CostModel.from_dict(self.config["cost"])

    @property
    def closed_loop(self) -> bool:
        return bool(self.run["shape"]["closed_loop"])


def _costs(
    model: CostModel, records: list[RequestRecord], pod_seconds: float, wall_s: float
) -> dict[str, Any]:
    """The three cost models over some requests: totals and per 10^6 served requests."""
    ok = sum(r.ok for r in records if r.measured)
    # A function is billed for every invocation that ran, answered or failed, the
    # discarded warm-up included; the client-observed latency bounds its duration.
    billed = [r.latency_ms for r in records if r.status and not math.isnan(r.latency_ms)]
    totals = {
        "pay_per_request": model.pay_per_request.cost(billed),
        "self_hosted": model.self_hosted.cost(pod_seconds),
        "always_on": model.always_on.cost(wall_s),
    }
    return {
        name: {"total": total, "per_million": per_million(total, ok)}
        for name, total in totals.items()
    }


def _pod_seconds(data: RunData, end_s: float) -> dict[str, Any]:
    given = data.config.get("pod_seconds")
    if given is not None:
        return {"source": "given", "pod_seconds": float(given), "assumed": False}
    measured_ = pods_mod.pod_seconds(data.samples, 0.0, end_s)
    served = [s.server_requests for s in data.samples if not math.isnan(s.server_requests)]
    out: dict[str, Any] = {
        "source": data.run["client"]["pod_source"],
        "samples": len(data.samples),
        "restarts": pods_mod.restarts(data.samples),
        "server_requests": (served[-1] - served[0]) if len(served) > 1 else None,
    }
    if measured_ is None:
        # Nothing sampled: charge one pod for the whole run, and say so.
        out.update(pod_seconds=end_s, assumed=True)
    else:
        out.update(pod_seconds=measured_, assumed=False)
    return out


def _stages(data: RunData, mean_pods: float) -> list[dict[str, Any]]:
    """Paper 000's rows: one per stage, each over the timeline windows the stage covers."""
    windows = {k: [(a, b) for a, b in w] for k, w in data.run.get("stage_windows", {}).items()}
    groups = by_stage(data.records)
    levels = {lv["label"]: lv for lv in data.run.get("levels", [])}
    ok_done = np.array([r.done_s for r in measured(data.records) if r.ok])
    rows = []
    for label in [*windows, *(g for g in groups if g not in windows)]:
        records = groups.get(label, [])
        counted = measured(records)
        if (records and not counted) or (label == SCALE_DOWN and not records):
            continue  # only discarded requests (paper 002's warm-up), or the idle tail
        spans = windows.get(label, [])
        span = sum(b - a for a, b in spans)
        # Throughput is what the server completed while the stage lasted, whoever sent
        # it: under overload, requests sent in one step finish in the next.
        completed = sum(int(((ok_done >= a) & (ok_done < b)).sum()) for a, b in spans)
        if data.samples:
            pod_s = sum(pods_mod.pod_seconds(data.samples, a, b) or 0.0 for a, b in spans)
        else:
            pod_s = mean_pods * span
        level = levels.get(label)
        offered = sum(1 for r in records if not math.isnan(r.scheduled_s))
        rows.append(
            {
                "stage": label,
                "span_s": span,
                "concurrency": (float(level["users"]) if level else mean_in_flight(counted, span)),
                "offered_rate": offered / span if span and offered else None,
                "throughput": completed / span if span else None,
                **latency_stats(counted).to_dict(),
                "cost": _costs(data.cost, records, pod_s, span),
            }
        )
    return rows


def _offered(data: RunData) -> dict[str, Any]:
    records = data.records
    scheduled = np.array([r.scheduled_s for r in records if not math.isnan(r.scheduled_s)])
    ok_done = np.array([r.done_s for r in records if r.ok])
    if scheduled.size:  # open loop: the schedule's span
        start, end = 0.0, float(scheduled.max())
        offered = int(scheduled.size)
    else:  # closed loop: offered is what the callers sent
        sent = np.array([r.sent_s for r in records]) if records else np.zeros(1)
        start, end = float(sent.min()), float(sent.max())
        offered = len(records)
    span = max(end - start, 1e-9)
    peak = 0
    if scheduled.size:
        peak = int(
            np.histogram(scheduled, bins=max(1, math.ceil(span)), range=(0, math.ceil(span)))[
                0
            ].max()
        )
    return {
        "open_loop": bool(scheduled.size),
        "requests": offered,
        "span_s": span,
        "offered_rate": offered / span,
        "peak_offered_1s": peak if scheduled.size else None,
        "achieved_rate": ok_done.size / span,
        "dropped": data.run["client"]["dropped"],
        "schedule_lag": schedule_lag(records),
    }


def summarize(data: RunData) -> dict[str, Any]:
    config = data.config
    end_s = float(data.run["end_s"])
    counted = measured(data.records)
    overall = latency_stats(counted)
    pods = _pod_seconds(data, end_s)
    mean_pods = pods["pod_seconds"] / end_s if end_s > 0 else 0.0
    slo = SLO(**config["slo"])
    missed = violations(slo, overall)
    done = [r.done_s for r in counted if r.ok]
    busy_span = (max(done) - min(r.sent_s for r in counted)) if done else 0.0
    split = by_cold_flag(counted)
    started = dt.datetime.fromtimestamp(data.run["started_at"], dt.UTC)
    return {
        "run": {
            "target": config["target"],
            "model": config["model"],
            "workload": config["workload"],
            "description": data.run["shape"]["description"],
            "parameters": data.run["shape"]["parameters"],
            "time_scale": config["time_scale"],
            "seed": config["seed"],
            "kind": data.run["model"]["kind"],
            "protocol": config["protocol"],
            "encoding": config["encoding"],
            "started_at": started.isoformat(timespec="seconds"),
            "wall_s": end_s,
            "client": data.run["client"],
        },
        "overall": {
            **overall.to_dict(),
            "throughput": len(done) / busy_span if busy_span else None,
        },
        "offered": _offered(data),
        "stages": _stages(data, mean_pods),
        "cold_warm": {name: latency_stats(rs).to_dict() for name, rs in split.items()},
        "pods": pods,
        "cost": {
            "model": data.cost.to_dict(),
            **_costs(data.cost, data.records, pods["pod_seconds"], end_s),
        },
        "slo": {**slo.to_dict(), "passed": not missed, "violations": missed},
    }
