"""The project's images on the real node: built by docker/build_images.py, pushed to the
cluster's loopback registry (the `pushed_images` fixture), pulled by containerd; the
runtime run as its non-root user on a read-only root, with the test's own model repository
mounted over the image's, every sample model answering tritonclient through its Service.

The figures a user's cold start is made of are printed, never asserted (the machine is
shared): each image's pull, cold (removed from the node first) and warm (already there),
from the kubelet's own events; the pod's start from its start-up tracker; and the
runtime's own phases in the pod (exec to ready), from its cold_start log line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kindling.cluster import nodes
from kindling.cluster.controlplane import ControlPlane
from tests.cluster.fixtures import deployment, service, watch_until
from tests.cluster.test_node import RESTRICTED, infer_through_service, ready_pods, run_ready
from tests.conftest import SAMPLE_MODELS

# The image build (a minute warm, several cold) runs in the first test's set-up.
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

TAG = "node"
NAME = "runtime"
PULLED = re.compile(
    r"Successfully pulled image .* in ([0-9.]+m?s) \(([0-9.]+m?s) including waiting\)"
    r"(?:\. Image size: ([0-9]+) bytes)?"
)


@pytest.fixture(scope="module")
def runtime_image(pushed_images: dict[str, str]) -> str:
    return pushed_images["runtime"]


def runtime_deployment(image: str, models: Path) -> list[dict[str, Any]]:
    """As the chart runs it: non-root, read-only root, /tmp an emptyDir; the sample
    repository mounted read-only from the host where the chart would bake it in."""
    container = {
        "name": NAME,
        "image": image,
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": 8080},
            "periodSeconds": 1,
        },
        "volumeMounts": [
            {"name": "models", "mountPath": "/models", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": RESTRICTED,
    }
    volumes = [
        {"name": "models", "hostPath": {"path": str(models), "type": "Directory"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    spec = {"containers": [container], "volumes": volumes, "terminationGracePeriodSeconds": 5}
    return [deployment(NAME, 1, spec), service(NAME, 8080)]


@pytest.fixture
def runtime_pod(
    cluster: ControlPlane, node_namespace: str, runtime_image: str, model_repository: Path
) -> Iterator[Any]:
    # Off the node first, whatever ran before (the chart's tests pull the same image), so
    # that the first pod's pull is cold.
    assert cluster.node is not None
    cluster.node.remove_image(runtime_image)
    # The image's user (65532) reads the repository through the hostPath mount.
    mode = model_repository.stat().st_mode
    if mode & 0o005 != 0o005:
        model_repository.chmod(mode | 0o005)
    yield run_ready(cluster, node_namespace, runtime_deployment(runtime_image, model_repository))


def test_the_runtime_image_serves_every_model_on_the_node(
    cluster: ControlPlane, runtime_pod: Any
) -> None:
    namespace = runtime_pod.metadata.namespace
    assert runtime_pod.spec.node_name == nodes.REAL_NODE
    with cluster.api_client() as api:
        service = client.CoreV1Api(api).read_namespaced_service(NAME, namespace)
    address = service.spec.cluster_ip
    for model in SAMPLE_MODELS:
        infer_through_service(address, model)
    first = startup_figures(cluster, runtime_pod)

    # Once more with the image on the node: the warm pull, and the same runtime start.
    cluster.kubectl("scale", "deployment", NAME, "-n", namespace, "--replicas=0")
    with cluster.api_client() as api:
        watch_until(
            client.CoreV1Api(api).list_namespaced_pod, lambda pods: not pods, namespace=namespace
        )
    cluster.kubectl("scale", "deployment", NAME, "-n", namespace, "--replicas=1")
    with cluster.api_client() as api:
        (again,) = ready_pods(api, namespace, 1)
    second = startup_figures(cluster, again)
    assert first["pull"].startswith("cold") and second["pull"] == "warm (already present)"
    print(f"\nruntime image on {nodes.REAL_NODE}: first pod {first}\nsecond pod {second}")


def startup_figures(cluster: ControlPlane, pod: Any) -> dict[str, str]:
    """The kubelet's pull event and start-up tracker for the pod, and the runtime's phases
    from its cold_start line."""
    namespace, name = pod.metadata.namespace, pod.metadata.name
    with cluster.api_client() as api:
        events = client.CoreV1Api(api).list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}"
        )
    messages = [e.message or "" for e in events.items if e.reason == "Pulled"]
    pull = "unknown"
    for message in messages:
        if "already present" in message:
            pull = "warm (already present)"
        elif match := PULLED.search(message):
            pull = f"cold {match.group(1)} ({match.group(2)} with waiting)"
    logs = cluster.kubectl("logs", "-n", namespace, name).stdout
    line = next(json.loads(x) for x in logs.splitlines() if '"cold_start"' in x)
    (kubelet,) = [p for p in cluster.processes if p.name == "kubelet"]
    tracked = [
        x for x in kubelet.log.read_text().splitlines()
        if "Observed pod startup duration" in x and f'pod="{namespace}/{name}"' in x
    ]  # fmt: skip
    e2e = re.search(r'podStartE2EDuration="([^"]+)"', tracked[-1]) if tracked else None
    return {
        "pull": pull,
        "runtime_phases_s": json.dumps(line["phases_s"]),
        "pod_start_e2e": e2e.group(1) if e2e else "unknown",
    }


def test_each_image_pulls_cold_then_warm(
    cluster: ControlPlane, node_namespace: str, pushed_images: dict[str, str]
) -> None:
    """Each image twice, in a pod that only has to be pulled and started: first removed
    from the node (cold: the registry's layers fetched and unpacked), then again (warm)."""
    assert cluster.node is not None
    rows = []
    for name, image in sorted(pushed_images.items()):
        cluster.node.remove_image(image)
        cold = pulled(cluster, node_namespace, f"{name}-cold", image)
        warm = pulled(cluster, node_namespace, f"{name}-warm", image)
        match = PULLED.search(cold)
        assert match is not None, cold
        assert "already present on machine" in warm, warm
        size = int(match.group(3) or 0)
        rows.append(f"{name:12}{size / 1e6:10.1f}{match.group(1):>12}   already present")
    print("\nimage pulls on the real node (loopback registry; kubelet's Pulled events)")
    print(f"{'image':12}{'MB':>10}{'cold':>12}   warm")
    print("\n".join(rows))


# What each image runs once pulled, to exit at once (the Python images: an empty script).
PULL_COMMANDS = {
    "probe": ["/kindling-probe", "echo", "pulled"],
    "redis": ["redis-server", "--version"],
}


def pulled(cluster: ControlPlane, namespace: str, name: str, image: str) -> str:
    """A pod of `image` whose command exits at once; the kubelet's Pulled event for it."""
    command = PULL_COMMANDS.get(name.rsplit("-", 1)[0], ["/opt/venv/bin/python", "-c", "pass"])
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "c", "image": image, "command": command}],
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            },
        }
    )

    def done(events: list[Any]) -> bool:
        return any(e.reason == "Pulled" and e.involved_object.name == name for e in events)

    with cluster.api_client() as api:
        events = watch_until(client.CoreV1Api(api).list_namespaced_event, done, namespace=namespace)
    return next(
        str(e.message) for e in events if e.reason == "Pulled" and e.involved_object.name == name
    )
