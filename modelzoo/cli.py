"""`kindling models`: build or list the sample model repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kindling.modelzoo import build

EMBEDDINGS_DIR = ".embeddings"  # the runtime's default embedded store, in the repository


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kindling models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build",
        help="write DIR/<name>/{model.onnx,config.yaml,...}",
        description="Build sample models into DIR; up-to-date folders are left alone.",
    )
    b.add_argument("--out", required=True, type=Path, metavar="DIR", help="model repository")
    b.add_argument(
        "--only",
        nargs="+",
        action="extend",
        choices=list(build.REGISTRY),
        metavar="NAME",
        help=f"build only these (default: all of {', '.join(build.REGISTRY)})",
    )
    b.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="built-model cache (default: $KINDLING_CACHE_DIR/models or ~/.cache/kindling/models)",
    )
    b.add_argument("--no-cache", action="store_true", help="neither read nor fill the cache")
    b.add_argument("--force", action="store_true", help="rebuild even if up to date or cached")
    sub.add_parser("list", help="registered models and whether their builders load")
    return parser


def _build(args: argparse.Namespace) -> int:
    cache = None if args.no_cache else (args.cache or build.default_cache())

    def report(r: build.Result) -> None:
        line = f"{r.name:<14} {r.status:<11} {r.seconds:6.2f}s"
        if r.ok:
            print(line + (f"  {r.detail}" if r.detail else ""), flush=True)
        else:
            print(f"{line}  {r.detail.rstrip()}", file=sys.stderr, flush=True)

    results = build.build_all(args.out, args.only, cache=cache, force=args.force, report=report)
    text_models = {"kim_cnn", "sm_cnn"} & {r.name for r in results if r.ok}
    if text_models:
        # The text CNNs answer out of the box only with their word vectors in the embedded
        # store the runtime defaults to: <repository>/.embeddings.
        from kindling.modelzoo.word_vectors import load_demo_tables

        vectors = (cache or args.out / ".embeddings-src") / "vectors"
        for table in load_demo_tables(args.out / EMBEDDINGS_DIR, vectors):
            print(f"{table:<14} loaded into {args.out / EMBEDDINGS_DIR}", flush=True)
    bad = [r for r in results if not r.ok]
    summary = f"{len(results) - len(bad)} of {len(results)} models ready in {args.out}"
    if bad:
        print(f"{summary}; not built: {', '.join(r.name for r in bad)}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def _list() -> int:
    for name, problem in build.availability().items():
        status = "available" if problem is None else f"unavailable ({problem})"
        print(f"{name:<14} {build.REGISTRY[name].summary}: {status}")
    return 0


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # usage errors and --help: return the code, as `kindling` expects
        return int(e.code or 0)
    return _build(args) if args.command == "build" else _list()
