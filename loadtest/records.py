"""One row per request: the run's ground truth, written as `requests.csv`.

Every figure of the report is computed from these rows, so a reader can recompute any of
them from the CSV alone.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields
from pathlib import Path

# Status 0: no HTTP response (connection refused, timeout, dropped by the client).
NO_RESPONSE = 0


@dataclass(slots=True)
class RequestRecord:
    request: int
    """Index in the arrival schedule (open loop) or in send order (closed loop)."""
    stage: str
    measured: bool
    """False for a request the workload sends only for its effect (paper 002's discarded
    warm-up); it stays in the CSV and out of every statistic."""
    scheduled_s: float
    """When the schedule said to send it, seconds from the run's start (NaN: closed loop)."""
    sent_s: float
    """When it was sent, seconds from the run's start."""
    latency_ms: float
    """Send to the last response byte; NaN when there was no response."""
    status: int
    cold: bool | None
    """The runtime's Kindling-Cold-Start header; None when the response had none."""
    error: str = ""
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def done_s(self) -> float:
        return self.sent_s + self.latency_ms / 1000


COLUMNS = [f.name for f in fields(RequestRecord)]


def _cell(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def write_csv(path: Path, records: Iterable[RequestRecord]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for record in records:
            writer.writerow([_cell(v) for v in astuple(record)])


def _float(text: str) -> float:
    return float(text) if text else math.nan


def _flag(text: str) -> bool | None:
    return None if text == "" else text == "true"


def read_csv(path: Path) -> list[RequestRecord]:
    with path.open(newline="", encoding="utf-8") as f:
        return [
            RequestRecord(
                request=int(row["request"]),
                stage=row["stage"],
                measured=row["measured"] == "true",
                scheduled_s=_float(row["scheduled_s"]),
                sent_s=float(row["sent_s"]),
                latency_ms=_float(row["latency_ms"]),
                status=int(row["status"]),
                cold=_flag(row["cold"]),
                error=row["error"],
                bytes=int(row["bytes"] or 0),
            )
            for row in csv.DictReader(f)
        ]
