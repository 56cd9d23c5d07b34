"""OpenWhisk action code's API to the runtime: `models` and `embeddings`.

Action code, a Python source string or a zip's `__main__.py`, defines `main(args)` and
may use the models and word vectors this runtime already holds:

    from kindling.runtime.action import embeddings, models
    from kindling.runtime.text import clean_str_sst

    def main(args):
        found = embeddings.lookup("demo300", clean_str_sst(args["sentence"]))
        scores = models.infer("kim_cnn_vectors", {"embeddings": found.vectors[None]})
        return {"probabilities": scores["probabilities"][0].tolist()}

- `models.infer(name, {input: array-like}, version=None) -> {output: numpy array}` runs
  through the same data plane as OIP requests (validation, adaptive batching, metrics);
  lists are converted to the input's datatype, str to BYTES.
- `models.names()`, `models.metadata(name)`: the models served, built in or from the zip.
- `embeddings.lookup(table, words) -> LookupResult` (`.vectors` float32 [words, dim],
  `.oov` indices of the words the table lacks); `embeddings.vectors(table, words)`.
- Failures raise `kindling.errors` types (InvalidInput, ModelNotFound, ModelNotReady,
  DependencyUnavailable); uncaught, they become the activation's {"error": ...}.

action_init.py loads the code itself (/init: the zip, the environment, `main`).

The code runs inside the runtime's own process, with the runtime's privileges, as in
OpenWhisk's Python runtime (apache/openwhisk-runtime-python): the container is the
isolation boundary, one action per container. Nothing here unpickles anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from kindling.runtime.codec import DTYPES, InferRequest
from kindling.runtime.settings import TensorSpec

if TYPE_CHECKING:
    from kindling.embeddings.store import EmbeddingStore, LookupResult
    from kindling.runtime.dataplane import DataPlane

T = TypeVar("T")


# -- the API given to action code ---------------------------------------------------------


@dataclass
class _Binding:
    plane: Callable[[], DataPlane]
    loop: asyncio.AbstractEventLoop
    store: Callable[[], EmbeddingStore]

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a data-plane coroutine on the server's loop from action code (a thread)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coroutine.close()
            raise RuntimeError("action code must not call the runtime from its event loop")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()


_binding: _Binding | None = None


def bind(
    plane: Callable[[], DataPlane],
    loop: asyncio.AbstractEventLoop,
    store: Callable[[], EmbeddingStore],
) -> None:
    """Connect the API to a running server (the OpenWhisk transport does, at start-up)."""
    global _binding
    _binding = _Binding(plane, loop, store)


def _bound() -> _Binding:
    if _binding is None:
        raise RuntimeError("kindling.runtime.action works inside `kindling serve --openwhisk`")
    return _binding


def _tensor(value: Any, spec: TensorSpec | None) -> np.ndarray:
    """An action's input as the array the model validates: BYTES as bytes objects, numbers
    cast within their kind (float64 -> FP32), anything else left for validation to name."""
    if spec is not None and spec.datatype == "BYTES":
        items = np.asarray(value, dtype=object)
        out = np.empty(items.shape, dtype=object)
        out.reshape(-1)[:] = [v.encode() if isinstance(v, str) else v for v in items.reshape(-1)]
        return out
    array = np.asarray(value)
    if spec is not None:
        want = DTYPES[spec.datatype]
        if array.dtype != want and np.can_cast(array.dtype, want, "same_kind"):
            array = array.astype(want)
    return array


class Models:
    """The models this runtime serves, for action code."""

    def infer(
        self, name: str, inputs: Mapping[str, Any], version: str | None = None
    ) -> dict[str, np.ndarray]:
        binding = _bound()
        plane = binding.plane()
        specs = {t.name: t for t in plane.model(name, version).config.inputs}
        request = InferRequest({k: _tensor(v, specs.get(k)) for k, v in inputs.items()})

        async def read() -> InferRequest:
            return request

        result = binding.call(plane.infer(name, version, read))
        return {output: array for output, array, _ in result.outputs}

    def names(self) -> list[str]:
        return sorted(_bound().plane().models)

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        plane = _bound().plane()
        return plane.model(name, version).metadata(plane.timeline)


class Embeddings:
    """The word-vector store (KINDLING_REDIS_URL, or the embedded file store), for action
    code: one store per process, its cache shared by every activation."""

    def lookup(self, table: str, words: Iterable[str]) -> LookupResult:
        return _bound().store().lookup(table, list(words))

    def vectors(self, table: str, words: Iterable[str]) -> np.ndarray:
        return self.lookup(table, words).vectors


models = Models()
embeddings = Embeddings()
