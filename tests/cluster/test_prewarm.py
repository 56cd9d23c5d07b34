"""The pre-warm controller against real pods (cluster/prewarm.py): the chart's controller as
a pod on the real node, reading a real Prometheus that finds the runtime pods through
Kubernetes' pod discovery, holding a floor on the live Revision that Knative honours; and
`kindling cluster prewarm`, an arm and the simulator, on a short burst.

Every wait is on an event (an annotation written, a Deployment's ready replicas, a series
in Prometheus); the figures the command prints are shown, never compared with a bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kindling.cluster import coldstart, prewarm
from kindling.cluster.controlplane import ControlPlane
from kindling.controller import profiles
from kindling.controller.knative import USER_MIN_SCALE, WARM_MIN_SCALE
from kindling.loadtest import pods as pods_mod
from kindling.loadtest.records import RequestRecord, write_csv
from tests.cluster.fixtures import SAFETY_S

MODEL = "mobilenet_v2"
MIN_SCALE = "autoscaling.knative.dev/min-scale"
# A short burst from zero, every part of the command once: one burst of 10 requests after
# 5 s of nothing, 5 s of tail.
SHORT = {"bursts": 1, "gap_s": 5, "rate": 2, "burst_s": 5, "tail_s": 5}


def wait_for_object(
    api: Any, namespace: str, plural: str, name: str, done: Callable[[dict[str, Any]], bool],
    group: str = "serving.knative.dev", version: str = "v1",
) -> dict[str, Any]:  # fmt: skip
    """Watch one custom object until `done(it)`; SAFETY_S x 3 only ends a wait gone wrong
    (the controller acts on its 10 s tick after Prometheus' 5 s scrape)."""
    from kubernetes import client, watch

    custom = client.CustomObjectsApi(api)
    listed = custom.list_namespaced_custom_object(
        group, version, namespace, plural, field_selector=f"metadata.name={name}"
    )
    for item in listed["items"]:
        if done(item):
            return dict(item)
    stream = watch.Watch()
    for event in stream.stream(
        custom.list_namespaced_custom_object, group, version, namespace, plural,
        field_selector=f"metadata.name={name}",
        resource_version=listed["metadata"]["resourceVersion"],
        timeout_seconds=int(3 * SAFETY_S),
    ):  # fmt: skip
        if event["type"] != "DELETED" and done(event["object"]):
            stream.stop()
            return dict(event["object"])
    raise AssertionError(f"{plural}/{name}: not done after {3 * SAFETY_S:.0f} s")


def annotations(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["metadata"].get("annotations") or {})


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first cluster test run pays for the images' build
def test_the_controller_holds_a_floor_it_read_from_prometheus_on_real_pods(
    cluster: ControlPlane, registry: str, api: Any, tmp_path: Path
) -> None:
    namespace = "pw-floor"
    with prewarm.pod_prometheus(cluster, namespace, tmp_path / "prometheus") as prometheus:
        values = prewarm.arm_values(registry, MODEL, None, prometheus.url, 1.0)
        # A fixed keep-alive: a model with no idle gaps learned yet is otherwise left to the
        # KPA (policy.py steps aside), and this test is about the floor's round trip.
        keep = {"name": "KINDLING_IDLE_TO_ZERO_S", "value": "600"}
        values["controller"]["extraEnv"].append(keep)
        with coldstart.installed(cluster, namespace, values, keep=False) as service:
            revision = f"{service['metadata']['name']}-00001"
            address = coldstart.revision_at_zero(cluster, namespace, revision)
            own = wait_for_object(api, namespace, "revisions", revision, lambda r: True)
            user_value = annotations(own)[MIN_SCALE]  # the chart's minScale, "0"
            # Traffic from zero, through the activator: the controller sees it only in
            # Prometheus, which found the pod through the API server.
            threads = [
                threading.Thread(target=coldstart.send, args=(address, namespace, revision, MODEL))
                for _ in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            series = f'sum(kindling_requests_total{{namespace="{namespace}",model="{MODEL}"}})'
            coldstart.wait_until(
                lambda: (prometheus.value(series) or 0) >= len(threads),
                "Prometheus to scrape the pod's requests", [prometheus.process],
            )  # fmt: skip

            # The controller's floor on the live Revision, the user's own value recorded
            # beside it, and Knative's PodAutoscaler carrying it.
            held = wait_for_object(
                api, namespace, "revisions", revision,
                lambda r: annotations(r).get(WARM_MIN_SCALE, "0") not in ("", "0"),
            )  # fmt: skip
            floor = annotations(held)[WARM_MIN_SCALE]
            assert annotations(held)[MIN_SCALE] == floor
            assert annotations(held)[USER_MIN_SCALE] == user_value
            wait_for_object(
                api, namespace, "podautoscalers", revision,
                lambda pa: annotations(pa).get(MIN_SCALE) == floor,
                group="autoscaling.internal.knative.dev", version="v1alpha1",
            )  # fmt: skip
            # The floor holds a ready pod (woken by the controller's request through the
            # activator if the KPA had already let the last one go), which answers.
            cluster.kubectl(
                "wait", f"deployment/{revision}-deployment", "-n", namespace,
                f"--for=jsonpath={{.status.readyReplicas}}={floor}", f"--timeout={SAFETY_S:.0f}s",
            )  # fmt: skip
            coldstart.send(address, namespace, revision, MODEL)

            # The controller stopped (its pod deleted, its Role still there): the user's
            # value comes back exactly, and Kindling's annotations go.
            cluster.kubectl(
                "scale", "deployment", "-n", namespace, "--replicas=0",
                "-l", "app.kubernetes.io/component=controller",
            )  # fmt: skip
            restored = wait_for_object(
                api, namespace, "revisions", revision,
                lambda r: WARM_MIN_SCALE not in annotations(r),
            )  # fmt: skip
            assert annotations(restored)[MIN_SCALE] == user_value
            assert USER_MIN_SCALE not in annotations(restored)


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first cluster test run pays for the images' build
def test_the_command_runs_an_arm_beside_the_simulator(cluster: ControlPlane, registry: str) -> None:
    """As a person runs it after `make cluster`; the arm's figures are shown, not judged.
    The `floor` arm: the one path of the command the other test does not take (a Revision
    that starts with its pod); the controller's arm is the test above."""
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "KINDLING_REGISTRY": registry}
    command = [
        sys.executable, "-m", "kindling", "cluster", "prewarm", "--json",
        "--namespace", "pw-command", "--seed", "3", "--arm", "floor",
        *(a for k, v in SHORT.items() for a in ("--set", f"{k}={v}")),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout)
    (arm,) = summary["arms"]
    assert arm["arm"] == "floor"
    assert arm["requests"] == 10 and arm["errors"] == 0
    # The pod was Ready before the first request (the command waits for it), so none
    # waited; the first request was still its process's first.
    assert arm["waited"] == 0 and arm["cold"] == 1
    assert arm["pod_seconds"] > 0  # the API server listed the pod while it ran
    assert set(summary["simulated"]) == set(prewarm.ARMS)  # every arm's prediction
    assert summary["simulated"]["on"]["policy"] == "kindling"
    assert all(s["requests"] == 10 for s in summary["simulated"].values())
    print("\n" + prewarm.render(summary))


# -- in-process: the parts that need no cluster ------------------------------------------------


def test_an_arm_is_read_from_the_load_tests_own_records(tmp_path: Path) -> None:
    def record(i: int, latency_ms: float, status: int = 200, cold: bool = False) -> RequestRecord:
        return RequestRecord(i, "burst 1", True, i, i, latency_ms, status, cold)

    write_csv(
        tmp_path / "requests.csv",
        [record(0, 900, cold=True), record(1, 40), record(2, 60), record(3, float("nan"), 502)],
    )
    pods_mod.write_csv(
        tmp_path / "pods.csv", [pods_mod.PodSample(0.0, 0), pods_mod.PodSample(10.0, 2)]
    )
    (tmp_path / "run.json").write_text(json.dumps({"end_s": 30.0, "started_at": 1000.0}))
    # No pod Ready until 1001.5: requests 0 and 1 (sent at 0 s and 1 s) waited for one.
    arm = prewarm.read_arm("on", tmp_path, 250.0, 1, lambda wall: int(wall >= 1001.5))
    assert arm == prewarm.Arm("on", 4, 1, 1, 2, 2, arm.p99_ms, 40.0, 1)
    assert 60 < arm.p99_ms <= 900


def test_the_simulator_sees_the_arrivals_the_load_test_sends() -> None:
    from kindling.loadtest.shapes import make_shape

    plan = make_shape("bursts", **SHORT).plan(3)
    sims = prewarm.simulate(MODEL, 3, SHORT, profiles.pod_start().median_s, 250.0)
    assert {arm: s.policy for arm, s in sims.items()} == {
        "off": "knative-kpa", "floor": "knative-kpa", "on": "kindling",
    }  # fmt: skip
    assert all(s.requests == len(plan.arrivals) for s in sims.values())
    # From zero pods, as the real arms start: the burst's first request waits for a pod;
    # under a floor of one that came up with the Revision, none does.
    assert sims["off"].cold_requests >= 1 and sims["on"].cold_requests >= 1
    assert sims["floor"].cold_requests == 0


def test_the_load_test_is_sent_as_an_ingress_sends_it(tmp_path: Path) -> None:
    command = prewarm.loadtest_command(
        "10.96.0.20", "ns", "m-00001", MODEL, 3, {"gap_s": 5}, tmp_path
    )
    text = " ".join(command)
    assert "--target http://10.96.0.20" in text
    assert "--header Knative-Serving-Namespace: ns" in text
    assert "--header Knative-Serving-Revision: m-00001" in text
    assert "--pods kubectl:serving.knative.dev/revision=m-00001@ns" in text
    assert "--metadata-url none" in text  # reading metadata would wake the Revision
    assert "--set gap_s=5" in text


def test_the_command_says_what_it_needs() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KINDLING_REGISTRY")}
    done = subprocess.run(
        [sys.executable, "-m", "kindling", "cluster", "prewarm"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "set KUBECONFIG and KINDLING_REGISTRY" in done.stderr
