"""The loader thread: builds every model while the main thread imports the HTTP stack.

It imports numpy and onnxruntime itself, so those imports run alongside the main
thread's (uvicorn, Starlette); session creation and the warm-up run release the GIL and
overlap with them outright (paper 001: overlap the cold-start steps).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from kindling.runtime.coldstart import ColdStartTimeline
from kindling.runtime.settings import ModelConfig, ServerSettings

if TYPE_CHECKING:
    from kindling.runtime.model import Model


class ModelLoader(threading.Thread):
    def __init__(
        self,
        configs: list[ModelConfig],
        settings: ServerSettings,
        threads: int,
        timeline: ColdStartTimeline,
    ) -> None:
        super().__init__(name="model-loader", daemon=True)
        self.configs = configs
        self.settings = settings
        self.threads = threads
        self.timeline = timeline
        self.models: dict[str, Model] = {}
        self.created = threading.Event()
        """Set once `models` holds every Model (loading or not): the server needs them."""

    def run(self) -> None:
        try:
            from kindling.runtime.model import Model

            self.models = {c.name: Model(c) for c in self.configs}
        finally:
            self.created.set()
        for model in self.models.values():
            model.load(self.settings, self.threads, self.settings.providers, self.timeline)
