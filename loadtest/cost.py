"""What a run would cost: pay per request, self-hosted pods, an always-on server.

Paper 000 reports cost per 10^6 requests by concurrency (Table 1), paper 001 cost per
workload, paper 002 prices Lambda as of 2018 (Table I). The three models here let one
run answer all three, side by side.

Defaults are published prices, dated:
- AWS Lambda, x86, us-east-1: $0.0000166667 per GB-second (first pricing tier) and
  $0.20 per 10^6 requests, billed per 1 ms since 1 December 2020 (AWS re:Invent 2020
  announcement; the price page, aws.amazon.com/lambda/pricing, unchanged since);
- Lambda as paper 002 priced it (Table I, 2018): the same per-GB-second and per-request
  prices, billed in 100 ms increments;
- a node: EC2 m5.large (2 vCPU, 8 GiB) on demand, Linux, us-east-1, $0.096 per hour
  (aws.amazon.com/ec2/pricing/on-demand, the price in force since m5's launch in 2017).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

MB_PER_GB = 1024  # Lambda bills memory in MB against a GB of 1024 MB


@dataclass(frozen=True)
class PayPerRequest:
    """Function-as-a-service billing: duration rounded up, times memory, plus a fee."""

    price_per_gb_s: float
    per_request_fee: float
    granularity_ms: float
    memory_mb: float
    source: str = ""

    def billed_ms(self, duration_ms: float) -> float:
        # The epsilon keeps 100.0 ms at 100 ms when float noise makes it 100.00000000001.
        return math.ceil(duration_ms / self.granularity_ms - 1e-9) * self.granularity_ms

    def request_cost(self, duration_ms: float) -> float:
        gb_s = self.billed_ms(duration_ms) / 1000 * self.memory_mb / MB_PER_GB
        return gb_s * self.price_per_gb_s + self.per_request_fee

    def cost(self, durations_ms: Iterable[float]) -> float:
        return sum(self.request_cost(d) for d in durations_ms)


@dataclass(frozen=True)
class SelfHosted:
    """Pods on nodes you rent: the pod-seconds the run consumed times a pod's share of a
    node's price. Scale-to-zero shows here: idle time with no pod costs nothing."""

    node_price_per_hour: float
    pods_per_node: float
    source: str = ""

    @property
    def pod_price_per_s(self) -> float:
        return self.node_price_per_hour / 3600 / self.pods_per_node

    def cost(self, pod_seconds: float) -> float:
        return pod_seconds * self.pod_price_per_s


@dataclass(frozen=True)
class AlwaysOn:
    """A server (`nodes` of them) up for the whole run, busy or not: the comparison."""

    node_price_per_hour: float
    nodes: float
    source: str = ""

    def cost(self, wall_s: float) -> float:
        return wall_s * self.nodes * self.node_price_per_hour / 3600


LAMBDA_GB_S = 0.0000166667
LAMBDA_PER_REQUEST = 0.20 / 1e6
M5_LARGE_HOUR = 0.096

PRICINGS: dict[str, tuple[float, float, float, str]] = {
    # name: (price per GB-s, per-request fee, granularity ms, source)
    "lambda": (
        LAMBDA_GB_S,
        LAMBDA_PER_REQUEST,
        1.0,
        "AWS Lambda x86 us-east-1, 1 ms billing (in force since 2020-12-01)",
    ),
    "lambda-2018": (
        LAMBDA_GB_S,
        LAMBDA_PER_REQUEST,
        100.0,
        "AWS Lambda as priced in 2018, 100 ms billing (paper 002, Table I)",
    ),
}
NODE_SOURCE = "EC2 m5.large on demand, Linux, us-east-1 ($0.096/h)"


@dataclass(frozen=True)
class CostModel:
    pay_per_request: PayPerRequest
    self_hosted: SelfHosted
    always_on: AlwaysOn

    def to_dict(self) -> dict[str, Any]:
        return {
            "pay_per_request": asdict(self.pay_per_request),
            "self_hosted": asdict(self.self_hosted),
            "always_on": asdict(self.always_on),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> CostModel:
        return cls(
            PayPerRequest(**doc["pay_per_request"]),
            SelfHosted(**doc["self_hosted"]),
            AlwaysOn(**doc["always_on"]),
        )


def cost_model(
    pricing: str = "lambda",
    memory_mb: float = 1024,
    price_per_gb_s: float | None = None,
    per_request_fee: float | None = None,
    granularity_ms: float | None = None,
    node_price_per_hour: float = M5_LARGE_HOUR,
    pods_per_node: float = 1,
    always_on_nodes: float = 1,
) -> CostModel:
    """The three models from a named pricing, any field overridden."""
    try:
        gb_s, fee, granularity, source = PRICINGS[pricing]
    except KeyError:
        raise ValueError(f"unknown pricing {pricing!r} (known: {', '.join(PRICINGS)})") from None
    overridden = any(v is not None for v in (price_per_gb_s, per_request_fee, granularity_ms))
    ppr = PayPerRequest(
        price_per_gb_s=gb_s if price_per_gb_s is None else price_per_gb_s,
        per_request_fee=fee if per_request_fee is None else per_request_fee,
        granularity_ms=granularity if granularity_ms is None else granularity_ms,
        memory_mb=memory_mb,
        source=source + (", with overrides" if overridden else ""),
    )
    node_source = NODE_SOURCE if node_price_per_hour == M5_LARGE_HOUR else "given"
    return CostModel(
        ppr,
        SelfHosted(node_price_per_hour, pods_per_node, node_source),
        AlwaysOn(node_price_per_hour, always_on_nodes, node_source),
    )


def per_million(total: float, requests: int) -> float | None:
    """Cost per 10^6 requests (paper 000's unit); None when nothing was served."""
    return total / requests * 1e6 if requests else None
