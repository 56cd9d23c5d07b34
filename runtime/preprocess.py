"""Turning served inputs (text as OIP BYTES) into the tensors the ONNX graph takes.

A preprocessor has three steps, each where its cost and failures belong:
- `validate` runs per request on the event loop before batching, so one caller's bad
  text fails only that caller;
- `prepare` runs per request, may wait on I/O (an embedding lookup), and also fails only
  its caller: a Redis outage costs the requests that needed Redis, not a whole batch;
- `__call__` runs on a whole batch in the inference thread (batch-wide tokenization),
  and `split` cuts its result into the slices one onnxruntime run each takes.

`readiness` tells the readiness routes whether the model can serve: a word-vector model
cannot while its table is missing from the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from kindling.errors import (
    DependencyUnavailable,
    EmbeddingTableMissing,
    InferenceError,
    InvalidInput,
)
from kindling.runtime.buckets import bucket_sizes
from kindling.runtime.settings import ConfigError, ModelConfig
from kindling.runtime.text import TOKENIZERS

if TYPE_CHECKING:
    from kindling.embeddings.store import EmbeddingStore

Tensors = dict[str, np.ndarray]


class Preprocessor(Protocol):
    pad_values: dict[str, float | None]
    """Per prepared input: the value the batcher pads dynamic dimensions with (None: never)."""
    length_buckets: list[int]
    """Sequence lengths the padded inputs are padded up to on CUDA (runtime/buckets.py),
    so each session sees one shape; empty: none."""

    def validate(self, inputs: Tensors) -> Tensors: ...

    async def prepare(self, inputs: Tensors) -> Tensors: ...

    def __call__(self, batch: Tensors) -> Tensors: ...

    def split(self, feed: Tensors) -> list[Tensors]:
        """`__call__`'s feed as the slices of rows one onnxruntime run each takes."""
        ...

    async def readiness(self) -> str | None:
        """Why the model cannot serve now, or None; may ask a backing store, so readiness
        probes call it, never the request path."""
        ...


def decode_text(name: str, array: np.ndarray) -> np.ndarray:
    """UTF-8 bytes -> str, element-wise; 400 (not 500) on bytes that are not UTF-8."""
    out = np.empty(array.shape, dtype=object)
    flat, dest = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat):
        try:
            dest[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"input {name!r} element {i} is not valid UTF-8: {exc}") from None
    return out


class HFTokenizer:
    """A HuggingFace `tokenizers` JSON tokenizer (WordPiece for BERT), padded per batch."""

    def __init__(self, config: ModelConfig, onnx_inputs: list[str]) -> None:
        from tokenizers import Tokenizer

        spec = config.preprocess
        path = config.path / spec.get("tokenizer", "tokenizer.json")
        if not path.is_file():
            raise ConfigError(f"{config.name}: tokenizer file {path} is missing")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(int(spec.get("max_length", 256)))
        # Pad to the longest sentence of each batch, not to max_length: attention cost
        # grows with the square of the padded length.
        self.tokenizer.enable_padding()
        # Rows x padded length one onnxruntime run may take; a larger batch runs in
        # slices. BERT's activations grow with it (attention with its square), and the
        # arena keeps its peak: a 32 x 256 MiniLM batch takes a serving process to
        # ~720 MB for good in one run, ~350 MB in slices of 2048 tokens, at the same
        # speed (python -m kindling.loadtest.bench_memory --compare-cap). 0: no cap.
        self.max_batch_tokens = int(spec.get("max_batch_tokens", 0))
        if self.max_batch_tokens < 0:
            raise ConfigError(f"{config.name}: preprocess max_batch_tokens must be >= 0")
        self.text_input = config.inputs[0].name
        self.onnx_inputs = onnx_inputs
        self.pad_values = {t.name: None for t in config.inputs}
        # No buckets: BERT has no convolutions (no per-shape cuDNN state), and a session
        # per (rows, length) would copy its 90 MB of weights each time.
        self.length_buckets: list[int] = []

    def validate(self, inputs: Tensors) -> Tensors:
        return {k: decode_text(k, v) for k, v in inputs.items()}

    async def prepare(self, inputs: Tensors) -> Tensors:
        return inputs

    def __call__(self, batch: Tensors) -> Tensors:
        encodings = self.tokenizer.encode_batch(list(batch[self.text_input].reshape(-1)))
        tensors = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: tensors[name] for name in self.onnx_inputs}

    def split(self, feed: Tensors) -> list[Tensors]:
        rows, length = feed[self.onnx_inputs[0]].shape
        per_run = max(1, self.max_batch_tokens // max(1, length))
        if not self.max_batch_tokens or rows <= per_run:
            return [feed]
        # Row slices of C-ordered arrays: views, no copy.
        return [
            {name: array[start : start + per_run] for name, array in feed.items()}
            for start in range(0, rows, per_run)
        ]

    async def readiness(self) -> str | None:
        return None


class WordVectors:
    """Paper 000's text path: tokenize, look each word up in an embedding table, stack.

    One lookup per request fetches every distinct word of all its sentences (one Redis
    round trip, or none when the cache holds them); paper 000 made one DynamoDB
    BatchGetItem per 100 words. Sentences shorter than `min_length` are padded with zero
    vectors, as Kim's code pads them for the widest filter; the batcher then pads
    requests of different lengths together.
    """

    def __init__(
        self,
        config: ModelConfig,
        graph_inputs: dict[str, list[Any]],
        store: Callable[[], EmbeddingStore],
    ) -> None:
        spec = config.preprocess
        try:
            self.table = str(spec["table"])
            self.tokenize = TOKENIZERS[str(spec.get("tokenizer", "clean_str_sst"))]
        except KeyError as exc:
            raise ConfigError(
                f"{config.name}: preprocess needs a table and a known tokenizer ({exc})"
            ) from None
        self.max_length = int(spec.get("max_length", 100))
        self.min_length = int(spec.get("min_length", 1))
        # served BYTES input -> ONNX input of word vectors [batch, words, dim]
        self.inputs: dict[str, str] = dict(
            spec.get("inputs") or {t.name: t.name for t in config.inputs}
        )
        unknown = [o for o in self.inputs.values() if o not in graph_inputs]
        if unknown:
            raise ConfigError(f"{config.name}: preprocess maps to graph inputs it lacks: {unknown}")
        dims = {graph_inputs[o][-1] for o in self.inputs.values()}
        self.dim = (
            dims.pop() if len(dims) == 1 and isinstance(next(iter(dims), None), int) else None
        )
        self.pad_values: dict[str, float | None] = {o: 0.0 for o in self.inputs.values()}
        self.length_buckets = bucket_sizes(self.max_length, self.min_length)
        self.model = config.name
        self.store = store()
        self._missing_since: float | None = None
        """When a lookup or a probe last found the table missing; None while it is there."""
        self._probed_at = float("-inf")

    def validate(self, inputs: Tensors) -> Tensors:
        tokenized = {}
        for name, array in inputs.items():
            texts = decode_text(name, array).reshape(-1)
            tokens = np.empty(len(texts), dtype=object)
            for i, text in enumerate(texts):
                tokens[i] = self.tokenize(text)[: self.max_length]
            tokenized[name] = tokens
        return tokenized

    async def prepare(self, inputs: Tensors) -> Tensors:
        # The store's client is synchronous; a thread keeps the event loop serving.
        return await asyncio.to_thread(self._vectors, inputs)

    def _vectors(self, inputs: Tensors) -> Tensors:
        # Imported here, as the store is: image models never load kindling.embeddings.
        from kindling.embeddings.tables import TableNotFound

        words = list(dict.fromkeys(w for tokens in inputs.values() for ws in tokens for w in ws))
        try:
            result = self.store.lookup(self.table, words) if words else None
        except TableNotFound:
            # Marked here, at no cost to the requests that find it: readiness says so at
            # once, without waiting for its next look at the store.
            self._missing_since = time.monotonic()
            raise EmbeddingTableMissing(self.model, self.table) from None
        if self._missing_since is not None and result is not None:
            self._missing_since = None
        if result is not None and self.dim is not None and result.dim != self.dim:
            raise InferenceError(
                f"table {self.table!r} has {result.dim}-d vectors, the model takes {self.dim}"
            )
        dim = result.dim if result is not None else int(self.dim or 0)
        row = {w: i for i, w in enumerate(words)}
        out: Tensors = {}
        for served, onnx_name in self.inputs.items():
            sentences = inputs[served]
            length = max(self.min_length, 1, *(len(ws) for ws in sentences))
            stacked = np.zeros((len(sentences), length, dim), dtype=np.float32)
            for i, ws in enumerate(sentences):
                if ws:
                    assert result is not None
                    stacked[i, : len(ws)] = result.vectors[[row[w] for w in ws]]
            out[onnx_name] = stacked
        return out

    def __call__(self, batch: Tensors) -> Tensors:
        return batch

    def split(self, feed: Tensors) -> list[Tensors]:
        return [feed]

    async def readiness(self) -> str | None:
        """The table's absence, from the last lookup or probe that saw the store. The store
        is asked at most once per KINDLING_EMBEDDINGS_ALIAS_TTL (what a lookup trusts an
        alias for), so probes cost Redis one GET a second at most, none under traffic."""
        now = time.monotonic()
        if now - self._probed_at >= self.store.settings.alias_ttl:
            self._probed_at = now  # before the await: concurrent probes ask once
            await asyncio.to_thread(self._probe, now)
        if self._missing_since is None:
            return None
        return EmbeddingTableMissing(self.model, self.table).message

    def _probe(self, started: float) -> None:
        from kindling.embeddings.tables import TableNotFound

        try:
            self.store.check_table(self.table)
        except TableNotFound:
            self._missing_since = started
        except DependencyUnavailable:
            # Redis down: keep the last answer. The model still serves what the vector
            # cache holds and fails the rest fast, and every replica sees the same
            # outage, so dropping them all from the Service would only turn those
            # answers into connection errors (README, "Readiness").
            pass
        else:
            # Unless a lookup found it missing after this probe began.
            if self._missing_since is not None and self._missing_since <= started:
                self._missing_since = None


def make_preprocessor(
    config: ModelConfig,
    graph_inputs: dict[str, list[Any]],
    store: Callable[[], EmbeddingStore],
) -> Preprocessor | None:
    """The model's preprocessor; `graph_inputs` maps ONNX input names to their shapes."""
    if not config.preprocess:
        return None
    kind = config.preprocess.get("kind")
    if kind == "hf_tokenizer":
        return HFTokenizer(config, list(graph_inputs))
    if kind == "word_vectors":
        return WordVectors(config, graph_inputs, store)
    raise ConfigError(f"{config.name}: unknown preprocess kind {kind!r}")
