"""The data plane's choice of thread: lone requests of sequential traffic run on the loop.

A fake model that records the thread of each predict; the requests' bodies are
`read_request` callables, so a test can hold one request in flight while another arrives.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np

from kindling.runtime import dataplane
from kindling.runtime.codec import InferRequest
from kindling.runtime.coldstart import ColdStartTimeline
from kindling.runtime.dataplane import DataPlane
from kindling.runtime.model import ModelState
from kindling.runtime.telemetry import RuntimeMetrics

TIMEOUT_S = 60  # a safety net: only a hang waits this long


class FakeModel:
    name = "m"
    version = "1"
    state = ModelState.READY
    max_rows = 8
    warmup_s = 0.001  # quick: inline from the first request
    pad_values: dict[str, float | None] = {"x": None}  # noqa: RUF012
    config = SimpleNamespace(max_queue_delay_ms=0.0)

    def __init__(self) -> None:
        self.threads: list[str] = []

    def validate(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        return inputs, len(inputs["x"])

    async def prepare(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return inputs

    def predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        return {"y": batch["x"] * 2}


def body(value: float, gate: asyncio.Event | None = None, reading: asyncio.Event | None = None):
    async def read() -> InferRequest:
        if reading is not None:
            reading.set()
        if gate is not None:
            await gate.wait()
        return InferRequest({"x": np.full((1, 2), value, np.float32)})

    return read


def plane_with(model: FakeModel) -> DataPlane:
    metrics = RuntimeMetrics(ColdStartTimeline())
    # Any run of the fake model counts as quick, however slow the machine is just then.
    return DataPlane({"m": model}, metrics, inline_max_s=3600.0)  # type: ignore[dict-item]


def test_sequential_requests_run_on_the_loop_thread():
    model = FakeModel()

    async def go() -> list[float]:
        plane = plane_with(model)
        results = [await plane.infer("m", None, body(i)) for i in range(3)]
        await plane.close()
        return [float(r.outputs[0][1][0, 0]) for r in results]

    assert asyncio.run(asyncio.wait_for(go(), TIMEOUT_S)) == [0.0, 2.0, 4.0]
    assert model.threads == [threading.current_thread().name] * 3


class Clock:
    """The data plane's monotonic clock, moved by the test: "a while" without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_once_requests_overlap_they_go_to_the_inference_thread(monkeypatch):
    """Under concurrent load a request that happens to find the model idle still goes to
    the inference thread: running it on the loop would stall the others' reads. Lone
    requests run inline again once traffic has been sequential for a while."""
    clock = Clock()
    monkeypatch.setattr(
        dataplane,
        "time",
        SimpleNamespace(monotonic=clock.monotonic, perf_counter=time.perf_counter, time=time.time),
    )
    model = FakeModel()

    async def go() -> None:
        plane = plane_with(model)
        gate, reading = asyncio.Event(), asyncio.Event()
        first = asyncio.ensure_future(plane.infer("m", None, body(1, gate, reading)))
        await reading.wait()  # the first is in flight, its body still coming
        second = asyncio.ensure_future(plane.infer("m", None, body(2)))
        await second
        gate.set()
        await first
        await plane.infer("m", None, body(3))  # alone, but right after the overlap
        clock.now += dataplane.SEQUENTIAL_AFTER_S + 0.1  # no overlap for longer than that
        await plane.infer("m", None, body(4))  # sequential again
        await plane.close()

    asyncio.run(asyncio.wait_for(go(), TIMEOUT_S))
    loop_thread = threading.current_thread().name
    assert model.threads == ["infer-m_0", "infer-m_0", "infer-m_0", loop_thread]
