"""The transport-agnostic data plane: find the model, validate, batch, time, count.

Used by every transport, OIP REST (`rest.py`), OpenWhisk's /init + /run and gRPC, after
MLServer's `handlers/dataplane.py`. Triton's extensions (model configuration, repository
index, statistics) are answered here as plain documents, so each transport only encodes
them.
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
from kindling.runtime.settings import ModelConfig, TensorSpec
from kindling.runtime.telemetry import RuntimeMetrics

# A lone request runs on the event-loop thread only once requests have stopped overlapping
# for this long: under concurrent load the loop must keep reading the others' bodies.
SEQUENTIAL_AFTER_S = 1.0

# OIP extensions this server implements (GET /v2 lists them); `model_repository` and
# `statistics` are Triton's names for the repository index and statistics extensions
# (triton-inference-server/server docs/protocol/extension_*.md).
EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "classification",
    "model_repository",
    "statistics",
)
# Triton's DataType enum (model_config.proto) by OIP datatype; BYTES is TYPE_STRING.
TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}
# Repository index states (Triton's model_repository extension) by model state.
INDEX_STATES = {
    ModelState.READY: "READY",
    ModelState.LOADING: "LOADING",
    ModelState.FAILED: "UNAVAILABLE",
}
# Distinct batch sizes counted per model: a model without batching takes any row count,
# and a client must not grow the statistics without bound.
MAX_BATCH_SIZES = 256


class Duration:
    """A count and the nanoseconds they took: Triton's StatisticDuration."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class ModelStatistics:
    """One model's counters for Triton's statistics extension. Updated on the event-loop
    thread only (requests and the batcher's `on_batch` both run there): plain fields, no
    lock; bounded (MAX_BATCH_SIZES)."""

    __slots__ = (
        "batches",
        "compute_infer",
        "compute_input",
        "compute_output",
        "execution_count",
        "fail",
        "inference_count",
        "last_inference_ms",
        "queue",
        "success",
    )

    def __init__(self) -> None:
        self.last_inference_ms = 0
        self.inference_count = 0
        """Rows inferred (Triton: a request of batch n counts n)."""
        self.execution_count = 0
        """Model runs: batches, however many requests each merged."""
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        """Validating and preparing the inputs (tokenizing, embedding lookups)."""
        self.compute_infer = Duration()
        self.compute_output = Duration()
        """Selecting and classifying the outputs."""
        self.batches: dict[int, Duration] = {}
        """Per batch size: its runs and their compute time."""

    def batch(self, rows: int, compute_s: float) -> None:
        self.execution_count += 1
        duration = self.batches.get(rows)
        if duration is None:
            if len(self.batches) >= MAX_BATCH_SIZES:
                return
            duration = self.batches[rows] = Duration()
        duration.add(compute_s)

    def to_dict(self, name: str, version: str) -> dict[str, Any]:
        """Triton's ModelStatistics (grpc_service.proto), as its HTTP endpoint answers."""
        empty = Duration().to_dict()
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": self.compute_input.to_dict(),
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": self.compute_output.to_dict(),
                "cache_hit": empty,
                "cache_miss": empty,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": empty,
                    # Triton counts each batch's compute once, under its size.
                    "compute_infer": duration.to_dict(),
                    "compute_output": empty,
                }
                for size, duration in sorted(self.batches.items())
            ],
        }


def triton_config(config: ModelConfig, threads: int | None = None) -> dict[str, Any]:
    """`config` as Triton's ModelConfig (model_config.proto, protobuf JSON): what
    perf_analyzer, Model Analyzer and tritonclient read. With max_batch_size > 0, `dims`
    leave out the batch dimension; a tensor that is only the batch dimension is Triton's
    `dims: [1]` reshaped to `[]`. Kindling's own fields go in `parameters` (a map of
    string_value), the one place the proto leaves open; the intra-op threads under the key
    Triton's onnxruntime backend reads (`intra_op_thread_count`), once the model is loaded."""
    batching = config.max_batch_size > 0 and config.batch_dynamic

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        dims = list(spec.shape[1:] if batching else spec.shape)
        doc: dict[str, Any] = {
            "name": spec.name,
            "data_type": TRITON_TYPES[spec.datatype],
            "dims": dims or [1],
        }
        if not dims:
            doc["reshape"] = {"shape": []}
        return doc

    parameters = {
        "kindling_max_queue_delay_ms": f"{config.max_queue_delay_ms:g}",
        "kindling_model_file": config.model_file,
    }
    if threads is not None:
        parameters["intra_op_thread_count"] = str(threads)
    if config.description:
        parameters["kindling_description"] = config.description
    for key, value in config.resources.items():
        parameters[f"kindling_resources_{key}"] = str(value)
    for spec in config.inputs:
        if spec.pad_value is not None:
            parameters[f"kindling_pad_value_{spec.name}"] = f"{spec.pad_value:g}"
    doc: dict[str, Any] = {
        "name": config.name,
        "platform": config.platform,
        "max_batch_size": config.max_batch_size if batching else 0,
        "input": [tensor(t) for t in config.inputs],
        "output": [tensor(t) for t in config.outputs],
        "parameters": {k: {"string_value": v} for k, v in parameters.items()},
    }
    if batching:
        delay_us = int(config.max_queue_delay_ms * 1000)
        doc["dynamic_batching"] = {"max_queue_delay_microseconds": delay_us}
    if config.version.isdigit():
        doc["version_policy"] = {"specific": {"versions": [int(config.version)]}}
    return doc


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
        self._stats = {name: ModelStatistics() for name in models}

    async def add_models(self, models: dict[str, Model]) -> None:
        """Serve more models (OpenWhisk's /init of a zip); one of a known name replaces it."""
        for name, model in models.items():
            replaced = self._batchers.pop(name, None)
            if replaced is not None:
                await replaced.close()
            self.models[name] = model
            self._stats[name] = ModelStatistics()
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

    # -- Triton's extensions ----------------------------------------------------------

    def triton_config(self, name: str, version: str | None) -> dict[str, Any]:
        """The model's configuration as Triton's ModelConfig (protobuf JSON)."""
        model = self.model(name, version)
        return triton_config(model.config, model.threads)

    def statistics(self, name: str | None, version: str | None) -> dict[str, Any]:
        """Triton's ModelStatisticsResponse: every model's, or the one named."""
        models = [self.model(name, version)] if name else list(self.models.values())
        return {
            "model_stats": [self._statistics(m.name).to_dict(m.name, m.version) for m in models]
        }

    def _statistics(self, name: str) -> ModelStatistics:
        stats = self._stats.get(name)
        if stats is None:  # a model the loader added to `models` after this was made
            stats = self._stats[name] = ModelStatistics()
        return stats

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: each model with its state and, if not ready, why."""
        index = []
        for model in list(self.models.values()):
            if ready_only and model.state is not ModelState.READY:
                continue
            index.append(
                {
                    "name": model.name,
                    "version": model.version,
                    "state": INDEX_STATES[model.state],
                    "reason": "" if model.state is ModelState.READY else self._not_loaded(model),
                }
            )
        return index

    def idle_for(self) -> float:
        """Seconds since the last inference finished; 0 while any is in flight."""
        return 0.0 if self._in_flight else time.monotonic() - self._last_finished

    def claim_cold(self) -> bool:
        """True exactly once: for the first inference response of this process, whose
        time is marked (`first_answer`, runtime/coldstart.py)."""
        if self._served_one:
            return False
        self._served_one = True
        self.timeline.mark("first_answer")
        return True

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
        stats = self._statistics(name)
        try:
            model = self.ready_model(name, version)
            batcher = self._batcher(model)
            ticket = batcher.arrive()
            try:
                request = await read_request()
                read = time.perf_counter()
                inputs, rows = model.validate(request.inputs)
                inputs = await model.prepare(inputs)
            finally:
                batcher.arrived(ticket)
            prepared = time.perf_counter()
            sequential = time.monotonic() - self._overlapped_at > SEQUENTIAL_AFTER_S
            outputs, times = await batcher.infer(inputs, rows, may_inline=sequential)
            computed = time.perf_counter()
            result = InferResult(model, self._select(model, outputs, request), request.id)
            latency = self.metrics.latency
            latency.observe(times.queue_s, name, "queue")
            latency.observe(times.compute_s, name, "compute")
            stats.inference_count += rows
            stats.compute_input.add(prepared - read)
            stats.queue.add(times.queue_s)
            stats.compute_infer.add(times.compute_s)
            stats.compute_output.add(time.perf_counter() - computed)
            return result
        except KindlingError as exc:
            status = str(exc.status_code)
            raise
        except Exception:
            status = "500"
            raise
        finally:
            elapsed = time.perf_counter() - started
            if status == "200":
                stats.success.add(elapsed)
                stats.last_inference_ms = int(time.time() * 1000)
            else:
                stats.fail.add(elapsed)
            in_flight.dec(name)
            self._in_flight -= 1
            self._last_finished = time.monotonic()
            self.metrics.requests.inc(name, status)
            self.metrics.latency.observe(elapsed, name, "total")

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
        stats = self._statistics(name)

        def observe(rows: int, compute_s: float) -> None:
            histogram.observe(rows, name)
            stats.batch(rows, compute_s)

        return observe

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
