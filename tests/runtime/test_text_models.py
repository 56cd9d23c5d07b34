"""Paper 000's text models end to end against a real Redis: the outage behaviour."""

from __future__ import annotations

import json
import time

import pytest

from kindling.embeddings.backend import open_backend
from kindling.embeddings.redis_server import RedisServer
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.table_loader import load_table
from kindling.modelzoo.build import default_cache
from kindling.modelzoo.word_vectors import write_demo_vectors
from tests.embeddings.conftest import require_redis

pytestmark = pytest.mark.integration


def sentence(text: str) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    ).encode()


def test_redis_outage_fails_fast_keeps_cached_words_and_recovers(
    tmp_path, model_repository, start_runtime
):
    require_redis()
    vectors = write_demo_vectors(default_cache() / "vectors")["demo300"]
    redis = RedisServer(tmp_path / "redis", persistent=True).start()
    try:
        backend = open_backend(EmbeddingSettings(url=redis.url).for_loading())
        load_table(backend, "demo300", vectors, "word2vec-bin", grace=0.0)
        backend.close()
        runtime = start_runtime(model_repository, models=("kim_cnn",), args=("--redis", redis.url))
        path = "/v2/models/kim_cnn/infer"
        assert runtime.post(path, sentence("the film was great"))[0] == 200

        redis.kill()
        # Every word of this sentence is in the in-process cache: Redis is not needed.
        assert runtime.post(path, sentence("The film was GREAT"))[0] == 200
        # The rest is a 503 (its bound is tests/embeddings/test_failures.py's to check):
        # `post` waits 30 s, so only a request that hangs on the outage fails here.
        status, headers, body = runtime.post(path, sentence("a brilliant tragedy by shakespeare"))
        assert status == 503, body
        assert headers["retry-after"] == "1"
        assert "redis" in json.loads(body)["error"].lower()

        redis.start()  # same port; the AOF brings the table back
        # Polled until the cooldown has passed; the deadline is only a safety net.
        deadline = time.monotonic() + 60
        while (status := runtime.post(path, sentence("a brilliant tragedy"))[0]) != 200:
            assert status == 503 and time.monotonic() < deadline, "no recovery without restart"
            time.sleep(0.1)
        metrics = runtime.get("/metrics")[1].decode()
        assert "kindling_embeddings_cache_hits_total" in metrics
        assert 'kindling_requests_total{model="kim_cnn",status="503"}' in metrics
    finally:
        redis.stop()
