"""The HTTP service: in-process through the ASGI app, and once as a real uvicorn process."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from kindling.embeddings.redis_server import free_port
from kindling.embeddings.service import create_app
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.store import EmbeddingStore
from tests.conftest import stop_process
from tests.embeddings.helpers import WORDS, load_file, make_vectors, write_gensim

VECTORS = make_vectors(WORDS, 5)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "store"
    path = write_gensim(tmp_path / "v.bin", WORDS, VECTORS, binary=True)
    load_file(EmbeddingSettings(url=f"file://{directory}"), "words", path)
    return directory


@pytest.fixture
def client(store_dir: Path) -> Iterator[TestClient]:
    settings = EmbeddingSettings(url=f"file://{store_dir}", max_words=10)
    with TestClient(create_app(EmbeddingStore.from_settings(settings))) as test_client:
        yield test_client


def test_json_lookup(client: TestClient):
    response = client.post("/v1/tables/words/lookup", json={"words": ["cat", "nope", "東京"]})
    assert response.status_code == 200
    body = response.json()
    assert body["dim"] == 5
    assert body["oov"] == [1]
    vectors = np.array(body["vectors"], np.float32)
    assert vectors.shape == (3, 5)
    # JSON carries float32's shortest decimal form, which parses back to the same bits.
    assert vectors[0].tobytes() == VECTORS[WORDS.index("cat")].tobytes()
    assert not vectors[1].any()


def test_binary_lookup(client: TestClient):
    response = client.post(
        "/v1/tables/words/lookup",
        json={"words": ["the", "zzz", "mat"]},
        headers={"Accept": "application/octet-stream"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["x-kindling-dim"] == "5"
    assert response.headers["x-kindling-rows"] == "3"
    assert response.headers["x-kindling-oov"] == "1"
    vectors = np.frombuffer(response.content, "<f4").reshape(3, 5)
    assert vectors[2].tobytes() == VECTORS[WORDS.index("mat")].tobytes()


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/tables/nope/lookup", {"words": ["a"]}, 404, "'nope' not found"),
        ("/v1/tables/words/lookup", {"word": ["a"]}, 400, "body must be"),
        ("/v1/tables/words/lookup", {"words": ["a", 1]}, 400, "body must be"),
        ("/v1/tables/words/lookup", {"words": ["a"] * 11}, 400, "limit is 10"),
        ("/v1/tables/bad{name}/lookup", {"words": ["a"]}, 400, "bad table name"),
    ],
)
def test_errors(client: TestClient, path: str, body: object, status: int, message: str):
    response = client.post(path, json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_body_that_is_not_json(client: TestClient):
    response = client.post("/v1/tables/words/lookup", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"].startswith("body is not JSON")


def test_health_tables_and_metrics(client: TestClient):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert client.get("/v1/tables").json() == {"tables": ["words"]}
    assert client.get("/v1/tables/words").json()["count"] == len(WORDS)
    client.post("/v1/tables/words/lookup", json={"words": ["cat"]})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "kindling_embeddings_cache_misses_total 1" in metrics.text
    assert 'kindling_embeddings_lookups_total{outcome="ok"} 1' in metrics.text
    assert (
        'kindling_embeddings_http_requests_total{route="/v1/tables/{table}/lookup",code="200"} 1'
        in metrics.text
    )


def test_redis_down_is_503_with_retry_after():
    # Nothing listens on this port: Redis is "down" from the start.
    settings = EmbeddingSettings(url=f"redis://127.0.0.1:{free_port()}/0", retries=0)
    with TestClient(create_app(EmbeddingStore.from_settings(settings))) as client:
        response = client.post("/v1/tables/words/lookup", json={"words": ["a"]})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "unavailable" in response.json()["error"]
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200


@pytest.mark.integration
def test_real_uvicorn_process(store_dir: Path):
    port = free_port()
    command = [sys.executable, "-m", "kindling", "embeddings", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--store", str(store_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60  # a safety net: only a hang waits this long
        with httpx.Client(base_url=base, timeout=30) as http:
            while True:
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout else ""
                    pytest.fail(f"the service did not start:\n{output}")
                time.sleep(0.1)
            response = http.post("/v1/tables/words/lookup", json={"words": ["sat", "??"]})
            assert response.status_code == 200
            assert response.json()["oov"] == [1]
            got = np.array(response.json()["vectors"][0], np.float32)
            assert got.tobytes() == VECTORS[WORDS.index("sat")].tobytes()
    finally:
        stop_process(process, timeout=10)
        if process.stdout:
            process.stdout.close()
