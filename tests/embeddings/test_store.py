"""EmbeddingStore behaviour: dedup, cache, OOV policies, errors (file store: no server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kindling.embeddings.oov import RANDOM_SCALE, random_vector
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.store import EmbeddingStore
from kindling.embeddings.tables import TableNotFound
from kindling.errors import InvalidInput
from tests.embeddings.helpers import WORDS, load_file, make_vectors, write_gensim

DIM = 4
VECTORS = make_vectors(WORDS, DIM)


@pytest.fixture
def file_url(tmp_path: Path) -> str:
    url = f"file://{tmp_path / 'store'}"
    path = write_gensim(tmp_path / "v.bin", WORDS, VECTORS, binary=True)
    load_file(EmbeddingSettings(url=url), "words", path)
    return url


def row(word: str) -> np.ndarray:
    return VECTORS[WORDS.index(word)]


def test_lookup_dedups_and_keeps_order(file_url: str):
    with EmbeddingStore.from_settings(EmbeddingSettings(url=file_url)) as store:
        result = store.lookup("words", ["cat", "the", "cat", "zzz", "the", "zzz"])
        assert result.vectors.shape == (6, DIM)
        np.testing.assert_array_equal(result.vectors[0], row("cat"))
        np.testing.assert_array_equal(result.vectors[2], row("cat"))
        np.testing.assert_array_equal(result.vectors[4], row("the"))
        assert result.oov == [3, 5]
        # three distinct words, all fetched once
        assert store.cache.misses.get() == 3
        assert store.cache.hits.get() == 0
        store.lookup("words", ["the", "zzz"])  # both cached, OOV too (negative cache)
        assert store.cache.hits.get() == 2
        assert result.vectors.flags.writeable
        assert "kindling_embeddings_cache_hits_total 2" in store.registry.render()


def test_empty_lookup_has_the_table_dimension(file_url: str):
    with EmbeddingStore.from_settings(EmbeddingSettings(url=file_url)) as store:
        assert store.lookup("words", []).vectors.shape == (0, DIM)


def test_oov_policies(file_url: str):
    base = EmbeddingSettings(url=file_url)
    with EmbeddingStore.from_settings(base.replace(oov="zeros")) as store:
        assert not store.lookup("words", ["qqq"]).vectors.any()
    with EmbeddingStore.from_settings(base.replace(oov="unk")) as store:
        result = store.lookup("words", ["qqq", "cat"])
        np.testing.assert_array_equal(result.vectors[0], row("<unk>"))
        assert result.oov == [0]
    with EmbeddingStore.from_settings(base.replace(oov="unk", unk_token="nope")) as store:
        assert not store.lookup("words", ["qqq"]).vectors.any()  # no <unk>: zeros
    with EmbeddingStore.from_settings(base.replace(oov="random")) as store:
        first = store.lookup("words", ["qqq", "rrr"]).vectors
        again = store.lookup("words", ["rrr", "qqq"]).vectors
        np.testing.assert_array_equal(first, again[::-1])
        assert not np.array_equal(first[0], first[1])
        assert np.abs(first).max() <= RANDOM_SCALE


def test_random_oov_vector_is_stable_across_processes():
    # Python's hash() differs per process (PYTHONHASHSEED); the OOV vector must not.
    code = (
        "from kindling.embeddings.oov import random_vector;"
        "print(random_vector('unseen-word', 8).tobytes().hex())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {random_vector("unseen-word", 8).tobytes().hex()}


def test_errors(file_url: str):
    settings = EmbeddingSettings(url=file_url, max_words=3)
    with EmbeddingStore.from_settings(settings) as store:
        with pytest.raises(TableNotFound) as missing:
            store.lookup("nope", ["cat"])
        assert missing.value.status_code == 404
        with pytest.raises(InvalidInput, match="limit is 3"):
            store.lookup("words", ["a", "b", "c", "d"])
        with pytest.raises(InvalidInput, match="strings"):
            store.lookup("words", ["a", 3])  # type: ignore[list-item]
        with pytest.raises(InvalidInput, match="bad table name"):
            store.lookup("{x}", ["a"])
        assert store.info("words").count == len(WORDS)
        assert store.tables() == ["words"]


def test_settings_from_env():
    env = {
        "KINDLING_REDIS_URL": "redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
        "KINDLING_EMBEDDINGS_CACHE_SIZE": "123",
        "KINDLING_REDIS_SOCKET_TIMEOUT": "0.1",
        "KINDLING_REDIS_CONNECT_TIMEOUT": "0.05",
        "KINDLING_REDIS_RETRIES": "2",
        "KINDLING_EMBEDDINGS_OOV": "random",
        "KINDLING_EMBEDDINGS_ALIAS_TTL": "0",
    }
    settings = EmbeddingSettings.from_env(env)
    assert (settings.cache_size, settings.socket_timeout, settings.retries) == (123, 0.1, 2)
    assert (settings.oov, settings.alias_ttl) == ("random", 0.0)
    location = settings.location
    assert location.kind == "cluster"
    assert location.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert settings.fail_fast_bound == pytest.approx(3 * 0.15 + 0.02 + 0.04)
    assert EmbeddingSettings.from_env({}).location.kind == "file"
    assert EmbeddingSettings.from_env({"KINDLING_REDIS_URL": "rediss://h:1/0"}).location.kind == (
        "redis"
    )
    for bad in (
        {"KINDLING_REDIS_URL": "http://x"},
        {"KINDLING_EMBEDDINGS_OOV": "nan"},
        {"KINDLING_EMBEDDINGS_CACHE_SIZE": "many"},
    ):
        with pytest.raises(InvalidInput):
            EmbeddingSettings.from_env(bad)
