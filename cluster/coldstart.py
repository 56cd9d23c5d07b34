"""`kindling cluster cold-start`: a model at zero replicas, one request, the time to its
answer, phase by phase; repeated.

The model is installed with the project's own chart in Knative mode: one model, its
Revision created at zero (initial-scale 0) with Knative's shortest stable window (6 s).
Each run waits until the KPA has scaled the Revision back to zero (its last pod gone)
and its Service routes to the activator, sends the model's sample request as an ingress
sends it (to the Revision's Service, naming it in Knative's routing headers), and times
the answer: the cold start of a model that served, went idle and scaled to zero, which is
the one users meet.

The first request to a Revision created at zero is slower, and reported apart
(`new_revision`): Knative's autoscaler acts at once on the activator's "a request is
waiting" only for a Revision whose last decision was zero pods (serving
pkg/autoscaler/scaling/multiscaler.go, Poke: `latestScale() == 0`); a new Revision's is
-1 until its first decision, so its first request waits for the next 2 s tick.

Where the time goes, on one clock (this machine's; the runtime's marks are its wall clock,
the same clock when the node is this machine, as `make cluster`'s is):

    scale      request sent -> the Revision's Deployment asks for a pod
               (the activator holds it and tells the autoscaler, which scales the
               PodAutoscaler; the revision reconciler sets the Deployment's replicas)
    create     -> the pod exists (the ReplicaSet controller)
    schedule   -> the pod is bound to a node (the scheduler)
    start      -> the runtime's process execs (the kubelet: the sandbox and its network,
               the image pull if the node lacks it, the containers)
    runtime    -> the runtime is ready (its imports, the model's load and warm-up)
    route      -> the runtime answers its first request (the queue-proxy sees it ready,
               the activator finds the pod and forwards the request; the inference)
    answer     -> the answer is back here

The runtime's own marks come from its /metrics (process_start_time_seconds and
kindling_cold_start_phase_seconds, which every pod exports: a user's Prometheus sees each
pod's exec -> ready -> first answer without this command).

The first three are when this process saw them on its watches of the Deployment and the
pods (milliseconds on a local API server); the API server's own timestamps have only
whole seconds. The kubelet's share of `start` is split further from its own metrics
(kubelet_runtime_operations_duration_seconds, read through the API server before and
after each run): the sandbox, the pull, the containers' create and start.

Knative's issues ask for this breakdown (knative/serving#2495, #13459); paper 001 measured
the whole of it on managed platforms: 2.25 s (Lambda) to 8.16 s (Cloud Functions) for
MobileNet.
"""

from __future__ import annotations

import http.client
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from kindling.cluster import node as node_module
from kindling.cluster.controlplane import tool_env
from kindling.cluster.processes import SAFETY_S, wait_until
from kindling.controller.scrape import COLD_START, ExpositionError, parse_exposition
from kindling.loadtest import requests

CHART = Path(__file__).resolve().parents[1] / "charts" / "kindling"
NAMESPACE = "kindling-cold-start"
DEFAULT_MODEL = "mobilenet_v2"  # paper 001's model, and its cold-start figures
DEFAULT_RUNS = 20
# The sample models that need no word-vector store (kim_cnn and sm_cnn read Redis tables).
MODELS = ("mobilenet_v2", "squeezenet1_1", "resnet18", "minilm")
# Knative's shortest stable window (its default is 60 s): a run waits this long, idle,
# for its Revision to scale back to zero, and no longer.
WINDOW = "6s"
# The Revision's request timeout; Knative makes it the pod's grace period too, within
# which a deleted pod's queue-proxy drains (serving pkg/reconciler/revision/resources/
# deploy.go).
TIMEOUT_S = 10
# Consecutive phases, each ending at its event (module docstring), and who spends it.
PHASES = {
    "scale": "the activator holds the request, the autoscaler scales the Deployment",
    "create": "the ReplicaSet controller creates the pod",
    "schedule": "the scheduler binds it to the node",
    "start": "the kubelet: sandbox, network, pull, containers, to the runtime's exec",
    "runtime": "the runtime: imports, model load, warm-up, to ready",
    "route": "the queue-proxy and activator find it ready and forward; the inference",
    "answer": "the answer's way back through the queue-proxy and activator",
}
KUBELET_OPERATIONS = ("run_podsandbox", "pull_image", "create_container", "start_container")
KUBELET_METRIC = "kubelet_runtime_operations_duration_seconds_sum"
RUNTIME_PORT = 8080  # the runtime's own port in the pod, beside the queue-proxy's


class Cluster(Protocol):
    """What the measurement needs of a cluster: ControlPlane, or Kubeconfig below."""

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any: ...

    def helm(self, *args: str, check: bool = True) -> Any: ...

    def api_client(self) -> Any: ...

    def env(self) -> dict[str, str]: ...


@dataclass
class Run:
    """One cold start: seconds from the request to its answer, and its parts."""

    total_s: float
    phases: dict[str, float]
    kubelet: dict[str, float]
    """The kubelet's operations during the run (seconds each; empty if not readable)."""
    runtime: dict[str, float]
    """The runtime's own marks, seconds from its exec (imports, model_session, ...)."""
    node: str
    cold: bool
    """The runtime's Kindling-Cold-Start header: this was its process's first request."""
    reported_s: float
    """From the runtime's exec to the pod's IP first in its status: neither the activator
    nor the endpoints know the pod before that. On containerd 1.6 this waited for the
    kubelet's next relist of the containers (its generic PLEG, every second); README,
    "Cold start on a node, end to end"."""


@dataclass
class Report:
    model: str
    image: str
    pull: bool
    runs: list[Run] = field(default_factory=list)
    new_revision: Run | None = None
    """The first request to the Revision, created at zero (module docstring)."""

    def summary(self) -> dict[str, Any]:
        """--json's object: medians of the runs, and every run."""
        totals = [r.total_s for r in self.runs]

        def medians(part: Callable[[Run], dict[str, float]]) -> dict[str, float]:
            keys = dict.fromkeys(k for r in self.runs for k in part(r))
            return {
                k: round(statistics.median(part(r)[k] for r in self.runs if k in part(r)), 4)
                for k in keys
            }

        return {
            "model": self.model,
            "image": self.image,
            "pull": self.pull,
            "node": ",".join(sorted({r.node for r in self.runs})),
            "runs": len(self.runs),
            "median_s": round(statistics.median(totals), 4),
            "p90_s": round(float(np.percentile(totals, 90)), 4),
            "all_cold": all(r.cold for r in self.runs),
            "phases": medians(lambda r: r.phases),
            "kubelet": medians(lambda r: r.kubelet),
            "runtime": medians(lambda r: r.runtime),
            "reported_s": round(statistics.median(r.reported_s for r in self.runs), 4),
            "samples": [asdict(r) for r in self.runs],
            "new_revision": asdict(self.new_revision) if self.new_revision else None,
        }


# -- the cluster in $KUBECONFIG ---------------------------------------------------------------


class Kubeconfig:
    """A cluster named by a kubeconfig (the one `make cluster` prints), with the cached
    cluster tools' kubectl and helm; helm's state in a folder of its own."""

    def __init__(self, path: Path, bin_dir: Path, helm_home: Path) -> None:
        self.path = path
        self.bin_dir = bin_dir
        self.helm_home = helm_home

    def env(self) -> dict[str, str]:
        return tool_env(self.path, self.bin_dir, self.helm_home)

    def _run(self, tool: str, args: Sequence[str], input: str | None, check: bool) -> Any:
        import subprocess

        return subprocess.run(
            [str(self.bin_dir / tool), *args],
            input=input, capture_output=True, text=True, env=self.env(), timeout=SAFETY_S,
            check=check,
        )  # fmt: skip

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self._run("kubectl", args, input, check)

    def helm(self, *args: str, check: bool = True) -> Any:
        return self._run("helm", args, None, check)

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.path))


# -- requests as an ingress sends them -----------------------------------------------------------


def routing_headers(namespace: str, revision: str) -> dict[str, str]:
    """What an ingress adds to name the Revision; the activator routes by them
    (serving pkg/activator/handler/context_handler.go)."""
    return {"Knative-Serving-Namespace": namespace, "Knative-Serving-Revision": revision}


def sample_request(model: str) -> tuple[str, bytes, dict[str, str]]:
    """The model's request as the load tests send it: one image, or one sentence."""
    spec = requests.KNOWN_MODELS[model]
    kind = requests.detect_kind(spec)
    tensors = requests.make_tensors(spec, kind, np.random.default_rng(0))
    body, headers = requests.encode_binary(tensors, spec.outputs)
    return f"/v2/models/{model}/infer", body, headers


def _connects(address: str, port: int) -> bool:
    import socket

    with socket.create_connection((address, port), timeout=SAFETY_S):
        return True


def revision_at_zero(cluster: Cluster, namespace: str, revision: str) -> str:
    """Wait until `revision` is Ready at zero, its Service routing to the activator (its
    ServerlessService in proxy mode) and kube-proxy's rules for it written; its address."""
    return revision_address(cluster, namespace, revision, at_zero=True)


def revision_address(cluster: Cluster, namespace: str, revision: str, at_zero: bool) -> str:
    """Wait until `revision` is Ready (`at_zero`: and at zero, as revision_at_zero) and
    kube-proxy's rules for its Service are written; the Service's address."""
    from kubernetes import client

    sks = f"serverlessservice.networking.internal.knative.dev/{revision}"
    waits = [(f"revision/{revision}", "create"), (f"revision/{revision}", "condition=Ready")]
    if at_zero:
        waits += [(sks, "create"), (sks, "jsonpath={.spec.mode}=Proxy")]
    for obj, condition in waits:
        cluster.kubectl(
            "wait", f"--for={condition}", obj, "-n", namespace, f"--timeout={SAFETY_S:.0f}s"
        )
    with cluster.api_client() as api:
        service = client.CoreV1Api(api).read_namespaced_service(revision, namespace)
    address = str(service.spec.cluster_ip)
    # The activator (or a pod) accepts a connection; nothing is woken before a request.
    wait_until(lambda: _connects(address, 80), f"kube-proxy's rules for {address}", [])
    return address


# -- one run ---------------------------------------------------------------------------------------


class Watcher:
    """When this process first saw each step of a Revision's scale from zero: its
    Deployment asking for a pod, then the first pod created, bound to a node, and given
    its IP in its status (the kubelet's first report of it)."""

    def __init__(self, api: Any, namespace: str, revision: str) -> None:
        self.api = api
        self.namespace = namespace
        self.revision = revision
        self.seen: dict[str, float] = {}
        self.pod: Any = None
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def _note(self, event: str) -> None:
        with self.lock:
            self.seen.setdefault(event, time.time())

    def start(self) -> None:
        """Both watches from the lists' resource versions, started before the request."""
        from kubernetes import client

        apps, core = client.AppsV1Api(self.api), client.CoreV1Api(self.api)
        deployment = f"{self.revision}-deployment"  # Knative's name for it
        selector = f"serving.knative.dev/revision={self.revision}"
        listed = apps.list_namespaced_deployment(
            self.namespace, field_selector=f"metadata.name={deployment}"
        )
        pods = core.list_namespaced_pod(self.namespace, label_selector=selector)
        if pods.items:
            raise RuntimeError(f"{self.revision} has pods before its request: not at zero")
        for call, version, handle, last, kwargs in (
            (apps.list_namespaced_deployment, listed.metadata.resource_version,
             self._deployment, "scaled", {"field_selector": f"metadata.name={deployment}"}),
            (core.list_namespaced_pod, pods.metadata.resource_version,
             self._pod, "addressed", {"label_selector": selector}),
        ):  # fmt: skip
            thread = threading.Thread(
                target=self._watch, args=(call, version, handle, last, kwargs), daemon=True
            )
            thread.start()
            self.threads.append(thread)

    def _watch(
        self, call: Any, version: str, handle: Any, last: str, kwargs: dict[str, Any]
    ) -> None:
        """One watch, until it has seen its `last` event."""
        from kubernetes import watch

        stream = watch.Watch()
        for event in stream.stream(
            call, self.namespace, resource_version=version, timeout_seconds=int(SAFETY_S),
            **kwargs,
        ):  # fmt: skip
            handle(event["object"])
            if last in self.seen:
                stream.stop()

    def _deployment(self, deployment: Any) -> None:
        if (deployment.spec.replicas or 0) >= 1:
            self._note("scaled")

    def _pod(self, pod: Any) -> None:
        with self.lock:
            if self.pod is None:
                self.pod = pod
            elif pod.metadata.uid != self.pod.metadata.uid:
                return  # only the first pod is this run's
            self.pod = pod
        self._note("created")
        if pod.spec.node_name:
            self._note("scheduled")
        if pod.status.pod_ip:
            self._note("addressed")

    def wait(self) -> None:
        """Until both watches saw what they watch for (they have, or are about to: the
        request has been answered); SAFETY_S only ends a wait that went wrong."""
        for thread in self.threads:
            thread.join(SAFETY_S)
        if not {"scaled", "scheduled", "addressed"} <= set(self.seen):
            raise RuntimeError(f"{self.revision}: saw only {sorted(self.seen)}")


def kubelet_operations(api: Any, node: str) -> dict[str, float]:
    """The kubelet's summed seconds per runtime operation, from its /metrics through the
    API server's node proxy; empty where it cannot be read (a kwok node has none)."""
    import urllib3
    from kubernetes import client

    try:
        text = client.CoreV1Api(api).connect_get_node_proxy_with_path(node, "metrics")
        samples = list(parse_exposition(str(text)))
    except (client.ApiException, urllib3.exceptions.HTTPError, ExpositionError):
        return {}
    sums: dict[str, float] = {}
    for name, labels, value in samples:
        op = dict(labels).get("operation_type")
        if name == KUBELET_METRIC and op in KUBELET_OPERATIONS:
            sums[op] = sums.get(op, 0.0) + value
    return sums


def runtime_marks(api: Any, namespace: str, pod: str, model: str) -> tuple[float, dict[str, float]]:
    """The runtime's exec time (its wall clock: process_start_time_seconds) and its marks,
    seconds from exec (kindling_cold_start_phase_seconds, runtime/coldstart.py; model
    phases prefixed `model_`), from its /metrics through the API server's pod proxy."""
    from kubernetes import client

    text = client.CoreV1Api(api).connect_get_namespaced_pod_proxy_with_path(
        f"{pod}:{RUNTIME_PORT}", namespace, "metrics"
    )
    started, marks = None, {}
    for name, labels, value in parse_exposition(str(text)):
        found = dict(labels)
        who, phase = found.get("model", ""), found.get("phase", "")
        if name == "process_start_time_seconds":
            started = value
        elif name == COLD_START and phase != "start" and who in ("", model):
            marks[f"model_{phase}" if who else phase] = value
    if started is None or "ready" not in marks:
        raise RuntimeError(f"{pod}: no cold-start marks on the runtime's /metrics")
    return started, marks


def send(address: str, namespace: str, revision: str, model: str) -> tuple[bool, float]:
    """The model's sample request, at the Revision's Service as an ingress sends it;
    whether the runtime called it cold, and the wall time its answer ended."""
    path, body, headers = sample_request(model)
    connection = http.client.HTTPConnection(address, 80, timeout=SAFETY_S)
    try:
        connection.request("POST", path, body, {**headers, **routing_headers(namespace, revision)})
        response = connection.getresponse()
        answer = response.read()
        answered = time.time()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"{revision}: {response.status} {answer[:200]!r}")
    return response.getheader("kindling-cold-start") == "true", answered


def one_cold_start(
    api: Any, namespace: str, revision: str, address: str, model: str, node_hint: str | None
) -> Run:
    """One request to `revision` at zero, and when each step of its waking happened."""
    watcher = Watcher(api, namespace, revision)
    watcher.start()
    before = kubelet_operations(api, node_hint) if node_hint else {}
    sent = time.time()
    cold, answered = send(address, namespace, revision, model)
    watcher.wait()
    pod = watcher.pod
    node = str(pod.spec.node_name)
    after = kubelet_operations(api, node) if node == node_hint else {}
    exec_at, marks = runtime_marks(api, namespace, pod.metadata.name, model)
    events = [
        watcher.seen["scaled"],
        watcher.seen["created"],
        watcher.seen["scheduled"],
        exec_at,
        exec_at + marks["ready"],
        exec_at + marks["first_answer"],
        answered,
    ]
    phases, last = {}, sent
    for name, at in zip(PHASES, events, strict=True):  # in PHASES' order
        # Two watches, and the runtime's clock: an event seen a moment out of order is
        # counted as taking no time, so the phases always add up to the total.
        end = max(last, at)
        phases[name] = round(end - last, 4)
        last = end
    kubelet = {op: round(after[op] - before.get(op, 0.0), 4) for op in after if before}
    reported = round(watcher.seen["addressed"] - exec_at, 4)
    return Run(round(answered - sent, 4), phases, kubelet, marks, node, cold, reported)


# -- the measurement ----------------------------------------------------------------------------


def chart_values(
    registry: str, model: str, tag: str | None, window: str | None = WINDOW
) -> dict[str, Any]:
    """One model in Knative mode, every Revision starting at zero, no controller; the
    KPA's stable `window` (None: Knative's own, 60 s)."""
    values: dict[str, Any] = {
        "global": {"imageRegistry": registry},
        "serving": {"mode": "knative"},
        "controller": {"enabled": False},
        "models": [{"name": model}],
        "modelDefaults": {
            "autoscaling": {"initialScale": 0},
            "timeoutSeconds": TIMEOUT_S,
            "resources": {"requests": {"cpu": "100m"}},
            "podAnnotations": {"autoscaling.knative.dev/window": window} if window else {},
        },
    }
    if tag:
        values["runtime"] = {"image": {"tag": tag}}
    return values


@contextmanager
def installed(
    cluster: Cluster, namespace: str, values: dict[str, Any], keep: bool
) -> Iterator[dict[str, Any]]:
    """The chart in `namespace` (made if missing); yields its one Knative Service. Gone
    afterwards, namespace and all, unless `keep`."""
    from kubernetes import client

    # A namespace an earlier run is still deleting takes no new objects: wait it out.
    phase = cluster.kubectl(
        "get", "namespace", namespace, "-o", "jsonpath={.status.phase}", check=False
    ).stdout
    if phase == "Terminating":
        cluster.kubectl(
            "wait", "--for=delete", f"namespace/{namespace}", f"--timeout={SAFETY_S:.0f}s"
        )
    cluster.kubectl("create", "namespace", namespace, check=False)
    with tempfile.TemporaryDirectory() as folder:
        values_file = Path(folder) / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        cluster.helm(
            "upgrade", "--install", "kindling", str(CHART), "--namespace", namespace,
            "--values", str(values_file), f"--timeout={SAFETY_S:.0f}s",
        )  # fmt: skip
    try:
        with cluster.api_client() as api:
            (service,) = client.CustomObjectsApi(api).list_namespaced_custom_object(
                "serving.knative.dev", "v1", namespace, "services"
            )["items"]
        yield service
    finally:
        if not keep:
            cluster.helm("uninstall", "kindling", "--namespace", namespace, check=False)
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def back_to_zero(cluster: Cluster, namespace: str, revision: str) -> None:
    """Until the KPA has scaled `revision` to zero after its stable window, and its pod is
    gone: deleted with a one-second grace, as its queue-proxy would otherwise drain for
    the Revision's whole timeout while the next run starts."""
    timeout = f"--timeout={SAFETY_S:.0f}s"
    cluster.kubectl(
        "wait", f"deployment/{revision}-deployment", "-n", namespace,
        "--for=jsonpath={.spec.replicas}=0", timeout,
    )  # fmt: skip
    cluster.kubectl(
        "delete", "pods", "-n", namespace, "-l", f"serving.knative.dev/revision={revision}",
        "--grace-period=1", "--wait=true", timeout,
    )  # fmt: skip


def pod_start_profile(report: Report, command: str) -> dict[str, Any]:
    """What the cluster added to each cold start, for the simulator (controller/profiles.py
    PodStart): the answer's time less the runtime's own exec -> ready. The first
    inference (milliseconds) stays in both, as in the runtime's profiled cold start."""
    return {
        "command": command,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "node": ",".join(sorted({r.node for r in report.runs})),
        "model": report.model,
        "pull": report.pull,
        "overhead_s": [round(r.total_s - r.runtime["ready"], 4) for r in report.runs],
    }


def render(summary: dict[str, Any]) -> str:
    """--json's object as a person reads it."""
    where = "pulled before each run" if summary["pull"] else "the image on the node"
    lines = [
        f"cold start of {summary['model']} at zero on {summary['node']}, {where}: "
        f"{summary['runs']} runs",
        f"median {summary['median_s']:.3f} s, p90 {summary['p90_s']:.3f} s"
        + ("" if summary["all_cold"] else " (NOT every run was its pod's first request)"),
        "",
        f"{'phase':<9} {'median':>8}  what",
    ]
    lines += [
        f"{name:<9} {summary['phases'][name]:>6.3f} s  {what}" for name, what in PHASES.items()
    ]
    if summary["new_revision"]:
        lines.append(
            f"the first request to the new Revision: {summary['new_revision']['total_s']:.3f} s"
            f" (scale {summary['new_revision']['phases']['scale']:.3f} s)"
        )
    lines.append(
        f"the pod's IP first in its status {summary['reported_s']:.3f} s after the runtime's "
        "exec (the kubelet's report of the started pod)"
    )
    for part, unit in (("kubelet", "seconds each"), ("runtime", "seconds from its exec")):
        if summary[part]:
            items = ", ".join(f"{k} {v:.3f}" for k, v in summary[part].items())
            lines.append(f"{part} ({unit}): {items}")
    return "\n".join(lines)


def measure(
    cluster: Cluster,
    registry: str,
    model: str = DEFAULT_MODEL,
    runs: int = DEFAULT_RUNS,
    pull: bool = False,
    namespace: str = NAMESPACE,
    tag: str | None = None,
    keep: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> Report:
    """`runs` cold starts of `model`, after one that puts the image on the node; with
    `pull`, the image is taken off the node (its containerd on this machine) before each."""
    if model not in MODELS:
        raise ValueError(f"cold-start measures {', '.join(MODELS)}; not {model!r}")
    values = chart_values(registry, model, tag)
    if pull:
        # The request waits for the pull too (3-5 s here, more on a loaded machine): the
        # activator must hold it longer than the 10 s that bounds a run without one.
        values["modelDefaults"]["timeoutSeconds"] = 60
    with installed(cluster, namespace, values, keep) as service, cluster.api_client() as api:
        (container,) = service["spec"]["template"]["spec"]["containers"]
        report = Report(model, container["image"], pull)
        revision = f"{service['metadata']['name']}-00001"
        address = revision_at_zero(cluster, namespace, revision)
        # Its first request: the image onto the node, and the autoscaler's first decision
        # (until then it is not poked, and waits for its 2 s tick: module docstring).
        report.new_revision = one_cold_start(api, namespace, revision, address, model, None)
        node = report.new_revision.node
        for run in range(1, runs + 1):
            back_to_zero(cluster, namespace, revision)
            revision_at_zero(cluster, namespace, revision)
            if pull:
                node_module.remove_image(node_module.ROOT / "containerd.sock", report.image)
            result = one_cold_start(api, namespace, revision, address, model, node)
            report.runs.append(result)
            log(f"run {run}/{runs}: {result.total_s:.3f} s " + " ".join(
                f"{k} {v:.3f}" for k, v in result.phases.items()))  # fmt: skip
    return report
