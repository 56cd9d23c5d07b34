"""Run an app on the runtime's HTTP server with Knative's lifecycle: ready after load, drain
on SIGTERM (stop accepting, finish in-flight requests, exit 0)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from kindling.runtime.dataplane import DataPlane
from kindling.runtime.httpserver import App, HttpServer, Limits
from kindling.runtime.model_loader import ModelLoader
from kindling.runtime.serve import exit_now, exit_on_signal_during_start_up
from kindling.runtime.settings import ServerSettings
from kindling.runtime.telemetry import RuntimeMetrics

log = logging.getLogger("kindling.runtime")

# How long no inference must have run before background work starts; long enough to tell
# a pause between requests of a burst from the end of it.
IDLE_BEFORE_BACKGROUND_S = 1.0
# An invoker keeps its connection to a paused container for minutes; a short keep-alive
# would close it under the next /run, which Go's net/http (the OpenWhisk action proxy)
# never does.
KEEP_ALIVE_S = 5.0
OPENWHISK_KEEP_ALIVE_S = 3600.0


class SideServer(Protocol):
    """Another listener over the same data plane (gRPC), started after the HTTP server
    binds and drained with it."""

    async def start(self) -> None: ...

    async def stop(self, grace_s: float) -> None: ...


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # not on every platform; asyncio's own loop works, a bit slower
        return None
    return uvloop.new_event_loop


def configure_logging(level: str) -> None:
    number = logging.getLevelName(level.upper())
    logging.basicConfig(
        level=number if isinstance(number, int) else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


async def background_work(
    plane: DataPlane, loader: ModelLoader, delay_s: float, log_cold_start: bool
) -> None:
    """Mark ready once every model has loaded, then, once the models have been idle for a
    moment, write optimized-graph caches and warm CUDA buckets: the requests that woke the
    pod come first."""
    await loader.wait()  # not to_thread(loader.join): see ModelLoader.wait
    plane.timeline.mark("ready")
    if log_cold_start:
        plane.timeline.log()
    await asyncio.sleep(delay_s)
    while plane.idle_for() < IDLE_BEFORE_BACKGROUND_S:
        await asyncio.sleep(IDLE_BEFORE_BACKGROUND_S)
    for model in list(plane.models.values()):
        await asyncio.to_thread(model.save_optimized_cache)
        await asyncio.to_thread(model.warm_buckets)


def exit_within(seconds: float, code: int = 0) -> None:
    """End the process `seconds` from now if it is still running then. The drain is
    bounded by the same time, but a thread blocked elsewhere (a download, a lock, a
    `to_thread` call, which asyncio.Runner and the interpreter both join on exit) must
    not keep a pod told to stop alive until the kubelet's SIGKILL."""

    def hard_exit() -> None:
        log.warning("still running %g s after the stop signal: exiting now", seconds)
        exit_now(code)

    timer = threading.Timer(seconds, hard_exit)
    timer.daemon = True
    timer.start()


def run_app(
    app: App,
    host: str,
    port: int,
    max_body: int,
    keep_alive_s: float,
    graceful_timeout_s: float,
    after_listen: Callable[[], Coroutine[Any, Any, None]] | None = None,
    limits: Limits | None = None,
    side: SideServer | None = None,
) -> int:
    """Serve `app` on uvloop until SIGTERM or SIGINT, then drain; 1 if the port can't be
    bound. `after_listen` starts once the socket is bound, and is cancelled on stop. The
    process ends at most `graceful_timeout_s` after the signal, with 0 (see exit_within)."""

    async def serve_until_stopped() -> int:
        loop = asyncio.get_running_loop()
        # First, before anything that may take time: a stop during start-up is a stop.
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = HttpServer(app, loop, max_body, keep_alive_s, limits or Limits())
        app.startup()
        try:
            await server.listen(host, port)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", host, port, exc)
            return 1
        log.info("serving on http://%s:%d", host, port)
        if side is not None:
            try:
                await side.start()
            except OSError as exc:
                log.error("cannot start the gRPC server: %s", exc)
                await server.drain(0)
                return 1
        task = loop.create_task(after_listen()) if after_listen is not None else None
        await stop.wait()
        exit_within(graceful_timeout_s)
        log.info("draining: %d connections open", len(server.connections))
        if task is not None:
            task.cancel()
        if side is None:
            await server.drain(graceful_timeout_s)
        else:
            await asyncio.gather(server.drain(graceful_timeout_s), side.stop(graceful_timeout_s))
        if app.shutdown is not None:
            await app.shutdown()
        return 0

    exit_on_signal_during_start_up()  # until the loop's own handlers are in (above)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(serve_until_stopped())


def serve(settings: ServerSettings, loader: ModelLoader, metrics: RuntimeMetrics) -> int:
    plane = DataPlane(loader.models, metrics, inline_max_s=settings.inline_max_ms / 1000)
    if settings.openwhisk:
        from kindling.runtime.openwhisk import create_openwhisk_app

        app = create_openwhisk_app(settings, plane, loader)
    else:
        from kindling.runtime.rest import create_app

        app = create_app(settings, plane)
    side = None
    if settings.grpc_port is not None and not settings.openwhisk:
        # Imported only when enabled: grpcio and protobuf stay off the REST cold start.
        from kindling.runtime.grpc_service import GrpcServer

        side = GrpcServer(
            plane,
            settings.host,
            settings.grpc_port,
            settings.max_body_bytes,
            settings.max_json_bytes,
        )
    metrics.timeline.mark("imports")
    configure_logging(settings.log_level)

    def after_listen() -> Coroutine[Any, Any, None]:
        # Under OpenWhisk stdout and stderr are the activations' logs, framed per
        # activation; a line before the first would land in its logs.
        return background_work(
            plane, loader, settings.optimized_cache_delay_s, not settings.openwhisk
        )

    return run_app(
        app,
        settings.host,
        settings.port,
        settings.max_body_bytes,
        OPENWHISK_KEEP_ALIVE_S if settings.openwhisk else KEEP_ALIVE_S,
        settings.graceful_timeout_s,
        after_listen,
        Limits.of(settings),
        side,
    )
