"""Knative Serving's own controller and autoscaler on the control plane: a Knative Service
becomes a Configuration, a Revision, a PodAutoscaler and a Deployment whose pods kwok
runs, and a live Revision's min-scale (mutable in place since Knative 1.21,
knative/serving#16186) becomes replicas. No networking layer runs, so Routes stay
IngressNotConfigured, and the autoscaler cannot scrape kwok's pods (no queue-proxy):
min-scale, not load, decides the replicas here."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from kubernetes import client

from kindling.cluster.controlplane import ControlPlane
from kindling.cluster.processes import wait_until
from tests.cluster.fixtures import configuration_ready, watch_until

pytestmark = pytest.mark.cluster

MIN_SCALE = "autoscaling.knative.dev/min-scale"


def _knative_service(name: str, namespace: str) -> dict[str, Any]:
    # As a user writes it: Knative's controller fills in the rest (no defaulting webhook
    # runs here).
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "template": {
                "metadata": {"annotations": {MIN_SCALE: "1"}},
                "spec": {"containers": [{"image": "kindling.local/runtime:test"}]},
            }
        },
    }


def _ready_pods(api: Any, namespace: str, revision: str, count: int) -> list[client.V1Pod]:
    def done(pods: list[client.V1Pod]) -> bool:
        ready = [
            p
            for p in pods
            if p.status.phase == "Running"
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]
        return len(ready) == count

    return watch_until(
        client.CoreV1Api(api).list_namespaced_pod,
        done,
        namespace=namespace,
        label_selector=f"serving.knative.dev/revision={revision}",
    )


def _serve(cluster: ControlPlane, name: str, namespace: str) -> str:
    """Apply a Knative Service with min-scale 1; its first Revision's name, once its
    Configuration is Ready (which it is when that Revision is)."""
    cluster.apply(_knative_service(name, namespace))
    configuration_ready(cluster, namespace, name)
    return f"{name}-00001"


def test_a_knative_service_becomes_a_ready_revision_with_pods(
    cluster: ControlPlane, api: Any, namespace: str
) -> None:
    revision = _serve(cluster, "hello", namespace)
    custom = client.CustomObjectsApi(api)
    configuration = custom.get_namespaced_custom_object(
        "serving.knative.dev", "v1", namespace, "configurations", "hello"
    )
    assert configuration["status"]["latestReadyRevisionName"] == revision
    stored = custom.get_namespaced_custom_object(
        "serving.knative.dev", "v1", namespace, "revisions", revision
    )
    # Knative's own defaults, filled in by its controller.
    assert stored["spec"]["timeoutSeconds"] == 300
    pa = custom.get_namespaced_custom_object(
        "autoscaling.internal.knative.dev", "v1alpha1", namespace, "podautoscalers", revision
    )
    assert pa["metadata"]["ownerReferences"][0]["name"] == revision
    deployment = client.AppsV1Api(api).read_namespaced_deployment(
        f"{revision}-deployment", namespace
    )
    containers = [c.name for c in deployment.spec.template.spec.containers]
    assert containers == ["user-container", "queue-proxy"]
    (pod,) = _ready_pods(api, namespace, revision, 1)
    assert pod.spec.node_name.startswith("kwok-cpu-")


def test_a_live_revisions_min_scale_becomes_replicas(
    cluster: ControlPlane, api: Any, namespace: str
) -> None:
    revision = _serve(cluster, "warm", namespace)
    _ready_pods(api, namespace, revision, 1)

    # What the pre-warm controller does: patch the Revision itself, not the Service (which
    # would cut a new Revision).
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        "serving.knative.dev",
        "v1",
        namespace,
        "revisions",
        revision,
        {"metadata": {"annotations": {MIN_SCALE: "3"}}},
    )
    pods = _ready_pods(api, namespace, revision, 3)
    assert len({p.metadata.name for p in pods}) == 3
    pa = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "autoscaling.internal.knative.dev", "v1alpha1", namespace, "podautoscalers", revision
    )
    assert pa["status"]["desiredScale"] == 3
    revisions = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "serving.knative.dev", "v1", namespace, "revisions"
    )
    assert [r["metadata"]["name"] for r in revisions["items"]] == [revision]


def test_knative_serves_again_after_its_autoscaler_dies(
    cluster: ControlPlane, api: Any, namespace: str
) -> None:
    """Knative's autoscaler panics on a watch tombstone (its lease tracker asserts every
    deleted object is a Lease; client-go hands a DeletedFinalStateUnknown after a watch
    gap such as an API server restart). In a cluster the kubelet restarts it; here the
    control plane does, and it takes its bucket back under the same identity."""
    (autoscaler,) = [p for p in cluster.processes if p.name == "knative-autoscaler"]
    assert autoscaler.restart and autoscaler.proc is not None
    before = autoscaler.restarts
    os.kill(autoscaler.proc.pid, signal.SIGKILL)
    wait_until(
        lambda: autoscaler.restarts == before + 1 and autoscaler.alive(),
        "the autoscaler's restart",
        [autoscaler],
    )
    revision = _serve(cluster, "again", namespace)
    _ready_pods(api, namespace, revision, 1)
