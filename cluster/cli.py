"""`kindling cluster`: build the control plane's tools, or run a control plane for a person.

kindling cluster build    build (first time) or find the cached tools; print where
kindling cluster up       start one in the foreground, with a real node and a loopback
                          registry when run as root; print `export KUBECONFIG=...` and
                          `export KINDLING_REGISTRY=...`; Ctrl-C stops it and removes
                          everything it wrote
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

from kindling.cluster import images, nodes, tools


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
    return parser


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
        return _build() if args.command == "build" else _up(args.push)
    except tools.ToolsMissing as exc:
        print(f"kindling cluster: {exc}", file=sys.stderr)
        return 1
