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
kindling cluster prewarm  against that cluster: a burst after silence with the pre-warm
                          controller off and on, beside the simulator's prediction for
                          the same arrivals (cluster/prewarm.py)
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from kindling.cluster import coldstart, images, nodes, prewarm, tools
from kindling.loadtest.config import add_params_argument, params_of


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
    cold = _measurement(
        sub, "cold-start", "measure a model's cold start from zero on the cluster in $KUBECONFIG",
        coldstart,
    )  # fmt: skip
    cold.add_argument(
        "--runs", type=_positive, default=coldstart.DEFAULT_RUNS, help="cold starts measured"
    )
    cold.add_argument(
        "--pull",
        action="store_true",
        help="take the image off the node before each run (the node's containerd on this "
        "machine, as `make cluster` runs it)",
    )
    cold.add_argument("--keep", action="store_true", help="leave the namespace in place")
    cold.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="write what the cluster added to each cold start as the simulator's pod-start "
        "profile (controller/data/pod_start.json is this, measured here)",
    )
    warm = _measurement(
        sub, "prewarm", "the pre-warm controller off and on, on real pods, beside the simulator",
        prewarm,
    )  # fmt: skip
    warm.add_argument("--seed", type=int, default=0, help="seeds the arrivals")
    add_params_argument(
        warm, "a parameter of the bursts workload (bursts, gap_s, rate, burst_s, tail_s)"
    )
    warm.add_argument(
        "--arm",
        action="append",
        choices=list(prewarm.ARMS),
        help="an arm to run, repeated (default: all, in this order)",
    )
    return parser


def _measurement(sub: Any, name: str, help: str, module: ModuleType) -> argparse.ArgumentParser:
    """A command measured on the cluster in $KUBECONFIG: its module's docstring as its
    description, and the options every one has."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--model", default=coldstart.DEFAULT_MODEL, choices=coldstart.MODELS)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--namespace", default=module.NAMESPACE)
    parser.add_argument("--tag", help="the images' tag (default: the chart's appVersion)")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {value}")
    return value


class Usage(Exception):
    """A command run without what it needs: exit 2 with the message."""


@contextmanager
def _from_env(command: str) -> Iterator[tuple[coldstart.Kubeconfig, str]]:
    """The cluster in $KUBECONFIG and its registry, as `make cluster` prints them."""
    kubeconfig, registry = os.environ.get("KUBECONFIG"), os.environ.get("KINDLING_REGISTRY")
    if not kubeconfig or not registry:
        raise Usage(
            f"kindling cluster {command}: set KUBECONFIG and KINDLING_REGISTRY "
            "(`make cluster` prints both)"
        )
    found = tools.build()
    with tempfile.TemporaryDirectory() as helm_home:
        yield (
            coldstart.Kubeconfig(Path(kubeconfig), found.bin("kubectl").parent, Path(helm_home)),
            registry,
        )


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cold_start(args: argparse.Namespace) -> int:
    with _from_env("cold-start") as (target, registry):
        report = coldstart.measure(
            target, registry, args.model, args.runs, args.pull, args.namespace, args.tag,
            args.keep, log=_log,
        )  # fmt: skip
    summary = report.summary()
    print(json.dumps(summary) if args.json else coldstart.render(summary))
    if args.profile:
        command = f"kindling cluster cold-start --model {args.model} --runs {args.runs}"
        profile = coldstart.pod_start_profile(report, command + " --pull" * args.pull)
        args.profile.write_text(json.dumps(profile, indent=1) + "\n")
    return 0


def _prewarm(args: argparse.Namespace) -> int:
    arms = tuple(a for a in prewarm.ARMS if a in (args.arm or prewarm.ARMS))
    params = params_of(args)
    with _from_env("prewarm") as (target, registry):
        report = prewarm.compare(
            target, registry, args.model, args.seed, params, arms, args.namespace, args.tag,
            log=_log,
        )  # fmt: skip
    summary = report.summary()
    print(json.dumps(summary) if args.json else prewarm.render(summary))
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
    commands = {
        "cold-start": lambda: _cold_start(args),
        "prewarm": lambda: _prewarm(args),
        "build": _build,
        "up": lambda: _up(args.push),
    }
    try:
        return commands[args.command]()
    except Usage as exc:
        print(exc, file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        # kubectl or helm refused: what they said, not a traceback.
        print(f"kindling cluster {args.command}: {' '.join(exc.cmd[:3])}... failed:\n"
              f"{(exc.stderr or '').strip()}", file=sys.stderr)  # fmt: skip
        return 1
    except (tools.ToolsMissing, RuntimeError, ValueError) as exc:
        print(f"kindling cluster {args.command}: {exc}", file=sys.stderr)
        return 1
