"""`kindling loadtest peers`: the same model, load and client against each peer, in turn.

    kindling loadtest peers --model-repository models [--model mobilenet_v2]
        [--only fastapi,kindling] [--smoke] [--out DIR]

Each peer is installed on first use into its own venv under ~/.cache/kindling/peers/
(minutes, once), then run as a subprocess. A peer that cannot be installed or started is
reported with the reason; the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from kindling.loadtest.peers.bench import Bench, Result, Settings
from kindling.loadtest.peers.catalog import BY_NAME, PEERS
from kindling.loadtest.peers.table import as_json, markdown


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kindling loadtest peers", description=__doc__)
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="mobilenet_v2", help="an FP32 image model")
    parser.add_argument("--only", default="", help="comma-separated peers (default: all)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (default: CPUs)")
    parser.add_argument("--requests", type=int, default=300, help="latency samples at c=1")
    parser.add_argument("--seconds", type=float, default=8.0, help="throughput run at c=16")
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny numbers: checks it runs")
    parser.add_argument("--out", type=Path, default=Path("loadtest-results/peers"))
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from kindling.runtime.cpu import available_cpus

    names = [n.strip() for n in args.only.split(",") if n.strip()] or [p.name for p in PEERS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        print(f"unknown peers {unknown}; known: {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    model_dir = args.model_repository / args.model
    if not (model_dir / "model.onnx").is_file():
        print(f"no {model_dir}/model.onnx (kindling models build --out ...)", file=sys.stderr)
        return 2
    if args.smoke:
        args.requests, args.seconds, args.cold_starts = 20, 1.0, 1
    threads = args.threads or available_cpus()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kindling-peers-") as tmp:
        settings = Settings(
            model_dir, threads, args.requests, args.seconds, args.cold_starts, workdir=Path(tmp)
        )
        bench = Bench(settings)
        ort_pin = f"onnxruntime=={bench.ort_version}"
        print(f"raw onnxruntime {bench.ort_version}, {threads} threads", flush=True)
        raw = bench.raw()
        results: list[Result] = []
        for name in names:
            peer = BY_NAME[name]
            print(f"{peer.title}:", flush=True)
            result = bench.measure(peer, [*peer.packages, ort_pin])
            print(f"  {summary_line(result)}", flush=True)
            results.append(result)
    header = {
        "model": args.model,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "threads": threads,
        "onnxruntime": bench.ort_version,
        "load": f"{args.requests} sequential requests (c=1); {args.seconds:g} s at c=16; "
        f"cold start median of {args.cold_starts}",
        "date": time.strftime("%Y-%m-%d"),
    }
    (args.out / "peers.md").write_text(markdown(results, raw, header))
    (args.out / "peers.json").write_text(json.dumps(as_json(results, raw, header), indent=2))
    print(f"report: {args.out / 'peers.md'}")
    return 0


def summary_line(r: Result) -> str:
    if r.reason:
        return f"not measured: {r.reason}"
    return (
        f"cold start {r.cold_start_s:.2f} s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, "
        f"{r.throughput:.1f} req/s at c=16, peak RSS {r.peak_rss_mib:.0f} MiB"
    )
