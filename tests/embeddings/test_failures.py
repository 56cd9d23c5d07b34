"""Redis dying or hanging: fail fast with DependencyUnavailable, keep answering what the
cache holds, and recover when Redis is back, all without recreating the store."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kindling.embeddings.loader import load_table
from kindling.embeddings.lookup import EmbeddingStore
from kindling.embeddings.redis_server import RedisServer
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.store import open_backend
from kindling.errors import DependencyUnavailable
from tests.embeddings.conftest import require_redis
from tests.embeddings.helpers import make_vectors, write_gensim

pytestmark = pytest.mark.integration

SMALL = [f"w{i}" for i in range(50)]
LARGE = [f"x{i}" for i in range(4000)]
DIM = 16


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
        cooldown=0.2,
        alias_ttl=0,  # every lookup asks Redis for the alias: the hardest case
    )


def test_redis_killed_mid_load(own_redis: RedisServer, tmp_path: Path):
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
        # The write fails at once; abort and lock release each give up within the bound.
        assert time.monotonic() - killed[0] < 3 * settings.fail_fast_bound + 0.5

        # Redis is down: cached words still answer, from the last version seen...
        down = store.lookup("t", ["w2", "w1", "w2"])
        np.testing.assert_array_equal(down.vectors, small[[2, 1, 2]])
        # ...and anything else fails fast.
        started = time.monotonic()
        with pytest.raises(DependencyUnavailable) as failure:
            store.lookup("t", ["w3"])
        assert time.monotonic() - started < settings.fail_fast_bound + 0.3
        assert failure.value.status_code == 503
        assert failure.value.retry_after

        own_redis.start()  # same port, same data directory
        time.sleep(settings.cooldown)
        back = store.lookup("t", ["w3", "w4"])  # the same store object
        np.testing.assert_array_equal(back.vectors, small[[3, 4]])
        # The half-written load never became live.
        assert back.version == live.version
    finally:
        store.close()
        backend.close()


def test_hung_redis_times_out_and_recovers(own_redis: RedisServer, tmp_path: Path):
    settings = fast_settings(own_redis.url).replace(alias_ttl=60.0)
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
        try:
            started = time.monotonic()
            with pytest.raises(DependencyUnavailable):
                store.lookup("t", ["w5"])
            elapsed = time.monotonic() - started
            assert settings.socket_timeout <= elapsed < settings.fail_fast_bound + 0.3
            # Within the cooldown, lookups that need Redis fail without waiting at all.
            started = time.monotonic()
            with pytest.raises(DependencyUnavailable):
                store.lookup("t", ["w6"])
            assert time.monotonic() - started < 0.05
            np.testing.assert_array_equal(store.lookup("t", ["w1"]).vectors[0], vectors[1])
            with pytest.raises(DependencyUnavailable):
                store.ping()
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(settings.cooldown)
        np.testing.assert_array_equal(store.lookup("t", ["w5"]).vectors[0], vectors[5])
    finally:
        store.close()
        backend.close()
