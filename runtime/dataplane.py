"""The transport-agnostic data plane: find the model, validate, batch, time, count.

Used by both transports, OIP REST (`app.py`) and OpenWhisk's /init + /run, after
MLServer's `handlers/dataplane.py`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from kindling import __version__
from kindling.errors import InvalidInput, KindlingError, ModelNotFound, ModelNotReady
from kindling.runtime.batcher import AdaptiveBatcher
from kindling.runtime.codec import InferRequest, RequestedOutput, classify
from kindling.runtime.coldstart import ColdStartTimeline
from kindling.runtime.model import Model, ModelState
from kindling.runtime.telemetry import RuntimeMetrics

# A lone request runs on the event-loop thread only once requests have stopped overlapping
# for this long: under concurrent load the loop must keep reading the others' bodies.
SEQUENTIAL_AFTER_S = 1.0

# OIP extensions this server implements (GET /v2 lists them).
EXTENSIONS = ("binary_tensor_data", "model_configuration", "classification")


@dataclass
class InferResult:
    model: Model
    outputs: list[tuple[str, np.ndarray, bool]]
    """(name, array, send as binary)"""
    request_id: str | None


class DataPlane:
    def __init__(
        self, models: dict[str, Model], metrics: RuntimeMetrics, inline_max_s: float = 0.0
    ) -> None:
        self.models = models
        self.inline_max_s = inline_max_s
        self.metrics = metrics
        self.timeline: ColdStartTimeline = metrics.timeline
        self._served_one = False
        self._in_flight = 0
        self._last_finished = time.monotonic()
        self._overlapped_at = float("-inf")
        """When a request last arrived while another was in flight."""
        # One inference thread per model: onnxruntime already spreads a run over the
        # intra-op threads, so two runs at once would only fight over the same cores.
        self._executors = {name: ThreadPoolExecutor(1, f"infer-{name}") for name in models}
        self._batchers: dict[str, AdaptiveBatcher] = {}

    async def add_models(self, models: dict[str, Model]) -> None:
        """Serve more models (OpenWhisk's /init of a zip); one of a known name replaces it."""
        for name, model in models.items():
            replaced = self._batchers.pop(name, None)
            if replaced is not None:
                await replaced.close()
            self.models[name] = model
            self._executors.setdefault(name, ThreadPoolExecutor(1, f"infer-{name}"))

    def _batcher(self, model: Model) -> AdaptiveBatcher:
        """The model's batcher, made on first use: its padding rules come from the loaded
        model's preprocessor."""
        batcher = self._batchers.get(model.name)
        if batcher is None:
            batcher = self._batchers[model.name] = AdaptiveBatcher(
                predict=model.predict,
                executor=self._executors[model.name],
                max_rows=model.max_rows,
                max_delay_s=model.config.max_queue_delay_ms / 1000,
                pad_values=model.pad_values,
                on_batch=self._batch_observer(model.name),
                inline_max_s=self.inline_max_s,
                row_compute_s=model.warmup_s,
            )
        return batcher

    # -- health and metadata ----------------------------------------------------------

    async def readiness(self, model: Model) -> str | None:
        """Why `model` cannot serve now, or None: loading, failed, or (a text model) its
        embedding table missing from the store. For the readiness routes only: the
        request path never waits on it, and finds a missing table by its own lookup."""
        if model.state is not ModelState.READY:
            return self._not_loaded(model)
        return await model.preprocessor.readiness() if model.preprocessor is not None else None

    async def unready(self) -> dict[str, str]:
        """Each model that cannot serve now, with why; empty when the server is ready."""
        reasons: dict[str, str] = {}
        for name, model in list(self.models.items()):
            reason = await self.readiness(model)
            if reason is not None:
                reasons[name] = reason
        return reasons

    @staticmethod
    def _not_loaded(model: Model) -> str:
        if model.state is ModelState.FAILED:
            return f"model {model.name!r} failed to load: {model.error}"
        return f"model {model.name!r} is still loading"

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "kindling", "version": __version__, "extensions": list(EXTENSIONS)}

    def model(self, name: str, version: str | None = None) -> Model:
        model = self.models.get(name)
        if model is None or (version is not None and version != model.version):
            raise ModelNotFound(name, version)
        return model

    def ready_model(self, name: str, version: str | None = None) -> Model:
        model = self.model(name, version)
        if model.state is ModelState.READY:
            return model
        raise ModelNotReady(self._not_loaded(model))

    def idle_for(self) -> float:
        """Seconds since the last inference finished; 0 while any is in flight."""
        return 0.0 if self._in_flight else time.monotonic() - self._last_finished

    def claim_cold(self) -> bool:
        """True exactly once: for the first inference response of this process."""
        cold, self._served_one = not self._served_one, True
        return cold

    # -- inference --------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str | None,
        read_request: Callable[[], Awaitable[InferRequest]],
    ) -> InferResult:
        """Serve one request whose body `read_request` reads and decodes.

        The model is looked up before the body is read, so an unknown or unready model
        costs no upload, and the batcher knows the request is on its way.
        """
        started = time.perf_counter()
        status = "200"
        model = self.model(name, version)
        if self._in_flight and self._in_flight > self._overtaken():
            # Requests whose uploads others overtook (stalled or slow: see
            # AdaptiveBatcher.arrived) are no concurrent load the loop must keep up with.
            self._overlapped_at = time.monotonic()
        in_flight = self.metrics.in_flight
        in_flight.inc(name)
        self._in_flight += 1
        try:
            model = self.ready_model(name, version)
            batcher = self._batcher(model)
            ticket = batcher.arrive()
            try:
                request = await read_request()
                inputs, rows = model.validate(request.inputs)
                inputs = await model.prepare(inputs)
            finally:
                batcher.arrived(ticket)
            sequential = time.monotonic() - self._overlapped_at > SEQUENTIAL_AFTER_S
            outputs, times = await batcher.infer(inputs, rows, may_inline=sequential)
            result = InferResult(model, self._select(model, outputs, request), request.id)
            latency = self.metrics.latency
            latency.observe(times.queue_s, name, "queue")
            latency.observe(times.compute_s, name, "compute")
            return result
        except KindlingError as exc:
            status = str(exc.status_code)
            raise
        except Exception:
            status = "500"
            raise
        finally:
            in_flight.dec(name)
            self._in_flight -= 1
            self._last_finished = time.monotonic()
            self.metrics.requests.inc(name, status)
            self.metrics.latency.observe(time.perf_counter() - started, name, "total")

    def _overtaken(self) -> int:
        return sum(batcher.overtaken for batcher in self._batchers.values())

    def _select(
        self, model: Model, outputs: dict[str, np.ndarray], request: InferRequest
    ) -> list[tuple[str, np.ndarray, bool]]:
        if request.outputs is None:
            return [(n, a, request.binary_output) for n, a in outputs.items()]
        return [self._output(model, outputs, wanted) for wanted in request.outputs]

    @staticmethod
    def _output(
        model: Model, outputs: dict[str, np.ndarray], wanted: RequestedOutput
    ) -> tuple[str, np.ndarray, bool]:
        if wanted.name not in outputs:
            raise InvalidInput(
                f"model {model.name!r} has no output {wanted.name!r} (has {list(outputs)})"
            )
        array = outputs[wanted.name]
        if wanted.class_count:
            array = classify(array, wanted.class_count)
        return wanted.name, array, wanted.binary

    def _batch_observer(self, name: str) -> Callable[[int, float], None]:
        histogram = self.metrics.batch_size

        def observe(rows: int, _compute_s: float) -> None:
            histogram.observe(rows, name)

        return observe

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
