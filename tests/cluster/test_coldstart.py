"""`kindling cluster cold-start` on the real node (cluster/coldstart.py): the chart's model at
zero, woken by one request through the activator, each run broken into its phases.

What is asserted is the measurement's shape: every run was its pod's first request, the
phases add up to the total, every part the kubelet and the runtime report is there. The
figures themselves are printed, never compared with a bound: this machine is shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kindling.cluster import coldstart, nodes
from kindling.cluster.controlplane import ControlPlane
from kindling.controller import profiles


def check(run: coldstart.Run) -> None:
    assert run.cold, "the answer did not come from a new pod's first request"
    assert run.node == nodes.REAL_NODE
    assert list(run.phases) == list(coldstart.PHASES)
    assert all(seconds >= 0 for seconds in run.phases.values())
    assert sum(run.phases.values()) == pytest.approx(run.total_s, abs=1e-3)
    assert {"run_podsandbox", "create_container", "start_container"} <= set(run.kubelet)
    assert {"imports", "ready", "first_answer", "model_session", "model_ready"} <= set(run.runtime)
    assert run.runtime["ready"] <= run.runtime["first_answer"]


@pytest.mark.cluster
@pytest.mark.slow
def test_a_model_woken_from_zero_is_timed_phase_by_phase(
    cluster: ControlPlane, registry: str
) -> None:
    # One run after the new Revision's first: a Revision that served, scaled back to zero
    # and woke again (the --pull test repeats the same path on another model).
    report = coldstart.measure(cluster, registry, "mobilenet_v2", runs=1, namespace="cs-measure")
    assert len(report.runs) == 1
    for run in report.runs:
        check(run)
        assert "pull_image" not in run.kubelet or run.kubelet["pull_image"] == 0
    assert report.new_revision is not None and report.new_revision.cold
    summary = report.summary()
    assert summary["all_cold"] and summary["node"] == nodes.REAL_NODE
    assert set(summary["phases"]) == set(coldstart.PHASES)
    print("\n" + coldstart.render(summary))


@pytest.mark.cluster
@pytest.mark.slow
def test_the_command_pulls_the_image_before_each_run_and_prints_json(
    cluster: ControlPlane, registry: str, tmp_path: Path
) -> None:
    """The command as a person runs it after `make cluster`: the cluster from $KUBECONFIG
    and the registry from $KINDLING_REGISTRY; --pull takes the image off the node first,
    so the kubelet pulls it; --profile writes the simulator's pod-start profile."""
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "KINDLING_REGISTRY": registry}
    command = [
        sys.executable, "-m", "kindling", "cluster", "cold-start", "--model", "minilm",
        "--runs", "1", "--pull", "--json", "--namespace", "cs-pull",
        "--profile", str(tmp_path / "pod_start.json"),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout)
    assert {"runs", "median_s", "p90_s", "node", "phases"} <= set(summary)
    assert summary["runs"] == 1 and summary["pull"] and summary["model"] == "minilm"
    (run,) = [coldstart.Run(**sample) for sample in summary["samples"]]
    check(run)
    assert run.kubelet["pull_image"] > 0
    profile = profiles.pod_start(tmp_path / "pod_start.json")
    assert profile.overhead_s == (pytest.approx(run.total_s - run.runtime["ready"], abs=1e-3),)
    print("\n" + coldstart.render(summary))


def test_the_command_says_what_it_needs() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KINDLING_REGISTRY")}
    command = [sys.executable, "-m", "kindling", "cluster", "cold-start"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "set KUBECONFIG and KINDLING_REGISTRY" in done.stderr
