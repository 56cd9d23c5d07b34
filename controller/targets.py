"""What the controller acts on: one managed model's workload as the API server reports it,
and the interface both actuators (knative.py, raw.py) implement.

The loop reads `Target`s, the policy turns a forecast into a number of warm pods, and the
actuator writes that number where the platform takes it: a live Revision's min-scale on
Knative, a Deployment's scale subresource without it.

A model may carry its own pre-warm margin: the annotation `kindling.dev/prewarm-margin-k`
(the chart's `prewarm.marginK`) on its Revisions (Knative) or its Deployment (raw mode),
read by both actuators with `margin_k_of` and used by the loop over KINDLING_MARGIN_K.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from kindling.controller.inputs import ModelRef

log = logging.getLogger(__name__)

# The model's own margin k (forecast errors, policy.WarmPolicy.margin_k); absent: the
# controller's KINDLING_MARGIN_K. Written by the chart (modelDefaults.prewarm.marginK) so
# `kindling advise` can size it per model; a user may also annotate a live object.
PREWARM_MARGIN_K = "kindling.dev/prewarm-margin-k"


@dataclass(frozen=True)
class Target:
    ref: ModelRef
    # The user's own floor: the value before Kindling touched it (0 if none). On Knative, the
    # sum over the Revisions that carry traffic (each keeps its own floor).
    user_min_scale: int
    # autoscaling.knative.dev/max-scale (None: unbounded; Knative reads 0 as unbounded too),
    # summed like user_min_scale; raw mode: None, or the HPA's maxReplicas when one manages
    # the Deployment.
    user_max_scale: int | None
    # Requests in flight per pod that the platform's autoscaler aims at (knative.py says how
    # it is resolved); the policy divides the forecast concurrency by it (Little's law).
    concurrency_target: float
    # Knative: the Revisions that carry traffic (percent > 0); raw mode: ().
    revisions: tuple[str, ...]
    # As the API reports it (Revision status.actualReplicas / Deployment scale status);
    # None when not reported yet.
    ready_pods: int | None
    # Where a warm-up request goes (the Knative Service's status.url); None if unknown.
    url: str | None
    # The model's own margin k (PREWARM_MARGIN_K); None: the controller's KINDLING_MARGIN_K.
    margin_k: float | None = None


def margin_k_of(annotations: Mapping[str, str], where: str, warned: set[str]) -> float | None:
    """The model's own margin from an object's annotations; None when absent or malformed.
    A malformed value (not a finite number >= 0: policy.WarmPolicy would refuse it and fail
    the tick) is logged once per object and value, then ignored, so the global margin
    applies and the loop goes on; `warned` is the caller's memory of what was logged."""
    raw = annotations.get(PREWARM_MARGIN_K)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value >= 0:
        return value
    key = f"{where}={raw}"
    if key not in warned:
        warned.add(key)
        log.warning(
            "%s: %s %r is not a number >= 0; the controller's KINDLING_MARGIN_K applies",
            where,
            PREWARM_MARGIN_K,
            raw,
        )
    return None


class Actuator(Protocol):
    def discover(self) -> list[Target]:
        """The managed models in the actuator's namespace, as they are now."""
        ...

    def set_warm(self, target: Target, pods: int) -> None:
        """Keep at least `pods` pods of the model warm (within the user's floor and ceiling).
        Idempotent: no API write when it already is so."""
        ...

    def release(self, target: Target) -> None:
        """Give back exactly what set_warm changed: the user's own value, restored."""
        ...
