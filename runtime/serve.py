"""`kindling serve`: start-up ordered for the shortest cold start.

The loader thread fetches each model, imports onnxruntime, builds the session and warms
it up while the main thread imports the HTTP stack; session creation and inference
release the GIL, so the two overlap (paper 001: "import while downloading the model").
Nothing else runs before the socket is bound.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from kindling.runtime.coldstart import ColdStartTimeline


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kindling serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-repository",
        help="folder of models (default: $KINDLING_MODEL_REPOSITORY, then ./models)",
    )
    parser.add_argument("--host", default=None, help="address to bind (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $PORT, then 8080)")
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="embedding store for text models: redis://, rediss://, redis+cluster://h:p,... "
        "(default: $KINDLING_REDIS_URL, else the file store in <repository>/.embeddings)",
    )
    parser.add_argument(
        "--openwhisk",
        action="store_true",
        default=None,
        help="serve OpenWhisk's action protocol (/init, /run) instead of OIP "
        "(default: $KINDLING_OPENWHISK)",
    )
    return parser.parse_args(argv)


def _has_models(root: Path) -> bool:
    from kindling.runtime.repository import CONFIG_FILE

    return root.is_dir() and any(
        (p / CONFIG_FILE).is_file() for p in root.iterdir() if not p.name.startswith(".")
    )


def exit_now(code: int) -> None:
    """End the process at once, skipping the interpreter's finalization.

    While the loader thread (a daemon) is still inside onnxruntime or numpy (importing,
    building a session, waiting for another process's download), finalizing the
    interpreter under it can abort the process (SIGABRT, exit -6) instead of exiting
    with `code`. Nothing needs finalizing: a download in progress writes only to a file
    that the next holder of its lock removes (fetch.py), and flock(2) locks are released
    by the kernel."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def exit_on_signal_during_start_up() -> None:
    """SIGTERM or SIGINT before the event loop takes them over (run_app): nothing is
    served yet, so there is nothing to drain. Exit 0, as the drain after a SIGTERM does:
    Knative stops a pod that is still starting (scale-down, a rollout) the same way as one
    serving, and neither is an error; 143 would show the pod as failed. Python's default
    would kill the process on SIGTERM with no message, or raise KeyboardInterrupt on
    SIGINT in whatever the main thread was doing (uvloop's own set-up included)."""

    def stop(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        print(f"kindling serve: {name} during start-up: exiting", file=sys.stderr)
        exit_now(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)


def _no_blas_threads() -> None:
    """One OpenBLAS thread, unless OPENBLAS_NUM_THREADS says otherwise; before numpy is
    imported (by the loader thread), as OpenBLAS reads it once, when it is loaded.

    numpy's OpenBLAS starts a worker per core at import, which then busy-waits for work:
    ~65 ms of CPU in the 0.3 s after `import numpy` here. The runtime does no BLAS
    (onnxruntime has its own threads), and on a 2-core machine that worker took a core
    from the loader's imports and the session build: the cold start went from 0.391 s
    to 0.349 s median without it (README "Cold start")."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: list[str]) -> int:
    # Before anything slow starts: the imports below, the loader thread and its downloads.
    exit_on_signal_during_start_up()
    _no_blas_threads()
    from kindling.runtime.cpu import available_cpus
    from kindling.runtime.model_loader import ModelLoader
    from kindling.runtime.repository import read_repository
    from kindling.runtime.settings import ConfigError, ServerSettings
    from kindling.runtime.telemetry import RuntimeMetrics

    timeline = ColdStartTimeline()  # measured from exec, read from /proc
    args = parse_args(argv)
    try:
        # Flags are overrides: from_env decides everything else, defaults included.
        settings = ServerSettings.from_env(
            model_repository=Path(args.model_repository) if args.model_repository else None,
            host=args.host,
            port=args.port,
            openwhisk=args.openwhisk,
            redis_url=args.redis,
        )
        if (
            settings.openwhisk
            and not settings.models
            and not _has_models(settings.model_repository)
        ):
            configs = []  # an action may bring its models in its zip (/init)
        else:
            configs = read_repository(settings)
    except ConfigError as exc:
        print(f"kindling serve: {exc.message}", file=sys.stderr)
        return 2
    metrics = RuntimeMetrics(timeline)
    embedding_settings = None
    if any(c.preprocess.get("kind") == "word_vectors" for c in configs):
        embedding_settings = settings.embedding_settings()
    loader = ModelLoader(
        configs,
        settings,
        settings.threads or available_cpus(),
        timeline,
        metrics.registry,
        embedding_settings,
    )
    loader.start()
    loader.imported.wait()

    from kindling.runtime.lifecycle import serve

    return serve(settings, loader, metrics)
