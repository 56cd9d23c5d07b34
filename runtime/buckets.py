"""Shape buckets for the CUDA execution provider: one session per bucket.

onnxruntime's CUDA Conv kernel keeps the state (cuDNN plans, workspace) for the last
input shape it saw only; every change of shape rebuilds it. Measured on an H100
(loadtest/bench_gpu.py's model set): about 1 s per change for MobileNetV2's depthwise
convolutions and 50 ms for ResNet-18, with any `cudnn_conv_algo_search`. Adaptive
batching changes the batch size all the time, so on CUDA each batch is padded up to a
bucket (powers of two up to max_batch_size) and run by that bucket's own session, whose
shape then never changes. Text CNNs also see a new sentence length with nearly every
batch: their padded inputs (the preprocessor's `pad_values`) are padded along the
sequence axis to a length bucket too, and sessions are kept per (rows, length). Padding
leaves those models' answers unchanged (modelzoo/text_cnn.py). CPU sessions have no such
cost and are used as they are.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort


def bucket_sizes(largest: int, smallest: int = 1) -> list[int]:
    """Powers of two from the first >= `smallest`, capped by `largest`: batch sizes up to
    max_batch_size, or sequence lengths from min_length to max_length."""
    size = 1
    while size < smallest:
        size *= 2
    sizes = []
    while size < largest:
        sizes.append(size)
        size *= 2
    return [*sizes, largest]


def bucket(sizes: list[int], n: int) -> int:
    """The smallest bucket that holds `n`; `n` itself past the largest."""
    return next((s for s in sizes if s >= n), n)


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    padded = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
    padded[: array.shape[0]] = array
    return padded


def pad_to(array: np.ndarray, rows: int, length: int, value: float) -> np.ndarray:
    """`array` [r, l, ...] in a [rows, length, ...] block of `value`."""
    padded = np.full((rows, length, *array.shape[2:]), value, dtype=array.dtype)
    padded[: array.shape[0], : array.shape[1]] = array
    return padded


Key = tuple[int, int]
"""(rows, sequence length); length 0 for models without length buckets."""


class BucketedSession:
    """Runs a feed on the session of the smallest bucket that holds its rows (and, with
    `lengths`, its longest sequence)."""

    def __init__(
        self,
        first: ort.InferenceSession,
        make_session: Callable[[], ort.InferenceSession],
        max_rows: int,
        lengths: list[int] | None = None,
        pad_values: dict[str, float] | None = None,
        first_length: int = 0,
    ) -> None:
        """`first` has run one row at `first_length`; `pad_values`: the inputs padded along
        the sequence axis (axis 1), with their padding values."""
        self.sizes = bucket_sizes(max_rows)
        self.lengths = lengths or []
        self.pad_values = (pad_values or {}) if self.lengths else {}
        self.sessions: dict[Key, ort.InferenceSession] = {
            (1, bucket(self.lengths, first_length) if self.lengths else 0): first
        }
        self.make_session = make_session
        self.lock = threading.Lock()

    def session_for(self, key: Key) -> ort.InferenceSession:
        session = self.sessions.get(key)
        if session is None:
            with self.lock:  # the warm-up thread may be making the same one
                session = self.sessions.get(key)
                if session is None:
                    session = self.sessions[key] = self.make_session()
        return session

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = next(iter(feed.values())).shape[0]
        size = bucket(self.sizes, rows)
        length = 0
        if self.pad_values:
            longest = max(feed[name].shape[1] for name in self.pad_values)
            length = bucket(self.lengths, longest)
        if size != rows or length:
            feed = {name: self._pad(name, array, size, length) for name, array in feed.items()}
        outputs = self.session_for((size, length)).run(output_names, feed)
        return [output[:rows] for output in outputs] if size != rows else outputs

    def _pad(self, name: str, array: np.ndarray, rows: int, length: int) -> np.ndarray:
        value = self.pad_values.get(name)
        if value is not None and array.shape[1] != length:
            return pad_to(array, rows, length, value)
        return pad_rows(array, rows) if array.shape[0] != rows else array

    def warm(self, zeros: Callable[[int, int], dict[str, np.ndarray]], names: list[str]) -> None:
        """Build every bucket's session and pay its first-shape cost before traffic does;
        `zeros(rows, length)` is a feed of that shape."""
        for size in self.sizes:
            for length in self.lengths or [0]:
                self.session_for((size, length)).run(names, zeros(size, length))
