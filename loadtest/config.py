"""A run's settings: one object, parsed once, handed to the Locust process as JSON.

The same options are added to `kindling loadtest run`'s parser and to Locust's own
(`locust -f .../locustfile.py --workload mmpp-40 ...`), so both ways of running build the
same `RunConfig`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kindling.loadtest.cost import PRICINGS, CostModel, cost_model
from kindling.loadtest.requests import ENCODINGS, KINDS, PROTOCOLS
from kindling.loadtest.shapes import SHAPES, Shape, make_shape
from kindling.loadtest.slo import SLO


@dataclass
class RunConfig:
    target: str
    """Base URL of the endpoint: http://127.0.0.1:8080 or a cluster ingress."""
    model: str
    workload: str
    out: str
    """Directory for requests.csv, summary.json, report.md and the plots."""
    params: dict[str, Any] = field(default_factory=dict)
    """Overrides of the workload's stage table (`--set KEY=VALUE`, `--concurrency`...)."""
    time_scale: float = 1.0
    seed: int = 0
    kind: str = "auto"
    protocol: str = "oip"
    encoding: str = "binary"
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    metadata_url: str = ""
    """Where to read the model's inputs; empty: the target's /v2/models/{model} (OIP) or
    the sample models' known metadata (OpenWhisk); "none": the known metadata."""
    max_in_flight: int = 1000
    """Open loop: arrivals beyond this many outstanding requests are dropped and counted
    as errors (k6's dropped_iterations), never delayed, so the schedule holds."""
    timeout_s: float = 60.0
    progress_s: float = 5.0
    pods: str = "metrics"
    pods_interval_s: float = 5.0
    pod_seconds: float | None = None
    """Pod-seconds measured elsewhere (a cluster's own accounting); overrides `pods`."""
    slo: SLO = field(default_factory=SLO)
    cost: CostModel = field(default_factory=cost_model)
    report_in_process: bool = False
    """Write the report from the Locust process (run with plain `locust`)."""

    def shape(self) -> Shape:
        return make_shape(self.workload, self.time_scale, **self.params)

    def to_json(self) -> str:
        doc = asdict(self)
        doc["cost"] = self.cost.to_dict()
        return json.dumps(doc, indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        doc = json.loads(text)
        doc["slo"] = SLO(**doc["slo"])
        doc["cost"] = CostModel.from_dict(doc["cost"])
        return cls(**doc)


def number_or_text(text: str) -> Any:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return key.strip(), value.strip()


def _levels(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list like 5,10,20,30: {text!r}") from None


def add_params_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """--set KEY=VALUE, repeated, into `params`: a workload's stage table overrides
    (`params_of` turns them into the shape's keyword arguments)."""
    parser.add_argument(
        "--set", dest="params", action="append", type=key_value, default=[],
        metavar="KEY=VALUE", help=help,
    )  # fmt: skip


def params_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: number_or_text(v) for k, v in args.params}


def add_arguments(parser: argparse.ArgumentParser, with_target: bool = True) -> None:
    """The run's options; Locust's parser gets them without --target (it has --host)."""
    if with_target:
        parser.add_argument("--target", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--model", help="model name (required)")
    parser.add_argument("--workload", choices=sorted(SHAPES), help="workload (required)")
    parser.add_argument(
        "--out", default="", help="output directory (default loadtest-results/WORKLOAD-TIME)"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply the timeline's durations (0.1: ten times faster, same request count)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the arrivals and the request contents"
    )
    add_params_argument(parser, "override a workload parameter (see `kindling loadtest workloads`)")
    parser.add_argument(
        "--concurrency",
        type=_levels,
        metavar="C1,C2,...",
        help="concurrency levels of the `concurrency` workload (default 5,10,20,30)",
    )
    parser.add_argument(
        "--gap", type=float, metavar="S", help="cold-warm: idle seconds before each cold request"
    )
    parser.add_argument(
        "--tail",
        type=float,
        metavar="S",
        help="idle seconds at the end, for scale-down (default 120)",
    )
    parser.add_argument(
        "--kind",
        default="auto",
        choices=["auto", *KINDS],
        help="request kind (default: from the model's inputs)",
    )
    parser.add_argument("--protocol", default="oip", choices=PROTOCOLS)
    parser.add_argument(
        "--encoding",
        default="binary",
        choices=ENCODINGS,
        help="OIP tensors as binary (default) or JSON",
    )
    parser.add_argument(
        "--path",
        default="",
        help="request path (default /v2/models/MODEL/infer, or /run for openwhisk)",
    )
    parser.add_argument(
        "--header",
        dest="headers",
        action="append",
        type=_header,
        default=[],
        metavar="'NAME: VALUE'",
        help="extra request header (auth, Host for an ingress); repeatable",
    )
    parser.add_argument(
        "--metadata-url",
        default="",
        help="model metadata URL, or 'none' for the sample models' known inputs",
    )
    parser.add_argument("--max-in-flight", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    parser.add_argument(
        "--progress", type=float, default=5.0, help="seconds between progress lines"
    )
    parser.add_argument(
        "--pods",
        default="metrics",
        help="pod-seconds source: metrics, kubectl:SELECTOR[@NS] or none",
    )
    parser.add_argument("--pods-interval", type=float, default=5.0)
    parser.add_argument("--pod-seconds", type=float, help="pod-seconds measured elsewhere")
    parser.add_argument(
        "--slo-p99-ms", type=float, help="fail (exit 1) if p99 latency exceeds this"
    )
    parser.add_argument(
        "--slo-error-ratio",
        type=float,
        default=0.01,
        help="fail (exit 1) if the error ratio exceeds this (default 0.01; -1 disables)",
    )
    parser.add_argument(
        "--pricing",
        default="lambda",
        choices=sorted(PRICINGS),
        help="pay-per-request price list (lambda: 1 ms billing since Dec 2020; "
        "lambda-2018: 100 ms, paper 002 Table I)",
    )
    parser.add_argument(
        "--memory-mb", type=float, default=1024, help="function memory for pay-per-request cost"
    )
    parser.add_argument("--price-gb-s", type=float, help="override the price per GB-second")
    parser.add_argument(
        "--price-request", type=float, help="override the per-request fee ($ per request)"
    )
    parser.add_argument("--granularity-ms", type=float, help="override the billing granularity")
    parser.add_argument(
        "--node-price-hour",
        type=float,
        default=0.096,
        help="node price, $/h (default EC2 m5.large)",
    )
    parser.add_argument("--pods-per-node", type=float, default=1)
    parser.add_argument("--always-on-nodes", type=float, default=1)


def default_out(workload: str) -> str:
    return str(Path("loadtest-results") / f"{workload}-{time.strftime('%Y%m%d-%H%M%S')}")


def from_namespace(args: argparse.Namespace, target: str) -> RunConfig:
    """Build the config; raises ValueError with a message for the user."""
    if not args.model or not args.workload:
        raise ValueError("--model and --workload are required")
    params = params_of(args)
    if args.concurrency:
        params["levels"] = args.concurrency
    if args.gap is not None:
        params["gap_s"] = args.gap
    if args.tail is not None:
        params["tail_s"] = args.tail
    config = RunConfig(
        target=target.rstrip("/"),
        model=args.model,
        workload=args.workload,
        out=args.out or default_out(args.workload),
        params=params,
        time_scale=args.time_scale,
        seed=args.seed,
        kind=args.kind,
        protocol=args.protocol,
        encoding=args.encoding,
        path=args.path,
        headers=dict(args.headers),
        metadata_url=args.metadata_url,
        max_in_flight=args.max_in_flight,
        timeout_s=args.timeout,
        progress_s=args.progress,
        pods=args.pods,
        pods_interval_s=args.pods_interval,
        pod_seconds=args.pod_seconds,
        slo=SLO(
            p99_ms=args.slo_p99_ms,
            error_ratio=None if args.slo_error_ratio < 0 else args.slo_error_ratio,
        ),
        cost=cost_model(
            args.pricing,
            memory_mb=args.memory_mb,
            price_per_gb_s=args.price_gb_s,
            per_request_fee=args.price_request,
            granularity_ms=args.granularity_ms,
            node_price_per_hour=args.node_price_hour,
            pods_per_node=args.pods_per_node,
            always_on_nodes=args.always_on_nodes,
        ),
    )
    config.shape()  # refuse unknown parameters now, not in the Locust process
    return config
