"""Batch-size buckets for the CUDA execution provider: one session per bucket.

onnxruntime's CUDA Conv kernel keeps the state (cuDNN plans, workspace) for the last
input shape it saw only; every change of shape rebuilds it. Measured on an H100
(loadtest/bench_gpu.py's model set): about 1 s per change for MobileNetV2's depthwise
convolutions and 50 ms for ResNet-18, with any `cudnn_conv_algo_search`. Adaptive
batching changes the batch size all the time, so on CUDA each batch is padded up to a
bucket (powers of two up to max_batch_size) and run by that bucket's own session, whose
shape then never changes. CPU sessions have no such cost and are used as they are.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort


def bucket_sizes(max_rows: int) -> list[int]:
    sizes = []
    size = 1
    while size < max_rows:
        sizes.append(size)
        size *= 2
    return [*sizes, max_rows]


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    padded = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
    padded[: array.shape[0]] = array
    return padded


class BucketedSession:
    """Runs a feed on the session of the smallest bucket that holds its rows."""

    def __init__(
        self,
        first: ort.InferenceSession,
        make_session: Callable[[], ort.InferenceSession],
        max_rows: int,
    ) -> None:
        self.sizes = bucket_sizes(max_rows)
        self.sessions: dict[int, ort.InferenceSession] = {1: first}
        self.make_session = make_session
        self.lock = threading.Lock()

    def session_for(self, size: int) -> ort.InferenceSession:
        session = self.sessions.get(size)
        if session is None:
            with self.lock:  # the warm-up thread may be making the same one
                session = self.sessions.get(size)
                if session is None:
                    session = self.sessions[size] = self.make_session()
        return session

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = next(iter(feed.values())).shape[0]
        size = next((s for s in self.sizes if s >= rows), rows)
        if size != rows:
            feed = {name: pad_rows(array, size) for name, array in feed.items()}
        outputs = self.session_for(size).run(output_names, feed)
        return [output[:rows] for output in outputs] if size != rows else outputs

    def warm(self, zeros: Callable[[int], dict[str, np.ndarray]], names: list[str]) -> None:
        """Build every bucket's session and pay its first-shape cost before traffic does."""
        for size in self.sizes:
            self.session_for(size).run(names, zeros(size))
