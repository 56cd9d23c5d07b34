"""`kindling cluster`: build the control plane's tools, or run a control plane for a person.

kindling cluster build    build (first time) or find the cached tools; print where
kindling cluster up       start one in the foreground; print `export KUBECONFIG=...`;
                          Ctrl-C stops it and removes everything it wrote
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from types import FrameType

from kindling.cluster import nodes, tools


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kindling cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build or find the cached binaries and CRDs")
    sub.add_parser("up", help="run a control plane in the foreground until Ctrl-C")
    return parser


def _build() -> int:
    start = time.monotonic()
    found = tools.build(log=lambda line: print(line, flush=True))
    print(f"cluster tools: {found.root} ({time.monotonic() - start:.1f} s)")
    return 0


def _up() -> int:
    from kindling.cluster.controlplane import ControlPlane

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    start = time.monotonic()
    with ControlPlane(tools.build()) as cluster:
        node_list = ", ".join([*nodes.CPU_NODES, *nodes.GPU_NODES])
        print(
            f"control plane up in {time.monotonic() - start:.1f} s at {cluster.server}\n"
            f"nodes (kwok): {node_list}; Knative Serving CRDs applied\n"
            f"logs: {cluster.workdir}\n\n"
            f"export KUBECONFIG={cluster.kubeconfig}\n\n"
            f"Ctrl-C stops it and removes {cluster.workdir}.",
            flush=True,
        )
        stop.wait()
        print("stopping", flush=True)
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return _build() if args.command == "build" else _up()
    except tools.ToolsMissing as exc:
        print(f"kindling cluster: {exc}", file=sys.stderr)
        return 1
