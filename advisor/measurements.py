"""What the advisor knows about one model: measured on a runtime, or read from a run.

    Measurement
      cold_start_s                  spawn to the first answered inference, per fresh process
      settings: [SettingResult]     one per runtime process started with a `RuntimeSetting`
        setting                     threads, max_batch_size, max_queue_delay_ms
        peak_rss_mib                VmHWM after the worst-case request at that batch size
        points: [LoadPoint]         closed loop at each concurrency: every latency, and rps

`measure.py` writes one, `results.py` reads one back from a directory (its own
`measurement.json`, or a load test's run), and `search.py` turns it into candidates. The
JSON form is this module's `to_json`/`from_json`, and nothing else reads or writes it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kindling.errors import KindlingError

MEASUREMENT_FILE = "measurement.json"
FORMAT = 1


class MeasurementError(KindlingError):
    """A measurement that cannot be used: missing, malformed, or empty where data is needed."""


@dataclass(frozen=True)
class RuntimeSetting:
    """What one runtime process was started with (KINDLING_THREADS, KINDLING_MAX_BATCH_SIZE,
    KINDLING_MAX_QUEUE_DELAY_MS). None: unknown (a URL the advisor did not start)."""

    threads: int | None
    max_batch_size: int
    max_queue_delay_ms: float

    def label(self) -> str:
        threads = "?" if self.threads is None else str(self.threads)
        return f"t{threads}-b{self.max_batch_size}-d{self.max_queue_delay_ms:g}"


@dataclass(frozen=True)
class LoadPoint:
    """A closed loop of `concurrency` callers on one runtime: each request's latency in
    milliseconds (what a request holds a pod slot for at that concurrency) and the rate."""

    concurrency: int
    latencies_ms: tuple[float, ...]
    throughput_rps: float

    def __post_init__(self) -> None:
        if self.concurrency < 1 or not self.latencies_ms:
            raise MeasurementError(f"load point at C={self.concurrency} has no latencies")


@dataclass(frozen=True)
class SettingResult:
    setting: RuntimeSetting
    points: tuple[LoadPoint, ...]
    # Peak RSS of the process (MiB) after it served the worst-case request at its
    # max_batch_size; None where it cannot be read (a URL).
    peak_rss_mib: float | None

    def point(self, concurrency: int) -> LoadPoint | None:
        return next((p for p in self.points if p.concurrency == concurrency), None)


@dataclass(frozen=True)
class Measurement:
    model: str
    source: str  # "started by kindling advise", a URL, or a results directory
    # The model's own config.yaml max_batch_size: the memory floor is measured there.
    config_max_batch_size: int
    cold_start_s: tuple[float, ...]
    settings: tuple[SettingResult, ...]
    machine: dict[str, Any] = field(default_factory=dict)  # cpus, platform, date, command

    def __post_init__(self) -> None:
        if not self.settings:
            raise MeasurementError(f"{self.model}: no measured setting")
        if not self.cold_start_s or any(not c > 0 for c in self.cold_start_s):
            raise MeasurementError(f"{self.model}: cold start needs positive samples")

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str, where: str = "measurement") -> Measurement:
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise MeasurementError(f"{where}: format {doc.get('format')!r}, expected {FORMAT}")
            return cls(
                model=str(doc["model"]),
                source=str(doc["source"]),
                config_max_batch_size=int(doc["config_max_batch_size"]),
                cold_start_s=tuple(float(c) for c in doc["cold_start_s"]),
                settings=tuple(
                    SettingResult(
                        setting=RuntimeSetting(**s["setting"]),
                        points=tuple(
                            LoadPoint(
                                int(p["concurrency"]),
                                tuple(float(v) for v in p["latencies_ms"]),
                                float(p["throughput_rps"]),
                            )
                            for p in s["points"]
                        ),
                        peak_rss_mib=None
                        if s["peak_rss_mib"] is None
                        else float(s["peak_rss_mib"]),
                    )
                    for s in doc["settings"]
                ),
                machine=dict(doc.get("machine") or {}),
            )
        except MeasurementError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MeasurementError(f"{where}: malformed ({exc!r})") from exc

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MEASUREMENT_FILE
        path.write_text(self.to_json())
        return path
