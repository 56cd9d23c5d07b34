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

With `redis.enabled`, the chart's Redis runs Debian's redis-server (docker/Dockerfile.redis:
Docker Hub's image cannot be pulled here), its loader Jobs load the demo word vectors from
a PersistentVolume into it, and the text models answer from Redis.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kindling.cluster import nodes
from kindling.cluster.coldstart import revision_at_zero
from kindling.cluster.controlplane import ControlPlane
from kindling.controller.raw import USER_REPLICAS, WARM_REPLICAS
from tests.charts.render import CHART
from tests.charts.test_cluster import INSTANCE, install, release_objects
from tests.cluster.fixtures import APP_VERSION, SAFETY_S, watch_until
from tests.cluster.test_knative_node import infer_through_revision
from tests.cluster.test_node import infer_through_service
from tests.conftest import SAMPLE_MODELS

# The image build (a minute warm, several cold) runs in the first test's set-up.
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

# This node's two cores: the chart's 500m per model would leave pods Pending.
SMALL_CPU = "modelDefaults.resources.requests.cpu=100m"


def all_ready(
    api: Any, namespace: str, count: int, selector: str = INSTANCE, exact: bool = True
) -> list[Any]:
    """The pods matching `selector` once exactly `count` (with `exact=False`, at least
    `count`) exist and all are Ready."""

    def done(pods: list[Any]) -> bool:
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        enough = len(live) == count == len(pods) if exact else len(live) >= count
        return enough and all(_ready(p) for p in live)

    return watch_until(
        client.CoreV1Api(api).list_namespaced_pod,
        done,
        namespace=namespace,
        label_selector=selector,
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
    for model, address in sorted(by_model.items()):
        infer_through_service(address, model)

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

    # `helm test`: the chart's own pod asks the first model's readiness through its Service.
    tested = cluster.helm("test", "kindling", "--namespace", node_namespace, "--logs",
                          f"--timeout={SAFETY_S}s", check=False)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "kim-cnn" in tested.stdout and "/v2/health/ready 200" in tested.stdout, tested.stdout

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


def test_the_controller_pod_raises_a_loaded_deployment_through_its_scale_subresource(
    cluster: ControlPlane, node_namespace: str, registry: str
) -> None:
    """The controller's pod, under its own ServiceAccount and Role, scraping the runtime
    pods' /metrics: closed-loop load on one model through its ClusterIP Service raises the
    model's Deployment above the user's one replica through `deployments/scale` (raw.py),
    and the new pods start and answer on the real node. Giving the pods back after the
    load (a 60 s cooldown, policy.py) is tested on the kwok control plane
    (tests/controller/test_actuation_cluster.py), not here."""
    model = "mobilenet_v2"
    sets = (f"global.imageRegistry={registry}", "serving.mode=raw", SMALL_CPU,
            f"models[0].name={model}", "controller.intervalSeconds=2")  # fmt: skip
    install(cluster, node_namespace, sets=sets)
    runtime = f"{INSTANCE},app.kubernetes.io/component=runtime"
    with cluster.api_client() as api:
        all_ready(api, node_namespace, 2)  # the model and the controller
        (service,) = (
            client.CoreV1Api(api)
            .list_namespaced_service(node_namespace, label_selector=runtime)
            .items
        )
        infer_through_service(service.spec.cluster_ip, model)
        with closed_loop_load(service.spec.cluster_ip, model, clients=4) as errors:
            (raised,) = watch_until(
                client.AppsV1Api(api).list_namespaced_deployment,
                lambda ds: bool(ds) and (ds[0].spec.replicas or 0) >= 2,
                namespace=node_namespace,
                label_selector=runtime,
            )
            pods = all_ready(api, node_namespace, 2, runtime, exact=False)
        lease = client.CoordinationV1Api(api).read_namespaced_lease(
            "kindling-controller", node_namespace
        )
    assert errors == []
    name = raised.metadata.name
    # The controller's memory of the user's replicas and its own, on its Lease: the raise is
    # its own, and the chart's Role lets it write replicas through `deployments/scale` only
    # (tests/charts/test_cluster.py checks what that Role allows).
    assert json.loads(lease.metadata.annotations[USER_REPLICAS]) == {name: 1}
    assert json.loads(lease.metadata.annotations[WARM_REPLICAS])[name] >= 2
    assert {p.spec.node_name for p in pods} == {nodes.REAL_NODE}


@contextlib.contextmanager
def closed_loop_load(address: str, model: str, clients: int) -> Iterator[list[str]]:
    """`clients` threads, each sending the model's sample request and the next as soon as
    the answer comes, until the block ends; yields the list of errors seen (none expected:
    a pod is only in the Service once Ready)."""
    import tritonclient.http as httpclient

    from tests.docker.helpers import load

    request = load("check_image").SAMPLE_REQUESTS[model]
    stop = threading.Event()
    errors: list[str] = []

    def run() -> None:
        triton = httpclient.InferenceServerClient(f"{address}:80", network_timeout=SAFETY_S)
        try:
            while not stop.is_set():
                try:
                    triton.infer(model, request())
                except Exception as exc:  # every failure is reported, none expected
                    errors.append(repr(exc))
        finally:
            triton.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield errors
    finally:
        stop.set()
        for t in threads:
            t.join(SAFETY_S)


@pytest.fixture
def demo_tables(cluster: ControlPlane, node_namespace: str, tmp_path: Path) -> Iterator[list[Any]]:
    """The demo tables' word2vec files on a PersistentVolume (hostPath: no provisioner
    here), readable by the loader's non-root user, claimed in the test's namespace as
    `vectors`: the loader's table list for them. The volume is deleted after the test."""
    from kindling.modelzoo.word_vectors import write_demo_vectors

    namespace = node_namespace

    vectors = tmp_path / "vectors"
    files = write_demo_vectors(vectors)
    for path in [tmp_path, vectors, *files.values()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    volume = f"vectors-{namespace}"
    claim = {"accessModes": ["ReadOnlyMany"], "storageClassName": ""}
    cluster.apply(
        [
            {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
             "spec": {**claim, "capacity": {"storage": "1Gi"},
                      "hostPath": {"path": str(vectors), "type": "Directory"},
                      "claimRef": {"namespace": namespace, "name": "vectors"}}},
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "vectors", "namespace": namespace},
             "spec": {**claim, "volumeName": volume,
                      "resources": {"requests": {"storage": "1Gi"}}}},
        ]
    )  # fmt: skip
    yield [
        {"name": name, "format": "word2vec-bin", "pvc": {"claimName": "vectors", "path": path.name}}
        for name, path in sorted(files.items())
    ]
    cluster.kubectl("delete", "pvc", "vectors", "-n", namespace, "--wait=false")
    cluster.kubectl("delete", "pv", volume, "--wait=false")


def redis_values(registry: str, tables: list[Any]) -> dict[str, Any]:
    """The chart's Redis (docker/Dockerfile.redis: Docker Hub's image cannot be pulled
    here), its loader Jobs loading `tables`; the models at 100m CPU; no controller."""
    return {
        "global": {"imageRegistry": registry},
        "modelDefaults": {"resources": {"requests": {"cpu": "100m"}}},
        "controller": {"enabled": False},
        "redis": {
            "enabled": True,
            "persistence": {"enabled": False},
            "image": {"repository": "kindling-redis", "tag": APP_VERSION},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                          "limits": {"memory": "256Mi"}},
        },
        "embeddings": {"loader": {"tables": tables, "resources": {"requests": {"cpu": "100m"}}}},
    }  # fmt: skip


def install_values(cluster: ControlPlane, namespace: str, values: Any, tmp_path: Path) -> None:
    """helm install with a values file, then a wait for the loader Jobs (plain Jobs: helm
    does not wait for them), so the tables are in Redis when it returns."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    proc = cluster.helm(
        "install", "kindling", str(CHART), "--namespace", namespace,
        "--values", str(values_file), f"--timeout={SAFETY_S}s", check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    if values.get("embeddings", {}).get("loader", {}).get("tables"):
        cluster.kubectl(
            "wait", "--for=condition=complete", "job", "-n", namespace,
            "-l", f"{INSTANCE},app.kubernetes.io/component=loader", f"--timeout={SAFETY_S}s",
        )  # fmt: skip


def test_the_text_models_read_their_tables_from_the_charts_redis(
    cluster: ControlPlane,
    node_namespace: str,
    registry: str,
    demo_tables: list[Any],
    tmp_path: Path,
) -> None:
    values = redis_values(registry, demo_tables)
    values["serving"] = {"mode": "raw"}
    values["models"] = [
        {"name": "kim_cnn", "embeddingTable": "demo300"},
        {"name": "sm_cnn", "embeddingTable": "demo50"},
    ]
    install_values(cluster, node_namespace, values, tmp_path)
    with cluster.api_client() as api:
        # Redis and the two text models; the loader Jobs' pods stay, Completed (plain Jobs).
        serving = f"{INSTANCE},app.kubernetes.io/component!=loader"
        pods = all_ready(api, node_namespace, 3, serving)
        services = client.CoreV1Api(api).list_namespaced_service(
            node_namespace, label_selector=f"{INSTANCE},app.kubernetes.io/component=runtime"
        )
    assert {p.spec.node_name for p in pods} == {nodes.REAL_NODE}
    (kim,) = [p for p in pods if "kim-cnn" in p.metadata.name]
    # The runtime's own view of its store: the chart's Redis, with both tables loaded.
    listed = cluster.kubectl(
        "exec", "-n", node_namespace, kim.metadata.name, "--",
        "/opt/venv/bin/kindling", "embeddings", "list",
    ).stdout  # fmt: skip
    assert "demo300" in listed and "demo50" in listed, listed
    env = {e.name: e for e in kim.spec.containers[0].env or []}
    assert "KINDLING_REDIS_URL" in env, sorted(env)
    for service in services.items:
        infer_through_service(
            service.spec.cluster_ip, service.metadata.labels["kindling.dev/model"]
        )
    cluster.helm("uninstall", "kindling", "--namespace", node_namespace, "--wait",
                 f"--timeout={SAFETY_S}s")  # fmt: skip


def test_the_chart_values_a_person_types_are_the_ones_tested() -> None:
    """The README's command and this test's values are the same."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"--set {SMALL_CPU}" in readme


def test_in_knative_mode_every_model_wakes_from_zero_and_answers(
    cluster: ControlPlane,
    node_namespace: str,
    registry: str,
    demo_tables: list[Any],
    tmp_path: Path,
) -> None:
    """The chart's default models as Knative Services on the real node, with Redis and the
    text models' tables: every Revision starts at zero (initialScale 0), and one request
    each, sent as an ingress sends it, wakes it through the activator and is answered."""
    values = redis_values(registry, demo_tables)
    values["serving"] = {"mode": "knative"}
    # A deleted pod's queue-proxy drains for 30 s within this grace period (the test's
    # namespace goes at the end); a sample request takes well under a second.
    values["modelDefaults"] |= {"autoscaling": {"initialScale": 0}, "timeoutSeconds": 10}
    install_values(cluster, node_namespace, values, tmp_path)
    with cluster.api_client() as api:
        services = client.CustomObjectsApi(api).list_namespaced_custom_object(
            "serving.knative.dev", "v1", node_namespace, "services"
        )["items"]
    by_model = {s["metadata"]["labels"]["kindling.dev/model"]: s for s in services}
    assert set(by_model) == set(SAMPLE_MODELS)
    woken = {}
    for model, service in sorted(by_model.items()):
        revision = f"{service['metadata']['name']}-00001"
        address = revision_at_zero(cluster, node_namespace, revision)
        woken[model] = infer_through_revision(address, node_namespace, revision, model)
    with cluster.api_client() as api:
        pods = (
            client.CoreV1Api(api)
            .list_namespaced_pod(
                node_namespace, label_selector=f"{INSTANCE},app.kubernetes.io/component=runtime"
            )
            .items
        )
    assert len(pods) == len(SAMPLE_MODELS)
    assert {p.spec.node_name for p in pods} == {nodes.REAL_NODE}
    print("\nrequest at zero -> answer, through the activator:")
    for model, seconds in woken.items():
        print(f"  {model:<14} {seconds:.2f} s")
