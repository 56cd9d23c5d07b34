"""Pre-warming on Knative: min-scale on the live Revisions that carry traffic.

Knative ≥ 1.21 (knative/serving#16186) lets a Revision's autoscaling annotations change in
place: the Revision reconciler copies them to its PodAutoscaler, and the autoscaler scales
to the new floor without rolling a pod. So Kindling JSON-patches
`metadata.annotations["autoscaling.knative.dev/min-scale"]` of each Revision that carries
traffic (min-scale on an unreachable Revision is ignored: Knative scales those to zero) and
never the Service template, which would cut a new Revision and roll every pod
(knative/serving#10908).

Knative ≤ 1.20 fixed a Revision's annotations at creation; the PodAutoscaler's own
annotations were the way in, so that is patched instead (from 1.21 on, the Revision
reconciler copies its own annotations over the PodAutoscaler's and reverts such a patch).
The Role grants podautoscalers only with `controller.podAutoscalerAccess`.

Giving back: the first write also records the user's own value on the same object
(`kindling.dev/user-min-scale`, empty when the user had none) and what Kindling set
(`kindling.dev/warm-min-scale`), so a restarted controller can still restore it. Every
write carries JSON-patch `test` ops on what it read: a concurrent change fails the patch
(kube.Conflict), and the read-modify-write runs again on a fresh read. If the user changed
min-scale while Kindling held it, the user's new value wins and becomes the floor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from kindling.controller import kube
from kindling.controller.inputs import ModelRef
from kindling.controller.targets import Target, margin_k_of

log = logging.getLogger(__name__)

SERVING = ("serving.knative.dev", "v1")
AUTOSCALING = ("autoscaling.internal.knative.dev", "v1alpha1")

MIN_SCALE = "autoscaling.knative.dev/min-scale"
MAX_SCALE = "autoscaling.knative.dev/max-scale"
TARGET = "autoscaling.knative.dev/target"
TARGET_UTILIZATION = "autoscaling.knative.dev/target-utilization-percentage"
METRIC = "autoscaling.knative.dev/metric"
MODEL_LABEL = "kindling.dev/model"
SERVICE_LABEL = "serving.knative.dev/service"
# Ours, on the object Kindling patched: the user's own min-scale ("" = none) and what
# Kindling set. Present together, removed together.
USER_MIN_SCALE = "kindling.dev/user-min-scale"
WARM_MIN_SCALE = "kindling.dev/warm-min-scale"

# config-autoscaler defaults (knative/serving config/core/configmaps/autoscaler.yaml):
# container-concurrency-target-percentage 70, container-concurrency-target-default 100. The
# Role cannot read knative-serving's config maps, so a cluster that changed them is not seen.
TARGET_UTILIZATION_DEFAULT = 0.70
CONCURRENCY_TARGET_DEFAULT = 100.0
TARGET_MIN = 0.01  # knative/serving pkg/apis/autoscaling TargetMin

# The first release where a Revision's min-scale is mutable (knative/serving#16186).
MUTABLE_REVISION_SCALE = (1, 21)


class VersionSettingInvalid(ValueError):
    """`knative_version` is neither "auto" nor MAJOR.MINOR."""


def parse_version(setting: str) -> tuple[int, int]:
    """ "auto" → 1.21 semantics. There is no clean in-namespace detection within the Role:
    Knative stamps no version on Services, Routes or Revisions (its version label sits on
    its CRDs, cluster-scoped, and on its own Deployments in knative-serving, neither
    readable here), and 1.21 added no field to tell by. Probing (patch a PodAutoscaler and
    watch whether it is reverted) would need write access the Role withholds and would race
    the reconciler. So "auto" assumes a current Knative; set "1.20" (or older) explicitly,
    with controller.podAutoscalerAccess, on an old cluster."""
    if setting == "auto":
        return MUTABLE_REVISION_SCALE
    try:
        major, minor = (int(part) for part in setting.split(".")[:2])
    except ValueError as exc:
        raise VersionSettingInvalid(f"knative_version {setting!r}: 'auto' or e.g. '1.20'") from exc
    return major, minor


def concurrency_target(revision: Mapping[str, Any]) -> float:
    """The concurrency per pod the KPA aims at for this Revision, as Knative resolves it
    (pkg/autoscaler/scaling ResolveMetricTarget): the `target` annotation (capped by
    containerConcurrency when that is set), else containerConcurrency, else
    container-concurrency-target-default (100); times the utilization (annotation, else
    70 %). The brief's fallback of 1.0 would ask for 70x the pods the KPA itself keeps on a
    Revision with containerConcurrency 0; Knative's own default is what the pods will see.
    An rps-metric Revision reads the same way (the policy's unit is concurrency)."""
    annotations = revision.get("metadata", {}).get("annotations") or {}
    cc = float(revision.get("spec", {}).get("containerConcurrency") or 0)
    total = cc or CONCURRENCY_TARGET_DEFAULT
    annotated = _float(annotations.get(TARGET))
    if annotated is not None and annotated > 0:
        total = min(annotated, cc) if cc else annotated
    utilization = TARGET_UTILIZATION_DEFAULT
    percent = _float(annotations.get(TARGET_UTILIZATION))
    if percent is not None and percent > 0:
        utilization = percent / 100.0
    return max(TARGET_MIN, total * utilization)


@dataclass(frozen=True)
class Held:
    """One object's min-scale as Kindling sees it: the current value, the user's own value
    (None: absent), and what Kindling set (None: not touched)."""

    current: str | None
    user: str | None
    warm: str | None

    @classmethod
    def of(cls, annotations: Mapping[str, str]) -> Held:
        current = annotations.get(MIN_SCALE)
        warm = annotations.get(WARM_MIN_SCALE)
        if warm is None:
            return cls(current, current, None)
        if current != warm:
            # The user (or the chart, or a kubectl) changed it while Kindling held it: theirs.
            return cls(current, current, warm)
        return cls(current, annotations.get(USER_MIN_SCALE) or None, warm)

    @property
    def floor(self) -> int:
        return _int(self.user) or 0


class KnativeActuator:
    """`discover`, `set_warm` and `release` (targets.Actuator) on Knative Services selected
    by `selector` in `namespace`, under the chart's Role."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        selector: str,
        knative_version: str = "auto",
        retry: kube.Retry | None = None,
        events: bool = True,
        component: str = "kindling-controller",
    ) -> None:
        self.api = kube.own_retries(api_client)
        self.namespace = namespace
        self.selector = selector
        self.version = parse_version(knative_version)
        self.retry = retry or kube.Retry()
        self.events = events
        self.component = component
        # Revisions that lost their traffic while Kindling held them, by Service: given
        # back on the next set_warm/release of that model.
        self._stale: dict[str, tuple[str, ...]] = {}
        # Malformed prewarm-margin-k values already logged (targets.margin_k_of).
        self._warned: set[str] = set()

    @property
    def patches_pod_autoscalers(self) -> bool:
        return self.version < MUTABLE_REVISION_SCALE

    # -- reading --------------------------------------------------------------------------

    def discover(self) -> list[Target]:
        custom = client.CustomObjectsApi(self.api)
        services = self.retry.call(
            lambda: custom.list_namespaced_custom_object(
                *SERVING, self.namespace, "services", label_selector=self.selector,
                **kube.request_kwargs(),
            ),
            "list Knative Services",
        )["items"]  # fmt: skip
        revisions = self.retry.call(
            lambda: custom.list_namespaced_custom_object(
                *SERVING, self.namespace, "revisions", label_selector=SERVICE_LABEL,
                **kube.request_kwargs(),
            ),
            "list Revisions",
        )["items"]  # fmt: skip
        by_service: dict[str, list[dict[str, Any]]] = {}
        for revision in revisions:
            by_service.setdefault(revision["metadata"]["labels"][SERVICE_LABEL], []).append(
                revision
            )
        targets = []
        for service in services:
            name = service["metadata"]["name"]
            model = (service["metadata"].get("labels") or {}).get(MODEL_LABEL)
            if not model:
                log.warning("Knative Service %s has no %s label; not managed", name, MODEL_LABEL)
                continue
            own = {r["metadata"]["name"]: r for r in by_service.get(name, [])}
            traffic = traffic_percent(service)
            carrying = [own[r] for r in traffic if r in own]
            self._stale[name] = tuple(
                r for r, rev in own.items() if r not in traffic and _touched(rev)
            )
            targets.append(self._target(service, model, carrying))
        return targets

    def _target(
        self, service: Mapping[str, Any], model: str, carrying: list[dict[str, Any]]
    ) -> Target:
        held = [Held.of(_annotations(r)) for r in carrying]
        maxima = [_int(_annotations(r).get(MAX_SCALE)) or 0 for r in carrying]
        replicas = [r.get("status", {}).get("actualReplicas") for r in carrying]
        # The Revision with the most traffic speaks for the model's per-pod target and its
        # pre-warm margin: the policy makes one decision per model, and that Revision serves
        # most of what it decides for. On a tie, the first in status.traffic (max keeps the
        # first). During a rollout the Revisions may disagree (the margin is on the
        # template, so a change cuts a new one): the new margin applies once the new
        # Revision carries most of the traffic, as its concurrency target does.
        main = max(carrying, key=lambda r: traffic_percent(service)[r["metadata"]["name"]],
                   default=None)  # fmt: skip
        margin = None
        if main is not None:
            where = f"revisions/{main['metadata']['name']}"
            margin = margin_k_of(_annotations(main), where, self._warned)
        return Target(
            ref=ModelRef(self.namespace, service["metadata"]["name"], model),
            user_min_scale=sum(h.floor for h in held),
            # Knative reads max-scale 0 (or absent) as unbounded.
            user_max_scale=None if not maxima or 0 in maxima else sum(maxima),
            concurrency_target=concurrency_target(main) if main else 1.0,
            revisions=tuple(r["metadata"]["name"] for r in carrying),
            ready_pods=None if None in replicas or not replicas else sum(replicas),
            url=service.get("status", {}).get("url"),
            margin_k=margin,
        )

    # -- writing --------------------------------------------------------------------------

    def set_warm(self, target: Target, pods: int) -> None:
        """At least `pods` pods across the Revisions that carry traffic, split by their
        traffic percent (rounded up), each within its own floor and max-scale. Where that is
        the user's own floor, the Revision is given back rather than held."""
        self._give_back_stale(target)
        if not target.revisions:
            return
        shares = self._shares(target, pods)
        for revision, share in shares.items():
            self._apply(target, revision, share)
        # Waking from zero takes one request as well (knative/serving#10327): the loop sends
        # it (warmup.py) when target.ready_pods is 0.

    def release(self, target: Target) -> None:
        self._give_back_stale(target)
        for revision in target.revisions:
            self._apply(target, revision, None)

    def _shares(self, target: Target, pods: int) -> dict[str, int]:
        if len(target.revisions) == 1:
            return {target.revisions[0]: pods}
        service = self.retry.call(
            lambda: client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                *SERVING, self.namespace, "services", target.ref.workload,
                **kube.request_kwargs(),
            ),
            f"get Knative Service {target.ref.workload}",
        )  # fmt: skip
        percent = traffic_percent(service)
        return {r: math.ceil(pods * percent.get(r, 0) / 100) for r in target.revisions}

    def _give_back_stale(self, target: Target) -> None:
        for revision in self._stale.pop(target.ref.workload, ()):
            self._apply(target, revision, None)

    def _apply(self, target: Target, revision: str, pods: int | None) -> bool:
        """Set (pods) or give back (None) min-scale on one Revision (or its PodAutoscaler);
        True when it wrote. One read-modify-write, run again on a conflict."""
        group, version = AUTOSCALING if self.patches_pod_autoscalers else SERVING
        plural = "podautoscalers" if self.patches_pod_autoscalers else "revisions"
        custom = client.CustomObjectsApi(self.api)
        outcome: dict[str, str] = {}

        def read_modify_write() -> bool:
            obj = custom.get_namespaced_custom_object(
                group, version, self.namespace, plural, revision, **kube.request_kwargs()
            )
            ops, reason = self._operations(obj, pods)
            if not ops:
                return False
            kube.json_patch(self.api, group, version, self.namespace, plural, revision, ops)
            outcome["reason"] = reason
            return True

        try:
            wrote = self.retry.call(read_modify_write, f"min-scale on {plural}/{revision}")
        except kube.NotFound:
            # Gone since discover (a new Revision took over and the old one was deleted).
            log.info("%s/%s is gone; nothing to set", plural, revision)
            return False
        if wrote:
            log.info("%s %s/%s: %s", target.ref.model, plural, revision, outcome["reason"])
            self._event(revision, outcome["reason"])
        return wrote

    def _operations(
        self, obj: Mapping[str, Any], pods: int | None
    ) -> tuple[list[dict[str, Any]], str]:
        """The JSON patch that takes `obj` where it should be, and why; [] if it is there."""
        annotations = _annotations(obj)
        held = Held.of(annotations)
        if pods is not None:
            ceiling = _int(annotations.get(MAX_SCALE)) or 0
            wanted = max(held.floor, pods if not ceiling else min(pods, ceiling))
            if wanted == held.floor:
                pods = None  # the user's own floor: give back rather than hold
        # Guard what the decision read: the values themselves, or the resourceVersion when
        # min-scale is absent (JSON patch cannot test for absence).
        guard = [
            {"op": "test", "path": _path(key), "value": annotations[key]}
            for key in (MIN_SCALE, WARM_MIN_SCALE)
            if key in annotations
        ]
        if MIN_SCALE not in annotations:
            rv = obj["metadata"]["resourceVersion"]
            guard.append({"op": "test", "path": "/metadata/resourceVersion", "value": rv})
        base = [] if obj["metadata"].get("annotations") is not None else [
            {"op": "add", "path": "/metadata/annotations", "value": {}}
        ]  # fmt: skip
        if pods is None:
            if held.warm is None:
                return [], ""
            ops = [
                {"op": "remove", "path": _path(USER_MIN_SCALE)},
                {"op": "remove", "path": _path(WARM_MIN_SCALE)},
            ]
            if held.current == held.warm:
                restore = (
                    {"op": "remove", "path": _path(MIN_SCALE)}
                    if held.user is None
                    else {"op": "replace", "path": _path(MIN_SCALE), "value": held.user}
                )
                ops.append(restore)
                reason = f"min-scale {held.current} given back: {held.user or 'none'} restored"
            else:
                reason = f"min-scale {held.current} is the user's since; Kindling lets go"
            return [*guard, *ops], reason
        if held.warm is not None and held.current == held.warm == str(wanted):
            return [], ""
        ops = [
            {"op": "add", "path": _path(MIN_SCALE), "value": str(wanted)},
            {"op": "add", "path": _path(USER_MIN_SCALE), "value": held.user or ""},
            {"op": "add", "path": _path(WARM_MIN_SCALE), "value": str(wanted)},
        ]
        reason = (
            f"min-scale {held.current or 'none'} -> {wanted} (user's own {held.user or 'none'})"
        )
        return [*guard, *base, *ops], reason

    def _event(self, revision: str, message: str) -> None:
        """A core/v1 Event on the Revision, best effort: an event lost is no reason to fail
        the change it reports."""
        if not self.events:
            return
        kind = "PodAutoscaler" if self.patches_pod_autoscalers else "Revision"
        group, version = AUTOSCALING if self.patches_pod_autoscalers else SERVING
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{revision}.kindling-"),
            involved_object=client.V1ObjectReference(
                api_version=f"{group}/{version}", kind=kind, name=revision,
                namespace=self.namespace,
            ),
            reason="PreWarm", message=message, type="Normal",
            source=client.V1EventSource(component=self.component),
        )  # fmt: skip
        try:
            client.CoreV1Api(self.api).create_namespaced_event(
                self.namespace, event, **kube.request_kwargs()
            )
        except Exception as exc:  # best effort, logged
            log.warning("event on %s/%s not recorded: %s", kind, revision, exc)


def traffic_percent(service: Mapping[str, Any]) -> dict[str, int]:
    """Revision → percent of the Service's traffic, from its status.traffic (Knative copies
    the Route's status.traffic there once AllTrafficAssigned; it is filled in even while the
    Route waits on an ingress, IngressNotConfigured). Revisions at 0 % (a tag only) carry
    none. Before the Route assigned traffic there is none, and nothing is pre-warmed."""
    percent: dict[str, int] = {}
    for entry in service.get("status", {}).get("traffic") or []:
        name, share = entry.get("revisionName"), int(entry.get("percent") or 0)
        if name and share > 0:
            percent[name] = percent.get(name, 0) + share
    return percent


def _touched(obj: Mapping[str, Any]) -> bool:
    return WARM_MIN_SCALE in _annotations(obj)


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("annotations") or {})


def _path(annotation: str) -> str:
    return "/metadata/annotations/" + kube.escape_pointer(annotation)


def _int(value: str | None) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def _float(value: str | None) -> float | None:
    try:
        return None if value in (None, "") else float(value)  # type: ignore[arg-type]
    except ValueError:
        return None
