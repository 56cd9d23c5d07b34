"""Reading a measurement back: the advisor's own file, and a load test's concurrency run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kindling.advisor.measure import url_setting
from kindling.advisor.measurements import (
    MEASUREMENT_FILE,
    LoadPoint,
    Measurement,
    MeasurementError,
    RuntimeSetting,
    SettingResult,
)
from kindling.advisor.results import read_results
from kindling.loadtest import pods, records
from kindling.loadtest.records import RequestRecord
from tests.loadtest.conftest import run_loadtest

SETTING = RuntimeSetting(None, 32, 2.0)


def a_measurement() -> Measurement:
    points = (LoadPoint(1, (5.0, 6.5, 7.25), 150.0), LoadPoint(4, (9.0, 12.0), 330.5))
    return Measurement(
        model="kim_cnn",
        source="started by kindling advise",
        config_max_batch_size=32,
        cold_start_s=(0.41, 0.39),
        settings=(
            SettingResult(RuntimeSetting(1, 1, 0.0), points, 140.5),
            SettingResult(RuntimeSetting(2, 32, 2.0), points[:1], None),
        ),
        machine={"cpus": 2},
    )


def test_a_saved_measurement_round_trips(tmp_path):
    measured = a_measurement()
    measured.save(tmp_path)
    assert read_results(tmp_path) == measured


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", json.dumps({"format": 99}), json.dumps({"format": 1, "model": "m"})],
)
def test_a_malformed_measurement_is_refused(tmp_path, text):
    (tmp_path / MEASUREMENT_FILE).write_text(text)
    with pytest.raises(MeasurementError):
        read_results(tmp_path)


def test_a_folder_that_is_neither_says_what_it_wanted(tmp_path):
    with pytest.raises(MeasurementError, match="neither"):
        read_results(tmp_path)
    with pytest.raises(MeasurementError, match="not a directory"):
        read_results(tmp_path / "missing")


# -- a load-test run, written with the load test's own writers -------------------------------


def record(
    i: int, stage: str, sent: float, latency: float, status: int = 200, cold: bool = False
) -> RequestRecord:
    return RequestRecord(i, stage, True, math.nan, sent, latency, status, cold)


def write_run(
    out: Path,
    rows: list[RequestRecord],
    workload: str = "concurrency",
    pod_csv: str | None = None,
) -> Path:
    """A run directory as loadtest/driver.py writes one: levels c=1 over [0, 2) and c=2
    over [2, 4), then the scale-down tail."""
    out.mkdir(parents=True, exist_ok=True)
    records.write_csv(out / "requests.csv", rows)
    if pod_csv is None:
        pods.write_csv(out / "pods.csv", [pods.PodSample(0.0, 1), pods.PodSample(4.0, 1)])
    else:
        (out / "pods.csv").write_text(pod_csv)
    levels = [
        {"start_s": 0.0, "end_s": 2.0, "users": 1, "label": "c=1"},
        {"start_s": 2.0, "end_s": 4.0, "users": 2, "label": "c=2"},
        {"start_s": 4.0, "end_s": 5.0, "users": 0, "label": "scale-down"},
    ]
    run = {
        "config": {"workload": workload, "target": "http://127.0.0.1:1", "time_scale": 1.0},
        "started_at": 0.0,
        "end_s": 5.0,
        "model": {"name": "kim_cnn", "inputs": [], "kind": "sentence"},
        "stage_windows": {lv["label"]: [[lv["start_s"], lv["end_s"]]] for lv in levels[:2]},
        "levels": levels,
    }
    (out / "run.json").write_text(json.dumps(run))
    return out


def sweep_rows() -> list[RequestRecord]:
    return [
        record(0, "c=1", 0.0, 300.0, cold=True),  # the process's first: a cold start
        record(1, "c=1", 0.5, 10.0, cold=False),
        record(2, "c=1", 1.0, 12.0, cold=False),
        record(3, "c=2", 2.0, 20.0, cold=False),
        record(4, "c=2", 2.0, 22.0, cold=False),
        record(5, "c=2", 3.99, 30.0, cold=False),  # answered after its level ended
    ]


def test_a_concurrency_run_becomes_load_points(tmp_path):
    run = write_run(tmp_path, sweep_rows())
    measured = read_results(run, setting=SETTING)
    (result,) = measured.settings
    assert measured.model == "kim_cnn" and measured.source == str(run)
    assert result.setting == SETTING and measured.config_max_batch_size == 32
    one, two = result.points
    # The cold request is the cold start, not a service time.
    assert one == LoadPoint(1, (10.0, 12.0), 3 / 2)
    assert two == LoadPoint(2, (20.0, 22.0, 30.0), 2 / 2)
    assert measured.cold_start_s == (0.3,)
    assert result.peak_rss_mib is None  # pods.csv counts pods, not memory


def test_what_a_run_lacks_is_asked_for_and_can_be_given(tmp_path):
    rows = [r for r in sweep_rows() if not r.cold]
    run = write_run(tmp_path / "a", rows)
    with pytest.raises(MeasurementError, match="setting"):
        read_results(run)
    with pytest.raises(MeasurementError, match="cold start"):
        read_results(run, setting=SETTING)
    given = read_results(run, setting=SETTING, config_max_batch_size=64, cold_start_s=(0.5,))
    assert given.cold_start_s == (0.5,) and given.config_max_batch_size == 64


def test_a_level_with_errors_ends_the_sweep(tmp_path):
    rows = [*sweep_rows(), record(6, "c=2", 3.0, math.nan, status=503)]
    measured = read_results(write_run(tmp_path, rows), setting=SETTING)
    assert [p.concurrency for p in measured.settings[0].points] == [1]


def test_peak_rss_from_a_memory_column(tmp_path):
    header = "t_s,pods,process_start,server_requests,rss_mib\n"
    samples = header + "0.0,1,,,120.5\n2.0,1,,,180.25\n4.0,1,,,\n"
    run = write_run(tmp_path, sweep_rows(), pod_csv=samples)
    assert read_results(run, setting=SETTING).settings[0].peak_rss_mib == 180.25


def test_other_workloads_and_malformed_runs_are_refused(tmp_path):
    with pytest.raises(MeasurementError, match="mmpp-120"):
        read_results(write_run(tmp_path / "a", sweep_rows(), workload="mmpp-120"), setting=SETTING)

    broken = write_run(tmp_path / "b", sweep_rows())
    (broken / "requests.csv").write_text("request,stage\n0,c=1\n")
    with pytest.raises(MeasurementError, match="malformed"):
        read_results(broken, setting=SETTING)

    no_levels = write_run(tmp_path / "c", sweep_rows())
    run = json.loads((no_levels / "run.json").read_text())
    del run["levels"]
    (no_levels / "run.json").write_text(json.dumps(run))
    with pytest.raises(MeasurementError, match="levels"):
        read_results(no_levels, setting=SETTING)

    (no_levels / "run.json").write_text("{")
    with pytest.raises(MeasurementError, match="malformed"):
        read_results(no_levels, setting=SETTING)

    failed = write_run(tmp_path / "d", [record(0, "c=1", 0.0, math.nan, status=0)])
    with pytest.raises(MeasurementError, match="no concurrency level"):
        read_results(failed, setting=SETTING)


# -- a real load test ----------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_a_real_concurrency_run_is_read(model_repository, start_runtime, tmp_path):
    runtime = start_runtime(model_repository, models=("kim_cnn",), env={"KINDLING_THREADS": "1"})
    url = f"http://{runtime.url}"
    out = tmp_path / "run"
    result = run_loadtest(
        "--target",
        url,
        "--model",
        "kim_cnn",
        "--workload",
        "concurrency",
        "--concurrency",
        "1,2",
        "--time-scale",
        "0.02",
        "--tail",
        "5",
        "--pods",
        "none",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stdout + result.stderr

    measured = read_results(out, setting=url_setting(url, "kim_cnn"))

    (setting_result,) = measured.settings
    assert setting_result.setting == RuntimeSetting(1, 32, 2.0)
    assert [p.concurrency for p in setting_result.points] == [1, 2]
    assert all(p.latencies_ms and p.throughput_rps > 0 for p in setting_result.points)
    # The runtime's first inference was the run's first request: flagged cold.
    assert len(measured.cold_start_s) == 1 and measured.cold_start_s[0] > 0
    counted = [r for r in records.read_csv(out / "requests.csv") if r.measured and r.ok]
    assert sum(len(p.latencies_ms) for p in setting_result.points) == len(counted) - 1

    measured.save(tmp_path / "saved")
    assert read_results(tmp_path / "saved") == measured
