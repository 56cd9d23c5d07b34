"""Pod-seconds: how long serving pods were up during a run, for the self-hosted cost.

Sources, sampled every few seconds while the run goes:

- `metrics`: GET the target's /metrics (Prometheus text); one pod while it answers. Right
  for one runtime (local, or a fixed Deployment). Through a Knative route the scrape is a
  request like any other and keeps a pod up, so there use
- `kubectl:SELECTOR[@NAMESPACE]`: the Running pods that match a label selector, e.g.
  `kubectl:serving.knative.dev/service=kim-cnn@default`;
- `none`: not sampled; the self-hosted cost then assumes one pod for the whole run.

The runtime's own start time, when /metrics carries `process_start_time_seconds` (the
name prometheus_client's process collector uses) or `kindling_process_start_time_seconds`,
shows restarts: each new start time is a new process (a cold start).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

START_TIME_METRICS = ("process_start_time_seconds", "kindling_process_start_time_seconds")
REQUESTS_METRIC = "kindling_requests_total"


@dataclass(frozen=True, slots=True)
class PodSample:
    t_s: float
    """Seconds from the run's start."""
    pods: int
    process_start: float = math.nan
    """Unix time the answering process started (metrics source, when exposed)."""
    server_requests: float = math.nan
    """kindling_requests_total for the model, summed over statuses (metrics source)."""


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) for each sample line of the text exposition format."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels: dict[str, str] = {}
        for part in rest.rstrip("}").split('",'):
            key, sep, val = part.partition('="')
            if sep:
                labels[key.strip(",")] = val.rstrip('"')
        try:
            samples.append((name, labels, float(value)))
        except ValueError:
            continue
    return samples


def read_metrics(text: str, model: str) -> tuple[float, float]:
    """(process start time, requests served for `model`) from a /metrics page."""
    start = math.nan
    # A counter with no series yet (no request served) is a count of 0, if the page has it.
    served = 0.0 if f"# TYPE {REQUESTS_METRIC} " in text else math.nan
    for name, labels, value in parse_prometheus(text):
        if name in START_TIME_METRICS:
            start = value
        elif name == REQUESTS_METRIC and labels.get("model") == model:
            served += value
    return start, served


class PodSource:
    name = "none"

    def sample(self, t_s: float) -> PodSample | None:
        return None


class MetricsPodSource(PodSource):
    name = "metrics"

    def __init__(self, metrics_url: str, model: str, headers: dict[str, str]) -> None:
        self.url = metrics_url
        self.model = model
        self.headers = headers

    def sample(self, t_s: float) -> PodSample:
        try:
            request = urllib.request.Request(self.url, headers=self.headers)
            with urllib.request.urlopen(request, timeout=5) as response:
                text = response.read().decode("utf-8", "replace")
        except (OSError, urllib.error.URLError):
            return PodSample(t_s, 0)
        start, served = read_metrics(text, self.model)
        return PodSample(t_s, 1, start, served)


class KubectlPodSource(PodSource):
    name = "kubectl"

    def __init__(self, selector: str, namespace: str | None = None) -> None:
        self.selector = selector
        self.namespace = namespace

    def command(self) -> list[str]:
        cmd = ["kubectl", "get", "pods", "-l", self.selector, "-o", "json"]
        return cmd + (["-n", self.namespace] if self.namespace else [])

    def sample(self, t_s: float) -> PodSample | None:
        try:
            out = subprocess.run(self.command(), capture_output=True, timeout=20, check=True)
        except (OSError, subprocess.SubprocessError):
            return None  # a missed sample, not zero pods
        items = json.loads(out.stdout).get("items", [])
        running = sum(
            1
            for pod in items
            if pod.get("status", {}).get("phase") == "Running"
            and not pod.get("metadata", {}).get("deletionTimestamp")
        )
        return PodSample(t_s, running)


def pod_source(spec: str, target: str, model: str, headers: dict[str, str]) -> PodSource:
    """`metrics`, `kubectl:SELECTOR[@NAMESPACE]` or `none`."""
    if spec == "metrics":
        return MetricsPodSource(target.rstrip("/") + "/metrics", model, headers)
    if spec.startswith("kubectl:"):
        selector, _, namespace = spec.removeprefix("kubectl:").partition("@")
        return KubectlPodSource(selector, namespace or None)
    if spec == "none":
        return PodSource()
    raise ValueError(f"unknown pod source {spec!r}: metrics, kubectl:SELECTOR[@NS] or none")


def pod_seconds(samples: Sequence[PodSample], start_s: float, end_s: float) -> float | None:
    """The pod count as a step function (each sample holds until the next), integrated
    over [start, end]; None without samples."""
    if not samples:
        return None
    total = 0.0
    ordered = sorted(samples, key=lambda s: s.t_s)
    for i, sample in enumerate(ordered):
        until = ordered[i + 1].t_s if i + 1 < len(ordered) else end_s
        lo, hi = max(sample.t_s, start_s), min(until, end_s)
        if i == 0:
            lo = start_s  # the first sample stands for the run's start too
        if hi > lo:
            total += sample.pods * (hi - lo)
    return total


def restarts(samples: Sequence[PodSample]) -> int:
    """New process start times seen after the first: processes started during the run."""
    starts = {round(s.process_start, 1) for s in samples if not math.isnan(s.process_start)}
    return max(0, len(starts) - 1)


COLUMNS = [f.name for f in fields(PodSample)]


def write_csv(path: Path, samples: Sequence[PodSample]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for s in samples:
            writer.writerow(
                ["" if isinstance(v, float) and math.isnan(v) else v for v in astuple(s)]
            )


def read_csv(path: Path) -> list[PodSample]:
    if not path.is_file():
        return []

    def num(text: str) -> float:
        return float(text) if text else math.nan

    with path.open(newline="", encoding="utf-8") as f:
        return [
            PodSample(
                float(r["t_s"]), int(r["pods"]), num(r["process_start"]), num(r["server_requests"])
            )
            for r in csv.DictReader(f)
        ]
