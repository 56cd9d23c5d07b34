"""The adaptive batcher (kindling.runtime.batcher), driven with asyncio.run and a fake model.

The fake model's first call can block on a threading.Event, so requests queue up behind
it deterministically, and the inline tests run on a fake clock the model moves; nothing
here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from kindling.errors import InferenceError, InvalidInput, KindlingError
from kindling.runtime import batcher as batcher_module
from kindling.runtime.batcher import AdaptiveBatcher, BatchTimes, _concat

TIMEOUT_S = 60  # a hang fails the test instead of the whole run
LONG_S = 3600.0  # a max delay no test may wait out: reaching it fails with TIMEOUT_S


class FakeModel:
    """Identity-like predict: y = 2 * x row by row, and every call's inputs recorded."""

    def __init__(self, block_first: bool = False) -> None:
        self.calls: list[dict[str, np.ndarray]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.block_first = block_first
        self.error: Exception | None = None

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append({k: v.copy() for k, v in inputs.items()})
        if len(self.calls) == 1 and self.block_first:
            self.started.set()
            assert self.release.wait(TIMEOUT_S), "test never released the first batch"
        if self.error is not None:
            raise self.error
        x = inputs["x"]
        if (x < 0).any():  # the model's own check: one bad caller breaks a merged run
            raise InvalidInput("negative input")
        return {"y": x * 2, "rows": np.arange(len(x))}

    @property
    def rows_per_call(self) -> list[int]:
        return [len(c["x"]) for c in self.calls]


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(1, "test-infer")
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S))


async def until(condition) -> None:
    """Let the loop (and the inference thread) run until `condition()` holds."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0.0005)
    raise AssertionError("condition never held")


def make(
    model,
    executor,
    max_rows=8,
    max_delay_s=LONG_S,
    pad=None,
    on_batch=None,
    inline_s=0.0,
    estimate_s=None,
):
    return AdaptiveBatcher(
        predict=model,
        executor=executor,
        max_rows=max_rows,
        max_delay_s=max_delay_s,
        pad_values={"x": pad},
        on_batch=on_batch,
        inline_max_s=inline_s,
        row_compute_s=estimate_s,
    )


def rows(start: int, n: int, width: int = 3) -> np.ndarray:
    """n distinct rows: row i is [start+i] * width, so every caller's rows are recognisable."""
    return np.repeat(np.arange(start, start + n, dtype=np.float32)[:, None], width, axis=1)


async def behind_a_blocked_batch(batcher, model, requests):
    """Start one request that blocks in predict, queue `requests` behind it, then release."""
    first = asyncio.ensure_future(batcher.infer({"x": rows(1000, 1)}, 1))
    await until(model.started.is_set)
    tasks = [asyncio.ensure_future(batcher.infer({"x": x}, len(x))) for x in requests]
    await until(lambda: len(batcher._queue) == len(requests))
    model.release.set()
    results = await asyncio.gather(first, *tasks, return_exceptions=True)
    await batcher.close()
    return results[0], results[1:]


def test_single_request(executor):
    inside: list[float] = []

    class TimedModel(FakeModel):
        """Measures its own run: the batcher's compute time must cover it."""

        def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            started = time.perf_counter()
            outputs = super().__call__(inputs)
            inside.append(time.perf_counter() - started)
            return outputs

    model = TimedModel()
    batcher = make(model, executor)

    async def main():
        started = time.perf_counter()
        result = await batcher.infer({"x": rows(0, 2)}, 2)
        total = time.perf_counter() - started
        await batcher.close()
        return result, total

    (outputs, times), total = run(main())
    np.testing.assert_array_equal(outputs["y"], rows(0, 2) * 2)
    assert isinstance(times, BatchTimes)
    assert times.batch_rows == 2
    assert model.rows_per_call == [2]
    # The same clock read in order: the run inside the compute time, both inside the call.
    (run_s,) = inside
    assert 0 < run_s <= times.compute_s
    assert 0 <= times.queue_s
    assert times.queue_s + times.compute_s <= total


def test_queued_requests_are_merged_and_split_back(executor):
    model = FakeModel(block_first=True)
    batches = []
    batcher = make(model, executor, on_batch=lambda n, _s: batches.append(n))
    inputs = [rows(0, 1), rows(10, 3), rows(20, 2)]

    _, results = run(behind_a_blocked_batch(batcher, model, inputs))

    # One call for the blocked request, then ONE call for the three queued ones.
    assert model.rows_per_call == [1, 6]
    np.testing.assert_array_equal(model.calls[1]["x"], np.concatenate(inputs))
    for x, (outputs, times) in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(outputs["y"], x * 2)  # exactly its own rows
        assert len(outputs["rows"]) == len(x)
        assert times.batch_rows == 6
    assert batches == [1, 6]


def test_max_rows_is_respected(executor):
    model = FakeModel(block_first=True)
    batcher = make(model, executor, max_rows=4)
    inputs = [rows(0, 2), rows(10, 2), rows(20, 2), rows(30, 1)]

    _, results = run(behind_a_blocked_batch(batcher, model, inputs))

    assert model.rows_per_call == [1, 4, 3]
    assert max(model.rows_per_call) <= 4
    for x, (outputs, _) in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(outputs["y"], x * 2)


def test_request_that_does_not_fit_keeps_its_turn(executor):
    model = FakeModel(block_first=True)
    batcher = make(model, executor, max_rows=4)
    inputs = [rows(0, 3), rows(10, 2), rows(20, 1)]

    _, results = run(behind_a_blocked_batch(batcher, model, inputs))

    # 3 + 2 > 4: the 2-row request is skipped, the 1-row one joins, then the 2-row one runs.
    assert model.rows_per_call == [1, 4, 2]
    np.testing.assert_array_equal(model.calls[1]["x"], np.concatenate([inputs[0], inputs[2]]))
    np.testing.assert_array_equal(model.calls[2]["x"], inputs[1])
    for x, (outputs, _) in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(outputs["y"], x * 2)


def test_request_larger_than_max_rows_runs_alone(executor):
    model = FakeModel(block_first=True)
    batcher = make(model, executor, max_rows=2)
    inputs = [rows(0, 5), rows(10, 1)]

    _, results = run(behind_a_blocked_batch(batcher, model, inputs))

    assert model.rows_per_call == [1, 5, 1]
    np.testing.assert_array_equal(results[0][0]["y"], inputs[0] * 2)


def test_different_trailing_shapes_are_not_merged_without_pad_value(executor):
    model = FakeModel(block_first=True)
    batcher = make(model, executor, pad=None)
    inputs = [rows(0, 1, width=3), rows(10, 2, width=5), rows(20, 1, width=3)]

    _, results = run(behind_a_blocked_batch(batcher, model, inputs))

    # The two width-3 requests merge; the width-5 one waits for its own run.
    assert model.rows_per_call == [1, 2, 2]
    np.testing.assert_array_equal(model.calls[1]["x"], np.concatenate([inputs[0], inputs[2]]))
    np.testing.assert_array_equal(model.calls[2]["x"], inputs[1])
    for x, (outputs, _) in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(outputs["y"], x * 2)


def test_different_trailing_shapes_are_padded_with_pad_value(executor):
    model = FakeModel(block_first=True)
    batcher = make(model, executor, pad=-0.0)
    short, long = rows(1, 1, width=2), rows(5, 2, width=4)

    _, results = run(behind_a_blocked_batch(batcher, model, [short, long]))

    assert model.rows_per_call == [1, 3]
    merged = model.calls[1]["x"]
    assert merged.shape == (3, 4)
    assert merged.dtype == np.float32
    np.testing.assert_array_equal(
        merged,
        [[1, 1, -0.0, -0.0], [5, 5, 5, 5], [6, 6, 6, 6]],
    )
    # Each caller gets its own rows back (padded to the batch's width).
    np.testing.assert_array_equal(results[0][0]["y"][:, :2], short * 2)
    np.testing.assert_array_equal(results[1][0]["y"], long * 2)


def test_concat_pads_every_dynamic_dimension():
    a = np.ones((1, 2, 3), dtype=np.int64)
    b = np.full((2, 3, 1), 7, dtype=np.int64)
    out = _concat([a, b], pad_value=-1)
    assert out.shape == (3, 3, 3)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out[0, :2, :3], a[0])
    assert (out[0, 2, :] == -1).all()
    np.testing.assert_array_equal(out[1:, :, :1], b)
    assert (out[1:, :, 1:] == -1).all()


def test_concat_same_shapes_ignores_pad_value():
    a, b = rows(0, 1), rows(1, 2)
    np.testing.assert_array_equal(_concat([a, b], 9.0), np.concatenate([a, b]))
    np.testing.assert_array_equal(_concat([a, b], None), np.concatenate([a, b]))


def test_failing_predict_reaches_every_waiting_caller(executor):
    model = FakeModel(block_first=True)
    model.error = InferenceError("model exploded")
    batcher = make(model, executor)

    first, results = run(behind_a_blocked_batch(batcher, model, [rows(0, 1), rows(10, 2)]))

    assert model.rows_per_call == [1, 3]  # merged, run once, no per-caller retry
    for result in (first, *results):
        assert isinstance(result, InferenceError)
        assert result.message == "model exploded"


def test_non_kindling_error_reaches_every_caller(executor):
    model = FakeModel(block_first=True)
    model.error = RuntimeError("segfault-ish")
    batcher = make(model, executor)

    first, results = run(behind_a_blocked_batch(batcher, model, [rows(0, 1), rows(10, 1)]))

    assert all(isinstance(r, RuntimeError) for r in (first, *results))


def test_invalid_input_in_merged_batch_fails_only_that_caller(executor):
    model = FakeModel(block_first=True)
    batcher = make(model, executor)
    good, bad, other = rows(0, 2), -rows(10, 1) - 1, rows(20, 1)

    _, results = run(behind_a_blocked_batch(batcher, model, [good, bad, other]))

    # The merged run fails, then each caller runs alone.
    assert model.rows_per_call == [1, 4, 2, 1, 1]
    np.testing.assert_array_equal(results[0][0]["y"], good * 2)
    assert isinstance(results[1], InvalidInput)
    assert "negative input" in results[1].message
    np.testing.assert_array_equal(results[2][0]["y"], other * 2)


def test_lone_request_does_not_wait_for_max_delay(executor):
    # max_delay_s is an hour but nothing is arriving: the request must run at once (a
    # wait would fail the test with a TimeoutError after TIMEOUT_S).
    model = FakeModel()
    batcher = make(model, executor, max_delay_s=LONG_S)

    async def main():
        assert batcher.arriving == 0
        first = await batcher.infer({"x": rows(0, 1)}, 1)
        second = await batcher.infer({"x": rows(1, 1)}, 1)
        await batcher.close()
        return first, second

    (first, _), (second, _) = run(main())
    np.testing.assert_array_equal(first["y"], rows(0, 1) * 2)
    np.testing.assert_array_equal(second["y"], rows(1, 1) * 2)
    assert model.rows_per_call == [1, 1]


def test_batch_waits_for_an_arriving_request(executor):
    model = FakeModel()
    batcher = make(model, executor, max_delay_s=LONG_S)

    async def main():
        batcher.arriving = 1  # a second request's body is being read
        first = asyncio.ensure_future(batcher.infer({"x": rows(0, 1)}, 1))
        await until(lambda: batcher._worker is not None and not batcher._queue)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not first.done()  # held for the arriving one
        batcher.arriving -= 1
        second = asyncio.ensure_future(batcher.infer({"x": rows(1, 2)}, 2))
        results = await asyncio.gather(first, second)
        await batcher.close()
        return results

    (first, t1), (second, t2) = run(main())
    assert model.rows_per_call == [3]
    np.testing.assert_array_equal(first["y"], rows(0, 1) * 2)
    np.testing.assert_array_equal(second["y"], rows(1, 2) * 2)
    assert t1.batch_rows == t2.batch_rows == 3


def test_batch_stops_waiting_after_max_delay(executor):
    model = FakeModel()
    batcher = make(model, executor, max_delay_s=0.001)

    async def main():
        batcher.arriving = 5  # never comes
        result = await batcher.infer({"x": rows(0, 1)}, 1)
        await batcher.close()
        return result

    outputs, _ = run(main())
    np.testing.assert_array_equal(outputs["y"], rows(0, 1) * 2)


def test_batch_stops_waiting_when_full(executor):
    model = FakeModel()
    batcher = make(model, executor, max_rows=2, max_delay_s=LONG_S)

    async def main():
        batcher.arriving = 5  # would wait an hour unless the batch is full
        result = await batcher.infer({"x": rows(0, 2)}, 2)
        await batcher.close()
        return result

    _, times = run(main())
    assert times.batch_rows == 2


def test_cancelled_caller_does_not_break_the_batch(executor):
    model = FakeModel(block_first=True)
    batcher = make(model, executor)

    async def main():
        first = asyncio.ensure_future(batcher.infer({"x": rows(0, 1)}, 1))
        await until(model.started.is_set)
        gone = asyncio.ensure_future(batcher.infer({"x": rows(10, 1)}, 1))
        stays = asyncio.ensure_future(batcher.infer({"x": rows(20, 1)}, 1))
        await until(lambda: len(batcher._queue) == 2)
        gone.cancel()
        model.release.set()
        result = await stays
        await first
        await batcher.close()
        return result, gone.cancelled()

    (outputs, _), cancelled = run(main())
    assert cancelled
    np.testing.assert_array_equal(outputs["y"], rows(20, 1) * 2)


def test_close_fails_queued_futures(executor):
    model = FakeModel(block_first=True)
    batcher = make(model, executor)

    async def main():
        first = asyncio.ensure_future(batcher.infer({"x": rows(0, 1)}, 1))
        await until(model.started.is_set)
        queued = [asyncio.ensure_future(batcher.infer({"x": rows(i, 1)}, 1)) for i in (1, 2)]
        await until(lambda: len(batcher._queue) == 2)
        await batcher.close()
        results = await asyncio.gather(*queued, return_exceptions=True)
        model.release.set()
        first.cancel()
        return results

    results = run(main())
    for result in results:
        assert type(result) is KindlingError
        assert result.message == "server is shutting down"
    assert model.rows_per_call == [1]  # the queued requests never ran


def test_close_without_any_request(executor):
    model = FakeModel()
    batcher = make(model, executor)
    run(batcher.close())
    assert batcher._worker is None  # nothing was started just to be closed
    assert model.calls == []

    async def again():  # still usable: a worker is made on the first request
        result = await batcher.infer({"x": rows(0, 1)}, 1)
        await batcher.close()
        return result

    outputs, _ = run(again())
    np.testing.assert_array_equal(outputs["y"], rows(0, 1) * 2)


def test_close_fails_the_batch_in_flight(executor):
    model = FakeModel(block_first=True)
    batcher = make(model, executor)

    async def main():
        in_flight = asyncio.ensure_future(batcher.infer({"x": rows(0, 1)}, 1))
        await until(model.started.is_set)
        await batcher.close()
        for _ in range(20):
            await asyncio.sleep(0)
        done = in_flight.done()
        model.release.set()
        in_flight.cancel()
        return done

    assert run(main())


# -- lone requests on the event-loop thread ------------------------------------------------


class Clock:
    """The batcher's perf_counter, moved only by the model: a call takes what it says."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(batcher_module, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


class ThreadRecorder(FakeModel):
    """Also records which thread ran each call; each call takes `seconds` of the clock."""

    def __init__(self, clock: Clock, seconds: float = 0.0) -> None:
        super().__init__()
        self.threads: list[str] = []
        self.clock = clock
        self.seconds = seconds

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        self.clock.now += self.seconds
        return super().__call__(inputs)


def test_a_lone_request_of_a_quick_model_runs_on_the_loop_thread(executor, clock):
    """The first request measures the model on the inference thread; once it is known to
    be quick, lone requests skip the hand-off, with the same answers and observations."""
    model = ThreadRecorder(clock)
    observed: list[int] = []
    batcher = make(model, executor, on_batch=lambda n, _s: observed.append(n), inline_s=1.0)

    async def go():
        results = [await batcher.infer({"x": rows(i, 1)}, 1) for i in range(3)]
        await batcher.close()
        return results

    results = run(go())
    loop_thread = threading.current_thread().name
    assert model.threads == ["test-infer_0", loop_thread, loop_thread]
    for i, (outputs, times) in enumerate(results):
        np.testing.assert_array_equal(outputs["y"], rows(i, 1) * 2)
        assert times.queue_s == 0.0 or i == 0
        assert times.batch_rows == 1
    assert observed == [1, 1, 1]


def test_a_warm_up_estimate_lets_the_very_first_request_run_inline(executor, clock):
    """The model's warm-up time stands in for the first measurement: the cold request,
    the one a scale-from-zero client waits on, skips the hand-off too."""
    for estimate_s, first in ((0.001, threading.current_thread().name), (5.0, "test-infer_0")):
        model = ThreadRecorder(clock)
        batcher = make(model, executor, inline_s=1.0, estimate_s=estimate_s)

        async def go(batcher=batcher):
            await batcher.infer({"x": rows(0, 1)}, 1)
            await batcher.close()

        run(go())
        assert model.threads == [first]


def test_inline_is_off_at_zero_and_for_slow_models(executor, clock):
    for inline_s, seconds in ((0.0, 0.001), (0.005, 0.02)):
        model = ThreadRecorder(clock, seconds)
        batcher = make(model, executor, inline_s=inline_s)

        async def go(batcher=batcher):
            for i in range(3):
                await batcher.infer({"x": rows(i, 1)}, 1)
            await batcher.close()

        run(go())
        assert set(model.threads) == {"test-infer_0"}, (inline_s, seconds)


def test_the_inline_budget_scales_with_rows(executor, clock):
    """Measured per row: a quick model's request of many rows may still take too long."""
    model = ThreadRecorder(clock, 0.004)
    batcher = make(model, executor, max_rows=64, inline_s=0.1)

    async def go():
        await batcher.infer({"x": rows(0, 1)}, 1)  # measures 4 ms per row
        await batcher.infer({"x": rows(0, 1)}, 1)  # inline
        await batcher.infer({"x": rows(0, 32)}, 32)  # 32 rows: 128 ms, not inline
        await batcher.close()

    run(go())
    loop_thread = threading.current_thread().name
    assert model.threads == ["test-infer_0", loop_thread, "test-infer_0"]


def test_requests_arriving_together_still_batch_when_inline_is_on(executor):
    """Inline is for a lone request: with others queued or arriving, requests merge on
    the inference thread as before."""
    model = FakeModel(block_first=True)
    batcher = make(model, executor, max_delay_s=0.0, inline_s=10.0)

    async def go():
        first = asyncio.ensure_future(batcher.infer({"x": rows(0, 1)}, 1))
        await until(model.started.is_set)
        rest = [asyncio.ensure_future(batcher.infer({"x": rows(i, 1)}, 1)) for i in (1, 2, 3)]
        await until(lambda: len(batcher._queue) == 3)
        model.release.set()
        await asyncio.gather(first, *rest)
        await batcher.close()

    run(go())
    assert model.rows_per_call == [1, 3]
