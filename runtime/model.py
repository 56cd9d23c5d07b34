"""One served model: load (fetch, session, warm-up), per-request validation, batch predict."""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# Only what the loader thread needs on its way to the session. The codec (and asyncio
# with it), fetch.py, preprocess.py and logging are imported where they are used, most by
# the main thread while onnxruntime builds the session (serve.py); a local model file
# needs no fetch.py at all.
from kindling.errors import InferenceError, InvalidInput, KindlingError, ModelLoadError
from kindling.runtime.buckets import BucketedSession
from kindling.runtime.coldstart import ColdStartTimeline
from kindling.runtime.dtypes import DTYPES
from kindling.runtime.settings import ModelConfig, ServerSettings, TensorSpec

if TYPE_CHECKING:
    import logging

    import onnxruntime as ort

    from kindling.embeddings.store import EmbeddingStore
    from kindling.runtime.preprocess import Preprocessor

ORT_TYPES: dict[str, type] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
# Length given to dynamic non-batch dimensions of the warm-up input: long enough for the
# widest text-CNN filter (5, Severyn & Moschitti 2015), short enough to cost nothing.
WARMUP_DYNAMIC_DIM = 16


@dataclass(frozen=True)
class LoadOptions:
    """What loading a model needs from the process's settings, and nothing else."""

    threads: int  # onnxruntime intra-op threads (cpu.available_cpus unless KINDLING_THREADS)
    cache_root: Path
    uri_schemes: tuple[str, ...]
    download_timeout_s: float
    model_uri_root: Path | None
    providers: tuple[str, ...]
    optimized_cache: bool
    spin: bool | None

    @classmethod
    def of(cls, settings: ServerSettings, threads: int) -> LoadOptions:
        return cls(
            threads=threads,
            cache_root=settings.cache_root,
            uri_schemes=settings.uri_schemes,
            download_timeout_s=settings.download_timeout_s,
            model_uri_root=settings.model_uri_root,
            providers=settings.providers,
            optimized_cache=settings.optimized_cache,
            spin=settings.spin,
        )


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class Model:
    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.name = config.name
        self.version = config.version
        self.state = ModelState.LOADING
        self.error: str | None = None
        self.session: ort.InferenceSession | None = None
        # What predict runs: the session, or on CUDA one session per batch-size bucket.
        self.runner: ort.InferenceSession | BucketedSession | None = None
        self.preprocessor: Preprocessor | None = None
        self.provider = ""
        self.optimized_cache_hit = False
        self._path: Path | None = None
        # The cached download's identity when fetched, to evict exactly that file if it
        # fails to load; None for a local file.
        self._downloaded: os.stat_result | None = None
        # What `save_optimized_cache` writes once the server is ready, if anything.
        self._pending_cache: tuple[Path, Path, int, list[str]] | None = None
        self._specs = {t.name: t for t in config.inputs}
        self._output_names = [t.name for t in config.outputs]
        self.max_rows = config.max_batch_size if config.batch_dynamic else 0
        """Rows one ORT run may take: the batcher never merges past this."""
        self.threads: int | None = None
        """onnxruntime's intra-op threads, once loaded."""
        self.warmup_s: float | None = None
        """How long the one-row warm-up run took: a first, high estimate of a request's."""

    # -- loading (runs in the loader thread) -------------------------------------------

    def fetch(self, options: LoadOptions, timeline: ColdStartTimeline) -> None:
        """Bring the model file to local disk; runs alongside the onnxruntime import."""
        try:
            if self.config.model_uri:
                from kindling.runtime.fetch import fetch_model, is_download

                self._path = fetch_model(
                    self.config.model_uri,
                    options.uri_schemes,
                    options.cache_root,
                    options.download_timeout_s,
                    self.config.model_sha256,
                    options.model_uri_root,
                )
                if is_download(self.config.model_uri):
                    self._downloaded = self._path.stat()
            else:
                self._path = self.config.path / self.config.model_file
                if not self._path.is_file():
                    raise ModelLoadError(f"model file {self._path} does not exist")
            timeline.mark("fetched", self.name)
        except Exception as exc:  # any failure leaves the model FAILED with a clear reason
            self._fail(exc)

    def load(
        self,
        options: LoadOptions,
        timeline: ColdStartTimeline,
        embedding_store: Callable[[], EmbeddingStore],
    ) -> None:
        """Session, warm-up, ready: after `fetch`, in the loader thread."""
        try:
            if self.state is ModelState.LOADING:
                self._load(options, timeline, embedding_store)
                self.state = ModelState.READY
                timeline.mark("ready", self.name)
        except Exception as exc:  # any failure leaves the model FAILED with a clear reason
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self.error = exc.message if isinstance(exc, KindlingError) else f"{exc!r}"
        self.state = ModelState.FAILED

    def _load(
        self,
        options: LoadOptions,
        timeline: ColdStartTimeline,
        embedding_store: Callable[[], EmbeddingStore],
    ) -> None:
        path, threads = self._path, options.threads
        assert path is not None, "fetch() runs before load()"
        self.threads = threads
        cache_dir = options.cache_root
        from kindling.runtime.session import choose_providers, create_session, optimized_path

        chosen = choose_providers(options.providers)
        cache_path = optimized_path(path, chosen, cache_dir) if options.optimized_cache else None
        try:
            self.session, self.optimized_cache_hit = create_session(
                path, threads, chosen, cache_path, options.spin
            )
        except ModelLoadError as exc:
            raise self._evicted(exc) from exc
        if cache_path is not None and not self.optimized_cache_hit:
            self._pending_cache = (path, cache_path, threads, chosen)
        self.provider = self.session.get_providers()[0]
        timeline.mark("session", self.name)
        graph_inputs = {i.name: list(i.shape) for i in self.session.get_inputs()}
        if self.config.preprocess:
            # Only for text models, and not before the session: preprocess.py imports
            # asyncio, which the main thread is importing meanwhile (serve.py).
            from kindling.runtime.preprocess import make_preprocessor

            self.preprocessor = make_preprocessor(self.config, graph_inputs, embedding_store)
        try:
            self._check_graph(list(graph_inputs))
        except ModelLoadError as exc:
            raise self._evicted(exc) from exc
        self.runner = self.session
        lengths = self.preprocessor.length_buckets if self.preprocessor is not None else []
        if self.provider == "CUDAExecutionProvider" and (self.max_rows > 1 or lengths):
            session_path = cache_path if self.optimized_cache_hit else path

            def make_session() -> ort.InferenceSession:
                return create_session(session_path, threads, chosen, None, options.spin)[0]  # type: ignore[arg-type]

            pads = {n: v for n, v in self.pad_values.items() if v is not None}
            self.runner = BucketedSession(
                self.session, make_session, self.max_rows, lengths, pads, WARMUP_DYNAMIC_DIM
            )
        if self.config.warmup:
            # Straight into the graph: a warm-up must not depend on Redis being up.
            started = time.perf_counter()
            self.session.run(self._output_names, self._warmup_feed(1))
            self.warmup_s = time.perf_counter() - started
            timeline.mark("warmup", self.name)

    def _evicted(self, exc: ModelLoadError) -> ModelLoadError:
        """`exc`, having removed the downloaded file from the cache if it was one: a file
        onnxruntime cannot load, or whose graph config.yaml does not describe, would
        otherwise leave the model FAILED after the origin is fixed, until someone clears
        the cache by hand."""
        if self._downloaded is None or self._path is None:
            return exc
        from kindling.runtime.fetch import evict

        if not evict(self._path, self._downloaded):
            return exc  # another process has already replaced it
        return ModelLoadError(
            f"{exc.message} (removed from the download cache: the next start downloads it again)"
        )

    def _check_graph(self, graph_inputs: list[str]) -> None:
        assert self.session is not None
        graph_outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self._output_names if n not in graph_outputs]
        if self.preprocessor is None:
            missing += [n for n in self._specs if n not in graph_inputs]
        if missing:
            raise ModelLoadError(
                f"config.yaml of {self.name!r} names tensors the ONNX graph lacks: {missing}"
            )

    def _warmup_feed(self, rows: int, length: int = 0) -> dict[str, np.ndarray]:
        """Zeros for every graph input: `rows` rows, other dynamic dimensions `length`
        (0: WARMUP_DYNAMIC_DIM)."""
        length = length or WARMUP_DYNAMIC_DIM
        assert self.session is not None
        feed = {}
        for node in self.session.get_inputs():
            shape = [
                d if isinstance(d, int) and d > 0 else (rows if i == 0 else length)
                for i, d in enumerate(node.shape)
            ]
            feed[node.name] = np.zeros(shape, dtype=ORT_TYPES.get(node.type, np.float32))
        return feed

    @property
    def pad_values(self) -> dict[str, float | None]:
        """Per input the batcher merges (after `prepare`): its padding value, if any."""
        if self.preprocessor is not None:
            return self.preprocessor.pad_values
        return {t.name: t.pad_value for t in self.config.inputs}

    def warm_buckets(self) -> None:
        """On CUDA, build every batch-size bucket's session (off the critical path)."""
        if isinstance(self.runner, BucketedSession):
            try:
                self.runner.warm(self._warmup_feed, self._output_names)
            except Exception as exc:  # warming is an optimization: a cold bucket still works
                _log().warning("warming %s's buckets failed: %r", self.name, exc)

    def save_optimized_cache(self) -> None:
        """Write the optimized graph for the next cold start (off the critical path)."""
        pending, self._pending_cache = self._pending_cache, None
        if pending is None:
            return
        from kindling.runtime.session import save_optimized

        try:
            save_optimized(*pending)
        except Exception as exc:  # a cache is an optimization: never fail serving for it
            _log().warning("not caching the optimized graph of %s: %r", self.name, exc)

    # -- serving ----------------------------------------------------------------------

    def validate(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """Check one request's inputs against config.yaml; returns them and their row count."""
        unknown = [n for n in inputs if n not in self._specs]
        missing = [n for n in self._specs if n not in inputs]
        if unknown or missing:
            raise InvalidInput(
                f"model {self.name!r} takes inputs {list(self._specs)}; "
                + (f"unknown: {unknown}" if unknown else f"missing: {missing}")
            )
        rows = {_check_tensor(self._specs[n], a, self.max_rows) for n, a in inputs.items()}
        if len(rows) > 1:
            raise InvalidInput(f"inputs disagree on the batch size: {sorted(rows)}")
        if self.preprocessor is not None:
            inputs = self.preprocessor.validate(inputs)
        return inputs, rows.pop()

    async def prepare(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-request preprocessing that may wait on I/O (embedding lookups)."""
        if self.preprocessor is None:
            return inputs
        return await self.preprocessor.prepare(inputs)

    def predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one (possibly merged) batch; called from the inference thread."""
        assert self.runner is not None
        feed = self.preprocessor(batch) if self.preprocessor is not None else batch
        # A preprocessor may cap what one run takes (memory): then several runs, joined.
        parts = self.preprocessor.split(feed) if self.preprocessor is not None else None
        try:
            if parts is None or len(parts) == 1:
                results = self.runner.run(self._output_names, feed)
            else:
                runs = [self.runner.run(self._output_names, part) for part in parts]
                results = list(map(np.concatenate, zip(*runs, strict=True)))
        except Exception as exc:  # ORT's pybind exception types; classify by name
            if type(exc).__name__ in ("InvalidArgument", "InvalidGraph"):
                raise InvalidInput(f"model {self.name!r} rejected the input: {exc}") from exc
            raise InferenceError(f"model {self.name!r} failed: {exc}") from exc
        return dict(zip(self._output_names, results, strict=True))

    def metadata(self, timeline: ColdStartTimeline) -> dict[str, Any]:
        """OIP model metadata. Its `parameters` are flat (the spec's $parameters allow
        strings, numbers and booleans only): the cold-start phases become
        `cold_start_{phase}_s` (`cold_start_model_ready_s`), the resources
        `resources_{name}` (`resources_memory`)."""
        parameters: dict[str, str | int | float | bool] = {
            "state": self.state.value,
            "execution_provider": self.provider,
            "optimized_cache_hit": self.optimized_cache_hit,
            "max_batch_size": self.config.max_batch_size,
        }
        for phase, seconds in timeline.phases(self.name).items():
            parameters[f"cold_start_{phase}_s"] = seconds
        # What a pod serving this model should request (config.yaml, `resources`).
        for key, value in self.config.resources.items():
            parameters[f"resources_{key}"] = str(value)
        if self.error:
            parameters["error"] = self.error
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.config.platform,
            "inputs": [t.to_metadata() for t in self.config.inputs],
            "outputs": [t.to_metadata() for t in self.config.outputs],
            "parameters": parameters,
        }


def _log() -> logging.Logger:
    """The runtime's logger, for the rare warning: logging is not imported on the loader
    thread's way to the session."""
    import logging

    return logging.getLogger("kindling.runtime")


def _check_tensor(spec: TensorSpec, array: np.ndarray, max_rows: int) -> int:
    if array.dtype != DTYPES[spec.datatype] and not (
        spec.datatype == "BYTES" and array.dtype == object
    ):
        raise InvalidInput(f"input {spec.name!r} must be {spec.datatype}")
    if array.ndim != len(spec.shape) or any(
        want != -1 and want != got for want, got in zip(spec.shape, array.shape, strict=True)
    ):
        raise InvalidInput(
            f"input {spec.name!r} has shape {list(array.shape)}, model expects {list(spec.shape)}"
        )
    if array.size == 0:
        raise InvalidInput(f"input {spec.name!r} is empty")
    rows = int(array.shape[0]) if array.ndim else 1
    if max_rows and rows > max_rows:
        raise InvalidInput(f"batch of {rows} exceeds the model's max_batch_size {max_rows}")
    return rows
