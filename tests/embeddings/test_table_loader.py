"""Loading into Redis and into the file store: bit-exact round trips, versioning,
idempotency, and refusing bad input without touching the live table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from kindling.embeddings import keys
from kindling.embeddings.backend import Backend, LoadError
from kindling.embeddings.formats import FormatError
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.store import EmbeddingStore
from kindling.embeddings.table_loader import DimensionMismatch, load_table
from tests.embeddings.helpers import WORDS, make_vectors, write_gensim, write_text

pytestmark = pytest.mark.integration


def lookup_all(url: str, table: str, words: list[str]) -> tuple[np.ndarray, list[int], str]:
    with EmbeddingStore.from_settings(EmbeddingSettings(url=url, alias_ttl=0)) as store:
        result = store.lookup(table, words)
    return result.vectors, result.oov, result.version


@pytest.mark.parametrize(
    ("fmt", "write"),
    [
        ("word2vec-bin", lambda p, w, v: write_gensim(p / "v.bin", w, v, binary=True)),
        ("word2vec-bin", lambda p, w, v: write_gensim(p / "v.bin", w, v, binary=True, gz=True)),
        ("word2vec-text", lambda p, w, v: write_gensim(p / "v.txt", w, v, binary=False)),
        ("glove", lambda p, w, v: write_text(p / "g.txt", w, v, header=False)),
        ("fasttext-vec", lambda p, w, v: write_text(p / "f.vec", w, v, header=True)),
    ],
)
def test_load_then_lookup_is_bit_exact(
    store_url: str,
    open_store_backend: Callable[[str], Backend],
    table: str,
    tmp_path: Path,
    fmt: str,
    write: Callable[[Path, list[str], np.ndarray], Path],
):
    vectors = make_vectors(WORDS, 6)
    path = write(tmp_path, WORDS, vectors)
    report = load_table(open_store_backend(store_url), table, path, fmt, grace=0)
    assert (report.count, report.dim, report.records) == (len(WORDS), 6, len(WORDS))
    got, oov, version = lookup_all(store_url, table, [*WORDS, "missing"])
    assert version == report.version
    assert got[: len(WORDS)].tobytes() == vectors.tobytes()
    assert oov == [len(WORDS)]


def test_float16_and_vocab(
    store_url: str, open_store_backend: Callable[[str], Backend], table: str, tmp_path: Path
):
    vectors = make_vectors(WORDS, 4)
    path = write_gensim(tmp_path / "v.bin", WORDS, vectors, binary=True)
    report = load_table(
        open_store_backend(store_url),
        table,
        path,
        "word2vec-bin",
        dtype="float16",
        vocab={b"cat", "東京".encode(), b"not-in-file"},
        grace=0,
    )
    assert (report.count, report.skipped, report.dtype) == (2, len(WORDS) - 2, "float16")
    got, oov, _ = lookup_all(store_url, table, ["cat", "東京", "the"])
    expected = vectors[[WORDS.index("cat"), WORDS.index("東京")]].astype(np.float16)
    assert got.dtype == np.float32
    assert got[:2].tobytes() == expected.astype(np.float32).tobytes()
    assert oov == [2]


def test_reload_is_idempotent_and_removes_the_old_version(
    redis_url: str, open_store_backend: Callable[[str], Backend], table: str, tmp_path: Path
):
    backend = open_store_backend(redis_url)
    vectors = make_vectors(WORDS, 5)
    path = write_gensim(tmp_path / "v.bin", WORDS, vectors, binary=True)
    first = load_table(backend, table, path, "word2vec-bin", grace=0)
    # A crashed load: words written, never committed, lock released.
    crashed = backend.begin_load(table)
    crashed.write([b"junk"], [bytes(20)])
    crashed.close()
    second = load_table(backend, table, path, "word2vec-bin", grace=0)
    assert second.version != first.version
    assert sorted(second.dropped) == sorted([first.version, crashed.version])
    client = redis.Redis.from_url(redis_url)
    try:
        left = set(client.scan_iter(match=keys.word_prefix(table, "*") + b"*"))
        assert len(left) == len(WORDS)
        assert all(k.startswith(keys.word_prefix(table, second.version)) for k in left)
        assert client.smembers(keys.versions(table)) == {second.version.encode()}
    finally:
        client.close()
    got, _, _ = lookup_all(redis_url, table, WORDS)
    assert got.tobytes() == vectors.tobytes()


def test_file_store_reload_leaves_one_version(
    open_store_backend: Callable[[str], Backend], table: str, tmp_path: Path
):
    url = f"file://{tmp_path / 'store'}"
    path = write_gensim(tmp_path / "v.bin", WORDS, make_vectors(WORDS, 3), binary=True)
    backend = open_store_backend(url)
    first = load_table(backend, table, path, "word2vec-bin", grace=0)
    second = load_table(backend, table, path, "word2vec-bin", grace=0)
    assert second.dropped == [first.version]
    entries = sorted(p.name for p in (tmp_path / "store" / table).iterdir())
    assert entries == [".lock", second.version, "live"]


@pytest.mark.parametrize("problem", ["malformed", "dimension"])
def test_bad_file_leaves_the_live_table_untouched(
    store_url: str,
    open_store_backend: Callable[[str], Backend],
    table: str,
    tmp_path: Path,
    problem: str,
):
    backend = open_store_backend(store_url)
    vectors = make_vectors(WORDS, 3)
    good = write_gensim(tmp_path / "v.txt", WORDS, vectors, binary=False)
    live = load_table(backend, table, good, "word2vec-text", grace=0)
    if problem == "malformed":
        bad = tmp_path / "bad.txt"
        bad.write_text("3 3\nthe 1 2 3\ncat 1 2 3\nsat 1 oops 3\n")
        with pytest.raises(FormatError, match="line 4"):
            load_table(backend, table, bad, "word2vec-text", grace=0)
    else:
        bad = write_gensim(tmp_path / "wide.txt", WORDS, make_vectors(WORDS, 4), binary=False)
        with pytest.raises(DimensionMismatch, match=r"dimension 4, live table .* has 3"):
            load_table(backend, table, bad, "word2vec-text", grace=0)
    assert backend.resolve(table) == live.version
    got, oov, version = lookup_all(store_url, table, WORDS)
    assert (version, oov) == (live.version, [])
    assert got.tobytes() == vectors.tobytes()
    # Nothing of the refused load is left behind either.
    assert backend.drop_versions(table) == []


def test_concurrent_loads_of_one_table_are_refused(
    store_url: str, open_store_backend: Callable[[str], Backend], table: str, tmp_path: Path
):
    backend = open_store_backend(store_url)
    path = write_gensim(tmp_path / "v.bin", WORDS, make_vectors(WORDS, 3), binary=True)
    holder = backend.begin_load(table)
    try:
        with pytest.raises(LoadError, match="another load"):
            load_table(backend, table, path, "word2vec-bin", grace=0)
    finally:
        holder.abort()
        holder.close()
    load_table(backend, table, path, "word2vec-bin", grace=0)
