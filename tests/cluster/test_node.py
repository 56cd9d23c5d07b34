"""The real node: pods pulled from the loopback registry and run by containerd, a Service
answering through kube-proxy, cluster DNS with no upstream, `kubectl logs` and `exec`
through the kubelet, and a host that keeps its own settings.

Every wait is on an event (a watch, a log line, an answer); SAFETY_S only ends a wait
that went wrong. Nothing here is timed.
"""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kindling.cluster import hostnet, images, nodes, versions
from kindling.cluster.controlplane import ControlPlane
from kindling.cluster.node import NodeBusy
from kindling.cluster.processes import wait_until
from tests.cluster.fixtures import SAFETY_S, deployment, service, watch_until

pytestmark = pytest.mark.cluster

PROBE = "kindling-probe"
# The restricted Pod Security Standard's container settings, as the chart's pods have them.
RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
# Read when the module is collected, before the session's cluster starts: the node never
# writes the machine's global switch, so it must still be this.
IP_FORWARD_BEFORE = Path("/proc/sys/net/ipv4/ip_forward").read_text()


@pytest.fixture(scope="module")
def probe_image(cluster: ControlPlane) -> str:
    """The probe pushed to the cluster's registry, as a user pushes an image."""
    assert cluster.registry is not None
    images.probe().push(cluster.registry, PROBE, "test")
    return f"{cluster.registry}/{PROBE}:test"


def probe_deployment(name: str, image: str) -> list[dict[str, Any]]:
    container = {
        "name": "probe",
        "image": image,
        "args": ["serve"],
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        "securityContext": RESTRICTED,
    }
    spec = {"containers": [container], "terminationGracePeriodSeconds": 2}
    return [deployment(name, 1, spec), service(name, 8080)]


def run_ready(cluster: ControlPlane, namespace: str, manifests: list[dict[str, Any]]) -> Any:
    """Apply a Deployment (and its Service) in `namespace`; its one pod once Ready."""
    for manifest in manifests:
        manifest["metadata"]["namespace"] = namespace
    cluster.apply(manifests)
    with cluster.api_client() as api:
        (pod,) = ready_pods(api, namespace, 1)
    return pod


def ready_pods(api: Any, namespace: str, count: int) -> list[Any]:
    def done(pods: list[Any]) -> bool:
        ready = [p for p in pods if _ready(p)]
        return len(ready) == count

    pods = watch_until(client.CoreV1Api(api).list_namespaced_pod, done, namespace=namespace)
    return [p for p in pods if _ready(p)]


def _ready(pod: Any) -> bool:
    conditions = pod.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


@pytest.fixture
def probe(cluster: ControlPlane, node_namespace: str, probe_image: str) -> Iterator[Any]:
    """One probe pod Ready on the real node behind a Service, in its own namespace."""
    yield run_ready(cluster, node_namespace, probe_deployment("probe", probe_image))


def exec_in(cluster: ControlPlane, pod: Any, *command: str) -> str:
    done = cluster.kubectl(
        "exec", "-n", pod.metadata.namespace, pod.metadata.name, "--", "/kindling-probe",
        *command,
    )  # fmt: skip
    return done.stdout


def test_the_node_is_real_and_ready(api: Any, cluster_tools: Any) -> None:
    node = client.CoreV1Api(api).read_node(nodes.REAL_NODE)
    info = node.status.node_info
    # The containerd built with the tools, not another one on the machine.
    assert info.container_runtime_version == f"containerd://{versions.CONTAINERD.lstrip('v')}"
    assert info.kubelet_version.startswith("v1.35.")
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == nodes.REAL_NODE_IP
    assert not node.spec.taints
    assert node.metadata.labels["kindling.dev/pool"] == "cpu"
    # The fake nodes keep to themselves: tainted, so nothing lands there by accident.
    for name in (*nodes.CPU_NODES, *nodes.GPU_NODES):
        taints = client.CoreV1Api(api).read_node(name).spec.taints
        assert any(t.key == nodes.KWOK_TAINT["key"] for t in taints), name


def test_a_pod_pulled_from_the_registry_runs_and_answers_through_its_service(
    cluster: ControlPlane, probe: Any
) -> None:
    assert probe.spec.node_name == nodes.REAL_NODE
    assert probe.status.pod_ip.startswith(nodes.REAL_NODE_POD_CIDR.rsplit(".", 2)[0])
    (status,) = probe.status.container_statuses
    assert status.image_id.startswith(f"{cluster.registry}/{PROBE}@sha256:")
    # From the host, through kube-proxy's ClusterIP rules.
    with cluster.api_client() as api:
        service = client.CoreV1Api(api).read_namespaced_service("probe", probe.metadata.namespace)
    assert through_service(f"http://{service.spec.cluster_ip}/") == probe.metadata.name
    # From inside the pod, by the Service's DNS name: the pod reaches itself through its
    # own Service (hairpin), with the name resolved by cluster DNS.
    name = f"probe.{probe.metadata.namespace}.svc.cluster.local"
    assert exec_in(cluster, probe, "get", f"http://{name}/") == f"200 {probe.metadata.name}\n"


def test_logs_and_exec_go_through_the_kubelet(cluster: ControlPlane, probe: Any) -> None:
    namespace, name = probe.metadata.namespace, probe.metadata.name
    logs = cluster.kubectl("logs", "-n", namespace, name).stdout
    assert f"kindling-probe serving on :8080 as {name}" in logs
    assert exec_in(cluster, probe, "echo", "hello", "node") == "hello node\n"


def test_cluster_dns_answers_cluster_names_and_nothing_else(
    cluster: ControlPlane, probe: Any
) -> None:
    resolve = "http://127.0.0.1:8080/resolve?name="
    answer = exec_in(cluster, probe, "get", resolve + "kubernetes.default.svc.cluster.local")
    assert answer == "200 10.96.0.1\n"
    # Search domains, as pods use them.
    assert exec_in(cluster, probe, "get", resolve + "kubernetes.default") == "200 10.96.0.1\n"
    # Every other name is NXDOMAIN at once: CoreDNS has no upstream to ask.
    outside = exec_in(cluster, probe, "get", resolve + "pypi.org")
    assert outside.startswith("502 ") and "no such host" in outside, outside
    # And the pod knows no other nameserver than cluster DNS.
    resolv = exec_in(cluster, probe, "cat", "/etc/resolv.conf")
    nameservers = [line for line in resolv.splitlines() if line.startswith("nameserver")]
    assert nameservers == ["nameserver 10.96.0.10"], resolv


def test_an_image_the_node_lacks_fails_at_once_without_leaving_the_machine(
    cluster: ControlPlane, node_namespace: str
) -> None:
    manifests = probe_deployment("outside", "docker.io/library/busybox:1.36")
    for manifest in manifests:
        manifest["metadata"]["namespace"] = node_namespace
    cluster.apply(manifests)

    def pull_failed(events: list[Any]) -> bool:
        return any(e.reason == "Failed" and "busybox" in (e.message or "") for e in events)

    with cluster.api_client() as api:
        events = watch_until(
            client.CoreV1Api(api).list_namespaced_event, pull_failed, namespace=node_namespace
        )
    (failed,) = [e for e in events if e.reason == "Failed" and "busybox" in e.message][:1]
    # containerd's registry client went to the closed loopback proxy, not to docker.io.
    assert "proxyconnect" in failed.message and "127.0.0.1:9" in failed.message, failed.message


def test_the_host_keeps_its_own_settings(cluster: ControlPlane) -> None:
    """What the node may change on the host is its own: forwarding on its bridge only,
    an egress drop first in mangle FORWARD, routes of its CIDRs to its bridge."""
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == IP_FORWARD_BEFORE
    bridge = Path(f"/proc/sys/net/ipv4/conf/{hostnet.BRIDGE}/forwarding").read_text()
    assert bridge.strip() == "1"
    forward = _run("iptables", "-t", "mangle", "-S", "FORWARD").splitlines()
    assert forward[1] == f"-A FORWARD -j {hostnet.EGRESS_CHAIN}"
    egress = _run("iptables", "-t", "mangle", "-S", hostnet.EGRESS_CHAIN)
    assert f"-A {hostnet.EGRESS_CHAIN} -i {hostnet.BRIDGE} ! -o {hostnet.BRIDGE} -j DROP" in egress
    route = _run("ip", "route", "show", cluster.service_cidr)
    assert f"dev {hostnet.BRIDGE}" in route
    pods_route = _run("ip", "route", "show", nodes.REAL_NODE_POD_CIDR)
    assert f"dev {hostnet.BRIDGE}" in pods_route


def through_service(url: str) -> str:
    """The answer through a Service, once kube-proxy has written the rules for its new
    endpoint: a pod is Ready before its EndpointSlice reaches kube-proxy and the rules are
    synced, and until then the ClusterIP refuses. Waits on the answer itself."""
    answers: list[str] = []
    wait_until(lambda: bool(answers.append(_http(url)) or answers), f"an answer from {url}", [])
    return answers[-1]


def infer_through_service(address: str, model: str) -> None:
    """One sample request (docker/check_image.py's) to `model` behind a ClusterIP Service
    on port 80, once the Service answers; raises unless 200 and the answer is `model`'s."""
    import tritonclient.http as httpclient

    from tests.docker.helpers import load

    through_service(f"http://{address}/v2/models/{model}/ready")
    triton = httpclient.InferenceServerClient(f"{address}:80", network_timeout=SAFETY_S)
    try:
        result = triton.infer(model, load("check_image").SAMPLE_REQUESTS[model]())
    finally:
        triton.close()
    assert result.get_response()["model_name"] == model


def _http(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=SAFETY_S) as response:
        return str(response.read().decode().strip())


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_a_second_node_on_the_machine_is_refused_and_the_first_untouched(
    cluster: ControlPlane, cluster_tools: Any, probe: Any
) -> None:
    """The node owns fixed host names (its bridge, its folder): a second one, from another
    test run or `make cluster`, fails at once and takes nothing of the first down."""
    with pytest.raises(NodeBusy, match="already running"):
        ControlPlane(cluster_tools, knative=False, real_node=True).start()
    with cluster.api_client() as api:
        service = client.CoreV1Api(api).read_namespaced_service("probe", probe.metadata.namespace)
    assert through_service(f"http://{service.spec.cluster_ip}/") == probe.metadata.name
    assert not [p for p in cluster.processes if not p.alive()]
