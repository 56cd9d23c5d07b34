"""A control plane's own start and stop: nothing is left behind, after a clean stop or a
start that fails half way. Each test starts a second control plane of its own."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from kindling.cluster import tools
from kindling.cluster.controlplane import ControlPlane
from kindling.cluster.processes import StartFailed

pytestmark = pytest.mark.cluster


def _processes_naming(path: Path) -> list[int]:
    """Live processes whose command line mentions `path` (each component's flags name its
    own files in the control plane's folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if str(path).encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def test_stop_leaves_no_process_or_folder(cluster_tools: tools.Tools) -> None:
    plane = ControlPlane(cluster_tools).start()
    try:
        names = {p.name for p in plane.processes}
        assert names == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
            "knative-controller",
            "knative-autoscaler",
        }
        assert len(_processes_naming(plane.workdir)) == len(names)
    finally:
        plane.stop()
    assert _processes_naming(plane.workdir) == []
    assert not plane.workdir.exists()
    plane.stop()  # twice is harmless


def test_a_failed_start_stops_what_it_started(cluster_tools: tools.Tools, tmp_path: Path) -> None:
    """kwok is given stages it cannot parse: it exits, and the start fails naming it, after
    etcd, the API server, the controller manager and the scheduler are up."""
    broken = tmp_path / "tools"
    broken.mkdir()
    (broken / "bin").symlink_to(cluster_tools.root / "bin")
    shutil.copytree(cluster_tools.crds, broken / "crds")  # kubectl walks no symlinked folder
    (broken / "kwok").mkdir()
    (broken / "kwok" / "stages.yaml").write_text("apiVersion: kwok.x-k8s.io/v1alpha1\nkind: [")
    (broken / tools.STAMP).write_text(json.dumps({"broken": True}))

    plane = ControlPlane(tools.Tools(broken))
    with pytest.raises(StartFailed, match="kwok exited"):
        plane.start()
    assert _processes_naming(plane.workdir) == []
    assert not plane.workdir.exists()
