"""The loader thread: builds every model while the main thread imports the HTTP stack.

It imports numpy and onnxruntime first thing, with only what a session needs (model.py
leaves the codec, and asyncio with it, to the main thread), while the main thread
waits: imports hold the GIL, so two at once only slow each other down. Then session
creation and the warm-up run, which release it, overlap the main thread's import of the
HTTP stack (paper 001: overlap the cold-start steps).

Each model loads as soon as its own file is fetched, in the order fetches finish: a slow
or failing download holds up no other model (and each is bounded by
KINDLING_DOWNLOAD_TIMEOUT_S).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from kindling.metrics import Registry
from kindling.runtime.coldstart import ColdStartTimeline
from kindling.runtime.settings import ModelConfig, ServerSettings

if TYPE_CHECKING:
    from kindling.embeddings.settings import EmbeddingSettings
    from kindling.embeddings.store import EmbeddingStore
    from kindling.runtime.model import LoadOptions, Model


class ModelLoader(threading.Thread):
    def __init__(
        self,
        configs: list[ModelConfig],
        settings: ServerSettings,
        threads: int,
        timeline: ColdStartTimeline,
        registry: Registry,
        embedding_settings: EmbeddingSettings | None = None,
    ) -> None:
        super().__init__(name="model-loader", daemon=True)
        self.configs = configs
        self.settings = settings  # LoadOptions.of(settings) once model.py is imported, in run()
        self.threads = threads
        self.timeline = timeline
        self.registry = registry
        self.embedding_settings = embedding_settings
        self._store: EmbeddingStore | None = None
        self._store_lock = threading.Lock()
        self.models: dict[str, Model] = {}
        self.imported = threading.Event()
        """Set once `models` holds every Model and onnxruntime is imported. The main thread
        waits for it before importing the HTTP stack: the two imports would only slow
        each other down (both hold the GIL), while session creation, which releases it,
        overlaps the HTTP stack's import for free."""
        self.settled = threading.Event()
        """Set once every model is READY or FAILED (or the loader itself failed)."""
        self._on_settled: list[Callable[[], None]] = []
        self._settled_lock = threading.Lock()

    def run(self) -> None:
        fetched: queue.SimpleQueue[Model] = queue.SimpleQueue()
        try:
            try:
                from kindling.runtime.model import LoadOptions, Model

                options = LoadOptions.of(self.settings, self.threads)
                self.models = {c.name: Model(c) for c in self.configs}
                # Downloads wait on the network, not the GIL: they overlap the import below.
                for model in self.models.values():
                    threading.Thread(
                        target=self._fetch,
                        args=(model, options, fetched),
                        name=f"fetch-{model.name}",
                        daemon=True,
                    ).start()
                # onnxruntime, with session.py (hashlib): done before the main thread is
                # let go, so that only the session's own C++ work, which frees the GIL,
                # runs against its imports.
                import kindling.runtime.session  # noqa: F401
            finally:
                self.imported.set()
            # One at a time, in the order fetches finish: loads share the CPUs.
            for _ in self.models:
                model = fetched.get()
                model.load(options, self.timeline, self.embedding_store)
        finally:
            self._settle()

    def _fetch(self, model: Model, options: LoadOptions, fetched: queue.SimpleQueue[Model]) -> None:
        try:
            model.fetch(options, self.timeline)  # a failure leaves the model FAILED
        finally:
            fetched.put(model)

    def _settle(self) -> None:
        with self._settled_lock:
            self.settled.set()
            callbacks, self._on_settled = self._on_settled, []
        for callback in callbacks:
            callback()

    async def wait(self) -> None:
        """Until every model is READY or FAILED, with no thread blocked on it: asyncio's
        Runner joins the default executor's threads on exit, so `to_thread(self.join)`
        would keep a process told to stop alive as long as a download hangs."""
        import asyncio  # here: the loader module is imported before the event loop's

        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not future.done():
                future.set_result(None)

        def wake() -> None:  # in the loader thread
            try:
                loop.call_soon_threadsafe(resolve)
            except RuntimeError:  # the loop has closed: nobody waits any more
                pass

        with self._settled_lock:
            if self.settled.is_set():
                return
            self._on_settled.append(wake)
        await future

    def embedding_store(self) -> EmbeddingStore:
        """The one store every text model shares, opened by the first that needs it (so
        models without word vectors never import the Redis client)."""
        with self._store_lock:  # OpenWhisk's /init loads models from another thread
            if self._store is None:
                from kindling.embeddings.settings import EmbeddingSettings
                from kindling.embeddings.store import EmbeddingStore

                settings = self.embedding_settings or EmbeddingSettings()
                self._store = EmbeddingStore.from_settings(settings, self.registry)
            return self._store
