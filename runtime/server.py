"""Run the ASGI app under uvicorn with Knative's lifecycle: ready after load, drain on SIGTERM."""

from __future__ import annotations

import asyncio

import uvicorn

from kindling.runtime.app import create_app
from kindling.runtime.coldstart import ColdStartTimeline
from kindling.runtime.dataplane import DataPlane
from kindling.runtime.loader import ModelLoader
from kindling.runtime.model import Model
from kindling.runtime.settings import ServerSettings
from kindling.runtime.telemetry import RuntimeMetrics


class RuntimeServer(uvicorn.Server):
    """uvicorn's server, marking the cold-start timeline once it is listening and loaded."""

    def __init__(
        self,
        config: uvicorn.Config,
        loader: ModelLoader,
        timeline: ColdStartTimeline,
        models: list[Model],
        cache_delay_s: float,
    ) -> None:
        super().__init__(config)
        self.loader = loader
        self.timeline = timeline
        self.models = models
        self.cache_delay_s = cache_delay_s

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        await super().startup(sockets)
        asyncio.get_running_loop().create_task(self._mark_ready())

    async def _mark_ready(self) -> None:
        if self.loader.is_alive():
            await asyncio.to_thread(self.loader.join)
        self.timeline.mark("ready")
        self.timeline.log()
        # The requests that woke this pod come first; the cache waits for them.
        await asyncio.sleep(self.cache_delay_s)
        for model in self.models:
            await asyncio.to_thread(model.save_optimized_cache)


def serve(settings: ServerSettings, loader: ModelLoader, metrics: RuntimeMetrics) -> int:
    models = loader.models
    timeline = metrics.timeline
    plane = DataPlane(models, metrics)
    app = create_app(settings, plane)
    timeline.mark("imports")
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="none",  # no websockets: spares importing them on every cold start
        lifespan="on",
        access_log=False,  # a log line per request is hot-path work; /metrics counts them
        log_level=settings.log_level,
        # On SIGTERM uvicorn stops accepting, lets in-flight requests finish, then exits
        # (Knative's runtime contract); this bounds the wait.
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        server_header=False,
        date_header=False,
    )
    server = RuntimeServer(
        config, loader, timeline, list(models.values()), settings.optimized_cache_delay_s
    )
    server.run()
    return 0
