"""Adaptive batching: merge requests that are already waiting into one onnxruntime run.

After MLServer's adaptive batcher (a queue plus one future per request; the batch closes
on size or delay; a model failure reaches every waiting future) with one change: the
batch waits for more requests only while some are known to be arriving (their bodies are
being read). A lone request never waits, so batching costs nothing at concurrency 1, and
a request that a later one overtook is no longer waited for: an upload that stopped
(a client that stalled) must not hold every batch for max_queue_delay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from kindling.errors import InvalidInput, KindlingError

Tensors = dict[str, np.ndarray]
log = logging.getLogger("kindling.runtime")


@dataclass
class Pending:
    inputs: Tensors
    rows: int
    future: asyncio.Future[Tensors]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchTimes:
    """What one request spent waiting and computing, for the latency histograms."""

    queue_s: float
    compute_s: float
    batch_rows: int


class AdaptiveBatcher:
    def __init__(
        self,
        predict: Callable[[Tensors], Tensors],
        executor: Executor,
        max_rows: int,
        max_delay_s: float,
        pad_values: dict[str, float | None],
        on_batch: Callable[[int, float], None] | None = None,
        inline_max_s: float = 0.0,
        row_compute_s: float | None = None,
    ) -> None:
        self.predict = predict
        self.executor = executor
        self.max_rows = max(1, max_rows)
        self.max_delay_s = max_delay_s
        self.pad_values = pad_values
        self.on_batch = on_batch
        self.inline_max_s = inline_max_s
        self._row_compute_s = float("inf") if row_compute_s is None else row_compute_s
        """Compute time per row of the last lone request (at first an estimate, if given)."""
        self.arriving = 0
        """Requests past routing but not yet queued; only then is waiting worth it."""
        self.overtaken = 0
        """Requests not yet queued that are no longer counted in `arriving` (see arrived)."""
        self._arrivals: dict[int, None] = {}
        """Tickets of the requests counted in `arriving`, oldest first."""
        self._tickets = 0
        self._queue: deque[Pending] = deque()
        self._current: list[Pending] = []
        """The batch being collected or run: close() must fail these callers too."""
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    async def infer(
        self, inputs: Tensors, rows: int, may_inline: bool = True
    ) -> tuple[Tensors, BatchTimes]:
        """The model's outputs for this caller's rows. `may_inline`: the caller's traffic is
        sequential, so a lone request may run on the loop thread (`_infer_inline`)."""
        if (
            may_inline
            and not self._queue
            and not self._current
            and self.arriving <= 0
            and self._row_compute_s * rows <= self.inline_max_s
        ):
            return self._infer_inline(inputs, rows)
        if self._worker is None:
            # Created lazily so the queue's event belongs to the running loop.
            self._wakeup = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        pending = Pending(inputs, rows, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        assert self._wakeup is not None
        self._wakeup.set()
        return await pending.future  # type: ignore[return-value]

    def arrive(self) -> int:
        """A request is past routing and its body is being read: count it in `arriving`
        until `arrived` with the ticket returned."""
        self._tickets += 1
        self._arrivals[self._tickets] = None
        self.arriving += 1
        return self._tickets

    def arrived(self, ticket: int) -> None:
        """The request's body is in and decoded (or failed). Those that began before it and
        are still being read stop counting: overtaken, they are slow or stalled, and waiting
        for them would hold each batch, and keep lone requests off the loop thread, until
        their client gave up or the server's body timeout ended them. Ordered by event, not
        by a clock: a stalled upload costs at most the requests it began alongside."""
        arrivals = self._arrivals
        if ticket in arrivals:
            del arrivals[ticket]
            self.arriving -= 1
        else:
            self.overtaken -= 1
        while arrivals:
            oldest = next(iter(arrivals))
            if oldest > ticket:
                break
            del arrivals[oldest]
            self.arriving -= 1
            self.overtaken += 1
        if self._current and self._wakeup is not None:
            self._wakeup.set()  # a batch waiting for arrivals looks again

    def _infer_inline(self, inputs: Tensors, rows: int) -> tuple[Tensors, BatchTimes]:
        """Run a lone request on the calling (event-loop) thread: nothing waits to merge
        with it and the inference thread is idle, so handing it over and back would only
        add two thread wake-ups. Short models only (`inline_max_s`): the loop reads no
        other connection meanwhile."""
        started = time.perf_counter()
        try:
            outputs = self.predict(inputs)
        finally:
            compute = time.perf_counter() - started
            self._row_compute_s = compute / max(rows, 1)
        self._observe(rows, compute)
        return outputs, BatchTimes(0.0, compute, rows)

    def _observe(self, rows: int, compute_s: float) -> None:
        if self.on_batch is not None:
            try:
                self.on_batch(rows, compute_s)
            except Exception:  # metrics must never stop the worker
                log.exception("batch observer failed")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        for pending in [*self._current, *self._queue]:
            if not pending.future.done():
                pending.future.set_exception(KindlingError("server is shutting down"))
        self._current, self._queue = [], deque()

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:  # `arrived` may wake it with nothing queued
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._current = [self._queue.popleft()]
            await self._collect(batch)
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self.executor, self._predict_batch, batch)
            except Exception as exc:  # every waiting caller gets the model's error
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                self._current = []
                continue
            # Cleared only once answered: close() fails the callers of a cancelled run.
            self._current = []
            compute = time.perf_counter() - started
            rows = sum(p.rows for p in batch)
            if len(batch) == 1:
                self._row_compute_s = compute / max(rows, 1)
            self._observe(rows, compute)
            for p, result in zip(batch, outputs, strict=True):
                if p.future.done():  # the caller went away
                    continue
                if isinstance(result, Exception):
                    p.future.set_exception(result)
                else:
                    p.future.set_result((result, BatchTimes(started - p.enqueued, compute, rows)))

    async def _collect(self, batch: list[Pending]) -> None:
        """Add compatible waiting requests, and wait for arriving ones up to the delay."""
        assert self._wakeup is not None
        rows = batch[0].rows
        deadline = time.perf_counter() + self.max_delay_s
        while rows < self.max_rows:
            rows = self._take(batch, rows)
            remaining = deadline - time.perf_counter()
            if rows >= self.max_rows or self.arriving <= 0 or remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                self._take(batch, rows)
                break

    def _take(self, batch: list[Pending], rows: int) -> int:
        """Move queued requests that fit and can merge with the batch; others keep their turn."""
        skipped: list[Pending] = []
        while self._queue and rows < self.max_rows:
            candidate = self._queue.popleft()
            if rows + candidate.rows <= self.max_rows and self._mergeable(batch[0], candidate):
                batch.append(candidate)
                rows += candidate.rows
            else:
                skipped.append(candidate)
        self._queue.extendleft(reversed(skipped))
        return rows

    def _mergeable(self, a: Pending, b: Pending) -> bool:
        for name, x in a.inputs.items():
            y = b.inputs[name]
            if x.shape[1:] != y.shape[1:] and self.pad_values.get(name) is None:
                return False
        return True

    def _predict_batch(self, batch: list[Pending]) -> list[Tensors | Exception]:
        """Runs in the inference thread: merge, predict, split rows back to callers."""
        if len(batch) == 1:
            return [self.predict(batch[0].inputs)]
        merged = {
            name: _concat([p.inputs[name] for p in batch], self.pad_values.get(name))
            for name in batch[0].inputs
        }
        try:
            outputs = self.predict(merged)
        except InvalidInput:
            # One caller's input broke the merged run (say, a sentence shorter than a
            # filter). Run each alone so only that caller gets the error.
            return [_result_or_error(self.predict, p.inputs) for p in batch]
        results: list[Tensors | Exception] = []
        offset = 0
        for p in batch:
            results.append({k: v[offset : offset + p.rows] for k, v in outputs.items()})
            offset += p.rows
        return results


def _result_or_error(predict: Callable[[Tensors], Tensors], inputs: Tensors) -> Tensors | Exception:
    try:
        return predict(inputs)
    except KindlingError as exc:
        return exc


def _concat(arrays: list[np.ndarray], pad_value: float | None) -> np.ndarray:
    """Stack along the batch axis, padding dynamic dimensions with `pad_value` if allowed."""
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) == 1 or pad_value is None:
        return np.concatenate(arrays, axis=0)
    target = tuple(max(dims) for dims in zip(*shapes, strict=True))
    rows = sum(a.shape[0] for a in arrays)
    out = np.full((rows, *target), pad_value, dtype=arrays[0].dtype)
    offset = 0
    for a in arrays:
        out[(slice(offset, offset + a.shape[0]), *(slice(0, d) for d in a.shape[1:]))] = a
        offset += a.shape[0]
    return out
