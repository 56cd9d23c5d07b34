"""Paper 000's text models end to end against a real Redis: the outage behaviour."""

from __future__ import annotations

import json
import time

import pytest

from kindling.embeddings.loader import load_table
from kindling.embeddings.redis_server import RedisServer, redis_server_path
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.store import open_backend
from kindling.modelzoo.build import default_cache
from kindling.modelzoo.word_vectors import write_demo_vectors
from tests.runtime.test_server import post

pytestmark = pytest.mark.integration


def sentence(text: str) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    ).encode()


def test_redis_outage_fails_fast_keeps_cached_words_and_recovers(
    tmp_path, model_repository, start_runtime
):
    if redis_server_path() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    vectors = write_demo_vectors(default_cache() / "vectors")["demo300"]
    redis = RedisServer(tmp_path / "redis", persistent=True).start()
    try:
        backend = open_backend(EmbeddingSettings(url=redis.url))
        load_table(backend, "demo300", vectors, "word2vec-bin", grace=0.0)
        backend.close()
        runtime = start_runtime(model_repository, models=("kim_cnn",), args=("--redis", redis.url))
        path = "/v2/models/kim_cnn/infer"
        assert post(runtime, path, sentence("the film was great"))[0] == 200

        redis.kill()
        # Every word of this sentence is in the in-process cache: Redis is not needed.
        assert post(runtime, path, sentence("The film was GREAT"))[0] == 200
        started = time.monotonic()
        status, headers, body = post(runtime, path, sentence("a brilliant tragedy by shakespeare"))
        elapsed = time.monotonic() - started
        assert status == 503, body
        assert headers["retry-after"] == "1"
        assert "redis" in json.loads(body)["error"].lower()
        assert elapsed < 2.0, f"a Redis outage must fail fast, took {elapsed:.2f} s"

        redis.start()  # same port; the AOF brings the table back
        deadline = time.monotonic() + 10
        while (status := post(runtime, path, sentence("a brilliant tragedy"))[0]) != 200:
            assert status == 503 and time.monotonic() < deadline, "no recovery without restart"
            time.sleep(0.1)
        metrics = runtime.get("/metrics")[1].decode()
        assert "kindling_embeddings_cache_hits_total" in metrics
        assert 'kindling_requests_total{model="kim_cnn",status="503"}' in metrics
    finally:
        redis.stop()
