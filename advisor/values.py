"""Step 4 of `kindling advise`: the pick as a values file for charts/kindling.

    values_yaml(advice, command) -> str        write_values(advice, path, command) -> Path

One entry under `models:` (a values file's list replaces the chart's six sample models:
this file serves the advised model alone; merge the entry into your own list to serve
more), every value with a comment saying which measurement or simulation chose it. The
text is written here, not dumped, for those comments; tests/advisor checks that it parses,
meets values.schema.json, renders with `helm template` and installs.

Keys of the chart's own default entry for the model that the advice does not set (a text
model's `embeddingTable`) are carried over, so the model still finds what it reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kindling.advisor.pick import Advice
from kindling.advisor.search import KNATIVE_UTILIZATION, chart_entry

# The keys the advice sets on the model's entry; any other key of the chart's default
# entry is carried over.
ADVISED = (
    "name",
    "threads",
    "containerConcurrency",
    "autoscaling",
    "resources",
    "settings",
    "prewarm",
)


def _scalar(value: Any) -> str:
    """A YAML scalar: JSON's literals and double-quoted strings are YAML too."""
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else str(int(value))
    return json.dumps(value)


def cpu_quantity(cores: float) -> str:
    """Whole cores as "2", else millicores ("1500m")."""
    return str(int(cores)) if cores == int(cores) else f"{round(cores * 1000)}m"


def values_yaml(advice: Advice, command: str | None = None) -> str:
    search, best = advice.search, advice.pick
    c, sim, space = best.candidate, best.sim, search.space
    m = search.measurement
    s = c.setting
    label = s.label()
    cc = c.container_concurrency
    measured = sorted({p.concurrency for r in m.settings if r.setting == s for p in r.points})
    p99_at_cc = float(np.percentile(c.point.latencies_ms, 99))
    where = f"simulated on {search.workload} ({space.policy})"
    machine = ", ".join(f"{k} {v}" for k, v in m.machine.items() if k not in ("command", "plan"))
    lines = [
        f"# kindling advise: {m.model}, p99 <= {space.slo_p99_ms:g} ms on {search.workload}"
        + (f", cold <= {space.max_cold_ratio:.2%}" if space.max_cold_ratio is not None else ""),
        f"# Picked {c.label()}: simulated p99 {sim.p99_ms:.1f} ms, cold {best.cold_ratio:.2%}, "
        f"{sim.pod_seconds:.0f} pod-s, ${best.cost_usd:.4f} (${c.resources.price_per_hour:.4f} "
        f"per pod-hour at OpenCost's prices), cheapest of {len(search.meeting())} meeting the SLO "
        f"among {search.simulated} simulated of {search.considered}.",
        f"# Measured: {m.source}" + (f" ({machine})" if machine else ""),
    ]
    if command:
        lines.append(f"# Command: {command}")
    lines += [
        "# This list replaces the chart's sample models: merge the entry into your own list to",
        "# serve others beside it.",
    ]
    if space.policy == "knative-kpa":
        lines += [
            "controller:",
            "  enabled: false  # simulated without the pre-warm controller: Knative's KPA alone",
        ]
    threads = (
        f"{s.threads}  # KINDLING_THREADS: setting {label}, measured p99 {p99_at_cc:.1f} ms "
        f"at {cc} in flight"
        if s.threads is not None
        else "null  # threads unknown (measured at a URL): the runtime follows the CPU limit"
    )
    entry, _ = chart_entry(m.model, space.chart_values)
    lines += [
        "models:",
        f"  - name: {_scalar(m.model)}  # measured: {m.source}",
        *_carried(entry, m.model),
        f"    threads: {threads}",
        f"    containerConcurrency: {cc}  # measured concurrency {cc} of {measured} ({label}): "
        f"p99 {p99_at_cc:.1f} ms there; {where}: p99 {sim.p99_ms:.1f} ms",
        "    autoscaling:",
        f"      minScale: {c.min_scale}  # {where}: cold {best.cold_ratio:.2%} "
        f"({sim.cold_requests} of {sim.requests}); searched {list(space.min_scales)}",
        f"      target: {_scalar(float(c.target))}  # the KPA aims at {KNATIVE_UTILIZATION:.0%} "
        f"of min(target, containerConcurrency) = {c.effective_target:g} in flight per pod; "
        f"searched {list(space.target_fractions)} x containerConcurrency",
        f"      maxScale: {space.max_scale}  # the simulation's cap; {where}: peak "
        f"{best.peak_pods} pod{'' if best.peak_pods == 1 else 's'}",
        "    resources:",
    ]
    cpu = _scalar(cpu_quantity(c.resources.cpu))
    memory = f"{c.resources.memory_mib}Mi"
    for side, why in (("requests", ""), ("limits", "limit = request (Guaranteed QoS): ")):
        lines += [
            f"      {side}:",
            f"        cpu: {cpu}  # {why}{c.resources.cpu_source}",
            f"        memory: {memory}  # {why}{c.resources.memory_source}",
        ]
    lines += [
        "    settings:",
        f"      maxBatchSize: {s.max_batch_size}  # KINDLING_MAX_BATCH_SIZE: setting {label} "
        f"(config.yaml max_batch_size {m.config_max_batch_size})",
        f"      maxQueueDelayMs: {_scalar(float(s.max_queue_delay_ms))}  # "
        f"KINDLING_MAX_QUEUE_DELAY_MS: setting {label}",
    ]
    if c.margin_k is not None:
        lines += [
            "    prewarm:",
            f"      marginK: {_scalar(float(c.margin_k))}  # {where}: {sim.pod_seconds:.0f} "
            f"pod-s, cold {best.cold_ratio:.2%}; searched {list(space.margins_k)}",
        ]
    # A comment ends at its line: no value of the measurement may break one.
    return "\n".join(" ".join(line.splitlines()) for line in lines) + "\n"


def _carried(entry: dict[str, Any], model: str) -> list[str]:
    """The chart's default entry's other keys, as YAML lines of the list item."""
    out = []
    for key, value in entry.items():
        if key in ADVISED:
            continue
        why = f"from the chart's default entry for {model}"
        if not isinstance(value, (dict, list)):
            out.append(f"    {key}: {_scalar(value)}  # {why}")
            continue
        out.append(f"    # {key}: {why}")
        dumped = yaml.safe_dump({key: value}, default_flow_style=False, sort_keys=False)
        out += [f"    {line}" for line in dumped.splitlines()]
    return out


def write_values(advice: Advice, path: Path, command: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(values_yaml(advice, command))
    return path
