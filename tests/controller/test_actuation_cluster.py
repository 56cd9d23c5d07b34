"""Actuation on the real control plane (tests/cluster/fixtures.py: kube-apiserver with RBAC,
Knative Serving's controller and autoscaler, kwok nodes), with the chart installed and the
actuators authenticated as the chart's controller ServiceAccount (a real token): the Role
is the one a user's cluster enforces.

Waits are on the API server's events (watches, kubectl wait) or on the code's own hooks
(the retry's on_retry and sleep, the elector's callbacks); never on a clock."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from kindling.cluster.controlplane import ControlPlane
from kindling.controller import kube
from kindling.controller.knative import MIN_SCALE, USER_MIN_SCALE, WARM_MIN_SCALE, KnativeActuator
from kindling.controller.leader import LeaderElector
from kindling.controller.raw import USER_REPLICAS, RawActuator, RawWorkload
from kindling.controller.targets import PREWARM_MARGIN_K
from tests.charts.test_cluster import RELEASE, install, ready_pods
from tests.cluster.fixtures import SAFETY_S, configuration_ready
from tests.controller.faults import Fault, fault_server

pytestmark = pytest.mark.cluster

SERVICE = f"{RELEASE}-squeezenet1-1"
FIRST, SECOND = f"{SERVICE}-00001", f"{SERVICE}-00002"
SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=runtime"
SA = f"{RELEASE}-controller"
SERVING = ("serving.knative.dev", "v1")


def _retry(**kwargs: Any) -> kube.Retry:
    """Retries that never wait on a clock: the sleep only records (or acts, when given)."""
    return kube.Retry(sleep=kwargs.pop("sleep", lambda s: None), rng=random.Random(3), **kwargs)


def _revision(api: Any, name: str, namespace: str) -> dict[str, Any]:
    return dict(
        client.CustomObjectsApi(api).get_namespaced_custom_object(
            *SERVING, namespace, "revisions", name
        )
    )


def _annotations(api: Any, name: str, namespace: str) -> dict[str, str]:
    return dict(_revision(api, name, namespace)["metadata"]["annotations"])


@pytest.fixture(scope="module")
def knative_ns(cluster: ControlPlane) -> Iterator[str]:
    """One install for the Knative tests (an install costs a Ready Revision): squeezenet1_1
    with the user's floor 1 and ceiling 3 and its own pre-warm margin 4, then a second
    Revision that carries no traffic (traffic pinned to the first, the template changed)."""
    namespace = f"actuation-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(namespace, kwok=True)
    install(
        cluster, namespace,
        sets=("models[0].name=squeezenet1_1", "models[0].autoscaling.minScale=1",
              "models[0].autoscaling.maxScale=3", "models[0].prewarm.marginK=4"),
    )  # fmt: skip
    configuration_ready(cluster, namespace, SERVICE)
    with cluster.api_client() as api:
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            *SERVING, namespace, "services", SERVICE,
            {"spec": {
                "traffic": [{"revisionName": FIRST, "percent": 100}],
                "template": {"metadata": {"annotations": {"kindling.dev/test": "second"}}},
            }},
        )  # fmt: skip

        def routed(services: list[Any]) -> bool:
            (svc,) = services
            status = svc.get("status", {})
            return (
                status.get("latestCreatedRevisionName") == SECOND
                and [(t.get("revisionName"), t.get("percent")) for t in status.get("traffic", [])]
                == [(FIRST, 100)]
                and status.get("observedGeneration") == svc["metadata"]["generation"]
            )

        _watch_custom(api, namespace, "services", routed)
    yield namespace
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def _prewarm_events(api: Any, namespace: str) -> list[client.CoreV1Event]:
    return list(
        client.CoreV1Api(api)
        .list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={FIRST},reason=PreWarm"
        )
        .items
    )


def _watch_custom(api: Any, namespace: str, plural: str, done: Any) -> list[Any]:
    """watch_until for custom objects (dicts rather than typed objects)."""
    from kubernetes import watch

    custom = client.CustomObjectsApi(api)
    listed = custom.list_namespaced_custom_object(*SERVING, namespace, plural)
    items = {i["metadata"]["uid"]: i for i in listed["items"]}
    if done(list(items.values())):
        return list(items.values())
    stream = watch.Watch()
    for event in stream.stream(
        custom.list_namespaced_custom_object, *SERVING, namespace, plural,
        resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=SAFETY_S,
    ):  # fmt: skip
        obj = event["object"]
        if event["type"] == "DELETED":
            items.pop(obj["metadata"]["uid"], None)
        else:
            items[obj["metadata"]["uid"]] = obj
        if done(list(items.values())):
            stream.stop()
            return list(items.values())
    raise AssertionError(f"{plural} not as expected after {SAFETY_S} s")


def test_min_scale_on_the_revision_with_traffic_within_the_users_bounds_then_given_back(
    cluster: ControlPlane, knative_ns: str
) -> None:
    ns = knative_ns
    with cluster.api_client() as admin, cluster.service_account_client(ns, SA) as sa:
        custom = client.CustomObjectsApi(admin)
        service_before = custom.get_namespaced_custom_object(*SERVING, ns, "services", SERVICE)
        second_before = _revision(admin, SECOND, ns)
        actuator = KnativeActuator(sa, ns, SELECTOR, retry=_retry())
        events_before = len(_prewarm_events(admin, ns))

        (target,) = actuator.discover()
        assert (target.ref.workload, target.ref.model) == (SERVICE, "squeezenet1_1")
        assert target.revisions == (FIRST,)  # the second carries no traffic
        assert (target.user_min_scale, target.user_max_scale) == (1, 3)
        # The chart's target 32 (containerConcurrency 0) at Knative's 70 % utilization.
        assert target.concurrency_target == pytest.approx(32 * 0.7)
        assert target.url == f"http://{SERVICE}.{ns}.svc.cluster.local"

        # Above the ceiling: held at the user's max-scale 3, and 3 pods run.
        actuator.set_warm(target, 5)
        first = _annotations(admin, FIRST, ns)
        assert (first[MIN_SCALE], first[USER_MIN_SCALE], first[WARM_MIN_SCALE]) == ("3", "1", "3")
        ready_pods(admin, ns, f"serving.knative.dev/revision={FIRST}", 3)
        (target,) = actuator.discover()
        assert target.user_min_scale == 1  # still the user's, not Kindling's 3

        # Idempotent: no write when it already is so.
        # (Knative's status updates move the resourceVersion; each write of ours makes
        # exactly one PreWarm Event, so the Events count the writes.)
        writes = len(_prewarm_events(admin, ns))
        actuator.set_warm(target, 3)
        assert len(_prewarm_events(admin, ns)) == writes == events_before + 1

        # Nothing on the Service template, nothing on the Revision without traffic.
        service = custom.get_namespaced_custom_object(*SERVING, ns, "services", SERVICE)
        assert service["metadata"]["generation"] == service_before["metadata"]["generation"]
        assert service["spec"]["template"] == service_before["spec"]["template"]
        second = _revision(admin, SECOND, ns)
        assert second["metadata"]["annotations"] == second_before["metadata"]["annotations"]
        revisions = custom.list_namespaced_custom_object(*SERVING, ns, "revisions")["items"]
        assert sorted(r["metadata"]["name"] for r in revisions) == [FIRST, SECOND]

        # Given back: the user's "1" exactly, our annotations gone.
        actuator.release(target)
        first = _annotations(admin, FIRST, ns)
        assert first[MIN_SCALE] == "1"
        assert USER_MIN_SCALE not in first and WARM_MIN_SCALE not in first

        # A user with no min-scale at all: restored to absent.
        path = "/metadata/annotations/" + kube.escape_pointer(MIN_SCALE)
        kube.json_patch(admin, *SERVING, ns, "revisions", FIRST, [{"op": "remove", "path": path}])
        (target,) = actuator.discover()
        assert target.user_min_scale == 0
        actuator.set_warm(target, 2)
        first = _annotations(admin, FIRST, ns)
        assert (first[MIN_SCALE], first[USER_MIN_SCALE]) == ("2", "")
        actuator.release(target)
        first = _annotations(admin, FIRST, ns)
        assert MIN_SCALE not in first and USER_MIN_SCALE not in first

        # The user changes min-scale while Kindling holds it: the user's value stays.
        actuator.set_warm(target, 2)
        custom.patch_namespaced_custom_object(
            *SERVING, ns, "revisions", FIRST, {"metadata": {"annotations": {MIN_SCALE: "1"}}}
        )
        (target,) = actuator.discover()
        assert target.user_min_scale == 1
        actuator.release(target)
        first = _annotations(admin, FIRST, ns)
        assert first[MIN_SCALE] == "1" and WARM_MIN_SCALE not in first

        # Every change was reported as an Event on the Revision.
        assert len(_prewarm_events(admin, ns)) == events_before + 6


def test_the_models_own_margin_is_read_from_the_revision_that_carries_traffic(
    cluster: ControlPlane, knative_ns: str
) -> None:
    """The chart's prewarm.marginK reaches the Revision (through the Service template) and
    the Target; a value annotated on the live Revision is read on the next discover, and a
    malformed one leaves the controller's global margin (None), without failing."""
    ns = knative_ns
    with cluster.api_client() as admin, cluster.service_account_client(ns, SA) as sa:
        actuator = KnativeActuator(sa, ns, SELECTOR, retry=_retry())
        assert _annotations(admin, FIRST, ns)[PREWARM_MARGIN_K] == "4"
        (target,) = actuator.discover()
        assert target.margin_k == 4.0
        custom = client.CustomObjectsApi(admin)
        try:
            for value, expected in (("0", 0.0), ("-1", None)):
                custom.patch_namespaced_custom_object(
                    *SERVING, ns, "revisions", FIRST,
                    {"metadata": {"annotations": {PREWARM_MARGIN_K: value}}},
                )  # fmt: skip
                (target,) = actuator.discover()
                assert target.margin_k == expected, value
        finally:
            custom.patch_namespaced_custom_object(
                *SERVING, ns, "revisions", FIRST,
                {"metadata": {"annotations": {PREWARM_MARGIN_K: "4"}}},
            )  # fmt: skip


def test_a_stale_json_patch_test_is_a_conflict_on_the_real_api_server(
    cluster: ControlPlane, knative_ns: str
) -> None:
    """What makes a concurrent change safe: the API server refuses a patch whose `test` op
    no longer holds, and kube.json_patch reads that as a Conflict (re-read, retry)."""
    path = "/metadata/annotations/" + kube.escape_pointer(MIN_SCALE)
    with cluster.service_account_client(knative_ns, SA) as sa:
        current = _annotations(sa, FIRST, knative_ns).get(MIN_SCALE)
        stale = [{"op": "test", "path": path, "value": f"{current}-stale"},
                 {"op": "add", "path": path, "value": "3"}]  # fmt: skip
        with pytest.raises(kube.Conflict):
            kube.json_patch(sa, *SERVING, knative_ns, "revisions", FIRST, stale)
        assert _annotations(sa, FIRST, knative_ns).get(MIN_SCALE) == current


def test_409_429_and_503_through_a_proxy_are_retried_and_the_patch_lands(
    cluster: ControlPlane, knative_ns: str
) -> None:
    ns = knative_ns
    token = cluster.service_account_token(ns, SA)
    faults = [Fault(409), Fault(429, {"Retry-After": "2"}), Fault(503)]
    waits: list[float] = []
    with fault_server(
        faults,
        matches=lambda method, path: method == "PATCH" and "/revisions/" in path,
        upstream=cluster.server,
        ca_file=str(cluster.pki.ca),
    ) as proxy:
        configuration = client.Configuration()
        configuration.host = proxy.url
        configuration.api_key = {"authorization": f"Bearer {token}"}
        with client.ApiClient(configuration) as sa, cluster.api_client() as admin:
            actuator = KnativeActuator(sa, ns, SELECTOR, retry=_retry(sleep=waits.append))
            (target,) = actuator.discover()
            actuator.set_warm(target, 2)
            assert _annotations(admin, FIRST, ns)[MIN_SCALE] == "2"
            actuator.release(target)
    patches = [status for method, _, status in proxy.seen if method == "PATCH"]
    assert patches[:4] == [409, 429, 503, 200]
    assert len(waits) == 3 and waits[1] >= 2.0  # Retry-After honoured


def test_the_actuator_retries_while_the_api_server_restarts_and_resumes(
    cluster: ControlPlane, knative_ns: str
) -> None:
    """The API server goes away after discovery; the first failed attempt (a refused
    connection) brings it back from the retry's own sleep, so the test waits on the retry,
    not on a clock, and the write lands on the restarted server."""
    ns = knative_ns
    failures: list[kube.KubeError] = []
    restarted = threading.Event()

    def sleep(_: float) -> None:
        if not restarted.is_set():
            cluster.start_apiserver()  # returns once /readyz answers ok
            restarted.set()

    with cluster.service_account_client(ns, SA) as sa:
        retry = _retry(sleep=sleep, on_retry=lambda n, e, w: failures.append(e))
        actuator = KnativeActuator(sa, ns, SELECTOR, retry=retry)
        (target,) = actuator.discover()
        cluster.stop_apiserver()
        try:
            actuator.set_warm(target, 2)
        finally:
            if not restarted.is_set():
                cluster.start_apiserver()
        assert restarted.is_set() and failures
        assert all(isinstance(f, kube.Retryable) for f in failures)
        assert _annotations(sa, FIRST, ns)[MIN_SCALE] == "2"
        actuator.release(target)
        assert _annotations(sa, FIRST, ns)[MIN_SCALE] == "1"


def test_two_electors_one_leader_and_the_other_takes_over_when_it_stops(
    cluster: ControlPlane, knative_ns: str
) -> None:
    ns = knative_ns
    started = {name: threading.Event() for name in ("a", "b")}
    lost = {name: threading.Event() for name in ("a", "b")}
    with (
        cluster.service_account_client(ns, SA) as sa_a,
        cluster.service_account_client(ns, SA) as sa_b,
    ):
        electors = {
            name: LeaderElector(
                api, ns, SA, f"controller-{name}",
                on_started=started[name].set, on_lost=lost[name].set,
            )
            for name, api in (("a", sa_a), ("b", sa_b))
        }  # fmt: skip
        electors["a"].start()
        assert started["a"].wait(SAFETY_S)
        electors["b"].start()
        try:
            # b has tried at least once and seen a's record: it does not lead.
            assert electors["b"].observed.wait(SAFETY_S)
            assert electors["a"].is_leader() and not electors["b"].is_leader()
            lease = client.CoordinationV1Api(sa_a).read_namespaced_lease(SA, ns)
            assert lease.spec.holder_identity == "controller-a"

            electors["a"].stop()  # gives the lease up
            assert lost["a"].is_set() and not electors["a"].is_leader()
            assert started["b"].wait(SAFETY_S)
            assert electors["b"].is_leader()
            lease = client.CoordinationV1Api(sa_b).read_namespaced_lease(SA, ns)
            assert lease.spec.holder_identity == "controller-b"
            assert lease.spec.lease_transitions >= 1
        finally:
            for elector in electors.values():
                elector.stop()


def test_raw_mode_scales_through_the_scale_subresource_and_gives_replicas_back(
    cluster: ControlPlane, api: Any, namespace: str
) -> None:
    install(
        cluster, namespace, "raw-gpu.yaml",
        sets=("controller.enabled=true", "models[0].prewarm.marginK=0.5"),
    )  # fmt: skip
    deployment = f"{RELEASE}-squeezenet1-1"
    pods = f"app.kubernetes.io/instance={RELEASE},kindling.dev/model=squeezenet1_1"
    ready_pods(api, namespace, pods, 1)
    with cluster.service_account_client(namespace, SA) as sa:
        actuator = RawActuator(
            sa, namespace, [RawWorkload(deployment, "squeezenet1_1")], lease=SA, retry=_retry()
        )
        (target,) = actuator.discover()
        assert (target.ref.workload, target.user_min_scale, target.revisions) == (
            deployment,
            1,
            (),
        )
        # The model's own margin, from the Deployment's annotation (read under the Role).
        assert target.margin_k == 0.5
        actuator.set_warm(target, 3)
        ready_pods(api, namespace, pods, 3)
        lease = client.CoordinationV1Api(sa).read_namespaced_lease(SA, namespace)
        assert lease.metadata.annotations[USER_REPLICAS] == f'{{"{deployment}": 1}}'
        # A restarted controller (a new actuator) still knows the user's own value.
        again = RawActuator(sa, namespace, [RawWorkload(deployment, "squeezenet1_1")], lease=SA)
        (target,) = again.discover()
        assert target.user_min_scale == 1
        version = client.AppsV1Api(api).read_namespaced_deployment(deployment, namespace)
        again.set_warm(target, 3)  # already so: no write
        after = client.AppsV1Api(api).read_namespaced_deployment(deployment, namespace)
        assert after.metadata.generation == version.metadata.generation  # spec untouched
        again.release(target)
        assert (
            client.AppsV1Api(api).read_namespaced_deployment(deployment, namespace).spec.replicas
            == 1
        )
        ready_pods(api, namespace, pods, 1)
        lease = client.CoordinationV1Api(sa).read_namespaced_lease(SA, namespace)
        assert lease.metadata.annotations[USER_REPLICAS] == "{}"
