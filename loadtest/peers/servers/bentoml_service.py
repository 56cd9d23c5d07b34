"""BentoML service over onnxruntime with adaptive batching (`bentoml serve` loads it).

BentoML's HTTP API takes numpy arrays as JSON (its pickle format is refused by the
main server), so requests are JSON.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
from common import session

MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "32"))
DELAY_MS = float(os.environ.get("PEER_DELAY_MS", "2"))


@bentoml.service(workers=1)
class OnnxService:
    def __init__(self) -> None:
        self.session = session(os.environ["PEER_MODEL"], int(os.environ["PEER_THREADS"]))
        self.input_name = self.session.get_inputs()[0].name

    # max_latency_ms is BentoML's bound on a request's total time, not a queue delay;
    # its adaptive batcher picks the wait itself.
    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=60000)
    def predict(self, input: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: input.astype(np.float32)})[0]
