"""`kindling cluster`: build the control plane's tools, or run a control plane for a person.

kindling cluster build    build (first time) or find the cached tools; print where
kindling cluster up       start one in the foreground, with a real node and a loopback
                          registry when run as root; print `export KUBECONFIG=...` and
                          `export KINDLING_REGISTRY=...`; Ctrl-C stops it and removes
                          everything it wrote
kindling cluster cold-start
                          against that cluster ($KUBECONFIG, $KINDLING_REGISTRY): a model
                          at zero, one request, the time to its answer, phase by phase,
                          repeated (cluster/coldstart.py)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from kindling.cluster import coldstart, images, nodes, tools


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kindling cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build or find the cached binaries and CRDs")
    up = sub.add_parser("up", help="run a control plane in the foreground until Ctrl-C")
    up.add_argument(
        "--push",
        action="append",
        default=[],
        metavar="IMAGE",
        help="a local podman image to push to the cluster's registry under its own name "
        "(localhost/kindling-runtime:dev becomes $KINDLING_REGISTRY/kindling-runtime:dev)",
    )
    cold = sub.add_parser(
        "cold-start",
        help="measure a model's cold start from zero on the cluster in $KUBECONFIG",
        description=coldstart.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cold.add_argument("--model", default=coldstart.DEFAULT_MODEL, choices=coldstart.MODELS)
    cold.add_argument(
        "--runs", type=_positive, default=coldstart.DEFAULT_RUNS, help="cold starts measured"
    )
    cold.add_argument(
        "--pull",
        action="store_true",
        help="take the image off the node before each run (the node's containerd on this "
        "machine, as `make cluster` runs it)",
    )
    cold.add_argument("--json", action="store_true", help="print one JSON object")
    cold.add_argument("--namespace", default=coldstart.NAMESPACE)
    cold.add_argument("--tag", help="the runtime image's tag (default: the chart's appVersion)")
    cold.add_argument("--keep", action="store_true", help="leave the namespace in place")
    cold.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="write what the cluster added to each cold start as the simulator's pod-start "
        "profile (controller/data/pod_start.json is this, measured here)",
    )
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {value}")
    return value


def _cold_start(args: argparse.Namespace) -> int:
    kubeconfig, registry = os.environ.get("KUBECONFIG"), os.environ.get("KINDLING_REGISTRY")
    if not kubeconfig or not registry:
        print(
            "kindling cluster cold-start: set KUBECONFIG and KINDLING_REGISTRY "
            "(`make cluster` prints both)",
            file=sys.stderr,
        )
        return 2
    found = tools.build()
    with tempfile.TemporaryDirectory() as helm_home:
        target = coldstart.Kubeconfig(
            Path(kubeconfig), found.bin("kubectl").parent, Path(helm_home)
        )
        report = coldstart.measure(
            target, registry, args.model, args.runs, args.pull, args.namespace, args.tag,
            args.keep, log=lambda line: print(line, file=sys.stderr, flush=True),
        )  # fmt: skip
    summary = report.summary()
    print(json.dumps(summary) if args.json else coldstart.render(summary))
    if args.profile:
        command = f"kindling cluster cold-start --model {args.model} --runs {args.runs}"
        profile = coldstart.pod_start_profile(report, command + " --pull" * args.pull)
        args.profile.write_text(json.dumps(profile, indent=1) + "\n")
    return 0


def _build() -> int:
    start = time.monotonic()
    found = tools.build(log=lambda line: print(line, flush=True))
    print(f"cluster tools: {found.root} ({time.monotonic() - start:.1f} s)")
    return 0


def _push(registry: str, local: str) -> str:
    """`podman push` of a local image to the registry, keeping its repository and tag."""
    name = local.split("/", 1)[1] if local.startswith("localhost/") else local
    target = f"{registry}/{name}"
    subprocess.run(
        ["podman", "push", "--quiet", "--tls-verify=false", local, f"docker://{target}"],
        check=True,
    )
    return target


def _up(push: list[str]) -> int:
    from kindling.cluster.controlplane import ControlPlane

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    start = time.monotonic()
    real_node = os.geteuid() == 0  # containerd, the kubelet and the bridge need root
    with ControlPlane(tools.build(), real_node=real_node) as cluster:
        node_list = ", ".join([*nodes.CPU_NODES, *nodes.GPU_NODES])
        lines = [
            f"control plane up in {time.monotonic() - start:.1f} s at {cluster.server}",
            f"nodes (kwok, tainted {nodes.KWOK_TAINT['key']}): {node_list}",
        ]
        exports = [f"export KUBECONFIG={cluster.kubeconfig}"]
        if cluster.registry is not None:
            images.probe().push(cluster.registry, "kindling-probe", "latest")
            pushed = ["kindling-probe:latest"]
            pushed += [_push(cluster.registry, local).split("/", 1)[1] for local in push]
            lines.append(f"real node: {nodes.REAL_NODE} ({nodes.REAL_NODE_IP}), where pods run")
            lines.append(f"registry: {cluster.registry} ({', '.join(pushed)})")
            exports.append(f"export KINDLING_REGISTRY={cluster.registry}")
        else:
            lines.append("no real node: run as root for one (containerd, kubelet)")
        print(
            "\n".join(lines)
            + f"\nKnative Serving CRDs applied\nlogs: {cluster.workdir}\n\n"
            + "\n".join(exports)
            + f"\n\nCtrl-C stops it and removes {cluster.workdir}.",
            flush=True,
        )
        stop.wait()
        print("stopping", flush=True)
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "cold-start":
            return _cold_start(args)
        return _build() if args.command == "build" else _up(args.push)
    except tools.ToolsMissing as exc:
        print(f"kindling cluster: {exc}", file=sys.stderr)
        return 1
