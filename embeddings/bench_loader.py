"""Benchmark: loader throughput and lookup latency against a real local Redis.

    python -m kindling.embeddings.bench_loader [--redis URL] [--vectors N] [--dim D]

Starts a throwaway redis-server on a free port unless --redis is given (a benchmark
must not write into a Redis that matters: it loads a table named "bench").

Loader: writes a word2vec binary file of N random D-d vectors (300-d like GoogleNews,
the vectors of paper 000), then times parsing alone and the whole load (parse, MSET,
count verification, alias switch). The target is 200k vectors/s.

Lookup: 20-word sentences with words drawn Zipf(s=1.1) — word frequencies in English
text follow Zipf's law with s close to 1 — answered
  - DynamoDB-style, as in paper 000: one request per 100 keys (BatchGetItem's limit),
    no dedup, no cache; for a 20-word sentence that is one MGET here too;
  - by EmbeddingStore with the cache off: dedup, one MGET (alias cached);
  - by EmbeddingStore with its 10k-vector LRU cache, warmed on the same distribution;
  - by EmbeddingStore for a sentence whose words are all cached (no round trip);
and the same for 500-word documents, where the 100-key limit costs 5 round trips.
For scale: paper 000 measured its DynamoDB fetches at 60-70% of a 0.7 s request.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis

from kindling.embeddings import keys
from kindling.embeddings.backend import open_backend
from kindling.embeddings.formats import VectorReader
from kindling.embeddings.redis_server import RedisServer
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.store import EmbeddingStore
from kindling.embeddings.table_loader import load_table

TABLE = "bench"
DYNAMODB_BATCH = 100  # BatchGetItem's per-request key limit (paper 000)
ZIPF_S = 1.1


def write_word2vec_bin(path: Path, count: int, dim: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(b"%d %d\n" % (count, dim))
        for start in range(0, count, 65536):
            block = rng.standard_normal((min(65536, count - start), dim), np.float32)
            data = block.astype("<f4").tobytes()
            row = dim * 4
            f.write(
                b"".join(
                    b"w%d %s\n" % (start + i, data[i * row : (i + 1) * row])
                    for i in range(len(block))
                )
            )


def zipf_sentences(vocab: int, length: int, count: int, seed: int = 1) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1) ** ZIPF_S
    ranks = rng.choice(vocab, size=(count, length), p=weights / weights.sum())
    return [[f"w{r}" for r in row] for row in ranks]


def timed(run: Callable[[list[str]], object], sentences: list[list[str]]) -> np.ndarray:
    times = np.empty(len(sentences))
    for i, sentence in enumerate(sentences):
        started = time.perf_counter()
        run(sentence)
        times[i] = time.perf_counter() - started
    return times


def dynamodb_style(client: redis.Redis, version: str) -> Callable[[list[str]], np.ndarray]:
    prefix = keys.word_prefix(TABLE, version)

    def run(words: list[str]) -> np.ndarray:
        values: list[bytes | None] = []
        for start in range(0, len(words), DYNAMODB_BATCH):
            chunk = words[start : start + DYNAMODB_BATCH]
            values += client.mget([prefix + w.encode() for w in chunk])
        return np.frombuffer(b"".join(v for v in values if v is not None), "<f4")

    return run


def bench_loader(url: str, directory: Path, count: int, dim: int) -> None:
    path = directory / "vectors.bin"
    write_word2vec_bin(path, count, dim)
    size = path.stat().st_size / 1e6
    print(f"loader: {count:,} x {dim}-d float32 word2vec-bin ({size:.0f} MB)")
    started = time.perf_counter()
    with VectorReader(path, "word2vec-bin") as reader:
        for _ in reader.batches():
            pass
    parse = time.perf_counter() - started
    settings = EmbeddingSettings(url=url).for_loading()
    backend = open_backend(settings)
    client = redis.Redis.from_url(url)
    print(f"  parse only                        {count / parse:>10,.0f} vectors/s")
    try:
        server_cpu, client_cpu = _server_cpu(client), time.process_time()
        first = load_table(backend, TABLE, path, "word2vec-bin", grace=0)
        client_cpu = (time.process_time() - client_cpu) / count * 1e6
        server_cpu = (_server_cpu(client) - server_cpu) / count * 1e6
        # A reload writes while the old version still holds its memory, then drops it.
        again = load_table(backend, TABLE, path, "word2vec-bin", grace=0)
    finally:
        backend.close()
        client.close()
    print(f"  first load (parse, MSET+EXISTS, switch) {first.rate:>10,.0f} vectors/s")
    # Wall-clock figures move with whatever else runs on the machine; CPU per vector
    # moves much less, and bounds what two otherwise idle cores would reach.
    print(
        f"    CPU per vector: loader {client_cpu:.1f} µs, redis-server {server_cpu:.1f} µs"
        f" -> {1e6 / max(client_cpu, server_cpu):,.0f} vectors/s on two idle cores"
    )
    print(f"  reload                                  {again.rate:>10,.0f} vectors/s")
    print(f"    old version removed in {again.seconds - again.live_after:.1f} s after the switch")
    print("  target: 200,000 vectors/s")


def _server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def bench_lookup(url: str, vocab: int, requests: int) -> None:
    client = redis.Redis.from_url(url)
    version = client.get(keys.alias(TABLE)).decode()
    rows = []
    for length in (20, 500):
        n = requests if length == 20 else max(requests // 10, 50)
        warm = zipf_sentences(vocab, length, n, seed=2)
        sentences = zipf_sentences(vocab, length, n, seed=3)
        baseline = dynamodb_style(client, version)
        timed(baseline, warm[:50])
        rows.append((length, "dynamodb-style", timed(baseline, sentences), ""))
        for name, cache_size in (("kindling, cache off", 0), ("kindling, cache 10k", 10_000)):
            settings = EmbeddingSettings(url=url, cache_size=cache_size)
            with EmbeddingStore.from_settings(settings) as store:
                timed(lambda w, s=store: s.lookup(TABLE, w), warm)  # warm cache and pool
                store.cache.hits.values.clear()
                store.cache.misses.values.clear()
                times = timed(lambda w, s=store: s.lookup(TABLE, w), sentences)
                hit = f"cache hit rate {store.cache.hit_rate():.0%}" if cache_size else ""
                rows.append((length, name, times, hit))
                if length == 20 and cache_size:  # a sentence whose words are all cached
                    hot = [sentences[0]] * len(sentences)
                    times = timed(lambda w, s=store: s.lookup(TABLE, w), hot)
                    rows.append((length, "kindling, all cached", times, "no round trip"))
    client.close()
    base: dict[int, float] = {}
    print(f"\nlookup: Zipf(s={ZIPF_S}) words over a {vocab:,}-word table, local Redis")
    print(f"  {'words':>5}  {'method':<22}{'p50 µs':>9}{'p99 µs':>9}{'mean µs':>9}  speed-up")
    for length, name, times, note in rows:
        p50, p99, mean = (np.percentile(times, 50), np.percentile(times, 99), times.mean())
        base.setdefault(length, mean)
        print(
            f"  {length:>5}  {name:<22}{p50 * 1e6:>9.0f}{p99 * 1e6:>9.0f}{mean * 1e6:>9.0f}"
            f"  {base[length] / mean:>6.1f}x  {note}"
        )
    print("  (paper 000, DynamoDB BatchGetItem: 60-70% of 0.7 s = 420-490 ms per request)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis", metavar="URL", help="default: start a throwaway server")
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=300)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kindling-bench-") as tmp:
        directory = Path(tmp)
        server = None if args.redis else RedisServer(directory / "redis").start()
        try:
            url = args.redis or server.url  # type: ignore[union-attr]
            bench_loader(url, directory, args.vectors, args.dim)
            bench_lookup(url, args.vectors, args.requests)
        finally:
            if server:
                server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
