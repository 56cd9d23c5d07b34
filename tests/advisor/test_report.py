"""The advisor's report: the pick with its inputs, runners-up and losers, the measurement,
the command, and the cost-against-p99 PNG; and the report when nothing meets the SLO."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kindling.advisor.measurements import LoadPoint
from kindling.advisor.pick import NoCandidateMeetsSlo, pick
from kindling.advisor.report import PLOT, REPORT, report_markdown, slo_crossing, write_report
from kindling.advisor.search import Space, search
from tests.advisor.test_search import GRID, half_mmpp, measurement

PNG = b"\x89PNG\r\n\x1a\n"
COMMAND = "kindling advise --model mobilenet_v2 --slo-p99-ms 20 --workload mmpp-120"


def test_the_report_shows_the_pick_its_inputs_and_the_losers(tmp_path: Path) -> None:
    # 20 ms: some pods meet it, others queue past it.
    result = search(measurement(), half_mmpp(), Space(slo_p99_ms=20, **GRID))
    advice = pick(result)
    paths = write_report(result, tmp_path / "report", advice, COMMAND)
    assert [p.name for p in paths] == [REPORT, PLOT]
    text = paths[0].read_text()
    best = advice.pick.candidate
    for section in ("## The pick", "## Inputs", "## Runners-up", "## Missed the SLO",
                    "## The measurement", "## Cost against p99"):  # fmt: skip
        assert section in text
    assert COMMAND in text and f"![cost against simulated p99]({PLOT})" in text
    assert f"`{best.label()}`" in text and best.resources.memory_source in text
    for r in advice.runners_up:
        assert r.why in text
    failed = [o for o in result.outcomes if o.misses(result.space)]
    assert failed and f"`{failed[0].candidate.label()}`" in text
    for s in result.measurement.settings:  # every measured setting, with its points
        p99 = np.percentile(s.points[-1].latencies_ms, 99)
        assert f"| `{s.setting.label()}` |" in text and f"/ {p99:.1f} |" in text
    assert f"{result.simulated} simulated" in text
    png = paths[1].read_bytes()
    assert png.startswith(PNG) and len(png) > 10_000


def test_with_no_pick_the_report_shows_the_closest(tmp_path: Path) -> None:
    # 6 ms: about one request's own p99 on two threads; the KPA alone (no pre-warmed
    # headroom) queues every candidate past it.
    result = search(measurement(), half_mmpp(), Space(slo_p99_ms=6, policy="knative-kpa", **GRID))
    assert result.simulated > 0
    with pytest.raises(NoCandidateMeetsSlo):
        pick(result)
    text = report_markdown(result, None, COMMAND)
    assert "## No candidate meets the SLO" in text and "## The pick" not in text
    assert "The lowest p99 measured anywhere is" in text and "The closest simulated:" in text
    report, plot = write_report(result, tmp_path, None, COMMAND)
    assert report.read_text() == text and plot.read_bytes().startswith(PNG)


def test_the_measurement_says_where_p99_crosses_the_slo() -> None:
    points = tuple(LoadPoint(c, (c * 5.0,) * 100, 1.0) for c in (1, 2, 4, 8))
    assert slo_crossing(points, 12.0) == "C=4"  # p99 20 ms at 4 in flight, 10 ms at 2
    assert slo_crossing(points, 100.0) == "not crossed up to C=8"
