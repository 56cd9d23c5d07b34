"""Knative Serving in the test cluster, at the release tools.py built.

Its controller and autoscaler run as processes beside the API server (they only talk to it,
and the autoscaler to the pods' queue-proxies). With a real node, the data plane runs there
as Knative's own release runs it (config/core/deployments): the activator and the webhook
as pods under their own service accounts and roles, and every Revision's pods with the
queue-proxy sidecar. Their images hold the binaries built here (ko's layout, /ko-app/NAME,
USER 65532) and are pushed to the cluster's registry, so a pod pulls them like any image.

Two addresses are wired by hand, because the controller and autoscaler are not pods:
- the `autoscaler` Service, which the activator dials for its stats websocket
  (cmd/activator/main.go: autoscaler.knative-serving.svc.cluster.local:8080), has no
  selector; its Endpoints are the node's address and the port the autoscaler's stats
  server listens on (tools.py's KINDLING_STATS_SERVER_ADDR);
- the autoscaler's POD_IP, which it publishes for the activator and other autoscalers
  (its bucket's endpoints), is the node's address.

There is no ingress (no Envoy, so no Kourier): a request reaches a Revision the way an
ingress sends it, to the Revision's Service with the `Knative-Serving-Namespace` and
`Knative-Serving-Revision` headers, which the activator reads while the Revision is at
zero (serving pkg/activator/handler/context_handler.go).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from kindling.cluster import images, nodes
from kindling.cluster.node import CLUSTER_DOMAIN, DNS_SERVICE_IP, host_service
from kindling.cluster.processes import SAFETY_S, free_port, wait_until

if TYPE_CHECKING:
    from kindling.cluster.controlplane import ControlPlane

NAMESPACE = "knative-serving"
# Knative resolves image tags to digests at the registry. Without a real node no image is
# run (kwok fakes the containers) and no registry is reachable: tags from these registries
# are taken as they are, and an image by digest never needs resolving. With a real node the
# cluster's own registry is added (containerd pulls the tag; Knative's resolver would ask
# it over HTTPS, which a loopback registry does not speak).
SKIP_TAG_RESOLVING = "kind.local,ko.local,dev.local,kindling.local,index.docker.io,ghcr.io"
# The queue-proxy where no real node runs it: a digest no registry holds.
PLACEHOLDER_QUEUE_PROXY = "kindling.local/queue-proxy@sha256:" + "0" * 64
# Without a real node the autoscaler still publishes an address in an EndpointSlice, which
# refuses loopback addresses; no activator dials it, so an unused address stands in.
PLACEHOLDER_POD_IP = "10.96.255.254"
# The port of the `autoscaler` Service, fixed in the activator (cmd/activator/main.go).
AUTOSCALER_PORT = 8080
# client-go's defaults for the kube components (15 s, 10 s, 2 s) instead of Knative's
# 60 s, 40 s, 10 s: a restarted controller takes a new identity (hostname_uuid,
# knative.dev/pkg leaderelection.UniqueID) and must wait its old lease out.
LEADER_ELECTION = {"lease-duration": "15s", "renew-deadline": "10s", "retry-period": "2s"}
# Ready means leading: the reconcilers a Service needs, and the autoscaler's only bucket.
LEASES = frozenset(
    [
        *(
            f"controller.knative.dev.serving.pkg.reconciler.{name}.reconciler.00-of-01"
            for name in ("service", "configuration", "revision", "serverlessservice", "route")
        ),
        "autoscaler-bucket-00-of-01",
    ]
)
# The data plane's images: binary -> the ko import path its Deployment names.
DATA_PLANE = {
    "knative-activator": "ko://knative.dev/serving/cmd/activator",
    "knative-webhook": "ko://knative.dev/serving/cmd/webhook",
    "knative-queue-proxy": "ko://knative.dev/serving/cmd/queue",
}


def start(plane: ControlPlane) -> dict[str, str]:
    """Knative's namespace and config maps (its release's own, `_example` blocks dropped),
    then its controller and autoscaler, each ready once it leads. With a registry, the
    data plane's images are pushed first (the config names the queue-proxy's); returns
    the ko path -> image reference map for `start_data_plane`."""
    pushed = _push_images(plane) if plane.registry is not None else {}
    config = plane.tools.knative_config
    plane.kubectl("apply", "-f", str(config / "100-namespace.yaml"))
    maps = [
        doc
        for path in sorted(config.glob("config-*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    skip = SKIP_TAG_RESOLVING + (f",{plane.registry}" if plane.registry else "")
    for doc in maps:
        data = doc.setdefault("data", {})
        data.pop("_example", None)
        if doc["metadata"]["name"] == "config-deployment":
            queue = DATA_PLANE["knative-queue-proxy"]
            data["queue-sidecar-image"] = pushed.get(queue, PLACEHOLDER_QUEUE_PROXY)
            data["registries-skipping-tag-resolving"] = skip
        if doc["metadata"]["name"] == "config-leader-election":
            data.update(LEADER_ELECTION)
        if doc["metadata"]["name"] == "config-autoscaler":
            # A Revision may start at zero (initial-scale 0), as a user who wants the first
            # request to pay the cold start sets it; off by default in Knative.
            data["allow-zero-initial-scale"] = "true"
    plane.apply(maps)

    real = plane.node is not None
    pod_ip = nodes.REAL_NODE_IP if real else PLACEHOLDER_POD_IP
    stats_port = free_port() if real else 0
    stats = f"{nodes.REAL_NODE_IP if real else '127.0.0.1'}:{stats_port}"
    watched = []
    for name in ("knative-controller", "knative-autoscaler"):
        env = {
            "SYSTEM_NAMESPACE": NAMESPACE,
            "POD_NAME": f"{name}-0",
            "POD_IP": pod_ip,
            "CONFIG_LOGGING_NAME": "config-logging",
            "CONFIG_OBSERVABILITY_NAME": "config-observability",
            "METRICS_DOMAIN": "knative.dev/internal/serving",
            # Their default listeners (8008, 9090) would collide with each other.
            "PROFILING_PORT": str(free_port()),
            "METRICS_PROMETHEUS_PORT": str(free_port()),
            "KINDLING_STATS_SERVER_ADDR": stats,
        }
        args = [f"--kubeconfig={plane.kubeconfig}"]
        binary = None
        if real:
            binary, args = _with_cluster_dns(plane, name, args)
        # Restarted when they exit, as their Deployments' pods would be.
        watched.append(plane.launch(name, args, env, restart=True, binary=binary))

    def leading() -> bool:
        from kubernetes import client

        with plane.api_client() as api:
            leases = client.CoordinationV1Api(api).list_namespaced_lease(NAMESPACE)
        held = {lease.metadata.name for lease in leases.items if lease.spec.holder_identity}
        return LEASES <= held

    wait_until(leading, "Knative's controller and autoscaler leading", watched)
    if real:
        plane.apply(_autoscaler_service(stats_port))
    return pushed


def _with_cluster_dns(plane: ControlPlane, name: str, args: list[str]) -> tuple[str, list[str]]:
    """`name` run as a pod would resolve names: by the cluster's DNS (CoreDNS on the real
    node, node.py), in a mount namespace of its own whose /etc/resolv.conf names it; the
    host's is untouched. The autoscaler needs it: before a Revision scales to zero it
    probes the activator through the Revision's Service by name (serving
    pkg/reconciler/autoscaling/kpa/scaler.go, activatorProbe:
    <revision>.<namespace>.svc.cluster.local), which the host's resolver does not know,
    and without an answer no Revision ever scales to zero."""
    resolv = plane.workdir / "knative-resolv.conf"
    domain = CLUSTER_DOMAIN
    resolv.write_text(
        f"search {NAMESPACE}.svc.{domain} svc.{domain} {domain}\n"
        f"nameserver {DNS_SERVICE_IP}\noptions ndots:5\n"
    )
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    wrapped = ["--mount", "--propagation", "private", "--", "sh", "-c", script, str(resolv)]
    return "unshare", [*wrapped, str(plane.tools.bin(name)), *args]


def start_data_plane(plane: ControlPlane, pushed: dict[str, str]) -> None:
    """The activator and the webhook as pods on the real node, from Knative's own
    manifests with the pushed images; ready once both Deployments are available and the
    webhook has put its CA into its configurations (it makes its own certificate)."""
    folder = plane.tools.knative_config / "data-plane"
    docs = [
        _with_images(doc, pushed)
        for path in sorted(folder.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    plane.apply(docs)
    timeout = f"--timeout={SAFETY_S:.0f}s"
    plane.kubectl(
        "rollout", "status", "-n", NAMESPACE, "deployment/activator", "deployment/webhook",
        timeout,
    )  # fmt: skip
    names = [
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if d["kind"].endswith("WebhookConfiguration")
    ]

    def ca_bundles() -> bool:
        return all(
            plane.kubectl(
                "get", kind, name, "-o", "jsonpath={.webhooks[*].clientConfig.caBundle}"
            ).stdout.strip()
            for kind, name in names
        )

    wait_until(ca_bundles, "the Knative webhook's CA in its configurations", plane.processes)


def _push_images(plane: ControlPlane) -> dict[str, str]:
    """Each data-plane binary as a one-file image in the cluster's registry, by digest."""
    assert plane.registry is not None
    pushed = {}
    for binary, ko_path in DATA_PLANE.items():
        name = ko_path.rsplit("/", 1)[1]
        image = images.Image.of_binary(
            plane.tools.bin(binary), f"/ko-app/{name}", images.NONROOT, []
        )
        digest = image.push(plane.registry, binary, "latest")
        pushed[ko_path] = f"{plane.registry}/{binary}@{digest}"
    return pushed


def _with_images(doc: dict[str, Any], pushed: dict[str, str]) -> dict[str, Any]:
    """A Deployment's ko:// image paths replaced by the pushed references."""
    if doc.get("kind") == "Deployment":
        for container in doc["spec"]["template"]["spec"]["containers"]:
            container["image"] = pushed.get(container["image"], container["image"])
    return doc


def _autoscaler_service(port: int) -> list[dict[str, Any]]:
    """The `autoscaler` Service the activator dials, its endpoint the autoscaler process's
    stats server on the node's address."""
    labels = {"app": "autoscaler"}
    return host_service("autoscaler", NAMESPACE, labels, [("http", AUTOSCALER_PORT, port, "TCP")])
