"""Run the ASGI app under uvicorn with Knative's lifecycle: ready after load, drain on SIGTERM."""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.httptools_impl import HIGH_WATER_LIMIT, HttpToolsProtocol

from kindling.runtime.app import create_app
from kindling.runtime.dataplane import DataPlane
from kindling.runtime.loader import ModelLoader
from kindling.runtime.settings import ServerSettings
from kindling.runtime.telemetry import RuntimeMetrics


class BodyPassThroughProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, passing request-body chunks to the app uncopied.

    uvicorn appends each chunk to a bytearray and copies it out again in receive(): for
    a 600 kB image that is two more copies into fresh, page-faulting buffers per chunk,
    and 0.45 ms of a 1.15 ms round trip (measured: loadtest/bench_runtime.py's HTTP floor,
    0.70 ms with this class). Flow control hands the app each chunk before the next is
    read, so a chunk can usually pass through as the bytes object it arrived as.
    """

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        if cycle.body:  # the app has not taken the last chunk yet
            cycle.body += body
        else:
            cycle.body = body  # type: ignore[assignment]
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()


# How long no inference must have run before background work starts; long enough to tell
# a pause between requests of a burst from the end of it.
IDLE_BEFORE_BACKGROUND_S = 1.0


class RuntimeServer(uvicorn.Server):
    """uvicorn's server, marking the cold-start timeline once it is listening and loaded."""

    def __init__(
        self,
        config: uvicorn.Config,
        loader: ModelLoader,
        plane: DataPlane,
        cache_delay_s: float,
        log_cold_start: bool = True,
    ) -> None:
        super().__init__(config)
        self.loader = loader
        self.plane = plane
        self.timeline = plane.timeline
        self.cache_delay_s = cache_delay_s
        self.log_cold_start = log_cold_start

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        await super().startup(sockets)
        asyncio.get_running_loop().create_task(self._mark_ready())

    async def _mark_ready(self) -> None:
        if self.loader.is_alive():
            await asyncio.to_thread(self.loader.join)
        self.timeline.mark("ready")
        if self.log_cold_start:
            self.timeline.log()
        # The requests that woke this pod come first: background work (optimized-graph
        # caches, CUDA buckets) waits until the models have been idle for a moment.
        await asyncio.sleep(self.cache_delay_s)
        while self.plane.idle_for() < IDLE_BEFORE_BACKGROUND_S:
            await asyncio.sleep(IDLE_BEFORE_BACKGROUND_S)
        for model in list(self.plane.models.values()):
            await asyncio.to_thread(model.save_optimized_cache)
            await asyncio.to_thread(model.warm_buckets)


def serve(settings: ServerSettings, loader: ModelLoader, metrics: RuntimeMetrics) -> int:
    timeline = metrics.timeline
    plane = DataPlane(loader.models, metrics)
    if settings.openwhisk:
        from kindling.runtime.openwhisk import create_openwhisk_app

        app = create_openwhisk_app(settings, plane, loader)
    else:
        app = create_app(settings, plane)
    timeline.mark("imports")
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=BodyPassThroughProtocol,
        ws="none",  # no websockets: spares importing them on every cold start
        lifespan="on",
        access_log=False,  # a log line per request is hot-path work; /metrics counts them
        log_level=settings.log_level,
        # On SIGTERM uvicorn stops accepting, lets in-flight requests finish, then exits
        # (Knative's runtime contract); this bounds the wait.
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        server_header=False,
        date_header=False,
        # An invoker keeps its connection to a paused container for minutes; a short
        # keep-alive would close it under the next /run, which Go's net/http (the
        # OpenWhisk action proxy) never does.
        timeout_keep_alive=3600 if settings.openwhisk else 5,
    )
    server = RuntimeServer(
        config,
        loader,
        plane,
        settings.optimized_cache_delay_s,
        # Under OpenWhisk stdout and stderr are the activations' logs, framed per
        # activation; a line before the first would land in its logs.
        log_cold_start=not settings.openwhisk,
    )
    server.run()
    return 0
