"""Arrival generators and the Azure Functions 2019 trace parser, seeded and in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kindling.controller import workloads
from kindling.loadtest.shapes import SCALE_TO_ZERO_S, BurstsShape, MMPP200Shape, make_shape


def test_mmpp_reuses_the_loadtest_generator_exactly() -> None:
    w = workloads.make("mmpp-200", seed=3)
    spec = MMPP200Shape().spec()
    assert w.requests == spec.requests
    assert w.end_s == spec.duration_s + SCALE_TO_ZERO_S
    assert np.all(np.diff(w.arrivals) >= 0)
    again = workloads.make("mmpp-200", seed=3)
    assert np.array_equal(w.arrivals, again.arrivals)
    assert not np.array_equal(w.arrivals, workloads.make("mmpp-200", seed=4).arrivals)


def test_mmpp_duration_keeps_the_rates() -> None:
    w = workloads.make("mmpp-120", seed=0, duration_s=500.0)
    assert w.requests == 30000  # 15,000 in 250 s, doubled with the duration
    assert w.arrivals[-1] <= 500.0


def test_diurnal_and_step_are_seeded() -> None:
    a = workloads.make("diurnal", seed=1, duration_s=1800.0)
    b = workloads.make("diurnal", seed=1, duration_s=1800.0)
    assert np.array_equal(a.arrivals, b.arrivals)
    assert a.arrivals[-1] < 1800.0
    # The night trough is quiet, the midday peak busy.
    night = np.sum(a.arrivals < 60)
    noon = np.sum((a.arrivals >= 1770) & (a.arrivals < 1830)) + np.sum(
        (a.arrivals > 1700) & (a.arrivals < 1760)
    )
    assert night < noon
    step = workloads.make("step", seed=0)
    assert step.requests == sum(10 * (k + 1) * 10 for k in range(10))


def test_bursts_are_the_load_tests_own_arrivals() -> None:
    """The simulator's `bursts` is what `kindling loadtest run --workload bursts` sends
    with the same seed, so a real run can be set beside its simulation."""
    w = workloads.make("bursts", seed=7)
    plan = make_shape("bursts").plan(7)
    assert np.array_equal(w.arrivals, [a.offset_s for a in plan.arrivals])
    assert w.end_s == plan.end_s
    period = SCALE_TO_ZERO_S + BurstsShape.burst_s
    longer = workloads.make("bursts", seed=7, duration_s=5 * period)
    assert longer.requests == 5 * round(BurstsShape.rate * BurstsShape.burst_s)


def test_unknown_workload_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        workloads.make("sine")


def test_sample_trace_parses_and_expands_minute_by_minute() -> None:
    rows = workloads.parse_trace(workloads.sample_trace_path())
    assert [r.trigger for r in rows] == ["timer", "http", "queue"]
    assert all(len(r.counts) == 1440 for r in rows)
    w = workloads.make("trace", seed=0, duration_s=600.0)
    counts = workloads.trace_counts(rows)[:10]
    per_minute = np.histogram(w.arrivals, bins=10, range=(0, 600))[0]
    assert np.array_equal(per_minute, counts)
    timer = workloads.make("trace", seed=0, select="synthfunc-timer")
    assert timer.requests == 144  # once every 10 minutes for a day


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


HEAD = "HashOwner,HashApp,HashFunction,Trigger,1,2,3\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"trace.csv:1: empty file"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,3\n", r"trace.csv:1: header must be"),
        ("Owner,App,Function,Trigger,1\n", r"trace.csv:1: header must be"),
        (HEAD + "o,a,f,http,1,2\n", r"trace.csv:2: 6 fields, expected 7"),
        (HEAD + "o,a,f,http,1,2,3\no,a,g,http,1,x,3\n", r"trace.csv:3: .*'x' is not a whole"),
        (HEAD + "o,a,f,http,1,-2,3\n", r"trace.csv:2: negative invocation count"),
        (HEAD, r"trace.csv:2: no function rows"),
    ],
)
def test_bad_trace_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        workloads.parse_trace(_write(tmp_path, text))


def test_missing_trace_file_and_unknown_function(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        workloads.parse_trace(tmp_path / "absent.csv")
    path = _write(tmp_path, HEAD + "o,a,f,http,1,2,3\n")
    with pytest.raises(ValueError, match="no trace row"):
        workloads.make("trace", trace=path, select="nope")
