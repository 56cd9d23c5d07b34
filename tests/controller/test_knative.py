"""The Knative actuator's decisions without an API server (controller/knative.py): the JSON
patch each state of a Revision's annotations gets, the per-pod target as Knative resolves
it, traffic as the Service reports it, and the version setting. The same code runs against
the real control plane in test_actuation_cluster.py."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from kindling.controller import knative
from kindling.controller.knative import (
    MAX_SCALE,
    MIN_SCALE,
    TARGET,
    USER_MIN_SCALE,
    WARM_MIN_SCALE,
    KnativeActuator,
)
from kindling.controller.targets import PREWARM_MARGIN_K

MIN = "/metadata/annotations/autoscaling.knative.dev~1min-scale"
USER = "/metadata/annotations/kindling.dev~1user-min-scale"
WARM = "/metadata/annotations/kindling.dev~1warm-min-scale"


def _obj(annotations: dict[str, str] | None, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "r", "resourceVersion": "7"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": spec}


def _ops(annotations: dict[str, str] | None, pods: int | None) -> list[dict[str, Any]]:
    actuator = KnativeActuator(_api(), "ns", "x")
    return actuator._operations(_obj(annotations), pods)[0]


def _api() -> client.ApiClient:
    """A real client that these tests never let make a call."""
    return client.ApiClient(client.Configuration())


def test_first_raise_records_the_users_value_and_tests_what_it_read() -> None:
    ops = _ops({MIN_SCALE: "1", MAX_SCALE: "3"}, 5)
    assert ops == [
        {"op": "test", "path": MIN, "value": "1"},
        {"op": "add", "path": MIN, "value": "3"},  # held at max-scale
        {"op": "add", "path": USER, "value": "1"},
        {"op": "add", "path": WARM, "value": "3"},
    ]


def test_absent_min_scale_is_guarded_by_resource_version_and_recorded_empty() -> None:
    ops = _ops({}, 2)
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}
    assert {"op": "add", "path": USER, "value": ""} in ops
    # No annotations at all: the map is made first.
    ops = _ops(None, 2)
    assert ops[1] == {"op": "add", "path": "/metadata/annotations", "value": {}}


def test_no_write_when_already_so_or_at_the_users_own_floor() -> None:
    held = {MIN_SCALE: "3", USER_MIN_SCALE: "1", WARM_MIN_SCALE: "3"}
    assert _ops(held, 3) == []
    assert _ops({MIN_SCALE: "2"}, 1) == []  # below the user's floor, never touched
    assert _ops({MIN_SCALE: "2"}, None) == []  # nothing to give back


def test_release_restores_the_value_or_its_absence() -> None:
    held = {MIN_SCALE: "3", USER_MIN_SCALE: "1", WARM_MIN_SCALE: "3"}
    assert {"op": "replace", "path": MIN, "value": "1"} in _ops(held, None)
    assert {"op": "replace", "path": MIN, "value": "1"} in _ops(held, 1)  # floor = give back
    none = {MIN_SCALE: "3", USER_MIN_SCALE: "", WARM_MIN_SCALE: "3"}
    ops = _ops(none, None)
    assert {"op": "remove", "path": MIN} in ops
    assert {"op": "remove", "path": USER} in ops and {"op": "remove", "path": WARM} in ops


def test_a_value_the_user_changed_meanwhile_is_theirs() -> None:
    changed = {MIN_SCALE: "2", USER_MIN_SCALE: "1", WARM_MIN_SCALE: "3"}
    assert knative.Held.of(changed).floor == 2
    ops = _ops(changed, None)
    assert all(op["path"] != MIN or op["op"] == "test" for op in ops)  # left as is
    assert {"op": "add", "path": USER, "value": "2"} in _ops(changed, 4)


@pytest.mark.parametrize(
    ("annotations", "cc", "expected"),
    [
        ({}, 0, 70.0),  # container-concurrency-target-default 100 x 70 %
        ({}, 10, 7.0),
        ({TARGET: "32"}, 0, 22.4),
        ({TARGET: "32"}, 8, 5.6),  # the annotation is capped by containerConcurrency
        ({TARGET: "10", knative.TARGET_UTILIZATION: "50"}, 0, 5.0),
    ],
)
def test_concurrency_target_as_knative_resolves_it(
    annotations: dict[str, str], cc: int, expected: float
) -> None:
    revision = _obj(annotations, containerConcurrency=cc)
    assert knative.concurrency_target(revision) == pytest.approx(expected)


def test_traffic_counts_only_revisions_with_a_share() -> None:
    service = {"status": {"traffic": [
        {"revisionName": "a", "percent": 90},
        {"revisionName": "b", "percent": 0, "tag": "canary"},
        {"revisionName": "a", "percent": 10, "tag": "x"},
    ]}}  # fmt: skip
    assert knative.traffic_percent(service) == {"a": 100}
    assert knative.traffic_percent({}) == {}


def test_version_setting() -> None:
    assert knative.parse_version("auto") == (1, 21)
    assert knative.parse_version("1.20") == (1, 20)
    assert knative.parse_version("1.23.1") == (1, 23)
    with pytest.raises(knative.VersionSettingInvalid):
        knative.parse_version("latest")
    assert KnativeActuator(_api(), "ns", "x", knative_version="1.20").patches_pod_autoscalers
    assert not KnativeActuator(_api(), "ns", "x").patches_pod_autoscalers


def _revision(name: str, margin: str | None) -> dict[str, Any]:
    annotations = {} if margin is None else {PREWARM_MARGIN_K: margin}
    revision = _obj(annotations)
    revision["metadata"]["name"] = name
    return revision


def _margin(traffic: list[tuple[str, int]], margins: dict[str, str | None]) -> float | None:
    actuator = KnativeActuator(_api(), "ns", "x")
    service = {
        "metadata": {"name": "svc"},
        "status": {"traffic": [{"revisionName": r, "percent": p} for r, p in traffic]},
    }
    carrying = [_revision(r, margins[r]) for r, _ in traffic]
    return actuator._target(service, "m", carrying).margin_k


def test_the_revision_with_the_most_traffic_speaks_for_the_models_margin() -> None:
    assert _margin([("a", 100)], {"a": "4"}) == 4.0
    assert _margin([("a", 100)], {"a": "0"}) == 0.0  # 0 is a margin, not "unset"
    assert _margin([("a", 100)], {"a": None}) is None  # the global one applies
    assert _margin([("a", 100)], {"a": "-1"}) is None  # malformed: logged, the global one
    # A rollout under way: the Revision with most of the traffic, whatever its age.
    assert _margin([("old", 30), ("new", 70)], {"old": "0", "new": "4"}) == 4.0
    assert _margin([("old", 70), ("new", 30)], {"old": "0", "new": "4"}) == 0.0
    # A tie: the first listed in status.traffic.
    assert _margin([("old", 50), ("new", 50)], {"old": "0", "new": "4"}) == 0.0
