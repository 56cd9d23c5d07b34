"""Pre-warming without Knative (`serving.mode: raw`): each model's Deployment, scaled through
its `scale` subresource.

Least privilege shapes this module. The chart's Role grants `deployments/scale` get and
patch by name, `deployments` get by name, and nothing else of Deployments: no list (so the
Deployments are named by configuration, `RawWorkload`s, not found by a selector), no patch
of the Deployment itself (so no annotation can be put on it: the scale subresource carries
replicas only, and the API server drops any metadata sent through it, k8s
pkg/registry/apps/deployment/storage scaleUpdatedObjectInfo). The user's own replicas are
therefore remembered on the one object the Role lets the controller write, its
leader-election Lease (`LeaseMemory`, annotations `kindling.dev/user-replicas` and
`kindling.dev/warm-replicas`, JSON by Deployment), so a restarted controller can still give
them back.

`discover` reads each Deployment itself rather than its scale: the same replicas (the scale
subresource is a view of spec.replicas and status.replicas) in the same one call, plus the
Deployment's annotations, where the chart puts the model's own pre-warm margin
(targets.PREWARM_MARGIN_K); the scale subresource's metadata carries no annotations (k8s
scaleFromDeployment copies name, namespace, uid, resourceVersion and creation time only).

Every scale write carries the resourceVersion it read (a merge patch with
metadata.resourceVersion is a precondition): a concurrent change fails it with 409, and the
read-modify-write runs again. If replicas changed while Kindling held them (a user's `kubectl
scale`), the new value is the user's and becomes the floor.

An HPA on the Deployment: it owns replicas, and a raised value would only hold until its
scale-down stabilization window (300 s, autoscaling/v2 behavior default) ran out, then
Kindling would raise it again: two controllers fighting. The Role cannot read or patch HPAs,
so such a workload (`hpa=True`, the chart knows) is left to its HPA and not pre-warmed; to
pre-warm it, the HPA's minReplicas is the field to raise (Role: horizontalpodautoscalers
get/patch by name), not granted today.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from kindling.controller import kube
from kindling.controller.inputs import ModelRef
from kindling.controller.targets import Target, margin_k_of

log = logging.getLogger(__name__)

USER_REPLICAS = "kindling.dev/user-replicas"
WARM_REPLICAS = "kindling.dev/warm-replicas"


@dataclass(frozen=True)
class RawWorkload:
    deployment: str
    model: str
    # Requests one pod serves at once. No autoscaler defines a target here; 1.0 assumes a
    # runtime that serves one request at a time, the conservative reading (more pods).
    concurrency_target: float = 1.0
    # An HPA manages this Deployment: left to it (module docstring).
    hpa: bool = False


class LeaseMemory:
    """Per-Deployment user and warm replicas, as annotations on the controller's Lease. The
    Lease may not exist yet (no leader elected): it is created, holderless. Writes carry the
    Lease's resourceVersion, and so do the LeaderElector's renewals: neither overwrites the
    other (409: the caller's retry reads again). No retries here: the actuator retries its
    whole read-modify-write."""

    def __init__(self, api_client: Any, namespace: str, lease: str) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.lease = lease

    def read(self) -> tuple[dict[str, int], dict[str, int]]:
        """(user replicas, warm replicas) by Deployment."""
        return _maps(self._get())

    def update(self, deployment: str, user: int | None, warm: int | None) -> None:
        """Record (or, with None, forget) one Deployment's values."""
        lease = self._get()
        users, warms = _maps(lease)
        for table, value in ((users, user), (warms, warm)):
            if value is None:
                table.pop(deployment, None)
            else:
                table[deployment] = value
        annotations = dict(lease.metadata.annotations or {})
        annotations[USER_REPLICAS] = json.dumps(users, sort_keys=True)
        annotations[WARM_REPLICAS] = json.dumps(warms, sort_keys=True)
        lease.metadata.annotations = annotations
        # replace carries the read resourceVersion: 409 if the elector renewed between.
        self.api.replace_namespaced_lease(
            self.lease, self.namespace, lease, **kube.request_kwargs()
        )

    def _get(self) -> client.V1Lease:
        try:
            return self.api.read_namespaced_lease(
                self.lease, self.namespace, **kube.request_kwargs()
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        body = client.V1Lease(metadata=client.V1ObjectMeta(name=self.lease))
        try:
            return self.api.create_namespaced_lease(self.namespace, body, **kube.request_kwargs())
        except client.ApiException as exc:
            if exc.status == 409:  # created meanwhile (the elector): read it next try
                raise kube.Conflict(f"lease {self.lease} created meanwhile", 409) from exc
            raise


class RawActuator:
    """targets.Actuator on plain Deployments in `namespace`."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        workloads: Sequence[RawWorkload],
        lease: str,
        retry: kube.Retry | None = None,
    ) -> None:
        self.api = client.AppsV1Api(kube.own_retries(api_client))
        self.namespace = namespace
        self.workloads = {w.deployment: w for w in workloads}
        self.retry = retry or kube.Retry()
        self.memory = LeaseMemory(api_client, namespace, lease)
        # Malformed prewarm-margin-k values already logged (targets.margin_k_of).
        self._warned: set[str] = set()
        for w in workloads:
            if w.hpa:
                log.warning("%s: an HPA scales it; Kindling leaves it alone", w.deployment)

    def discover(self) -> list[Target]:
        users, warms = self.retry.call(self.memory.read, "read remembered replicas")
        targets = []
        for name, workload in self.workloads.items():
            if workload.hpa:
                continue
            try:
                deployment = self.retry.call(
                    lambda n=name: self._deployment(n), f"get Deployment {name}"
                )
            except kube.NotFound:
                log.warning("Deployment %s not found; not managed", name)
                continue
            current = int(deployment.spec.replicas or 0)
            user = _user(current, users.get(name), warms.get(name))
            annotations = deployment.metadata.annotations or {}
            targets.append(
                Target(
                    ref=ModelRef(self.namespace, name, workload.model),
                    user_min_scale=user,
                    user_max_scale=None,
                    concurrency_target=workload.concurrency_target,
                    revisions=(),
                    # The pods that exist (status.replicas, what the scale status reports):
                    # the loop reads 0 as scaled to zero, which this says as well.
                    ready_pods=deployment.status.replicas if deployment.status else None,
                    url=None,
                    margin_k=margin_k_of(annotations, f"deployments/{name}", self._warned),
                )
            )
        return targets

    def set_warm(self, target: Target, pods: int) -> None:
        self._apply(target.ref.workload, pods)

    def release(self, target: Target) -> None:
        self._apply(target.ref.workload, None)

    def _apply(self, name: str, pods: int | None) -> None:
        self.retry.call(lambda: self._apply_once(name, pods), f"replicas of {name}")

    def _apply_once(self, name: str, pods: int | None) -> None:
        """Replicas to max(user's, pods), or back to the user's (None): one
        read-modify-write. The memory is written before the scale on the way up and after
        it on the way down, so a crash in between leaves a record to give back, never a
        raised scale without one."""
        users, warms = self.memory.read()
        scale = self._scale(name)
        current = int(scale.spec.replicas or 0)
        user = _user(current, users.get(name), warms.get(name))
        held = name in warms
        wanted = user if pods is None else max(user, pods)
        if wanted == user:
            if held:
                if current != user:
                    self._scale_to(scale, user, f"given back: {user} restored")
                self.memory.update(name, None, None)
            return
        if held and current == warms[name] == wanted:
            return
        self.memory.update(name, user, wanted)
        self._scale_to(scale, wanted, f"{current} -> {wanted} (user's own {user})")

    def _scale_to(self, scale: client.V1Scale, replicas: int, reason: str) -> None:
        """Patch replicas, on the condition that the scale is still as read (409 if not)."""
        body = {
            "metadata": {"resourceVersion": scale.metadata.resource_version},
            "spec": {"replicas": replicas},
        }
        self.api.patch_namespaced_deployment_scale(
            scale.metadata.name, self.namespace, body, **kube.request_kwargs()
        )
        log.info("Deployment %s replicas: %s", scale.metadata.name, reason)

    def _deployment(self, name: str) -> client.V1Deployment:
        try:
            return self.api.read_namespaced_deployment(
                name, self.namespace, **kube.request_kwargs()
            )
        except client.ApiException as exc:
            error = kube.classify(exc)
            raise (error or exc) from exc

    def _scale(self, name: str) -> client.V1Scale:
        try:
            return self.api.read_namespaced_deployment_scale(
                name, self.namespace, **kube.request_kwargs()
            )
        except client.ApiException as exc:
            error = kube.classify(exc)
            raise (error or exc) from exc


def _user(current: int, user: int | None, warm: int | None) -> int:
    """The user's own replicas: remembered while Kindling holds them, unless they changed
    since Kindling set them (then the new value is the user's)."""
    if warm is None or user is None or current != warm:
        return current
    return user


def _maps(lease: client.V1Lease) -> tuple[dict[str, int], dict[str, int]]:
    annotations = lease.metadata.annotations or {}
    return (
        {k: int(v) for k, v in json.loads(annotations.get(USER_REPLICAS) or "{}").items()},
        {k: int(v) for k, v in json.loads(annotations.get(WARM_REPLICAS) or "{}").items()},
    )
