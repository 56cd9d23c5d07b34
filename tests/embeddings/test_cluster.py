"""Redis Cluster: a table's keys spread over all nodes, and a lookup groups its keys per
slot into MGETs sent through one cluster pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from kindling.embeddings import keys
from kindling.embeddings.backend_redis import group_by_slot
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.store import EmbeddingStore
from tests.embeddings.conftest import Cluster
from tests.embeddings.helpers import WORDS, load_file, make_vectors, write_gensim

pytestmark = pytest.mark.integration

VOCAB = [*WORDS, *(f"w{i}" for i in range(300))]


def mget_calls(port: int) -> int:
    client = redis.Redis(port=port)
    try:
        return int(client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))
    finally:
        client.close()


def test_cluster_load_and_lookup(redis_cluster: Cluster, table: str, tmp_path: Path):
    vectors = make_vectors(VOCAB, 8)
    path = write_gensim(tmp_path / "v.bin", VOCAB, vectors, binary=True)
    settings = EmbeddingSettings(url=redis_cluster.url, alias_ttl=60)
    report = load_file(settings, table, path)
    assert report.count == len(VOCAB)

    # No hash tag pins the table to one slot: every node holds a share of it.
    pattern = keys.word_prefix(table, report.version) + b"*"
    per_node = []
    for node in redis_cluster.nodes:
        client = redis.Redis(port=node.port)
        try:
            per_node.append(sum(1 for _ in client.scan_iter(match=pattern, count=1000)))
        finally:
            client.close()
    assert sum(per_node) == len(VOCAB)
    assert all(n > len(VOCAB) // 6 for n in per_node), per_node

    sentence = ["the", "{tag}", "a{b}c", "東京", *(f"w{i}" for i in range(16)), "zzz"]
    before = [mget_calls(n.port) for n in redis_cluster.nodes]
    with EmbeddingStore.from_settings(settings.replace(cache_size=0)) as store:
        store.lookup(table, ["w0"])  # learns the alias and the cluster's slot map
        warmup = store.backend.mget_commands.get()  # type: ignore[attr-defined]
        result = store.lookup(table, sentence)
        commands_after = store.backend.mget_commands.get()  # type: ignore[attr-defined]
    expected = [VOCAB.index(w) for w in sentence[:-1]]
    assert result.vectors[:-1].tobytes() == vectors[expected].tobytes()
    assert result.oov == [len(sentence) - 1]
    # One MGET per distinct slot (the version's meta key included), none per word...
    lookup_keys = [keys.meta(table, report.version)] + [
        keys.word_prefix(table, report.version) + w.encode() for w in sentence
    ]
    slots = {key_slot(k) for k in lookup_keys}
    assert len(group_by_slot(lookup_keys)) == len(slots) > 3
    assert commands_after - warmup == len(slots)
    # ...and every node served some of them.
    after = [mget_calls(n.port) for n in redis_cluster.nodes]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
