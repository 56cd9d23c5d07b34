"""Reading a measurement back for `kindling advise --from DIR`.

A folder holds one of:

- the advisor's own `measurement.json` (measurements.Measurement, written by `save`);
- a `kindling loadtest run --workload concurrency` run (loadtest/driver.py writes
  `run.json`, `requests.csv` and `pods.csv`): each closed-loop level `c=N` becomes a
  LoadPoint, with the latencies of its measured, answered requests and the level's
  throughput as the load test's report computes it (loadtest/summary.py `_stages`: the
  requests answered while the level lasted, over its span).

What a load-test run lacks, the caller gives:

- the runtime's setting: a run does not record the threads, max_batch_size or queue
  delay it was served with (run.json keeps the model's inputs only): `setting`, from
  measure.config_setting (the model's config.yaml) or measure.url_setting (the runtime's
  /config);
- the cold start: the requests the runtime flagged as a process's first
  (`Kindling-Cold-Start: true`), their latency in seconds, when there are any. Through a
  Knative route after scale-to-zero that is the pod's whole start; against a runtime
  started before the run it is only its first request, so give `cold_start_s` then;
- peak RSS: pods.csv holds pod counts, not memory; a memory column, if a run has one
  (`peak_rss_mib`, `rss_mib` or `memory_mib`), gives its highest value, else None.

The cold-flagged requests are left out of their level's latencies: they measure a start,
not the service time the level is about. A level whose failed requests pass the load
test's default error SLO (loadtest/slo.py, 1 %) ends the sweep there, as an overloaded
point ends `measure.sweep`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from kindling.advisor.measurements import (
    MEASUREMENT_FILE,
    LoadPoint,
    Measurement,
    MeasurementError,
    RuntimeSetting,
    SettingResult,
)

RUN_FILES = ("run.json", "requests.csv")
CONCURRENCY_WORKLOAD = "concurrency"
# loadtest/slo.py SLO.error_ratio: the load test's own default gate.
MAX_ERROR_RATIO = 0.01
MEMORY_COLUMNS = ("peak_rss_mib", "rss_mib", "memory_mib")


def read_results(
    folder: Path,
    *,
    setting: RuntimeSetting | None = None,
    config_max_batch_size: int | None = None,
    cold_start_s: tuple[float, ...] | None = None,
) -> Measurement:
    """The measurement in `folder`: the advisor's measurement.json, or a load test's
    concurrency run (the keywords fill in what such a run lacks; see the module
    docstring). Anything else is a MeasurementError saying what was expected."""
    if not folder.is_dir():
        raise MeasurementError(f"{folder}: not a directory")
    saved = folder / MEASUREMENT_FILE
    if saved.is_file():
        try:
            text = saved.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MeasurementError(f"{saved}: {exc}") from exc
        return Measurement.from_json(text, where=str(saved))
    if all((folder / name).is_file() for name in RUN_FILES):
        return _read_run(folder, setting, config_max_batch_size, cold_start_s)
    raise MeasurementError(
        f"{folder}: neither a measurement ({MEASUREMENT_FILE}) nor a load-test run "
        f"({' and '.join(RUN_FILES)}, from `kindling loadtest run --workload concurrency`)"
    )


def _read_run(
    folder: Path,
    setting: RuntimeSetting | None,
    config_max_batch_size: int | None,
    cold_start_s: tuple[float, ...] | None,
) -> Measurement:
    from kindling.loadtest.records import read_csv

    malformed = (OSError, KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError)
    try:
        run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        config = run["config"]
        workload = config["workload"]
        requests = read_csv(folder / "requests.csv")
    except malformed as exc:
        raise MeasurementError(f"{folder}: malformed load-test run ({exc!r})") from exc
    if workload != CONCURRENCY_WORKLOAD:
        raise MeasurementError(
            f"{folder}: a load test of workload {workload!r}; only a "
            f"`{CONCURRENCY_WORKLOAD}` run measures latency against concurrency"
        )
    try:
        model = str(run["model"]["name"])
        levels = [(str(lv["label"]), int(lv["users"])) for lv in run["levels"]]
        windows = {
            str(k): [(float(a), float(b)) for a, b in w] for k, w in run["stage_windows"].items()
        }
    except malformed as exc:
        raise MeasurementError(f"{folder}: malformed run.json ({exc!r})") from exc

    done = [r.done_s for r in requests if r.ok and r.measured]
    points = []
    for label, users in dict.fromkeys(lv for lv in levels if lv[1] > 0):
        rows = [r for r in requests if r.stage == label and r.measured]
        failed = sum(1 for r in rows if not r.ok)
        if rows and failed / len(rows) > MAX_ERROR_RATIO:
            break  # overloaded: no point past it is usable either
        latencies = tuple(r.latency_ms for r in rows if r.ok and not r.cold)
        if not latencies:
            continue
        spans = windows.get(label, [])
        span = sum(b - a for a, b in spans)
        if not span > 0:
            raise MeasurementError(f"{folder}: level {label} has no time window in run.json")
        completed = sum(1 for t in done for a, b in spans if a <= t < b)
        points.append(LoadPoint(users, latencies, round(completed / span, 3)))
    if not points:
        raise MeasurementError(f"{folder}: no concurrency level with answered requests")

    if setting is None:
        raise MeasurementError(
            f"{folder}: a load-test run does not record the runtime's setting (threads, "
            "max_batch_size, queue delay): give it, from the model's config.yaml or the "
            "runtime's /config"
        )
    if cold_start_s is None:
        cold_start_s = tuple(r.latency_ms / 1000 for r in requests if r.cold and r.ok)
    if not cold_start_s:
        raise MeasurementError(
            f"{folder}: no request of the run was a runtime's first (Kindling-Cold-Start), "
            "so it holds no cold start: give one measured elsewhere"
        )
    return Measurement(
        model=model,
        source=str(folder),
        config_max_batch_size=config_max_batch_size or setting.max_batch_size,
        cold_start_s=tuple(cold_start_s),
        settings=(SettingResult(setting, tuple(points), _peak_rss(folder / "pods.csv")),),
        machine={
            "load_test": {
                "target": config.get("target"),
                "started_at": run.get("started_at"),
                "time_scale": config.get("time_scale"),
            }
        },
    )


def _peak_rss(path: Path) -> float | None:
    """The highest memory sample in pods.csv, if it has a memory column (MiB)."""
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            column = next((c for c in MEMORY_COLUMNS if c in (reader.fieldnames or [])), None)
            if column is None:
                return None
            values = [float(row[column]) for row in reader if row.get(column)]
    except (OSError, ValueError, csv.Error) as exc:
        raise MeasurementError(f"{path}: {exc}") from exc
    return max((v for v in values if v > 0), default=None)
