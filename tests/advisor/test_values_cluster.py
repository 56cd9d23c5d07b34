"""The advised values file installs into the test control plane (tests/cluster/fixtures.py):
Knative makes a Ready Revision carrying the advice, and the release uninstalls cleanly.
Every wait is on the API server (kubectl wait), never on a clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kindling.advisor.pick import pick
from kindling.advisor.search import Space, search
from kindling.advisor.values import write_values
from kindling.cluster.controlplane import ControlPlane
from kindling.controller import workloads
from tests.advisor.test_search import measurement
from tests.charts.render import CHART
from tests.cluster.fixtures import SAFETY_S, configuration_ready

pytestmark = pytest.mark.cluster

RELEASE = "kindling"


def test_the_advised_values_install_and_the_revision_carries_them(
    cluster: ControlPlane, api: Any, namespace: str, tmp_path: Path
) -> None:
    advice = pick(search(measurement(), workloads.make("mmpp-120", seed=0), Space(slo_p99_ms=60)))
    values = write_values(advice, tmp_path / "values-mobilenet_v2.yaml")
    install = cluster.helm(
        "install", RELEASE, str(CHART), "--namespace", namespace, "--values", str(values),
        f"--timeout={SAFETY_S}s", check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    configuration_ready(cluster, namespace, f"{RELEASE}-mobilenet-v2")
    revision = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "serving.knative.dev", "v1", namespace, "revisions", f"{RELEASE}-mobilenet-v2-00001"
    )
    c = advice.pick.candidate
    annotations = revision["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == str(c.min_scale)
    assert float(annotations["autoscaling.knative.dev/target"]) == c.target
    assert float(annotations["kindling.dev/prewarm-margin-k"]) == c.margin_k
    assert revision["spec"]["containerConcurrency"] == c.container_concurrency
    (container,) = revision["spec"]["containers"]
    memory = f"{c.resources.memory_mib}Mi"
    assert container["resources"]["limits"] == {"cpu": str(c.setting.threads), "memory": memory}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    uninstall = cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False)
    assert uninstall.returncode == 0, uninstall.stderr
