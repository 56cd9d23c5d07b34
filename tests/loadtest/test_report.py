"""summary.json, report.md and the plots of a run directory written by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kindling.loadtest.config import RunConfig
from kindling.loadtest.cost import cost_model
from kindling.loadtest.pods import PodSample
from kindling.loadtest.pods import write_csv as write_pods
from kindling.loadtest.records import RequestRecord, read_csv, write_csv
from kindling.loadtest.report import combined, dollars, write_report
from kindling.loadtest.slo import SLO

NAN = math.nan


def closed_loop_run(tmp_path, slo: SLO | None = None):
    """Two levels of 10 s (c=1, c=2) and a 5 s tail, with known latencies."""
    records = [
        RequestRecord(i, "c=1", True, NAN, float(i), 10.0 * (i + 1), 200, i == 0) for i in range(10)
    ]
    for i in range(20):
        status = 500 if i < 2 else 200
        error = "HTTP 500: boom" if status == 500 else ""
        records.append(
            RequestRecord(10 + i, "c=2", True, NAN, 10 + i / 2, 50.0, status, False, error)
        )
    records.append(RequestRecord(30, "c=2", False, NAN, 19.9, NAN, 0, None, "cancelled"))
    write_csv(tmp_path / "requests.csv", records)
    write_pods(tmp_path / "pods.csv", [PodSample(0.0, 1, 1e9, 0.0), PodSample(25.0, 1, 1e9, 30.0)])
    config = RunConfig(
        target="http://127.0.0.1:1",
        model="kim_cnn",
        workload="concurrency",
        out=str(tmp_path),
        params={"levels": [1, 2], "level_s": 10.0, "tail_s": 5.0},
        slo=slo or SLO(),
        cost=cost_model(memory_mb=1024),
    )
    levels = [
        {"start_s": 0.0, "end_s": 10.0, "users": 1, "label": "c=1"},
        {"start_s": 10.0, "end_s": 20.0, "users": 2, "label": "c=2"},
        {"start_s": 20.0, "end_s": 25.0, "users": 0, "label": "scale-down"},
    ]
    run = {
        "config": json.loads(config.to_json()),
        "shape": {
            "name": "concurrency",
            "description": "sweep",
            "closed_loop": True,
            "parameters": config.params,
        },
        "started_at": 1.7e9,
        "end_s": 25.0,
        "model": {"name": "kim_cnn", "inputs": [], "kind": "sentence"},
        "client": {"locust": "2.x", "pool_size": 256, "dropped": 0, "pod_source": "metrics"},
        "stage_windows": {"c=1": [[0.0, 10.0]], "c=2": [[10.0, 20.0]]},
        "levels": levels,
        "schedule_end_s": 25.0,
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    return records


def test_report_figures_match_the_requests(tmp_path):
    records = closed_loop_run(tmp_path)
    report = write_report(tmp_path)
    for name in ("summary.json", "report.md", "latency.png", "latency_cdf.png", "stages.png"):
        assert (tmp_path / name).stat().st_size > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == report.summary

    overall = summary["overall"]
    ok = [r.latency_ms for r in records if r.measured and r.ok]
    assert overall["requests"] == 30  # the cancelled request is not measured
    assert overall["success_ratio"] == pytest.approx(28 / 30)
    assert overall["mean_ms"] == pytest.approx(np.mean(ok))
    assert overall["p99_ms"] == pytest.approx(np.percentile(ok, 99))

    c1, c2 = summary["stages"]
    assert (c1["stage"], c1["concurrency"], c1["requests"]) == ("c=1", 1.0, 10)
    assert c1["mean_ms"] == pytest.approx(55.0) and c1["p50_ms"] == pytest.approx(55.0)
    assert c1["throughput"] == pytest.approx(1.0)  # 10 completions inside [0, 10)
    assert c2["success_ratio"] == pytest.approx(18 / 20)
    assert c2["throughput"] == pytest.approx(1.8)
    # c=1 on Lambda, 1 GB, 1 ms billing: sum of 10..100 ms = 550 ms = 0.55 GB-s
    lambda_total = 0.55 * 0.0000166667 + 10 * 0.2e-6
    assert c1["cost"]["pay_per_request"]["total"] == pytest.approx(lambda_total)
    assert c1["cost"]["pay_per_request"]["per_million"] == pytest.approx(lambda_total / 10 * 1e6)
    # one pod for the level's 10 s at $0.096/h
    assert c1["cost"]["self_hosted"]["total"] == pytest.approx(10 * 0.096 / 3600)

    assert summary["pods"]["pod_seconds"] == pytest.approx(25.0)
    assert summary["pods"]["server_requests"] == 30
    assert summary["cold_warm"]["cold"]["ok"] == 1 and summary["cold_warm"]["warm"]["ok"] == 27
    assert summary["cost"]["always_on"]["total"] == pytest.approx(25 * 0.096 / 3600)

    markdown = (tmp_path / "report.md").read_text()
    assert f"| c=1 | 1 | 10 | 1.0 | 55.0 | 55.0 | {np.percentile(ok[:10], 99):.1f} |" in markdown
    assert dollars(lambda_total / 10 * 1e6) in markdown
    assert "**met**" not in markdown  # 2 errors in 30 > the default 1 % error budget
    assert "error ratio 0.0667 > 0.01" in markdown


def test_slo_met_and_p99_gate(tmp_path):
    closed_loop_run(tmp_path, SLO(p99_ms=50.0, error_ratio=0.1))
    summary = write_report(tmp_path).summary
    assert summary["slo"]["violations"] == [
        f"p99 latency {summary['overall']['p99_ms']:.1f} ms > 50 ms"
    ]
    closed_loop_run(tmp_path, SLO(p99_ms=1000.0, error_ratio=0.1))
    assert write_report(tmp_path).summary["slo"]["passed"]


def test_csv_round_trip_keeps_every_field(tmp_path):
    records = closed_loop_run(tmp_path)
    back = read_csv(tmp_path / "requests.csv")
    assert len(back) == len(records)
    assert back[0].cold is True and back[-1].cold is None and math.isnan(back[-1].latency_ms)
    assert back[10].error == "HTTP 500: boom" and back[10].status == 500
    assert back[0].latency_ms == pytest.approx(records[0].latency_ms)


def test_combined_table_has_a_row_per_workload(tmp_path):
    closed_loop_run(tmp_path)
    summary = write_report(tmp_path).summary
    table = combined([summary, summary])
    assert table.count("| concurrency | kim_cnn |") == 2


def test_dollars_never_use_e_notation():
    assert dollars(0.0000519) == "$0.0000519"
    assert dollars(12.345) == "$12.35"
    assert dollars(None) == "-"
