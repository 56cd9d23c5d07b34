"""Fixtures: real redis-server processes on free loopback ports, and vector files
written by gensim (an independent writer of the word2vec formats).

Servers are session-scoped where tests can share them (each test uses its own table
names); tests that kill or stop a server get their own. All are stopped at the end.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kindling.embeddings.backend import Backend, open_backend
from kindling.embeddings.redis_server import RedisServer, redis_server_path
from kindling.embeddings.settings import EmbeddingSettings

NO_REDIS = "redis-server is not installed (apt-get install redis-server)"


def require_redis() -> None:
    if redis_server_path() is None:
        pytest.skip(NO_REDIS)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@dataclass
class Cluster:
    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])
        return f"redis+cluster://{seeds}"


def _cluster_ok(port: int) -> bool:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "cluster", "info"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    ).stdout
    return "cluster_state:ok" in out


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three masters on loopback, slots split by `redis-cli --cluster create`."""
    require_redis()
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed (apt-get install redis-tools)")
    root = tmp_path_factory.mktemp("cluster")
    nodes: list[RedisServer] = []
    try:
        for i in range(3):
            directory = root / f"node{i}"
            options = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(directory / "nodes.conf"),
                "--cluster-node-timeout", "5000",
            ]  # fmt: skip
            nodes.append(RedisServer(directory, options=options).start())
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0",
             "--cluster-yes"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 60  # a safety net: only a hang waits this long
        while not all(_cluster_ok(n.port) for n in nodes):
            if time.monotonic() > deadline:
                pytest.fail("the test cluster never reached cluster_state:ok")
            time.sleep(0.1)
        yield Cluster(nodes)
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def table() -> str:
    """A table name no other test uses, so tests can share one Redis."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["redis", "file"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store kind in turn: the session Redis, or a fresh embedded file store."""
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    return f"file://{tmp_path / 'store'}"


@pytest.fixture
def open_store_backend() -> Iterator[Callable[[str], Backend]]:
    backends: list[Backend] = []

    def make(url: str) -> Backend:
        backend = open_backend(EmbeddingSettings(url=url, socket_timeout=10))
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        backend.close()
