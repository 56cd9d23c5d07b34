"""`kindling controller run` end to end, every part real: the chart installed on the real
control plane (Knative's controller and autoscaler turning the Service into a Revision and
kwok pods), a real `kindling serve` runtime under real inference load, a real Prometheus
scraping it with the labels Kubernetes pod discovery gives, and the controller as its own
process, authenticated with the chart's ServiceAccount token (the chart's Role applies).

kwok's pods run no container, so the runtime that serves the load is a process on loopback
standing in for the Revision's pod: Prometheus labels it with that pod's namespace and name,
as its `kubernetes-pods` job would. Every wait is on an event (a watch, the controller's
own /metrics); timeouts are safety nets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kubernetes import client

from kindling.cluster.controlplane import ControlPlane
from kindling.cluster.processes import free_port
from kindling.controller.knative import MIN_SCALE, USER_MIN_SCALE, WARM_MIN_SCALE
from kindling.loadtest.bench_runtime import binary_request
from tests.charts.test_cluster import RELEASE, install
from tests.cluster.fixtures import configuration_ready
from tests.conftest import RuntimeProcess, StartRuntime, stop_process
from tests.controller.live_fixtures import PrometheusServer, Target, prometheus, wait_until
from tests.controller.test_actuation_cluster import _watch_custom

pytestmark = pytest.mark.cluster
__all__ = ["prometheus"]  # the fixture, imported for pytest

MODEL = "squeezenet1_1"
SERVICE = f"{RELEASE}-squeezenet1-1"
REVISION = f"{SERVICE}-00001"
SA = f"{RELEASE}-controller"
MAX_SCALE = 4
CLIENTS = 4


def _kubeconfig(cluster: ControlPlane, namespace: str, path: Path) -> Path:
    """A kubeconfig holding the chart's controller ServiceAccount token, nothing more."""
    token = cluster.service_account_token(namespace, SA)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": cluster.server, "certificate-authority": str(cluster.pki.ca)},
            }
        ],
        "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": SA}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    return path


class Load:
    """Real inference requests from a few client threads until stopped."""

    def __init__(self, runtime: RuntimeProcess) -> None:
        batch = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        self.body, self.headers = binary_request(batch)
        self.runtime = runtime
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def _client(self) -> None:
        while not self.stop.is_set():
            status, _, _ = self.runtime.post(f"/v2/models/{MODEL}/infer", self.body, self.headers)
            self.statuses.append(status)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


class ControllerProcess:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    def metric(self, name: str) -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_controller(tmp_path: Path) -> Iterator[Callable[..., ControllerProcess]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(kubeconfig: Path, env: dict[str, str]) -> ControllerProcess:
        port = free_port()
        log = tmp_path / f"controller-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "kindling", "controller", "run", "--kubeconfig",
                 str(kubeconfig)],
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "KINDLING_PORT": str(port), **env},
            )  # fmt: skip
        started.append(process)
        return ControllerProcess(process, port, log)

    yield start
    for process in started:
        stop_process(process)


def _revision(api: Any, namespace: str) -> dict[str, Any]:
    return dict(
        client.CustomObjectsApi(api).get_namespaced_custom_object(
            "serving.knative.dev", "v1", namespace, "revisions", REVISION
        )
    )


def test_the_controller_pre_warms_the_live_revision_under_real_load_and_gives_it_back(
    cluster: ControlPlane,
    api: Any,
    namespace: str,
    model_repository: Path,
    start_runtime: StartRuntime,
    prometheus: Callable[[list[Target]], PrometheusServer],
    start_controller: Callable[..., ControllerProcess],
    tmp_path: Path,
) -> None:
    # containerConcurrency 1: the KPA aims at 0.7 requests in flight per pod, so a few
    # clients' worth of load asks for several pods.
    install(
        cluster, namespace,
        sets=(f"models[0].name={MODEL}", "models[0].containerConcurrency=1",
              f"models[0].autoscaling.maxScale={MAX_SCALE}"),
    )  # fmt: skip
    configuration_ready(cluster, namespace, SERVICE)
    # The chart writes the user's own min-scale (autoscaling.minScale, 0 by default).
    user = (_revision(api, namespace)["metadata"].get("annotations") or {}).get(MIN_SCALE)
    generation = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "serving.knative.dev", "v1", namespace, "services", SERVICE
    )["metadata"]["generation"]

    runtime = start_runtime(model_repository, models=(MODEL,))
    server = prometheus([Target(runtime.url, namespace, f"{REVISION}-deployment-5c7f9d-abcde")])
    controller = start_controller(
        _kubeconfig(cluster, namespace, tmp_path / "controller.kubeconfig"),
        {
            "KINDLING_NAMESPACE": namespace,
            "KINDLING_POD_NAME": "controller-0",
            "KINDLING_SELECTOR": f"app.kubernetes.io/instance={RELEASE},"
            "app.kubernetes.io/component=runtime",
            "KINDLING_LEASE_NAME": SA,
            "KINDLING_PROMETHEUS_URL": server.url,
            # Config, not a measure: decide every second over a 10 s window so that the
            # events come quickly.
            "KINDLING_INTERVAL_S": "1",
            "KINDLING_WINDOW_S": "10",
            "KINDLING_POD_START_S": "1",
            "KINDLING_WARMUP_URL": f"http://{runtime.url}",
            "KINDLING_LOG_LEVEL": "info",
        },
    )

    def warmed(revisions: list[Any]) -> bool:
        (rev,) = [r for r in revisions if r["metadata"]["name"] == REVISION]
        annotations = rev["metadata"].get("annotations") or {}
        return int(annotations.get(MIN_SCALE, "0")) >= 2

    with Load(runtime) as load:
        revisions = _watch_custom(api, namespace, "revisions", warmed)
        assert set(load.statuses) == {200}
    (rev,) = [r for r in revisions if r["metadata"]["name"] == REVISION]
    annotations = rev["metadata"]["annotations"]
    assert 2 <= int(annotations[MIN_SCALE]) <= MAX_SCALE  # the user's ceiling holds
    assert annotations[USER_MIN_SCALE] == (user or "") and annotations[WARM_MIN_SCALE]
    # Knative turned the floor into pods; the Service itself was never written.
    service = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "serving.knative.dev", "v1", namespace, "services", SERVICE
    )
    assert service["metadata"]["generation"] == generation
    # The decision is logged just after its patch lands: wait for the line, not the race.
    wait_until(
        lambda: True if any(r in controller.log_text() for r in ("scale-up", "initial")) else None,
        "the controller to log the decision that raised the floor",
    )

    # The API server goes away and comes back: the controller rides it out and leads again
    # (its loop turns after the restart, with the Lease held).
    cluster.restart_apiserver()
    restarted = controller.metric("kindling_controller_last_loop_timestamp_seconds") or 0.0
    wait_until(
        lambda: (
            True
            if (controller.metric("kindling_controller_last_loop_timestamp_seconds") or 0)
            > restarted
            and controller.metric("kindling_controller_leader") == 1
            and controller.metric("kindling_controller_tick_seconds_count")
            else None
        ),
        "the controller to lead and tick again after the API server restart",
    )
    assert controller.process.poll() is None

    # SIGTERM: it gives the user's own value back, exactly.
    controller.process.send_signal(signal.SIGTERM)
    assert controller.process.wait(timeout=120) == 0, controller.log_text()

    def given_back(revisions: list[Any]) -> bool:
        (rev,) = [r for r in revisions if r["metadata"]["name"] == REVISION]
        annotations = rev["metadata"].get("annotations") or {}
        return (
            annotations.get(MIN_SCALE) == user
            and not {USER_MIN_SCALE, WARM_MIN_SCALE} & annotations.keys()
        )

    _watch_custom(api, namespace, "revisions", given_back)
    assert "giving the user's own values back" in controller.log_text()
