"""`kindling advise`: from a measured run to the chart values that meet an SLO at the lowest cost.

    kindling advise --model NAME --slo-p99-ms X [--workload mmpp-120|diurnal|trace --trace CSV]
        [--measure URL | --from RESULTS_DIR | --model-repository DIR] --out values-NAME.yaml

1. measure (measure.py): runtimes started here on the model repository, a runtime at a URL,
   or an earlier measurement / load-test run directory;
2. search (search.py): every setting the user controls, simulated on the workload;
3. pick (pick.py): the cheapest that meets the SLO, the runners-up and the losers;
4. write (values.py, report.py): the values file, report.md and cost_p99.png beside it,
   and measurement.json (for `--from` next time).

Exit codes: 0 advice written; 1 no candidate meets the SLO (the closest is reported);
2 bad usage or a measurement that cannot be used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kindling.advisor.measurements import Measurement, MeasurementError, RuntimeSetting

EXIT_OK = 0
EXIT_NO_ADVICE = 1
EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    from kindling.controller.workloads import NAMES

    p = argparse.ArgumentParser(
        prog="kindling advise", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    p.add_argument("--model", required=True, help="the model to size (its folder's name)")
    p.add_argument("--slo-p99-ms", type=float, required=True, help="p99 latency to meet, ms")
    p.add_argument("--workload", default="mmpp-120", choices=NAMES, help="default: mmpp-120")
    p.add_argument("--trace", type=Path, help="--workload trace: Azure Functions 2019 CSV")
    p.add_argument("--function", help="--workload trace: the rows to replay (HashFunction)")
    p.add_argument("--duration", type=float, help="workload length, seconds (default: its own)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--measure", metavar="URL", help="measure the runtime at this URL")
    source.add_argument(
        "--from", dest="results", type=Path, metavar="DIR", help="a measurement or a load-test run"
    )
    p.add_argument(
        "--model-repository",
        type=Path,
        default=Path("models"),
        help="where runtimes started here load the model (default: ./models)",
    )
    p.add_argument("--out", type=Path, required=True, help="the values file to write")
    p.add_argument("--report-dir", type=Path, help="report.md, cost_p99.png (default: --out's)")
    p.add_argument("--max-cold-ratio", type=float, help="most share of cold requests allowed")
    p.add_argument(
        "--no-controller",
        action="store_true",
        help="size for Knative's KPA alone (no pre-warm controller)",
    )
    p.add_argument(
        "--pod-overhead",
        type=float,
        help="seconds a cluster adds to each measured cold start (default: the median "
        "measured on a real node, controller/data/pod_start.json; more with an image pull)",
    )
    p.add_argument(
        "--cpu-fractions",
        type=_fractions,
        default=(1.0, 0.5, 0.25),
        help="CPU per pod as fractions of its threads, comma-separated (default 1,0.5,0.25; "
        "1 alone where no CFS quota will throttle the pods)",
    )
    p.add_argument("--memory-mib", type=float, help="pod memory where none was measured (a URL)")
    p.add_argument("--cpu", type=float, help="pod CPU where none was measured (a URL)")
    p.add_argument("--threads", type=int, action="append", help="threads to measure (repeat)")
    p.add_argument(
        "--concurrency", type=int, action="append", help="concurrency levels to measure (repeat)"
    )
    p.add_argument("--requests", type=int, help="requests per measured point (default 300)")
    p.add_argument("--cold-starts", type=int, help="cold starts to measure (default 5)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated numbers, not {text!r}") from None


def progress(line: str) -> None:
    print(f"kindling advise: {line}", file=sys.stderr, flush=True)


def measurement_for(args: argparse.Namespace) -> Measurement:
    from kindling.advisor import measure, results

    if args.results is not None:
        folder: Path = args.results
        setting: RuntimeSetting | None = None
        batch: int | None = None
        model_folder = args.model_repository / args.model
        if (model_folder / "config.yaml").is_file():
            # A load-test run does not record what the runtime was started with: the
            # model's own config.yaml is the best guess, and the report says so.
            setting, batch = measure.config_setting(model_folder)
        return results.read_results(folder, setting=setting, config_max_batch_size=batch)
    plan = measure.MeasurePlan(
        **{
            key: value
            for key, value in (
                ("threads", tuple(args.threads) if args.threads else None),
                ("concurrency", tuple(args.concurrency) if args.concurrency else None),
                ("requests", args.requests),
                ("cold_starts", args.cold_starts),
            )
            if value is not None
        }
    )
    if args.measure is not None:
        return measure.measure_url(args.measure, args.model, plan, progress)
    return measure.measure_started(args.model_repository, args.model, plan, progress)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.workload == "trace" and args.trace is None:
        parser().error("--workload trace needs --trace CSV")
    from kindling.advisor import pick, report, search, values
    from kindling.controller import profiles, workloads

    try:
        workload = workloads.make(
            args.workload, args.seed, args.duration, args.trace, args.function
        )
        space = search.Space(
            slo_p99_ms=args.slo_p99_ms,
            max_cold_ratio=args.max_cold_ratio,
            policy="knative-kpa" if args.no_controller else "kindling",
            pod_overhead_s=(
                profiles.pod_start().median_s if args.pod_overhead is None else args.pod_overhead
            ),
            memory_mib=args.memory_mib,
            cpu=args.cpu,
            cpu_fractions=args.cpu_fractions,
            seed=args.seed,
        )
        measured = measurement_for(args)
    except (ValueError, MeasurementError, search.AdviceError) as exc:
        message = exc.message if isinstance(exc, MeasurementError | search.AdviceError) else exc
        print(f"kindling advise: {message}", file=sys.stderr)
        return EXIT_USAGE
    report_dir = args.report_dir or args.out.parent
    measured.save(report_dir)

    def searched(done: int, at_most: int, outcome: search.Outcome) -> None:
        if done == 1 or done % 10 == 0 or done == at_most:
            progress(
                f"simulated {done} of at most {at_most}: {outcome.candidate.label()} "
                f"p99 {outcome.sim.p99_ms:.0f} ms, ${outcome.cost_usd:.4f}"
            )

    progress(f"searching on {workload.name} ({workload.requests} requests)")
    try:
        found = search.search(measured, workload, space, searched)
        advice = pick.pick(found)
    except pick.NoCandidateMeetsSlo as exc:
        report.write_report(exc.search, report_dir, None, _command(argv))
        print(f"kindling advise: {exc.message}", file=sys.stderr)
        return EXIT_NO_ADVICE
    except search.AdviceError as exc:
        print(f"kindling advise: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    command = _command(argv)
    values.write_values(advice, args.out, command)
    written = report.write_report(found, report_dir, advice, command)
    best = advice.pick
    print(
        f"{measured.model}: {best.candidate.label()}, simulated p99 {best.sim.p99_ms:.1f} ms "
        f"(SLO {args.slo_p99_ms:g}), cold {best.cold_ratio:.2%}, ${best.cost_usd:.4f} on "
        f"{workload.name}; {found.simulated} of {found.considered} candidates simulated"
    )
    print(f"wrote {args.out}, {', '.join(str(w) for w in written)}")
    return EXIT_OK


def _command(argv: list[str] | None) -> str:
    return " ".join(["kindling", "advise", *(sys.argv[1:] if argv is None else argv)])
