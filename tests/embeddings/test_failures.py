"""Redis dying or hanging: fail fast with DependencyUnavailable, keep answering what the
cache holds, and recover when Redis is back, all without recreating the store.

No wall-clock bound is asserted that a loaded machine could miss: the cooldown is long
and ended by moving the store's clock, "fails at once" means "asks no backend at all",
and an upper bound on a wait is only a safety net against a hang.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from kindling.embeddings import store as store_module
from kindling.embeddings.backend import open_backend
from kindling.embeddings.redis_server import RedisServer
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.store import EmbeddingStore
from kindling.embeddings.table_loader import load_table
from kindling.errors import DependencyUnavailable
from tests.embeddings.conftest import require_redis
from tests.embeddings.helpers import make_vectors, write_gensim

pytestmark = pytest.mark.integration

SMALL = [f"w{i}" for i in range(50)]
LARGE = [f"x{i}" for i in range(4000)]
DIM = 16
SAFETY_S = 60.0
"""Far past every bound the store is configured with: only a hang takes this long."""


class Clock:
    """The store's monotonic clock, ahead of the real one by what the test skips."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.skipped


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    fake_time = SimpleNamespace(monotonic=fake.monotonic, perf_counter=time.perf_counter)
    monkeypatch.setattr(store_module, "time", fake_time)
    return fake


class CountingBackend:
    """A store's backend that counts the calls made to it."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.backend, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return attribute(*args, **kwargs)

        return counted


def counting(store: EmbeddingStore) -> CountingBackend:
    backend = CountingBackend(store.backend)
    store.backend = backend  # type: ignore[assignment]
    return backend


def timed(call: Callable[[], object]) -> float:
    """Seconds `call` took to raise DependencyUnavailable."""
    started = time.monotonic()
    with pytest.raises(DependencyUnavailable):
        call()
    return time.monotonic() - started


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server this test may kill: persistent, so a restart brings the data back."""
    require_redis()
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    try:
        yield server
    finally:
        server.stop()


def fast_settings(url: str) -> EmbeddingSettings:
    return EmbeddingSettings(
        url=url,
        connect_timeout=0.2,
        socket_timeout=0.2,
        retries=1,
        backoff=0.01,
        cooldown=SAFETY_S,  # ended by the test moving the clock, never by waiting
        alias_ttl=0,  # every lookup asks Redis for the alias: the hardest case
    )


def test_redis_killed_mid_load(own_redis: RedisServer, tmp_path: Path, clock: Clock):
    settings = fast_settings(own_redis.url)
    small = make_vectors(SMALL, DIM)
    backend = open_backend(settings)
    store = EmbeddingStore.from_settings(settings)
    try:
        live = load_table(
            backend, "t", write_gensim(tmp_path / "s.bin", SMALL, small, True), "word2vec-bin",
            grace=0,
        )  # fmt: skip
        store.lookup("t", ["w1", "w2"])  # now cached

        big = write_gensim(tmp_path / "l.bin", LARGE, make_vectors(LARGE, DIM), True)
        killed: list[float] = []

        def kill_after_two_batches(records: int) -> None:
            if records >= 1000 and not killed:
                own_redis.kill()
                killed.append(time.monotonic())

        with pytest.raises(DependencyUnavailable):
            load_table(
                backend, "t", big, "word2vec-bin", batch_size=500, grace=0, parallel=False,
                on_batch=kill_after_two_batches,
            )  # fmt: skip
        # The write fails, and abort and lock release each give up: no hang.
        assert time.monotonic() - killed[0] < SAFETY_S

        # Redis is down: cached words still answer, from the last version seen...
        down = store.lookup("t", ["w2", "w1", "w2"])
        np.testing.assert_array_equal(down.vectors, small[[2, 1, 2]])
        # ...and, within the cooldown that failure started, anything else fails without
        # asking Redis at all.
        backend_calls = counting(store)
        with pytest.raises(DependencyUnavailable) as failure:
            store.lookup("t", ["w3"])
        assert backend_calls.calls == 0
        assert failure.value.status_code == 503
        assert failure.value.retry_after

        own_redis.start()  # same port, same data directory
        clock.skipped += settings.cooldown
        back = store.lookup("t", ["w3", "w4"])  # the same store object
        np.testing.assert_array_equal(back.vectors, small[[3, 4]])
        # The half-written load never became live.
        assert back.version == live.version
    finally:
        store.close()
        backend.close()


def test_hung_redis_times_out_and_recovers(own_redis: RedisServer, tmp_path: Path, clock: Clock):
    settings = fast_settings(own_redis.url).replace(alias_ttl=SAFETY_S)
    vectors = make_vectors(SMALL, DIM)
    backend = open_backend(settings)
    store = EmbeddingStore.from_settings(settings)
    assert own_redis.process is not None
    pid = own_redis.process.pid
    try:
        load_table(
            backend, "t", write_gensim(tmp_path / "s.bin", SMALL, vectors, True), "word2vec-bin",
            grace=0,
        )  # fmt: skip
        store.lookup("t", ["w1"])
        os.kill(pid, signal.SIGSTOP)  # accepts connections, never answers
        backend_calls = counting(store)
        try:
            # It waits out the socket timeout (Redis took the request), then gives up.
            elapsed = timed(lambda: store.lookup("t", ["w5"]))
            assert settings.socket_timeout <= elapsed < SAFETY_S
            assert backend_calls.calls > 0
            # Within the cooldown, lookups that need Redis fail without asking it at all.
            asked = backend_calls.calls
            timed(lambda: store.lookup("t", ["w6"]))
            assert backend_calls.calls == asked
            np.testing.assert_array_equal(store.lookup("t", ["w1"]).vectors[0], vectors[1])
            assert timed(store.ping) < SAFETY_S
        finally:
            os.kill(pid, signal.SIGCONT)
        clock.skipped += settings.cooldown
        np.testing.assert_array_equal(store.lookup("t", ["w5"]).vectors[0], vectors[5])
    finally:
        store.close()
        backend.close()
