"""`kindling controller run` (the chart's controller Deployment runs it) and
`kindling controller simulate` (controller/simcli.py)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    if argv and argv[0] == "simulate":
        from kindling.controller import simcli

        return simcli.main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="kindling controller",
        description="Pre-warm pods from the forecast request rate (run), or compare warm "
        "policies on simulated workloads (simulate).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the controller (in-cluster, or with a kubeconfig)")
    run.add_argument("--kubeconfig", help="default: in-cluster, then $KUBECONFIG")
    run.add_argument("--namespace", help="overrides KINDLING_NAMESPACE")
    run.add_argument("--dry-run", action="store_true", default=None, help="decide, never patch")
    run.add_argument("--once", action="store_true", help="one tick, print its decisions, exit")
    sub.add_parser("simulate", help="compare warm policies on a workload (see its --help)")
    args = parser.parse_args(argv)

    from kindling.controller import app
    from kindling.controller.settings import ControllerSettings, SettingsError

    try:
        settings = ControllerSettings.from_env(namespace=args.namespace, dry_run=args.dry_run)
    except SettingsError as exc:
        print(f"kindling controller: {exc}", file=sys.stderr)
        return 2
    return app.run(settings, kubeconfig=args.kubeconfig, once=args.once)
