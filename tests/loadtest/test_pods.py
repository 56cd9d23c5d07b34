"""Pod-seconds from the runtime's /metrics or from kubectl, and their integration."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest

from kindling.loadtest.pods import (
    KubectlPodSource,
    PodSample,
    parse_prometheus,
    pod_seconds,
    pod_source,
    read_metrics,
    restarts,
)
from kindling.metrics import Registry


def test_reads_the_runtimes_own_exposition():
    registry = Registry()
    requests = registry.counter("kindling_requests_total", "h", ("model", "status"))
    requests.inc("kim_cnn", "200", amount=41)
    requests.inc("kim_cnn", "400")
    requests.inc("minilm", "200", amount=7)
    start = registry.gauge("process_start_time_seconds", "h")
    start.set(value=1700000000.5)
    text = registry.render()
    assert (
        "kindling_requests_total",
        {"model": "kim_cnn", "status": "400"},
        1.0,
    ) in parse_prometheus(text)
    assert read_metrics(text, "kim_cnn") == (1700000000.5, 42.0)
    started, served = read_metrics("", "kim_cnn")  # not a Kindling runtime: unknown
    assert math.isnan(started) and math.isnan(served)
    assert read_metrics(text, "resnet18")[1] == 0.0  # the counter, no series yet: none served


def test_pod_seconds_integrate_a_step_function():
    samples = [PodSample(0.0, 1), PodSample(10.0, 3), PodSample(20.0, 0), PodSample(30.0, 1)]
    # 1 pod for 10 s, 3 for 10 s, 0 for 10 s, 1 for the last 5 s
    assert pod_seconds(samples, 0.0, 35.0) == pytest.approx(10 + 30 + 0 + 5)
    assert pod_seconds(samples, 15.0, 25.0) == pytest.approx(15)  # 3 pods for 5 s, 0 for 5
    assert pod_seconds([PodSample(2.0, 2)], 0.0, 4.0) == pytest.approx(8)  # first stands from 0
    assert pod_seconds([], 0.0, 4.0) is None


def test_restarts_count_new_process_start_times():
    samples = [PodSample(0, 1, 100.0), PodSample(5, 1, 100.0), PodSample(9, 1, 107.0)]
    assert restarts(samples) == 1
    assert restarts([PodSample(0, 1)]) == 0


def test_kubectl_source_counts_running_pods(tmp_path, monkeypatch):
    pods = {
        "items": [
            {"status": {"phase": "Running"}, "metadata": {}},
            {"status": {"phase": "Running"}, "metadata": {"deletionTimestamp": "x"}},
            {"status": {"phase": "Pending"}, "metadata": {}},
        ]
    }
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f"#!/bin/sh\necho '{json.dumps(pods)}'\n")
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    source = pod_source("kubectl:app=kim@serving", "http://x", "kim_cnn", {})
    assert isinstance(source, KubectlPodSource)
    assert source.command()[-2:] == ["-n", "serving"]
    assert source.sample(1.0) == PodSample(1.0, 1)


def test_unknown_pod_source_is_refused():
    with pytest.raises(ValueError):
        pod_source("prometheus", "http://x", "m", {})
