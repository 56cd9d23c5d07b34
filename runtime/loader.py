"""The loader thread: builds every model while the main thread imports the HTTP stack.

It imports numpy and onnxruntime itself, so those imports run alongside the main
thread's (the HTTP server and the app); session creation and the warm-up run release the
GIL and overlap with them outright (paper 001: overlap the cold-start steps).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from kindling.metrics import Registry
from kindling.runtime.coldstart import ColdStartTimeline
from kindling.runtime.settings import ModelConfig, ServerSettings

if TYPE_CHECKING:
    from kindling.embeddings.lookup import EmbeddingStore
    from kindling.embeddings.settings import EmbeddingSettings
    from kindling.runtime.model import Model


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
        self.settings = settings
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

    def run(self) -> None:
        fetchers: list[threading.Thread] = []
        try:
            from kindling.runtime.model import Model

            self.models = {c.name: Model(c) for c in self.configs}
            # Downloads wait on the network, not the GIL: they overlap the import below.
            for model in self.models.values():
                fetcher = threading.Thread(
                    target=model.fetch, args=(self.settings, self.timeline), daemon=True
                )
                fetcher.start()
                fetchers.append(fetcher)
            import onnxruntime  # noqa: F401
        finally:
            self.imported.set()
        for model, fetcher in zip(self.models.values(), fetchers, strict=True):
            fetcher.join()
            model.load(self.settings, self.threads, self.timeline, self.embedding_store)

    def embedding_store(self) -> EmbeddingStore:
        """The one store every text model shares, opened by the first that needs it (so
        models without word vectors never import the Redis client)."""
        with self._store_lock:  # OpenWhisk's /init loads models from another thread
            if self._store is None:
                from kindling.embeddings.lookup import EmbeddingStore
                from kindling.embeddings.settings import EmbeddingSettings

                settings = self.embedding_settings or EmbeddingSettings()
                self._store = EmbeddingStore.from_settings(settings, self.registry)
            return self._store
