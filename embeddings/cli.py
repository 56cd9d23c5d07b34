"""`kindling embeddings`: load, serve and inspect word-vector tables.

    kindling embeddings load --table NAME --format FORMAT FILE [--vocab FILE]
                             [--dtype float16] [--redis URL | --store DIR]
    kindling embeddings serve [--port P] [--redis URL | --store DIR] [--cache-size N] ...
    kindling embeddings info --table NAME        kindling embeddings list

Settings come from the environment (settings.py) and flags override them; with neither
--redis nor KINDLING_REDIS_URL the embedded file store is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from kindling.embeddings.formats import FORMATS, read_vocab
from kindling.embeddings.settings import OOV_POLICIES, EmbeddingSettings
from kindling.errors import KindlingError


def _store_flags(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--redis",
        metavar="URL",
        help="redis://host:port/db, rediss://..., redis+cluster://h:p[,h:p] or file://DIR "
        "(default: $KINDLING_REDIS_URL)",
    )
    where.add_argument(
        "--store", metavar="DIR", type=Path, help="use the embedded file store in DIR"
    )
    parser.add_argument(
        "--timeout", type=float, metavar="S", help="Redis connect and socket timeout, seconds"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kindling embeddings", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    load = commands.add_parser("load", help="load a vector file as a new version of a table")
    load.add_argument("file", type=Path, help="vector file, optionally .gz")
    load.add_argument("--table", required=True)
    load.add_argument("--format", required=True, choices=FORMATS)
    load.add_argument("--vocab", type=Path, help="load only the words listed in this file")
    load.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    load.add_argument("--batch", type=int, default=4096, help="vectors per MSET")
    load.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="seconds to keep the old version after the switch (> readers' alias TTL)",
    )
    load.add_argument(
        "--allow-dim-change", action="store_true", help="replace a table of another dimension"
    )
    load.add_argument(
        "--snapshot",
        action="store_true",
        help="once the table is live, ask Redis for a background snapshot (BGSAVE): for a "
        "Redis that takes no automatic ones, so that none forks mid-load (the chart's)",
    )
    load.add_argument("--quiet", action="store_true", help="no progress bar")
    _store_flags(load)

    serve = commands.add_parser("serve", help="serve lookups over HTTP")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8090)
    serve.add_argument("--cache-size", type=int, metavar="N", help="vectors cached in-process")
    serve.add_argument("--oov", choices=OOV_POLICIES, help="vector for unknown words")
    serve.add_argument("--unk-token", metavar="WORD")
    serve.add_argument("--alias-ttl", type=float, metavar="S")
    _store_flags(serve)

    info = commands.add_parser("info", help="print a table's live version and metadata")
    info.add_argument("--table", required=True)
    _store_flags(info)

    listing = commands.add_parser("list", help="list tables")
    _store_flags(listing)
    return parser


def _settings(args: argparse.Namespace, base: EmbeddingSettings) -> EmbeddingSettings:
    changes: dict[str, object] = {}
    if args.redis is not None:
        changes["url"] = args.redis
    if args.store is not None:
        changes.update(url="", store_dir=args.store)
    if args.timeout is not None:
        changes.update(connect_timeout=args.timeout, socket_timeout=args.timeout)
    for flag, name in (
        ("cache_size", "cache_size"),
        ("oov", "oov"),
        ("unk_token", "unk_token"),
        ("alias_ttl", "alias_ttl"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            changes[name] = value
    settings = base.replace(**changes)
    settings.location  # noqa: B018 - reject a bad URL before doing anything
    return settings


def _load(args: argparse.Namespace, settings: EmbeddingSettings) -> int:
    from kindling.embeddings.backend import open_backend
    from kindling.embeddings.progress import Progress
    from kindling.embeddings.table_loader import load_table

    if args.timeout is None:
        settings = settings.for_loading()
    vocab = read_vocab(args.vocab) if args.vocab else None
    backend = open_backend(settings)
    try:
        report = load_table(
            backend,
            args.table,
            args.file,
            args.format,
            dtype=args.dtype,
            vocab=vocab,
            batch_size=args.batch,
            allow_dim_change=args.allow_dim_change,
            grace=args.grace,
            progress=None if args.quiet else Progress(f"load {args.table}"),
        )
        snapshot = ""
        if args.snapshot:
            try:
                backend.snapshot()
                snapshot = "; snapshot started"
            except KindlingError as exc:
                # The table is live and whole: a retry would only load it again.
                snapshot = f"; no snapshot ({exc})"
    finally:
        backend.close()
    print(
        f"loaded {report.count:,} vectors (dim {report.dim}, {report.dtype}) into table "
        f"{report.table!r} version {report.version}, live after {report.live_after:.1f} s "
        f"({report.rate:,.0f} vectors/s)"
        + (f"; skipped {report.skipped:,} not in --vocab" if report.skipped else "")
        + (f"; removed versions {', '.join(report.dropped)}" if report.dropped else "")
        + snapshot
    )
    return 0


def _serve(args: argparse.Namespace, settings: EmbeddingSettings) -> int:
    import uvicorn

    from kindling.embeddings.service import create_app
    from kindling.embeddings.store import EmbeddingStore

    store = EmbeddingStore.from_settings(settings)
    uvicorn.run(create_app(store), host=args.host, port=args.port, log_level="warning")
    return 0


def _inspect(args: argparse.Namespace, settings: EmbeddingSettings) -> int:
    from kindling.embeddings.store import EmbeddingStore

    with EmbeddingStore.from_settings(settings) as store:
        if args.command == "list":
            for table in store.tables():
                print(table)
        else:
            print(orjson.dumps(store.info(args.table), option=orjson.OPT_INDENT_2).decode())
    return 0


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return int(exc.code or 0)
    try:
        settings = _settings(args, EmbeddingSettings.from_env())
        if args.command == "load":
            return _load(args, settings)
        if args.command == "serve":
            return _serve(args, settings)
        return _inspect(args, settings)
    except KindlingError as exc:
        print(f"kindling embeddings {args.command}: error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
