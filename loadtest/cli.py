"""`kindling loadtest`: run the papers' workloads, rebuild reports, compare with peers.

    kindling loadtest run --target URL --model NAME --workload W [--out DIR] [--time-scale F]
    kindling loadtest report DIR [DIR ...] [--out FILE]
    kindling loadtest workloads
    kindling loadtest peers [--model mobilenet_v2] [--only NAME ...] [--smoke]

`run` starts Locust headless in a child process (Locust monkey-patches the standard
library with gevent, which nothing else here should inherit), then writes the report from
what that process recorded. Exit codes: 0 SLOs met, 1 an SLO missed, 2 bad usage, 3 the
run failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from kindling.loadtest.config import add_arguments, from_namespace
from kindling.loadtest.shapes import SHAPES
from kindling.loadtest.slo import EXIT_FAILED, EXIT_MET, EXIT_MISSED, EXIT_USAGE

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def locust_command(target: str, plan: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        target,
        "--kindling-plan",
        str(plan),
        "--only-summary",  # progress comes from our own lines: offered against achieved
        "--loglevel",
        "WARNING",
    ]


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="kindling loadtest run", description="Run one of the papers' workloads on Locust."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = from_namespace(args, args.target)
    except ValueError as exc:
        print(f"kindling loadtest run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("requests.csv", "run.json", "pods.csv", "summary.json", "report.md"):
        (out / stale).unlink(missing_ok=True)
    plan = out / "plan.json"
    plan.write_text(config.to_json())
    print(
        f"kindling loadtest: {config.workload} on {config.model} at {config.target}, "
        f"time scale {config.time_scale:g}, seed {config.seed} -> {out}",
        flush=True,
    )
    code = subprocess.call(locust_command(config.target, plan))
    if code not in (EXIT_MET, EXIT_MISSED) or not (out / "requests.csv").is_file():
        print(f"kindling loadtest run: the Locust run failed (exit {code})", file=sys.stderr)
        return EXIT_FAILED
    from kindling.loadtest.report import write_report

    report = write_report(out)
    print(report.headline(), flush=True)
    return EXIT_MET if report.summary["slo"]["passed"] else EXIT_MISSED


def report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="kindling loadtest report",
        description="Rebuild summary.json, report.md and the plots of run directories.",
    )
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="also write paper 001's table over all runs")
    args = parser.parse_args(argv)
    from kindling.loadtest.report import combined, write_report

    summaries = []
    for out in args.runs:
        rebuilt = write_report(out)
        print(rebuilt.headline())
        summaries.append(rebuilt.summary)
    if args.out:
        args.out.write_text(combined(summaries))
        print(f"workloads table: {args.out}")
    return EXIT_MET


def workloads(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="kindling loadtest workloads").parse_args(argv)
    for name, shape in SHAPES.items():
        instance = shape()
        print(f"{name:<12} {instance.describe()}")
        print(f"{'':<12} {json.dumps(instance.parameters())}")
    return EXIT_MET


COMMANDS = {
    "run": run,
    "report": report,
    "workloads": workloads,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return EXIT_MET if args else EXIT_USAGE
    command, rest = args[0], args[1:]
    if command == "peers":
        from kindling.loadtest.peers.cli import main as peers_main

        return peers_main(rest)
    if command not in COMMANDS:
        print(f"kindling loadtest: unknown command {command!r}\n{__doc__}", file=sys.stderr)
        return EXIT_USAGE
    return COMMANDS[command](rest)
