"""The report's figures, as PNG files (matplotlib, no display needed).

- `latency.png`: latency over time with the offered and achieved rates, the success
  ratio and the cold requests marked: the layout of paper 001's Fig. 6;
- `latency_cdf.png`: the latency CDF, all requests and cold/warm apart (paper 002);
- `stages.png`: throughput and p50/p99 latency per stage: the concurrency sweep of
  paper 000's Table 1 (or the rate steps, MMPP states, cold/warm series).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kindling.loadtest.pods import PodSample
from kindling.loadtest.records import RequestRecord
from kindling.loadtest.stats import by_cold_flag, measured, rate_series

FILES = ("latency.png", "latency_cdf.png", "stages.png")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a CI runner
    import matplotlib.pyplot as plt

    return plt


def latency_over_time(
    records: Sequence[RequestRecord],
    samples: Sequence[PodSample],
    end_s: float,
    title: str,
    path: Path,
) -> None:
    plt = _pyplot()
    from matplotlib.ticker import ScalarFormatter

    rows = 3 if samples else 2
    fig, axes = plt.subplots(
        rows, 1, figsize=(10, 8 if samples else 6.5), sharex=True, height_ratios=[3, 2, 1][:rows]
    )
    top, bottom = axes[0], axes[1]
    counted = measured(records)
    ok = [r for r in counted if r.ok and not r.cold]
    cold = [r for r in counted if r.ok and r.cold]
    failed = [r for r in counted if not r.ok]
    top.scatter([r.sent_s for r in ok], [r.latency_ms for r in ok], s=3, alpha=0.5, label="warm")
    if cold:
        top.scatter(
            [r.sent_s for r in cold],
            [r.latency_ms for r in cold],
            s=40,
            marker="x",
            color="red",
            label="cold start",
        )
    if failed:
        floor = min((r.latency_ms for r in ok), default=1.0)
        top.scatter(
            [r.sent_s for r in failed],
            [floor] * len(failed),
            s=12,
            marker="v",
            color="black",
            label="failed",
        )
    top.set_yscale("log")
    top.yaxis.set_major_formatter(ScalarFormatter())
    top.set_ylabel("latency (ms)")
    top.set_title(title)
    top.legend(loc="upper right", fontsize="small")
    top.grid(True, which="both", alpha=0.3)

    # Bins wide enough for ~20 arrivals each at the mean rate, so Poisson noise (about
    # 1/sqrt(20)) does not hide the workload's own shape; at most 60 bins over the run.
    end_s = max(end_s, 1e-3)
    mean_rate = len(records) / end_s
    bins = max(1, min(60, int(end_s * mean_rate / 20)))
    series = rate_series(records, end_s, bins)
    centers = series.starts_s + series.bin_s / 2
    bottom.plot(centers, series.offered, label="offered (req/s)", color="tab:gray")
    bottom.plot(centers, series.achieved, label="achieved (req/s)", color="tab:blue")
    bottom.set_ylabel("requests/s")
    if not samples:
        bottom.set_xlabel("time since start (s)")
    ratio = bottom.twinx()
    ratio.plot(centers, series.success_ratio, color="tab:green", alpha=0.7, label="success ratio")
    ratio.set_ylim(-0.05, 1.05)
    ratio.set_ylabel("success ratio")
    lines = bottom.get_legend_handles_labels()
    more = ratio.get_legend_handles_labels()
    bottom.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize="small")
    bottom.grid(True, alpha=0.3)
    bottom.set_xlim(0, end_s)
    if samples:  # the pods behind the endpoint: scale-to-zero shows as a drop to 0
        pods = axes[2]
        pods.step([s.t_s for s in samples], [s.pods for s in samples], where="post")
        pods.set_ylabel("pods")
        pods.set_ylim(bottom=0)
        pods.grid(True, alpha=0.3)
        pods.set_xlabel("time since start (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def latency_cdf(records: Sequence[RequestRecord], title: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    counted = measured(records)
    groups = {"all": counted, **by_cold_flag(counted)}
    for name, group in groups.items():
        values = np.sort([r.latency_ms for r in group if r.ok])
        if values.size:
            ax.step(
                values,
                np.arange(1, values.size + 1) / values.size,
                where="post",
                label=f"{name} ({values.size})",
            )
    ax.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def stages(rows: Sequence[dict[str, Any]], closed_loop: bool, title: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    labels = [str(r["stage"]) for r in rows]
    x = np.arange(len(rows))
    tput = [r["throughput"] or 0.0 for r in rows]
    ax.bar(x, tput, color="tab:blue", alpha=0.6, label="throughput (req/s)")
    ax.set_ylabel("throughput (req/s)")
    ax.set_xticks(
        x,
        labels,
        rotation=30 if len(labels) > 5 else 0,
        ha="right" if len(labels) > 5 else "center",
    )
    ax.set_xlabel("concurrency" if closed_loop else "stage")
    lat = ax.twinx()
    for key, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
        values = [r[key] if r[key] is not None else math.nan for r in rows]
        lat.plot(x, values, style, label=key.replace("_ms", " latency (ms)"))
    lat.set_ylabel("latency (ms)")
    handles = ax.get_legend_handles_labels()
    more = lat.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
