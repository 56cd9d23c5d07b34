"""The peers report: one row per peer, ratios against raw onnxruntime and against Kindling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from kindling.loadtest.peers.bench import Result


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def markdown(results: Sequence[Result], raw: Result, header: dict[str, Any]) -> str:
    kindling = next((r for r in results if r.name == "kindling" and not r.reason), None)
    lines = [
        "# Kindling against its peers",
        "",
        *(f"- {k}: {v}" for k, v in header.items()),
        "",
        "| server | version | tensors | batching | cold start (s) | p50 c=1 (ms) | p99 c=1 (ms) "
        "| throughput c=16 (req/s) | peak RSS (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in [raw, *results]:
        if r.reason:
            continue
        lines.append(
            f"| {r.title} | {r.version} | {r.encoding} | {r.batching} | "
            f"{_num(r.cold_start_s, '.2f')} | {_num(r.p50_ms, '.2f')} | {_num(r.p99_ms, '.2f')} | "
            f"{_num(r.throughput, '.1f')} | {_num(r.peak_rss_mib, '.0f')} |"
        )
    lines += [
        "",
        "## Ratios",
        "",
        "Against raw onnxruntime in-process (cold start against the bare-process floor) and "
        "against Kindling; latency and cold start: lower is better, throughput: higher is better.",
        "",
        "| server | p50 / raw | throughput / raw | cold start / floor "
        "| p50 / Kindling | throughput / Kindling | cold start / Kindling | RSS / Kindling |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    k = kindling or Result("", "")
    for r in results:
        if r.reason:
            continue
        lines.append(
            f"| {r.title} | {_ratio(r.p50_ms, raw.p50_ms)} "
            f"| {_ratio(r.throughput, raw.throughput)} "
            f"| {_ratio(r.cold_start_s, raw.cold_start_s)} | {_ratio(r.p50_ms, k.p50_ms)} "
            f"| {_ratio(r.throughput, k.throughput)} | {_ratio(r.cold_start_s, k.cold_start_s)} "
            f"| {_ratio(r.peak_rss_mib, k.peak_rss_mib)} |"
        )
    missing = [r for r in results if r.reason]
    if missing:
        lines += ["", "## Not measured", ""]
        lines += [f"- {r.title}: {r.reason}" for r in missing]
    notes = [r for r in results if r.note and not r.reason]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {r.title}: {r.note}" for r in notes]
    return "\n".join(lines) + "\n"


def as_json(results: Sequence[Result], raw: Result, header: dict[str, Any]) -> dict[str, Any]:
    return {"header": header, "raw": asdict(raw), "peers": [asdict(r) for r in results]}
