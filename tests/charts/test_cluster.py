"""The chart on the real control plane (tests/cluster/fixtures.py): Kubernetes 1.35.4 with
RBAC, Knative Serving 1.23's CRDs, controller and autoscaler, and kwok's CPU and GPU nodes.

Installed, upgraded and uninstalled with helm 4 (server-side apply); every wait is on the
API server's events (kubectl wait, watches), never on a clock."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from kindling.cluster import nodes
from kindling.cluster.controlplane import ControlPlane
from tests.charts.render import CHART, VALUES
from tests.cluster.fixtures import REPO, SAFETY_S, configuration_ready, watch_until

pytestmark = pytest.mark.cluster

RELEASE = "kindling"
MIN_SCALE = "autoscaling.knative.dev/min-scale"
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
# What a release may leave, by kind: the chart's objects and what Knative and the
# controllers make from them, all labelled with the release.
KINDS = (
    "services.serving.knative.dev,configurations.serving.knative.dev,revisions.serving.knative.dev,"
    "routes.serving.knative.dev,podautoscalers.autoscaling.internal.knative.dev,"
    "deployments,replicasets,statefulsets,pods,services,endpointslices,jobs,"
    "horizontalpodautoscalers,configmaps,secrets,serviceaccounts,roles,rolebindings,"
    "networkpolicies,persistentvolumeclaims"
)
# The loader fetches this; kwok runs no container, so nothing is fetched.
TABLE_URL = "https://vectors.example.com/demo300.bin"
REDIS_WITH_A_TABLE = (
    "redis.enabled=true",
    "redis.persistence.whenDeleted=Delete",
    # sm_cnn's table: loaded by hand, as far as the chart knows.
    "embeddings.externalTables={demo50}",
    "embeddings.loader.tables[0].name=demo300",
    "embeddings.loader.tables[0].format=word2vec-bin",
    f"embeddings.loader.tables[0].url={TABLE_URL}",
)


def helm(cluster: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    proc = cluster.helm(*args, check=False)
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stderr}"
    return proc


def install(
    cluster: ControlPlane,
    namespace: str,
    *values: str,
    sets: tuple[str, ...] = (),
    verb: str = "install",
) -> None:
    args = [verb, RELEASE, str(CHART), "--namespace", namespace, f"--timeout={SAFETY_S}s"]
    args += [a for v in values for a in ("--values", str(VALUES / v))]
    args += [a for s in sets for a in ("--set", s)]
    helm(cluster, *args)


def release_objects(cluster: ControlPlane, namespace: str) -> list[str]:
    out = cluster.kubectl("get", KINDS, "-n", namespace, "-l", INSTANCE, "-o", "name").stdout
    return sorted(out.split())


def wait(cluster: ControlPlane, namespace: str, *args: str) -> None:
    cluster.kubectl("wait", *args, "-n", namespace, f"--timeout={SAFETY_S}s")


def ready_pods(api: Any, namespace: str, selector: str, count: int) -> list[client.V1Pod]:
    def done(pods: list[client.V1Pod]) -> bool:
        return len([p for p in pods if _ready(p)]) == count and len(pods) == count

    return watch_until(
        client.CoreV1Api(api).list_namespaced_pod,
        done,
        namespace=namespace,
        label_selector=selector,
    )


def _ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in conditions
    )


def test_install_upgrade_and_uninstall_leave_nothing_behind(
    cluster: ControlPlane, api: Any, namespace: str
) -> None:
    """The bare install (six models on Knative, the controller) plus Redis and a loader
    table: every object accepted, Knative makes a Ready Revision of each model, the loader
    Job completes after helm returns; an upgrade cuts new Revisions without touching what
    the controller owns, and leaves the finished loader Job as it was (no reload);
    an uninstall leaves no object of the release."""
    install(cluster, namespace, sets=REDIS_WITH_A_TABLE)
    manifest = helm(cluster, "get", "manifest", RELEASE, "-n", namespace).stdout
    objects = [o for o in yaml.safe_load_all(manifest) if o]
    got = cluster.kubectl("get", "-f", "-", "-o", "name", input=manifest).stdout.split()
    assert len(got) == len(objects) > 15
    # The loader is a plain Job (helm returned without waiting for it), and it finishes.
    loader = f"{INSTANCE},app.kubernetes.io/component=loader"
    (job,) = cluster.kubectl(
        "get", "jobs", "-n", namespace, "-l", loader, "-o", "name"
    ).stdout.split()
    assert job.startswith(f"job.batch/{RELEASE}-load-demo300-")
    wait(cluster, namespace, "--for=condition=complete", job)
    uid = cluster.kubectl("get", job, "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout

    models = ["kim-cnn", "sm-cnn", "mobilenet-v2", "squeezenet1-1", "resnet18", "minilm"]
    for model in models:
        configuration_ready(cluster, namespace, f"{RELEASE}-{model}")
    custom = client.CustomObjectsApi(api)
    revision = custom.get_namespaced_custom_object(
        "serving.knative.dev", "v1", namespace, "revisions", f"{RELEASE}-kim-cnn-00001"
    )
    assert revision["metadata"]["annotations"][MIN_SCALE] == "0"
    assert revision["metadata"]["labels"]["kindling.dev/model"] == "kim_cnn"

    # What the controller does: min-scale on the live Revision, as its ServiceAccount.
    with cluster.service_account_client(namespace, f"{RELEASE}-controller") as controller:
        client.CustomObjectsApi(controller).patch_namespaced_custom_object(
            "serving.knative.dev", "v1", namespace, "revisions", f"{RELEASE}-kim-cnn-00001",
            {"metadata": {"annotations": {MIN_SCALE: "2"}}},
        )  # fmt: skip

    # An upgrade changing every model's template: server-side apply has no field in common
    # with the controller, so no conflict; each model gets a second Revision.
    install(
        cluster,
        namespace,
        sets=(*REDIS_WITH_A_TABLE, "modelDefaults.containerConcurrency=8"),
        verb="upgrade",
    )
    for model in models:
        wait(
            cluster,
            namespace,
            f"--for=jsonpath={{.status.latestReadyRevisionName}}={RELEASE}-{model}-00002",
            f"configuration/{RELEASE}-{model}",
        )
    second = custom.get_namespaced_custom_object(
        "serving.knative.dev", "v1", namespace, "revisions", f"{RELEASE}-kim-cnn-00002"
    )
    assert second["spec"]["containerConcurrency"] == 8
    assert second["metadata"]["annotations"][MIN_SCALE] == "0"
    first = custom.get_namespaced_custom_object(
        "serving.knative.dev", "v1", namespace, "revisions", f"{RELEASE}-kim-cnn-00001"
    )
    assert first["metadata"]["annotations"][MIN_SCALE] == "2"  # still the controller's
    status = json.loads(helm(cluster, "status", RELEASE, "-n", namespace, "-o", "json").stdout)
    assert status["version"] == 2
    # Nothing of the table changed: the same finished Job, no reload.
    again = cluster.kubectl("get", "jobs", "-n", namespace, "-l", loader, "-o", "name").stdout
    assert again.split() == [job]
    assert (
        cluster.kubectl("get", job, "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout == uid
    )

    left = release_objects(cluster, namespace)
    assert any(o.startswith("statefulset") for o in left)
    assert any(o.startswith("persistentvolumeclaim/data-") for o in left)
    helm(cluster, "uninstall", RELEASE, "-n", namespace)
    # Knative's children and the Redis claim go by garbage collection, after helm returns;
    # a pod a ReplicaSet made meanwhile goes the same way: wait until none is left.
    for _ in range(10):
        left = release_objects(cluster, namespace)
        if not left:
            break
        wait(cluster, namespace, "--for=delete", *left)
    assert release_objects(cluster, namespace) == []


def test_raw_mode_pods_become_ready_and_only_the_gpu_model_is_on_the_gpu_node(
    cluster: ControlPlane, api: Any, namespace: str
) -> None:
    install(cluster, namespace, "raw-gpu.yaml")
    cpu = ready_pods(api, namespace, f"{INSTANCE},kindling.dev/model=squeezenet1_1", 2)
    (gpu,) = ready_pods(api, namespace, f"{INSTANCE},kindling.dev/model=resnet18", 1)
    assert gpu.spec.node_name in nodes.GPU_NODES
    assert gpu.spec.containers[0].resources.limits[nodes.GPU_RESOURCE] == "1"
    assert {p.spec.node_name for p in cpu} <= set(nodes.CPU_NODES)
    # The runtime NetworkPolicy selects exactly the runtime pods.
    policy = client.NetworkingV1Api(api).read_namespaced_network_policy(
        f"{RELEASE}-runtime", namespace
    )
    selector = ",".join(f"{k}={v}" for k, v in policy.spec.pod_selector.match_labels.items())
    selected = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    assert {p.metadata.name for p in selected} == {p.metadata.name for p in [*cpu, gpu]}
    # The model's Service finds its pods (the EndpointSlice follows the pods: watched).
    expected = {p.status.pod_ip for p in cpu}

    def addresses(slices: list[client.V1EndpointSlice]) -> set[str]:
        return {a for s in slices for e in s.endpoints or [] for a in e.addresses}

    watch_until(
        client.DiscoveryV1Api(api).list_namespaced_endpoint_slice,
        lambda slices: addresses(slices) == expected,
        namespace=namespace,
        label_selector=f"kubernetes.io/service-name={RELEASE}-squeezenet1-1",
    )


def _allowed(
    api: Any,
    namespace: str,
    verb: str,
    group: str,
    resource: str,
    subresource: str = "",
    name: str = "",
) -> bool:
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace,
                verb=verb,
                group=group,
                resource=resource,
                subresource=subresource or None,
                name=name or None,
            )
        )
    )
    return bool(
        client.AuthorizationV1Api(api).create_self_subject_access_review(review).status.allowed
    )


def test_the_controller_may_do_what_it_needs_and_nothing_else(
    cluster: ControlPlane, api: Any, namespace: str
) -> None:
    install(cluster, namespace, sets=("models[0].name=squeezenet1_1",))
    configuration_ready(cluster, namespace, f"{RELEASE}-squeezenet1-1")
    lease = f"{RELEASE}-controller"
    with cluster.service_account_client(namespace, lease) as controller:
        needed = [
            ("get", "serving.knative.dev", "services"), ("list", "serving.knative.dev", "services"),
            ("get", "serving.knative.dev", "revisions"), ("list", "serving.knative.dev", "revisions"),
            ("patch", "serving.knative.dev", "revisions"), ("list", "", "pods"),
            ("create", "coordination.k8s.io", "leases"), ("create", "", "events"),
        ]  # fmt: skip
        for verb, group, resource in needed:
            assert _allowed(controller, namespace, verb, group, resource), (verb, group, resource)
        for verb in ("get", "update"):
            assert _allowed(
                controller, namespace, verb, "coordination.k8s.io", "leases", name=lease
            )
        refused = [
            (namespace, "get", "", "secrets", ""), (namespace, "list", "", "secrets", ""),
            (namespace, "delete", "serving.knative.dev", "services", ""),
            (namespace, "patch", "serving.knative.dev", "services", ""),
            (namespace, "update", "serving.knative.dev", "services", ""),
            (namespace, "create", "serving.knative.dev", "services", ""),
            (namespace, "delete", "serving.knative.dev", "revisions", ""),
            (namespace, "patch", "", "services", ""), (namespace, "patch", "apps", "deployments", ""),
            (namespace, "patch", "autoscaling.internal.knative.dev", "podautoscalers", ""),
            (namespace, "update", "coordination.k8s.io", "leases", "someone-elses"),
            (namespace, "create", "rbac.authorization.k8s.io", "roles", ""),
            ("default", "list", "serving.knative.dev", "services", ""),
            ("kube-system", "get", "", "secrets", ""),
            # Nothing the code does not call: it polls, never watches, and reads no Route.
            (namespace, "watch", "serving.knative.dev", "services", ""),
            (namespace, "watch", "serving.knative.dev", "revisions", ""),
            (namespace, "get", "serving.knative.dev", "routes", ""),
            (namespace, "get", "", "pods", ""), (namespace, "watch", "", "pods", ""),
            (namespace, "create", "events.k8s.io", "events", ""),
        ]  # fmt: skip
        for ns, verb, group, resource, name in refused:
            assert not _allowed(controller, ns, verb, group, resource, name=name), (
                ns,
                verb,
                group,
                resource,
            )

        # And for real, with its token: what it needs works...
        custom = client.CustomObjectsApi(controller)
        services = custom.list_namespaced_custom_object(
            "serving.knative.dev", "v1", namespace, "services"
        )
        assert [s["metadata"]["name"] for s in services["items"]] == [f"{RELEASE}-squeezenet1-1"]
        revision = f"{RELEASE}-squeezenet1-1-00001"
        custom.patch_namespaced_custom_object(
            "serving.knative.dev",
            "v1",
            namespace,
            "revisions",
            revision,
            {"metadata": {"annotations": {MIN_SCALE: "2"}}},
        )
        ready_pods(api, namespace, f"serving.knative.dev/revision={revision}", 2)
        leases = client.CoordinationV1Api(controller)
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=lease),
            spec=client.V1LeaseSpec(holder_identity="test", lease_duration_seconds=15),
        )
        created = leases.create_namespaced_lease(namespace, body)
        created.spec.holder_identity = "test-2"
        leases.replace_namespaced_lease(lease, namespace, created)
        client.CoreV1Api(controller).create_namespaced_event(
            namespace,
            client.CoreV1Event(
                metadata=client.V1ObjectMeta(generate_name="prewarm-"), reason="PreWarm", message="min-scale 2", type="Normal",
                involved_object=client.V1ObjectReference(api_version="serving.knative.dev/v1", kind="Revision", name=revision, namespace=namespace),
            ),
        )  # fmt: skip
        # ... and what it does not need is refused.
        for call in (
            lambda: client.CoreV1Api(controller).list_namespaced_secret(namespace),
            lambda: custom.delete_namespaced_custom_object("serving.knative.dev", "v1", namespace, "services", f"{RELEASE}-squeezenet1-1"),
            lambda: custom.patch_namespaced_custom_object("serving.knative.dev", "v1", namespace, "services", f"{RELEASE}-squeezenet1-1", {"spec": {"template": {"metadata": {"annotations": {MIN_SCALE: "5"}}}}}),
            lambda: client.CoreV1Api(controller).patch_namespaced_service(f"{RELEASE}-metrics", namespace, {"metadata": {"labels": {"x": "y"}}}),
            lambda: custom.list_namespaced_custom_object("serving.knative.dev", "v1", "default", "services"),
        ):  # fmt: skip
            with pytest.raises(ApiException) as refused_call:
                call()
            assert refused_call.value.status == 403


def test_in_raw_mode_the_controller_scales_only_its_deployments(
    cluster: ControlPlane, api: Any, namespace: str
) -> None:
    install(cluster, namespace, "raw-gpu.yaml", sets=("controller.enabled=true",))
    deployment = f"{RELEASE}-squeezenet1-1"
    ready_pods(api, namespace, f"{INSTANCE},kindling.dev/model=squeezenet1_1", 1)
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "not-kindlings"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "x"}}, "template": {
                "metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "x", "image": "kindling.local/x:1"}]}}},
        },
    )  # fmt: skip
    with cluster.service_account_client(namespace, f"{RELEASE}-controller") as controller:
        scaler = client.AppsV1Api(controller)
        assert scaler.read_namespaced_deployment_scale(deployment, namespace).spec.replicas == 1
        # Its own Deployments may be read (their annotations), by name only.
        assert scaler.read_namespaced_deployment(deployment, namespace).spec.replicas == 1
        scaler.patch_namespaced_deployment_scale(deployment, namespace, {"spec": {"replicas": 3}})
        for call in (
            lambda: scaler.patch_namespaced_deployment_scale("not-kindlings", namespace, {"spec": {"replicas": 1}}),
            lambda: scaler.patch_namespaced_deployment(deployment, namespace, {"spec": {"replicas": 4}}),
            lambda: scaler.list_namespaced_deployment(namespace),
            lambda: scaler.read_namespaced_deployment("not-kindlings", namespace),
            lambda: client.CustomObjectsApi(controller).list_namespaced_custom_object("serving.knative.dev", "v1", namespace, "revisions"),
        ):  # fmt: skip
            with pytest.raises(ApiException) as refused_call:
                call()
            assert refused_call.value.status == 403
    ready_pods(api, namespace, f"{INSTANCE},kindling.dev/model=squeezenet1_1", 3)
    # An upgrade leaves the controller's replicas alone: the chart does not template them.
    install(
        cluster,
        namespace,
        "raw-gpu.yaml",
        sets=("controller.enabled=true", "runtime.settings.logLevel=debug"),
        verb="upgrade",
    )
    assert apps.read_namespaced_deployment(deployment, namespace).spec.replicas == 3


def test_the_chart_is_published_to_an_oci_registry_and_installs_from_it(
    cluster: ControlPlane, namespace: str
) -> None:
    """`make push`'s second half (docker/publish.py chart: helm package + helm push) into
    the cluster's loopback registry; the chart pulled back by its oci:// reference renders
    exactly what the working tree does, and installs."""
    assert cluster.registry is not None
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "docker" / "publish.py"), "chart",
         "--registry", f"{cluster.registry}/charts", "--plain-http",
         "--helm", str(cluster.tools.bin("helm"))],
        capture_output=True, text=True, env=cluster.env(), timeout=SAFETY_S,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    reference = f"oci://{cluster.registry}/charts/kindling"
    assert proc.stdout.split()[-1] == f"{reference}:{version}"
    pulled = helm(
        cluster, "template", RELEASE, reference, "--version", version, "--plain-http",
        "--namespace", namespace,
    ).stdout  # fmt: skip
    local = helm(cluster, "template", RELEASE, str(CHART), "--namespace", namespace).stdout
    assert pulled == local
    helm(
        cluster, "install", RELEASE, reference, "--version", version, "--plain-http",
        "--namespace", namespace, "--set", "models[0].name=squeezenet1_1",
        f"--timeout={SAFETY_S}s",
    )  # fmt: skip
    configuration_ready(cluster, namespace, f"{RELEASE}-squeezenet1-1")
    helm(cluster, "uninstall", RELEASE, "-n", namespace)


def test_switching_serving_mode_under_a_release_is_refused(
    cluster: ControlPlane, namespace: str
) -> None:
    """An upgrade to the other serving.mode would meet the first mode's objects of the same
    names; it is refused before anything changes, with what to do instead."""
    one = ("models[0].name=squeezenet1_1",)
    for first, then in (("knative", "raw"), ("raw", "knative")):
        controller = str(first == "knative").lower()
        install(
            cluster,
            namespace,
            sets=(*one, f"serving.mode={first}", f"controller.enabled={controller}"),
        )
        proc = cluster.helm(
            "upgrade", RELEASE, str(CHART), "--namespace", namespace,
            "--set", one[0], "--set", f"serving.mode={then}", "--set", "controller.enabled=false",
            check=False,
        )  # fmt: skip
        assert proc.returncode != 0
        assert f"this release runs in {first} mode" in proc.stderr, proc.stderr
        assert "helm uninstall it first" in proc.stderr
        history = json.loads(
            helm(cluster, "history", RELEASE, "-n", namespace, "-o", "json").stdout
        )
        assert [h["status"] for h in history] == ["deployed"]  # nothing was applied
        helm(cluster, "uninstall", RELEASE, "-n", namespace, "--wait", f"--timeout={SAFETY_S}s")
