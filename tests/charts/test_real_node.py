"""The chart's raw-mode install running on the real node (tests/cluster/fixtures.py), as a
person runs it after `make cluster`:

    helm install kindling charts/kindling --set global.imageRegistry=$KINDLING_REGISTRY \\
        --set serving.mode=raw --set modelDefaults.resources.requests.cpu=100m

The runtime image with every sample model baked in (`docker/build_images.py --models all`)
and the controller image, tagged with the chart's appVersion and pushed to the cluster's
loopback registry; every model's pod pulled, started and Ready on `kindling-node`, each
answering tritonclient through its ClusterIP Service; the controller's pod Running under
its own ServiceAccount; `helm upgrade` rolls the pods; `helm uninstall` leaves nothing.

The CPU request is lowered because this node has two cores: six models at the chart's
500m each would not fit (the scheduler counts requests, not use).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tritonclient.http as httpclient
import yaml
from kubernetes import client

from kindling.cluster import nodes
from kindling.cluster.controlplane import ControlPlane
from tests.charts.render import CHART
from tests.charts.test_cluster import INSTANCE, install, release_objects
from tests.cluster.fixtures import SAFETY_S, watch_until
from tests.cluster.test_node import through_service
from tests.conftest import SAMPLE_MODELS
from tests.docker.helpers import DOCKER, load

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

APP_VERSION = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
# This node's two cores: the chart's 500m per model would leave pods Pending.
SMALL_CPU = "modelDefaults.resources.requests.cpu=100m"


@pytest.fixture(scope="module")
def registry(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The chart's images, as `make cluster` pushes them, in the cluster's registry."""
    assert cluster.registry is not None
    report = tmp_path_factory.mktemp("images") / "images.json"
    build = subprocess.run(
        [sys.executable, str(DOCKER / "build_images.py"), "--models", "all",
         "--tag", APP_VERSION, "--report", str(report)],
        capture_output=True, text=True, timeout=1700,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    for name, built in json.loads(report.read_text())["images"].items():
        target = f"docker://{cluster.registry}/kindling-{name}:{APP_VERSION}"
        push = subprocess.run(
            ["podman", "push", "--tls-verify=false", built["tag"], target],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert push.returncode == 0, push.stderr[-4000:]
    return cluster.registry


def all_ready(api: Any, namespace: str, count: int) -> list[Any]:
    """The release's pods once exactly `count` exist and all are Ready."""

    def done(pods: list[Any]) -> bool:
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        return len(live) == count == len(pods) and all(_ready(p) for p in live)

    return watch_until(
        client.CoreV1Api(api).list_namespaced_pod,
        done,
        namespace=namespace,
        label_selector=INSTANCE,
    )


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def test_the_raw_install_serves_every_model_on_the_real_node(
    cluster: ControlPlane, node_namespace: str, registry: str
) -> None:
    sets = (f"global.imageRegistry={registry}", "serving.mode=raw", SMALL_CPU)
    install(cluster, node_namespace, sets=sets)
    expected = len(SAMPLE_MODELS) + 1  # and the controller
    with cluster.api_client() as api:
        pods = all_ready(api, node_namespace, expected)
        assert {p.spec.node_name for p in pods} == {nodes.REAL_NODE}
        for pod in pods:
            (status,) = pod.status.container_statuses
            assert status.image_id.startswith(f"{registry}/kindling-"), status.image_id
        (controller,) = [p for p in pods if "controller" in p.metadata.name]
        assert controller.spec.service_account_name == "kindling-controller"
        services = client.CoreV1Api(api).list_namespaced_service(
            node_namespace, label_selector=f"{INSTANCE},app.kubernetes.io/component=runtime"
        )
    by_model = {s.metadata.labels["kindling.dev/model"]: s.spec.cluster_ip for s in services.items}
    assert set(by_model) == set(SAMPLE_MODELS)
    requests = load("check_image").SAMPLE_REQUESTS
    for model, address in sorted(by_model.items()):
        through_service(f"http://{address}/v2/models/{model}/ready")
        triton = httpclient.InferenceServerClient(f"{address}:80", network_timeout=SAFETY_S)
        try:
            result = triton.infer(model, requests[model]())  # raises unless 200
        finally:
            triton.close()
        assert result.get_response()["model_name"] == model

    # An upgrade that changes the pods' template rolls every one of them.
    before = {p.metadata.name for p in pods}
    install(cluster, node_namespace, sets=(*sets, "modelDefaults.podAnnotations.rolled=yes"),
            verb="upgrade")  # fmt: skip
    with cluster.api_client() as api:
        after = all_ready(api, node_namespace, expected)
    rolled = [p for p in after if "runtime" in (p.metadata.labels or {}).get(
        "app.kubernetes.io/component", "")]  # fmt: skip
    assert len(rolled) == len(SAMPLE_MODELS)
    assert not {p.metadata.name for p in rolled} & before
    assert all(p.metadata.annotations.get("rolled") == "yes" for p in rolled)

    # Uninstalled, nothing of the release is left, pods included.
    cluster.helm("uninstall", "kindling", "--namespace", node_namespace, "--wait",
                 f"--timeout={SAFETY_S}s")  # fmt: skip
    with cluster.api_client() as api:
        watch_until(
            client.CoreV1Api(api).list_namespaced_pod,
            lambda pods: not pods,
            namespace=node_namespace,
            label_selector=INSTANCE,
        )
    assert release_objects(cluster, node_namespace) == []


def test_the_chart_values_a_person_types_are_the_ones_tested() -> None:
    """The README's command and this test's values are the same."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"--set {SMALL_CPU}" in readme
