"""`kindling cluster prewarm`: the pre-warm controller off and on, against real pods, beside
what the simulator predicts for the same arrivals.

Paper 001's advice is to pre-warm before bursts; the case it is for is a burst after a
silence that emptied the pool. Each arm installs the chart in Knative mode with one model
whose Revision starts at zero, with Knative's own autoscaling defaults (60 s stable
window, 30 s scale-to-zero grace period, as the simulator's KPA has them), and sends the
`bursts` workload with `kindling loadtest run` (Locust) at the Revision's Service as an
ingress sends it (coldstart.routing_headers), so every request goes through the real
activator and queue-proxy:

    off   Knative's KPA alone (controller.enabled false): what a user has without Kindling
    on    the chart's controller beside it, as a pod on the node, reading a real
          Prometheus that scrapes the runtime pods through Kubernetes' pod discovery
          (cluster/prometheus.py pods_job), writing its floor on the live Revision
    floor the KPA with `autoscaling.knative.dev/min-scale: 1` from the start: what a user
          does instead with one annotation (the baseline a controller must beat)

Per arm, from the run's own records: requests, errors, requests answered by a process's
first inference (the runtime's `Kindling-Cold-Start` header; a pod the controller woke
ahead of its request also answers its first one with it), SLO violations (over 250 ms,
the simulator's SLO, or failed), p99, and pod-seconds (the revision's Running pods, as
the API server lists them every few seconds: the load test's `kubectl:` pod source); and
the highest floor the controller wrote (`kindling.dev/warm-min-scale`).

The simulator (controller/simulate.py) runs the same arrivals (the same shape and seed:
controller/workloads.py from_shape) under `knative-kpa` and `kindling`, from zero pods
and counting from the first second, as the real arms do, with the measured pod start
(controller/data/pod_start.json) added to each cold start.

Not exercised: an ingress (no Envoy here: requests enter at the Revision's Service, where
an ingress would send them) and a GPU.
"""

from __future__ import annotations

import bisect
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kindling.cluster import coldstart, nodes
from kindling.cluster import prometheus as prometheus_server
from kindling.cluster.coldstart import Cluster
from kindling.cluster.node import CLUSTER_DOMAIN
from kindling.cluster.processes import SAFETY_S
from kindling.cluster.watches import Follow
from kindling.controller import profiles, workloads
from kindling.controller.knative import WARM_MIN_SCALE
from kindling.controller.simulate import SLO_MS, SimOptions, SimResult, run_policy
from kindling.loadtest import pods as pods_mod
from kindling.loadtest.records import read_csv
from kindling.loadtest.shapes import make_shape
from kindling.loadtest.slo import EXIT_MET, EXIT_MISSED
from kindling.loadtest.stats import measured

NAMESPACE = "kindling-prewarm"
WORKLOAD = "bursts"
ARMS = {
    "off": "Knative's KPA alone",
    "floor": "the KPA with min-scale 1 (one annotation: the strongest simple baseline)",
    "on": "the KPA with Kindling's controller",
}
# The simulator's policy for each arm, and the Revision's min-scale (its initial scale too).
SIM_POLICY = {"off": ("knative-kpa", 0), "floor": ("knative-kpa", 1), "on": ("kindling", 0)}
# What the controller reads: Prometheus scrapes the pods every 5 s (a quarter of the
# controller's 10 s interval, so each decision sees fresh samples).
SCRAPE_INTERVAL_S = 5
# The controller wakes a Revision at zero through the activator, naming it as an ingress
# does (controller/warmup.py), since there is no ingress here.
ACTIVATOR_URL = f"http://activator-service.knative-serving.svc.{CLUSTER_DOMAIN}"


@dataclass
class Arm:
    arm: str
    requests: int
    errors: int
    cold: int
    """Answered by a process's first inference (Kindling-Cold-Start: true)."""
    waited: int
    """Sent while the Revision had no Ready pod: waited on a pod start (the simulator's
    cold request)."""
    slo_violations: int
    p99_ms: float
    pod_seconds: float
    floor: int
    """The highest floor the controller wrote on the Revision (0: none)."""


@dataclass
class Report:
    model: str
    seed: int
    params: dict[str, Any]
    description: str
    slo_ms: float
    pod_overhead_s: float
    arms: list[Arm]
    simulated: dict[str, SimResult]
    """Per arm, the simulator's prediction for the same arrivals."""

    def summary(self) -> dict[str, Any]:
        sims = {
            arm: {k: v for k, v in r.to_json().items() if k != "timeline"}
            for arm, r in self.simulated.items()
        }
        return {
            "model": self.model,
            "workload": WORKLOAD,
            "seed": self.seed,
            "params": self.params,
            "description": self.description,
            "slo_ms": self.slo_ms,
            "pod_overhead_s": self.pod_overhead_s,
            "node": nodes.REAL_NODE,
            "arms": [asdict(a) for a in self.arms],
            "simulated": sims,
        }


# -- one arm --------------------------------------------------------------------------------------


def arm_values(
    registry: str,
    model: str,
    tag: str | None,
    prometheus_url: str | None,
    pod_start_s: float,
    min_scale: int = 0,
) -> dict[str, Any]:
    """The chart's values: coldstart's one model at zero with Knative's own windows (at
    `min_scale`, and starting there, when above 0); with `prometheus_url`, the controller
    too, told the measured pod start (the simulator's)."""
    values = coldstart.chart_values(registry, model, tag, window=None)
    if min_scale:
        values["modelDefaults"]["autoscaling"] = {"minScale": min_scale, "initialScale": min_scale}
    if prometheus_url:
        values["controller"] = {
            "enabled": True,
            "prometheusUrl": prometheus_url,
            "podStartSeconds": pod_start_s,
            "extraEnv": [{"name": "KINDLING_WARMUP_URL", "value": ACTIVATOR_URL}],
        }
        if tag:
            values["controller"]["image"] = {"tag": tag}
    return values


class FloorWatch(Follow):
    """The highest floor the controller writes on a namespace's Revisions."""

    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client

        self.highest = 0
        args = ("serving.knative.dev", "v1", namespace, "revisions")
        list_call = client.CustomObjectsApi(api).list_namespaced_custom_object
        super().__init__(list_call, args, self._note)

    def _note(self, revisions: dict[str, Any]) -> None:
        for revision in revisions.values():
            floor = (revision["metadata"].get("annotations") or {}).get(WARM_MIN_SCALE, "")
            if floor.isdigit():
                self.highest = max(self.highest, int(floor))


class ReadyWatch(Follow):
    """When the Revision's Ready pods changed in number, on this machine's clock (the one
    the load test's `started_at` is on), from a watch of its pods."""

    def __init__(self, api: Any, namespace: str, revision: str) -> None:
        from kubernetes import client

        self.changes: list[tuple[float, int]] = [(0.0, 0)]
        list_call = client.CoreV1Api(api).list_namespaced_pod
        selector = f"serving.knative.dev/revision={revision}"
        super().__init__(list_call, (namespace,), self._note, label_selector=selector)

    def _note(self, pods: dict[str, Any]) -> None:
        ready = sum(1 for pod in pods.values() if _ready(pod))
        if ready != self.changes[-1][1]:
            self.changes.append((time.time(), ready))

    def ready_at(self, wall: float) -> int:
        """Ready pods at `wall` (seconds since the epoch)."""
        times = [t for t, _ in self.changes]
        return self.changes[bisect.bisect_right(times, wall) - 1][1]


def _ready(pod: Any) -> bool:
    if pod.metadata.deletion_timestamp is not None:
        return False  # being deleted: the endpoints drop it
    conditions = pod.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def loadtest_command(
    address: str, namespace: str, revision: str, model: str, seed: int,
    params: dict[str, Any], out: Path,
) -> list[str]:  # fmt: skip
    """`kindling loadtest run` at the Revision's Service, as an ingress sends it; the
    model's inputs from the known metadata (reading them would wake the Revision)."""
    routing = coldstart.routing_headers(namespace, revision)
    return [
        sys.executable, "-m", "kindling", "loadtest", "run", "--target", f"http://{address}",
        "--model", model, "--workload", WORKLOAD, "--seed", str(seed), "--out", str(out),
        "--metadata-url", "none",
        "--pods", f"kubectl:serving.knative.dev/revision={revision}@{namespace}",
        *(a for k, v in params.items() for a in ("--set", f"{k}={v}")),
        *(a for k, v in routing.items() for a in ("--header", f"{k}: {v}")),
    ]  # fmt: skip


def read_arm(
    arm: str, out: Path, slo_ms: float, floor: int, ready_at: Callable[[float], int]
) -> Arm:
    """An arm's figures from the load test's run folder (requests.csv, pods.csv, run.json)
    and `ready_at`, the Revision's Ready pods at a wall-clock time."""
    records = measured(read_csv(out / "requests.csv"))
    samples = pods_mod.read_csv(out / "pods.csv")
    run = json.loads((out / "run.json").read_text())
    end_s, started = float(run["end_s"]), float(run["started_at"])
    ok = [r for r in records if r.ok]
    latencies = [r.latency_ms for r in ok]
    return Arm(
        arm=arm,
        requests=len(records),
        errors=len(records) - len(ok),
        cold=sum(1 for r in ok if r.cold),
        waited=sum(1 for r in records if ready_at(started + r.sent_s) == 0),
        slo_violations=len(records) - sum(1 for x in latencies if x <= slo_ms),
        p99_ms=round(float(np.percentile(latencies, 99)), 1) if latencies else math.nan,
        pod_seconds=round(pods_mod.pod_seconds(samples, 0.0, end_s) or 0.0, 1),
        floor=floor,
    )


def run_arm(
    cluster: Cluster,
    arm: str,
    values: dict[str, Any],
    model: str,
    seed: int,
    params: dict[str, Any],
    out: Path,
    slo_ms: float,
    namespace: str = NAMESPACE,
) -> Arm:
    """One arm: the chart installed, its Revision at zero, the load test, the figures."""
    with coldstart.installed(cluster, namespace, values, keep=False) as service:
        revision = f"{service['metadata']['name']}-00001"
        at_zero = not values["modelDefaults"]["autoscaling"].get("minScale")
        address = coldstart.revision_address(cluster, namespace, revision, at_zero)
        if values["controller"]["enabled"]:
            # Leading and reading before the first request, as it would be in a cluster
            # that has run for a while.
            cluster.kubectl(
                "rollout", "status", "deployment", "-n", namespace,
                "-l", "app.kubernetes.io/component=controller", f"--timeout={SAFETY_S:.0f}s",
            )  # fmt: skip
        command = loadtest_command(address, namespace, revision, model, seed, params, out)
        # A safety net only: the run's own schedule, twice over.
        limit = 2 * make_shape(WORKLOAD, **params).plan(seed).end_s + SAFETY_S
        with (
            cluster.api_client() as api,
            FloorWatch(api, namespace) as floors,
            ReadyWatch(api, namespace, revision) as ready,
        ):
            done = subprocess.run(
                command, env=cluster.env(), capture_output=True, text=True, timeout=limit
            )
        # 1: the load test's own SLO was missed (errors, say), which the figures show.
        if done.returncode not in (EXIT_MET, EXIT_MISSED) or not (out / "requests.csv").is_file():
            raise RuntimeError(f"the load test failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return read_arm(arm, out, slo_ms, floors.highest, ready.ready_at)


# -- the comparison --------------------------------------------------------------------------------


def simulate(
    model: str, seed: int, params: dict[str, Any], pod_overhead_s: float, slo_ms: float
) -> dict[str, SimResult]:
    """Each arm's policy on the same arrivals, from the arm's initial scale, every second
    counted, as the real arms run."""
    workload = workloads.from_shape(make_shape(WORKLOAD, **params), seed)
    # The chart's autoscaling target (containerConcurrency 0, unbounded, so the target is
    # what the KPA aims at); the simulated pod serves that many requests at once.
    target = yaml.safe_load((coldstart.CHART / "values.yaml").read_text())["modelDefaults"][
        "autoscaling"
    ]["target"]
    # The controller arm reads this run's Prometheus, as the simulated one does; a removed
    # pod drains within its grace period, the Revision's timeout, when that is under 30 s.
    opts = replace(
        SimOptions(), pod_overhead_s=pod_overhead_s, slo_ms=slo_ms, warmup_s=0.0,
        container_concurrency=int(target), kpa_target=float(target),
        input="prometheus", prometheus_scrape_s=float(SCRAPE_INTERVAL_S),
        drain_s=min(SimOptions.drain_s, float(coldstart.TIMEOUT_S)),
    )  # fmt: skip
    profile = profiles.load(model)
    return {
        arm: run_policy(
            policy, workload, profile, seed, replace(opts, min_scale=floor, initial_scale=floor)
        )
        for arm, (policy, floor) in SIM_POLICY.items()
    }


@contextmanager
def pod_prometheus(
    cluster: Cluster, namespace: str, workdir: Path
) -> Iterator[prometheus_server.Prometheus]:
    """Prometheus on the node's address (where the controller pod reaches it, through the
    pods' gateway), scraping `namespace`'s annotated pods as they come and go."""
    workdir.mkdir(parents=True, exist_ok=True)
    targets = workdir / "pods.json"
    with (
        cluster.api_client() as api,
        prometheus_server.PodDiscovery(api, namespace, targets),
    ):
        job = prometheus_server.pods_job(targets)
        interval = f"{SCRAPE_INTERVAL_S}s"
        server = prometheus_server.start(workdir, [job], interval, nodes.REAL_NODE_IP)
        try:
            yield server
        finally:
            server.stop()


def compare(
    cluster: Cluster,
    registry: str,
    model: str = coldstart.DEFAULT_MODEL,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    arms: tuple[str, ...] = tuple(ARMS),
    namespace: str = NAMESPACE,
    tag: str | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> Report:
    """Each arm in turn on the same arrivals, then the simulator's prediction."""
    if model not in coldstart.MODELS:
        raise ValueError(f"prewarm runs {', '.join(coldstart.MODELS)}; not {model!r}")
    params = dict(params or {})
    shape = make_shape(WORKLOAD, **params)  # refuses an unknown parameter before any install
    overhead = profiles.pod_start().median_s
    report = Report(model, seed, params, shape.describe(), SLO_MS, overhead, [], {})
    with tempfile.TemporaryDirectory(prefix="kindling-prewarm-") as folder:
        with pod_prometheus(cluster, namespace, Path(folder) / "prometheus") as prometheus:
            for arm in arms:
                log(f"arm {arm} ({ARMS[arm]}): {shape.describe()}")
                url = prometheus.url if arm == "on" else None
                values = arm_values(registry, model, tag, url, overhead, SIM_POLICY[arm][1])
                out = Path(folder) / arm
                result = run_arm(cluster, arm, values, model, seed, params, out, SLO_MS, namespace)
                report.arms.append(result)
                log(f"arm {arm}: {asdict(result)}")
    report.simulated = simulate(model, seed, params, overhead, SLO_MS)
    return report


def render(summary: dict[str, Any]) -> str:
    """--json's object as a person reads it: each arm measured, beside its simulation.
    `waited`: requests sent while no pod was Ready (the simulator's cold requests);
    `new pod`: answered by a process's first inference (the runtime's header)."""
    sims = summary["simulated"]
    lines = [
        f"{summary['model']} on {summary['node']}, {summary['workload']} (seed "
        f"{summary['seed']}): {summary['description']}",
        f"SLO {summary['slo_ms']:g} ms; the simulator adds {summary['pod_overhead_s']:.2f} s "
        "of measured pod start to each cold start",
        "",
        f"{'arm':<5} {'':<10} {'requests':>8} {'errors':>6} {'waited':>6} {'new pod':>7} "
        f"{'SLO miss':>8} {'p99 ms':>8} {'pod-s':>7} {'floor':>5}",
    ]
    for arm in summary["arms"]:
        sim = sims[arm["arm"]]
        lines.append(
            f"{arm['arm']:<5} {'measured':<10} {arm['requests']:>8} {arm['errors']:>6} "
            f"{arm['waited']:>6} {arm['cold']:>7} {arm['slo_violations']:>8} "
            f"{arm['p99_ms']:>8.0f} {arm['pod_seconds']:>7.0f} {arm['floor']:>5}"
        )
        lines.append(
            f"{'':<5} {'simulated':<10} {sim['requests']:>8} {sim['unserved']:>6} "
            f"{sim['cold_requests']:>6} {'':>7} {sim['slo_violations']:>8} "
            f"{sim['p99_ms']:>8.0f} {sim['pod_seconds']:>7.0f} {'':>5}"
        )
    return "\n".join(lines)
