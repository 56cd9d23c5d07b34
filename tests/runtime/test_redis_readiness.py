"""A text model whose embedding table vanishes (Redis restarted empty): 503 that says how to
load it, readiness false until it is back, and recovery without restarting the runtime.

Each test runs a real redis-server and a real `kindling serve`. Nothing waits on time:
KINDLING_EMBEDDINGS_ALIAS_TTL (how long the runtime trusts what it last read of a table)
is 0 where each probe must ask Redis, or an hour where only requests may tell, and
KINDLING_REDIS_COOLDOWN is 0 so Redis is asked again as soon as it is back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_client

from kindling.embeddings.backend import open_backend
from kindling.embeddings.redis_server import RedisServer
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.table_loader import load_table
from kindling.modelzoo.build import default_cache
from kindling.modelzoo.word_vectors import write_demo_vectors
from tests.conftest import RuntimeProcess, StartRuntime
from tests.embeddings.conftest import require_redis

pytestmark = pytest.mark.integration

INFER = "/v2/models/kim_cnn/infer"
TABLE = "demo300"


def sentence(text: str) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    ).encode()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis without persistence, as the issue's: a restart comes back empty."""
    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def load_demo300(url: str) -> None:
    vectors = write_demo_vectors(default_cache() / "vectors")[TABLE]
    backend = open_backend(EmbeddingSettings(url=url).for_loading())
    try:
        load_table(backend, TABLE, vectors, "word2vec-bin", grace=0.0)
    finally:
        backend.close()


def serve_kim_cnn(
    start_runtime: StartRuntime, repository: Path, url: str, alias_ttl: str
) -> RuntimeProcess:
    env = {"KINDLING_EMBEDDINGS_ALIAS_TTL": alias_ttl, "KINDLING_REDIS_COOLDOWN": "0"}
    return start_runtime(repository, models=("kim_cnn",), args=("--redis", url), env=env)


def readiness(runtime: RuntimeProcess) -> tuple[int, dict, int, dict]:
    server_status, server_body = runtime.get("/v2/health/ready")
    model_status, model_body = runtime.get("/v2/models/kim_cnn/ready")
    return server_status, json.loads(server_body), model_status, json.loads(model_body)


def assert_ready(runtime: RuntimeProcess) -> None:
    server_status, server, model_status, model = readiness(runtime)
    assert (server_status, server) == (200, {"ready": True})
    assert (model_status, model) == (200, {"name": "kim_cnn", "ready": True})


def assert_not_ready_for_the_table(runtime: RuntimeProcess) -> None:
    server_status, server, model_status, model = readiness(runtime)
    assert (server_status, server["ready"]) == (503, False)
    assert (model_status, model["ready"]) == (503, False)
    for message in (server["error"], model["error"]):
        assert f"embedding table '{TABLE}' is missing" in message
        assert f"kindling embeddings load --table {TABLE}" in message


def assert_503_for_the_table(runtime: RuntimeProcess, text: str) -> None:
    status, headers, body = runtime.post(INFER, sentence(text))
    assert status == 503, body
    assert headers["retry-after"] == "5"
    message = json.loads(body)["error"]
    assert f"embedding table '{TABLE}' is missing" in message
    assert f"kindling embeddings load --table {TABLE}" in message


def test_flushed_table_is_503_and_not_ready_until_reloaded(
    redis: RedisServer, model_repository: Path, start_runtime: StartRuntime
):
    load_demo300(redis.url)
    runtime = serve_kim_cnn(start_runtime, model_repository, redis.url, alias_ttl="0")
    assert runtime.post(INFER, sentence("the film was great"))[0] == 200
    assert_ready(runtime)

    redis_client.Redis.from_url(redis.url).flushall()
    # Readiness sees it by itself (a probe reads the alias), before any request does.
    assert_not_ready_for_the_table(runtime)
    assert_503_for_the_table(runtime, "the film was great")

    load_demo300(redis.url)
    assert_ready(runtime)
    assert runtime.post(INFER, sentence("the film was great"))[0] == 200


def test_a_request_that_finds_the_table_gone_marks_the_model_unready(
    redis: RedisServer, model_repository: Path, start_runtime: StartRuntime
):
    """With an hour's alias TTL the probes never ask Redis again after the first: only the
    request that finds the table gone can tell readiness, and only one that finds it
    back can clear it."""
    load_demo300(redis.url)
    runtime = serve_kim_cnn(start_runtime, model_repository, redis.url, alias_ttl="3600")
    assert_ready(runtime)
    assert runtime.post(INFER, sentence("the film was great"))[0] == 200

    redis_client.Redis.from_url(redis.url).flushall()
    assert_ready(runtime)  # nothing has looked since
    # Words the vector cache lacks: the fetch finds the version gone, the alias too.
    assert_503_for_the_table(runtime, "a brilliant tragedy by shakespeare")
    assert_not_ready_for_the_table(runtime)

    load_demo300(redis.url)
    assert runtime.post(INFER, sentence("a brilliant tragedy by shakespeare"))[0] == 200
    assert_ready(runtime)


def test_redis_down_keeps_readiness_and_a_restart_empty_clears_it(
    redis: RedisServer, model_repository: Path, start_runtime: StartRuntime
):
    """Redis down is not a missing table: the model still serves the words it has cached
    and fails the rest fast, and every replica sees the same outage, so readiness stays
    true (README, "Readiness"). Back but empty, the table is missing: not ready."""
    load_demo300(redis.url)
    runtime = serve_kim_cnn(start_runtime, model_repository, redis.url, alias_ttl="0")
    assert runtime.post(INFER, sentence("the film was great"))[0] == 200

    redis.kill()
    assert_ready(runtime)
    assert runtime.post(INFER, sentence("The film was GREAT"))[0] == 200  # cached words
    status, headers, body = runtime.post(INFER, sentence("a brilliant tragedy"))
    assert (status, headers["retry-after"]) == (503, "1"), body
    assert "unavailable" in json.loads(body)["error"]

    redis.start()  # same port, no persistence: empty
    assert_not_ready_for_the_table(runtime)
    assert_503_for_the_table(runtime, "a brilliant tragedy")
    load_demo300(redis.url)
    assert_ready(runtime)
    assert runtime.post(INFER, sentence("a brilliant tragedy"))[0] == 200
