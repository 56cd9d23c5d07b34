"""The cluster tier itself: scheduling onto kwok's nodes, GPU taints, the Knative CRDs'
schemas, RBAC with real service-account tokens, and an API server restart."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kindling.cluster import nodes
from kindling.cluster.controlplane import ControlPlane
from kindling.cluster.processes import wait_until
from tests.cluster.fixtures import SAFETY_S, deployment, watch_until

pytestmark = pytest.mark.cluster


def _container(resources: dict[str, Any] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "kindling/runtime:test"}
    if resources:
        container["resources"] = resources
    return container


def _ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in conditions
    )


def test_nodes_are_ready_and_the_gpu_node_is_tainted(api: Any) -> None:
    listed = {n.metadata.name: n for n in client.CoreV1Api(api).list_node().items}
    assert set(listed) == {*nodes.CPU_NODES, *nodes.GPU_NODES, nodes.REAL_NODE}
    for node in listed.values():
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    gpu = listed[nodes.GPU_NODES[0]]
    assert gpu.status.allocatable[nodes.GPU_RESOURCE] == "1"
    taints = [(t.key, t.effect) for t in gpu.spec.taints]
    assert taints == [(nodes.KWOK_TAINT["key"], "NoSchedule"), (nodes.GPU_RESOURCE, "NoSchedule")]
    assert gpu.metadata.labels["nvidia.com/gpu.present"] == "true"


def test_a_deployment_becomes_ready_pods_with_service_endpoints(
    cluster: ControlPlane, api: Any, namespace: str
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
    }
    web = deployment("web", 2, {"containers": [_container()]})
    cluster.apply(_in_namespace([web, service], namespace))
    core = client.CoreV1Api(api)
    pods = watch_until(
        core.list_namespaced_pod,
        lambda pods: len([p for p in pods if _ready(p)]) == 2,
        namespace=namespace,
        label_selector="app=web",
    )
    assert {p.spec.node_name for p in pods} <= set(nodes.CPU_NODES)
    pod_ips = {p.status.pod_ip for p in pods}
    assert None not in pod_ips

    discovery = client.DiscoveryV1Api(api)
    slices = watch_until(
        discovery.list_namespaced_endpoint_slice,
        lambda found: (
            {
                address
                for s in found
                for e in s.endpoints or []
                if e.conditions.ready
                for address in e.addresses
            }
            == pod_ips
        ),
        namespace=namespace,
        label_selector="kubernetes.io/service-name=web",
    )
    assert slices
    # The Deployment controller counts the same pods a moment later.
    cluster.kubectl(
        "wait", "--for=jsonpath={.status.readyReplicas}=2", "deployment/web", "-n", namespace,
        f"--timeout={SAFETY_S}s",
    )  # fmt: skip


def test_gpu_pods_land_on_the_gpu_node_and_no_others_do(
    cluster: ControlPlane, api: Any, namespace: str
) -> None:
    gpu = {"limits": {nodes.GPU_RESOURCE: "1"}}
    toleration = {"key": nodes.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    cluster.apply(
        _in_namespace(
            [
                deployment(
                    "gpu", 1, {"containers": [_container(gpu)], "tolerations": [toleration]}
                ),
                deployment("untolerated-gpu", 1, {"containers": [_container(gpu)]}),
                deployment("cpu", 4, {"containers": [_container()]}),
            ],
            namespace,
        )
    )
    core = client.CoreV1Api(api)

    def settled(pods: list[client.V1Pod]) -> bool:
        by_app: dict[str, list[client.V1Pod]] = {}
        for pod in pods:
            by_app.setdefault(pod.metadata.labels["app"], []).append(pod)
        return (
            len([p for p in by_app.get("gpu", []) if _ready(p)]) == 1
            and len([p for p in by_app.get("cpu", []) if _ready(p)]) == 4
            and any(_unschedulable(p) for p in by_app.get("untolerated-gpu", []))
        )

    pods = watch_until(core.list_namespaced_pod, settled, namespace=namespace)
    placed = {(p.metadata.labels["app"], p.spec.node_name) for p in pods if p.spec.node_name}
    assert {node for app, node in placed if app == "gpu"} == {nodes.GPU_NODES[0]}
    assert {node for app, node in placed if app == "cpu"} <= set(nodes.CPU_NODES)
    assert not any(app == "untolerated-gpu" for app, _ in placed)
    (stuck,) = [p for p in pods if p.metadata.labels["app"] == "untolerated-gpu"]
    message = next(c.message for c in stuck.status.conditions if c.type == "PodScheduled")
    # The scheduler's own reasons: the CPU nodes lack the GPU, the GPU node's taint is
    # not tolerated.
    assert "untolerated taint" in message and "Insufficient nvidia.com/gpu" in message


def _unschedulable(pod: client.V1Pod) -> bool:
    return any(
        c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
        for c in pod.status.conditions or []
    )


def _in_namespace(manifests: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    return [{**m, "metadata": {**m["metadata"], "namespace": namespace}} for m in manifests]


# -- Knative Serving's CRDs ----------------------------------------------------------------


def _knative_service(namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "mobilenet", "namespace": namespace},
        "spec": spec,
    }


def test_knative_crds_are_established(cluster: ControlPlane) -> None:
    names = cluster.kubectl("get", "crd", "-o", "name").stdout.split()
    for crd in (
        "services.serving.knative.dev",
        "configurations.serving.knative.dev",
        "revisions.serving.knative.dev",
        "routes.serving.knative.dev",
        "domainmappings.serving.knative.dev",
        "podautoscalers.autoscaling.internal.knative.dev",
        "metrics.autoscaling.internal.knative.dev",
        "ingresses.networking.internal.knative.dev",
        "serverlessservices.networking.internal.knative.dev",
        "certificates.networking.internal.knative.dev",
        "clusterdomainclaims.networking.internal.knative.dev",
        "images.caching.internal.knative.dev",
    ):
        assert f"customresourcedefinition.apiextensions.k8s.io/{crd}" in names


def test_a_knative_service_is_accepted(cluster: ControlPlane, api: Any, namespace: str) -> None:
    template = {
        "metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "1"}},
        "spec": {
            "containerConcurrency": 8,
            "containers": [{"image": "kindling/runtime:test", "ports": [{"containerPort": 8080}]}],
        },
    }
    cluster.apply(_knative_service(namespace, {"template": template}))
    stored = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "serving.knative.dev", "v1", namespace, "services", "mobilenet"
    )
    assert stored["spec"]["template"]["spec"]["containerConcurrency"] == 8


def test_a_knative_service_that_breaks_the_schema_is_refused(
    cluster: ControlPlane, namespace: str
) -> None:
    broken = _knative_service(
        namespace, {"template": {"spec": {"containers": "kindling/runtime:test"}}}
    )
    with pytest.raises(subprocess.CalledProcessError) as refused:
        cluster.apply(broken)
    # Knative's defaulting webhook (mutating admission runs before the API server's
    # validation against the CRD's structural schema) cannot even decode it.
    assert 'admission webhook "webhook.serving.knative.dev" denied' in refused.value.stderr
    assert "PodSpec.containers of type []v1.Container" in refused.value.stderr


# -- RBAC and service-account tokens -------------------------------------------------------


def test_rbac_refuses_a_service_account_without_a_role(
    cluster: ControlPlane, namespace: str
) -> None:
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    who = f"system:serviceaccount:{namespace}:nobody"
    asked = cluster.kubectl(
        "auth", "can-i", "list", "pods", "-n", namespace, "--as", who, check=False
    )
    assert (asked.returncode, asked.stdout.strip()) == (1, "no")

    with cluster.service_account_client(namespace, "nobody") as as_nobody:
        with pytest.raises(ApiException) as refused:
            client.CoreV1Api(as_nobody).list_namespaced_pod(namespace)
        assert refused.value.status == 403
        assert who in refused.value.body

        # The same token works once a Role allows it: the 403 was RBAC, not the token.
        cluster.kubectl(
            "create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace
        )
        cluster.kubectl(
            "create", "rolebinding", "nobody-reads", "--role=pod-reader",
            f"--serviceaccount={namespace}:nobody", "-n", namespace,
        )  # fmt: skip
        # The RBAC authorizer reads bindings from an informer: wait until it has this one.
        can_i = ("auth", "can-i", "list", "pods", "-n", namespace, "--as", who)
        wait_until(
            lambda: cluster.kubectl(*can_i, check=False).returncode == 0,
            "the RoleBinding to reach the authorizer",
            cluster.processes,
        )
        assert client.CoreV1Api(as_nobody).list_namespaced_pod(namespace).items == []
        with pytest.raises(ApiException) as still_refused:
            client.CoreV1Api(as_nobody).list_namespaced_secret(namespace)
        assert still_refused.value.status == 403


# -- restart -------------------------------------------------------------------------------


def test_the_api_server_restarts_in_place_and_keeps_its_objects(
    cluster: ControlPlane, namespace: str
) -> None:
    cluster.kubectl("create", "configmap", "kept", "--from-literal=key=value", "-n", namespace)
    before = cluster.processes
    cluster.restart_apiserver()
    value = cluster.kubectl(
        "get", "configmap", "kept", "-n", namespace, "-o", "jsonpath={.data.key}"
    )
    assert value.stdout == "value"
    # The other components rode the restart out: a new Deployment still gets its pods.
    # (Knative's run under restart, as their pods would: test_knative covers them.)
    assert all(p.alive() for p in before if not p.restart)
    cluster.apply(
        _in_namespace([deployment("after", 1, {"containers": [_container()]})], namespace)
    )
    cluster.kubectl(
        "wait",
        "--for=condition=Available",
        "deployment/after",
        "-n",
        namespace,
        f"--timeout={SAFETY_S}s",
    )


# -- helm ----------------------------------------------------------------------------------


def test_helm_installs_and_uninstalls_a_chart(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    chart = tmp_path / "hello"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: hello\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hi\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    cluster.helm("install", "hi", str(chart), "-n", namespace, "--set", "greeting=hello", "--wait")
    stored = cluster.kubectl(
        "get", "configmap", "hi", "-n", namespace, "-o", "jsonpath={.data.greeting}"
    )
    assert stored.stdout == "hello"
    assert "hi" in cluster.helm("list", "-n", namespace, "-q").stdout.split()
    cluster.helm("uninstall", "hi", "-n", namespace, "--wait")
    gone = cluster.kubectl("get", "configmap", "hi", "-n", namespace, check=False)
    assert "NotFound" in gone.stderr
