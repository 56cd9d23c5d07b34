"""Knative's data plane on the real node (cluster/knative.py): the activator and the webhook
as pods from Knative's own manifests, a Revision's pods with the queue-proxy sidecar, and
a request that arrives while the Revision is at zero held by the activator, the Revision
woken, and the request answered.

No ingress runs here: requests go where an ingress sends them, to the Revision's Service
with the Knative-Serving-Namespace and Knative-Serving-Revision headers. The wait for the
answer is the request itself; there is no clock in any assertion."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from typing import Any

import pytest
from kubernetes import client

from kindling.cluster import knative, nodes, pki
from kindling.cluster.coldstart import revision_at_zero, routing_headers
from kindling.cluster.controlplane import ControlPlane
from tests.cluster.fixtures import SAFETY_S
from tests.cluster.test_node import RESTRICTED, probe_image  # noqa: F401 - a fixture

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SERVING = ("serving.knative.dev", "v1")


def knative_service(
    name: str, namespace: str, image: str, annotations: dict[str, str]
) -> dict[str, Any]:
    """A Knative Service of the probe in `namespace`: it answers / with its pod's name."""
    container = {
        "image": image,
        "args": ["serve"],
        "ports": [{"containerPort": 8080}],
        "securityContext": RESTRICTED,
    }
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "template": {
                "metadata": {"annotations": annotations},
                # A deleted pod's queue-proxy drains for 30 s (pkg/queue/sharedmain); its
                # grace period is this timeout (300 s by default).
                "spec": {"containers": [container], "timeoutSeconds": 10},
            }
        },
    }


def through_revision(address: str, namespace: str, revision: str) -> tuple[int, str]:
    """One request as an ingress sends it: to the Revision's Service, naming the Revision
    in Knative's headers (the activator routes by them while the Revision is at zero)."""
    request = urllib.request.Request(
        f"http://{address}/", headers=routing_headers(namespace, revision)
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=SAFETY_S) as response:
        return response.status, response.read().decode().strip()


def test_the_activator_and_webhook_run_as_pods_on_the_real_node(
    cluster: ControlPlane, api: Any
) -> None:
    pods = client.CoreV1Api(api).list_namespaced_pod(knative.NAMESPACE).items
    by_app = {p.metadata.labels["app"]: p for p in pods}
    assert set(by_app) == {"activator", "webhook"}
    for pod in by_app.values():
        assert pod.spec.node_name == nodes.REAL_NODE
        assert pod.status.phase == "Running"
        (image,) = [c.image for c in pod.spec.containers]
        assert image.startswith(f"{cluster.registry}/knative-") and "@sha256:" in image
    assert by_app["activator"].spec.service_account_name == "activator"


def test_the_webhook_defaults_and_validates_knative_services(
    cluster: ControlPlane,
    node_namespace: str,
    probe_image: str,  # noqa: F811
) -> None:
    bad = knative_service(
        "bad", node_namespace, probe_image, {"autoscaling.knative.dev/min-scale": "-1"}
    )
    with pytest.raises(subprocess.CalledProcessError) as refused:
        cluster.apply(bad)
    assert "validation.webhook.serving.knative.dev" in refused.value.stderr
    good = knative_service("good", node_namespace, probe_image, {})
    cluster.apply(good)
    with cluster.api_client() as api:
        made = client.CustomObjectsApi(api).get_namespaced_custom_object(
            *SERVING, node_namespace, "services", "good"
        )
    # The defaulting webhook records who created it: the admin certificate's user.
    (admin, _) = pki.CLIENTS["admin"]
    assert made["metadata"]["annotations"]["serving.knative.dev/creator"] == admin


def test_a_request_at_zero_is_held_by_the_activator_and_answered(
    cluster: ControlPlane,
    node_namespace: str,
    probe_image: str,  # noqa: F811
) -> None:
    """A Revision that starts at zero (initial-scale 0, allowed in this cluster's
    config-autoscaler): its Service points at the activator; one request wakes it, waits
    for the pod, and gets the pod's answer through its queue-proxy."""
    annotations = {"autoscaling.knative.dev/initial-scale": "0"}
    service = knative_service("hello", node_namespace, probe_image, annotations)
    cluster.apply(service)
    revision = "hello-00001"
    address = revision_at_zero(cluster, node_namespace, revision)
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        assert not core.list_namespaced_pod(node_namespace).items
        start = time.monotonic()
        status, answer = through_revision(address, node_namespace, revision)
        woken_s = time.monotonic() - start
        (pod,) = [p for p in core.list_namespaced_pod(node_namespace).items if p.status.pod_ip]
    assert status == 200 and answer == pod.metadata.name
    assert pod.spec.node_name == nodes.REAL_NODE
    assert [c.name for c in pod.spec.containers] == ["user-container", "queue-proxy"]
    print(f"\nscale from zero, request to answer: {woken_s:.2f} s (probe image on the node)")


def infer_through_revision(address: str, namespace: str, revision: str, model: str) -> float:
    """The model's sample request (docker/check_image.py's) through the Revision's Service
    with Knative's routing headers; seconds from sending it to the answer."""
    import tritonclient.http as httpclient

    from tests.docker.helpers import load

    triton = httpclient.InferenceServerClient(f"{address}:80", network_timeout=SAFETY_S)
    headers = routing_headers(namespace, revision)
    try:
        start = time.monotonic()
        result = triton.infer(model, load("check_image").SAMPLE_REQUESTS[model](), headers=headers)
        seconds = time.monotonic() - start
    finally:
        triton.close()
    assert result.get_response()["model_name"] == model
    return seconds
