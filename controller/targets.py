"""What the controller acts on: one managed model's workload as the API server reports it,
and the interface both actuators (knative.py, raw.py) implement.

The loop reads `Target`s, the policy turns a forecast into a number of warm pods, and the
actuator writes that number where the platform takes it: a live Revision's min-scale on
Knative, a Deployment's scale subresource without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kindling.controller.inputs import ModelRef


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
