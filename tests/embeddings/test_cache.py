"""The LRU cache on a Zipf workload: word frequencies in text follow Zipf's law with an
exponent near 1, so a cache of the most recent 10% of a vocabulary answers most words."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.store import EmbeddingStore
from tests.embeddings.helpers import load_file

VOCAB, CACHE, S = 10_000, 1_000, 1.1


def zipf_probabilities(n: int, s: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** s
    return weights / weights.sum()


def che_lru_hit_rate(rates: np.ndarray, capacity: int) -> float:
    """Che's approximation (Che, Tung & Wang 2002) of an LRU cache's hit rate when item i
    is requested at rate rates[i]: find T with sum(1 - exp(-rate T)) = capacity; the hit
    rate is the rate-weighted mean of 1 - exp(-rate T)."""
    low, high = 1e-6, 1e12
    for _ in range(200):
        t = (low * high) ** 0.5
        if (1 - np.exp(-rates * t)).sum() > capacity:
            high = t
        else:
            low = t
    return float((rates * (1 - np.exp(-rates * t))).sum() / rates.sum())


def test_zipf_hit_rate(tmp_path: Path):
    p = zipf_probabilities(VOCAB, S)
    # A lookup asks the cache once per distinct word, so per request word i is asked
    # for with probability 1 - (1 - p_i)^20: that is its rate. The model gives 0.730;
    # the same model over single tokens would say 0.780, and an ideal cache holding
    # the top 1000 words answers 0.844 of tokens.
    expected = che_lru_hit_rate(1 - (1 - p) ** 20, CACHE)
    words = [f"w{i}" for i in range(VOCAB)]
    path = tmp_path / "v.vec"
    path.write_text(f"{VOCAB} 2\n" + "".join(f"{w} 0 {i}\n" for i, w in enumerate(words)))
    url = f"file://{tmp_path / 'store'}"
    load_file(EmbeddingSettings(url=url), "zipf", path, "fasttext-vec")

    rng = np.random.default_rng(7)
    requests = rng.choice(VOCAB, size=(3000, 20), p=p)
    with EmbeddingStore.from_settings(EmbeddingSettings(url=url, cache_size=CACHE)) as store:
        for ranks in requests[:500]:  # warm up: the first requests find an empty cache
            store.lookup("zipf", [words[r] for r in ranks])
        store.cache.hits.values.clear()
        store.cache.misses.values.clear()
        for ranks in requests[500:]:
            result = store.lookup("zipf", [words[r] for r in ranks])
            assert result.vectors[:, 1].tolist() == ranks.tolist()
        measured = store.cache.hit_rate()
    # 2500 requests leave about +-0.01 of sampling noise; a broken LRU is far off.
    assert expected - 0.025 < measured < expected + 0.025, (measured, expected)
    assert len(store.cache._entries) == CACHE
