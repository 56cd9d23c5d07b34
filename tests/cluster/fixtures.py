"""The cluster tier: one real control plane (kindling.cluster) for the whole session,
shared by every folder that needs it (a plugin: tests/conftest.py names it in
pytest_plugins, so there is one session fixture, not one per conftest).

It has a real node (containerd, kubelet, kube-proxy, CoreDNS) and a loopback registry
beside the kwok nodes: `namespace` gives a test a namespace whose pods go to the kwok nodes
(scheduling, Knative's objects: nothing is run), `node_namespace` one whose pods really
run. After the session, nothing of the node may be left on the host.

Its tools are built by `make cluster-tools` (which `make test` runs first). When they are
missing, every cluster test fails with the command that builds them: this tier never
skips.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kindling.cluster import hostnet, images, tools
from kindling.cluster.controlplane import ControlPlane

SAFETY_S = 120  # a safety net on waits that end in seconds; never a measure of speed


@pytest.fixture(scope="session")
def cluster_tools() -> tools.Tools:
    try:
        return tools.locate().require()
    except tools.ToolsMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def cluster(cluster_tools: tools.Tools) -> Iterator[ControlPlane]:
    with ControlPlane(cluster_tools, real_node=True) as plane:
        yield plane
    left = hostnet.leftovers()
    assert not left, f"the real node left these on the host after it stopped: {left}"


REPO = Path(__file__).resolve().parents[2]
# The chart's appVersion: the tag its images are pulled by.
APP_VERSION = str(yaml.safe_load((REPO / "charts/kindling/Chart.yaml").read_text())["appVersion"])


@pytest.fixture(scope="session")
def pushed_images(
    cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The project's images, as `make cluster` pushes them: built once per session by
    docker/build_images.py (the runtime with every sample model baked in, the controller,
    Redis), tagged with the chart's appVersion, pushed to the cluster's registry by
    docker/publish.py as `make push` does; the probe beside them. Name -> reference."""
    assert cluster.registry is not None
    report = tmp_path_factory.mktemp("images") / "images.json"
    build = subprocess.run(
        [sys.executable, str(REPO / "docker" / "build_images.py"), "--models", "all",
         "--tag", APP_VERSION, "--report", str(report)],
        capture_output=True, text=True, timeout=1700,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    # What a user runs to publish them (`make push`'s first half).
    push = subprocess.run(
        [sys.executable, str(REPO / "docker" / "publish.py"), "images",
         "--registry", cluster.registry, "--tag", APP_VERSION, "--tls-verify", "false"],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert push.returncode == 0, push.stderr[-4000:]
    pushed = {
        name: f"{cluster.registry}/kindling-{name}:{APP_VERSION}"
        for name in json.loads(report.read_text())["images"]
    }
    assert sorted(push.stdout.split()) == sorted(pushed.values())
    images.probe().push(cluster.registry, "kindling-probe", APP_VERSION)
    pushed["probe"] = f"{cluster.registry}/kindling-probe:{APP_VERSION}"
    return pushed


@pytest.fixture(scope="session")
def registry(cluster: ControlPlane, pushed_images: dict[str, str]) -> str:
    """The registry, once it holds the chart's images under its appVersion."""
    assert cluster.registry is not None
    return cluster.registry


@pytest.fixture
def api(cluster: ControlPlane) -> Iterator[Any]:
    with cluster.api_client() as client:
        yield client


@pytest.fixture
def namespace(cluster: ControlPlane) -> Iterator[str]:
    """A fresh namespace per test whose pods go to the kwok nodes, deleted after it
    (without waiting for finalizers)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name, kwok=True)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def node_namespace(cluster: ControlPlane) -> Iterator[str]:
    """A fresh namespace per test whose pods run on the real node; deleted after it, and
    waited for, so that its pods are gone before the next test counts the node's."""
    name = f"n-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    yield name
    # Knative Services first, their pods waited for: while a pod terminates, the namespace
    # controller waits out its grace period (a Revision's timeoutSeconds, 300 s by default)
    # before it looks at the namespace again.
    cluster.kubectl(
        "delete", "services.serving.knative.dev", "--all", "-n", name, "--cascade=foreground",
        f"--timeout={SAFETY_S}s",
    )  # fmt: skip
    cluster.kubectl("delete", "namespace", name, f"--timeout={SAFETY_S}s")


def deployment(name: str, replicas: int, pod_spec: dict[str, Any]) -> dict[str, Any]:
    """A Deployment of `pod_spec` whose pods carry `app: <name>`."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def service(name: str, target_port: int) -> dict[str, Any]:
    """A ClusterIP Service on port 80 for `deployment(name, ...)`'s pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": target_port}]},
    }


def watch_until(
    list_call: Callable[..., Any], done: Callable[[list[Any]], bool], **kwargs: Any
) -> list[Any]:
    """Watch a list call (`CoreV1Api.list_namespaced_pod`, ...) until `done(items)`: the
    items as they are now, kept current from the watch events. Waits on the API server's
    events, not on a clock; SAFETY_S only ends a wait that went wrong."""
    from kubernetes import watch

    initial = list_call(**kwargs)
    items = {item.metadata.uid: item for item in initial.items}
    if done(list(items.values())):
        return list(items.values())
    stream = watch.Watch()
    for event in stream.stream(
        list_call,
        resource_version=initial.metadata.resource_version,
        timeout_seconds=SAFETY_S,
        **kwargs,
    ):
        obj = event["object"]
        if event["type"] == "DELETED":
            items.pop(obj.metadata.uid, None)
        else:
            items[obj.metadata.uid] = obj
        if done(list(items.values())):
            stream.stop()
            return list(items.values())
    raise AssertionError(
        f"not done after {SAFETY_S} s: {[i.metadata.name for i in items.values()]}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test on the control plane carries the tail of every component's log, so a
    CI failure can be read without the (removed) folder."""
    report = yield
    plane = getattr(item, "funcargs", {}).get("cluster")
    if report.failed and isinstance(plane, ControlPlane):
        for process in plane.processes:
            report.sections.append((f"{process.name} log (tail)", process.tail(15)))
    return report


def configuration_ready(cluster: ControlPlane, namespace: str, name: str) -> None:
    """Wait until Knative Service `name`'s Configuration is Ready (its latest Revision is).
    Knative's controller creates the Configuration a moment after the Service, and a
    condition wait on an object not there yet fails at once: wait for it to exist first."""
    for condition in ("create", "condition=Ready"):
        cluster.kubectl(
            "wait", f"--for={condition}", f"configuration/{name}", "-n", namespace,
            f"--timeout={SAFETY_S}s",
        )  # fmt: skip
