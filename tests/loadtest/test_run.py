"""Short real runs against a real runtime: every output file, and a report that matches
the CSV."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kindling.loadtest.records import read_csv
from kindling.loadtest.report import ms
from tests.conftest import free_port
from tests.loadtest.conftest import run_loadtest

OUTPUTS = (
    "requests.csv",
    "summary.json",
    "report.md",
    "latency.png",
    "latency_cdf.png",
    "stages.png",
    "run.json",
    "pods.csv",
)


@pytest.fixture
def runtime(start_runtime, model_repository):
    return start_runtime(model_repository, models=("kim_cnn",))


@pytest.mark.integration
@pytest.mark.slow
def test_concurrency_sweep_writes_every_output(runtime, out_dir):
    result = run_loadtest(
        "--target",
        f"http://{runtime.url}",
        "--model",
        "kim_cnn",
        "--workload",
        "concurrency",
        "--concurrency",
        "1,2",
        "--time-scale",
        "0.02",
        "--tail",
        "25",
        "--pods-interval",
        "0.5",
        "--progress",
        "0.5",
        "--out",
        str(out_dir),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "offered" in result.stdout and "achieved" in result.stdout  # progress lines
    for name in OUTPUTS:
        assert (out_dir / name).stat().st_size > 0, name

    records = read_csv(out_dir / "requests.csv")
    counted = [r for r in records if r.measured]
    ok = np.array([r.latency_ms for r in counted if r.ok])
    summary = json.loads((out_dir / "summary.json").read_text())
    overall = summary["overall"]
    # How many fit in the 1.2 s levels depends on the machine: the counts must agree.
    assert overall["requests"] == len(counted) > 0
    assert overall["success_ratio"] == 1.0
    assert overall["mean_ms"] == pytest.approx(ok.mean())
    assert overall["p99_ms"] == pytest.approx(np.percentile(ok, 99))
    assert summary["run"]["time_scale"] == 0.02
    assert summary["pods"]["server_requests"] >= len(counted), (out_dir / "pods.csv").read_text()

    # The first request this process served is the cold one (the runtime's header).
    assert sum(1 for r in records if r.cold) == 1
    markdown = (out_dir / "report.md").read_text()
    assert "time scale: 0.02: timeline compressed 50-fold" in markdown
    for stage in summary["stages"]:
        rows = [r for r in counted if r.stage == stage["stage"]]
        lat = np.array([r.latency_ms for r in rows if r.ok])
        assert stage["requests"] == len(rows) == len(lat) > 0
        row = f"| {stage['stage']} | {stage['concurrency']:g} | {len(rows)} |"
        assert row in markdown
        assert (
            f"| {ms(lat.mean())} | {ms(np.percentile(lat, 50))} | {ms(np.percentile(lat, 99))} |"
            in markdown
        )
    assert [s["stage"] for s in summary["stages"]] == ["c=1", "c=2"]


@pytest.mark.integration
@pytest.mark.slow
def test_open_loop_run_gates_on_p99(runtime, out_dir):
    result = run_loadtest(
        "--target",
        f"http://{runtime.url}",
        "--model",
        "kim_cnn",
        "--workload",
        "constant",
        "--set",
        "rate=40",
        "--set",
        "duration_s=1.5",
        "--tail",
        "0.2",
        "--slo-p99-ms",
        "0.01",
        "--out",
        str(out_dir),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["overall"]["requests"] == 60 and summary["overall"]["success_ratio"] == 1.0
    assert not summary["slo"]["passed"]
    assert "p99 latency" in summary["slo"]["violations"][0]
    assert "SLO missed" in result.stdout


@pytest.mark.integration
def test_unreachable_target_fails_the_run(out_dir):
    result = run_loadtest(
        "--target",
        f"http://127.0.0.1:{free_port()}",
        "--model",
        "kim_cnn",
        "--workload",
        "constant",
        "--out",
        str(out_dir),
        timeout=60,
    )
    assert result.returncode == 3
    assert "cannot start the run" in result.stderr
