"""The alias switch is atomic: a reader hammering lookups while tables are reloaded (and
old versions deleted at once, grace 0) never sees two versions mixed, a missing table,
or a word go missing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kindling.embeddings.backend import Backend
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.store import EmbeddingStore
from kindling.embeddings.table_loader import load_table
from tests.embeddings.helpers import write_gensim

pytestmark = pytest.mark.integration

WORDS = [f"w{i}" for i in range(1500)]


@pytest.mark.parametrize("cache_size", [0, 200])
def test_reader_never_sees_a_half_switched_table(
    store_url: str,
    open_store_backend: Callable[[str], Backend],
    table: str,
    tmp_path: Path,
    cache_size: int,
):
    # Every vector of file k is filled with k, so one lookup shows which versions it saw.
    files = [
        write_gensim(tmp_path / f"{k}.bin", WORDS, np.full((len(WORDS), 8), k, np.float32), True)
        for k in (1, 2)
    ]
    backend = open_store_backend(store_url)
    load_table(backend, table, files[0], "word2vec-bin", grace=0)
    settings = EmbeddingSettings(url=store_url, alias_ttl=0, cache_size=cache_size)
    stop = threading.Event()
    seen: list[set[float]] = []
    retries: list[float] = []
    errors: list[BaseException] = []
    progress = threading.Condition()
    rng = np.random.default_rng(0)
    sentences = [list(rng.choice(WORDS, 40)) for _ in range(64)]

    def read() -> None:
        with EmbeddingStore.from_settings(settings) as store:
            i = 0
            while not stop.is_set():
                try:
                    result = store.lookup(table, sentences[i % len(sentences)])
                    assert result.oov == [], f"words went missing: {result.oov}"
                    values = set(np.unique(result.vectors).tolist())
                except BaseException as exc:
                    errors.append(exc)
                    values = set()
                with progress:
                    if values:
                        seen.append(values)
                    progress.notify_all()
                if errors:
                    return
                i += 1
            retries.append(store.retries.get())

    def two_more_lookups() -> None:
        """Until the reader has finished two lookups more: the second began after this
        call, so it saw the version loaded before it, however the threads are scheduled."""
        with progress:
            target = len(seen) + 2
            assert progress.wait_for(lambda: len(seen) >= target or errors, 60), "reader hung"

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for k in (1, 0) * 4:
            load_table(backend, table, files[k], "word2vec-bin", grace=0)
            two_more_lookups()
    finally:
        stop.set()
        reader.join()
    assert not errors, errors[0]
    assert len(seen) >= 16
    assert all(len(values) == 1 for values in seen), "a lookup mixed two versions"
    assert {1.0, 2.0} <= set().union(*seen)
    print(f"{len(seen)} lookups, {retries[0]:.0f} raced a deleted version and retried")


def test_lookup_racing_a_deletion_rereads_the_alias(
    store_url: str, open_store_backend: Callable[[str], Backend], table: str, tmp_path: Path
):
    """Deterministic version of the race above: the reload, with the old version's
    deletion, lands between the lookup's alias read and its fetch."""
    files = [
        write_gensim(tmp_path / f"{k}.bin", WORDS, np.full((len(WORDS), 8), k, np.float32), True)
        for k in (1, 2)
    ]
    backend = open_store_backend(store_url)
    old = load_table(backend, table, files[0], "word2vec-bin", grace=0)
    settings = EmbeddingSettings(url=store_url, alias_ttl=0)
    with EmbeddingStore.from_settings(settings) as store:
        real_fetch = store.backend.fetch
        calls: list[str] = []

        def fetch_after_reload(t: str, version: str, words: list[bytes]) -> object:
            calls.append(version)
            if len(calls) == 1:
                load_table(backend, table, files[1], "word2vec-bin", grace=0)
            return real_fetch(t, version, words)

        store.backend.fetch = fetch_after_reload  # type: ignore[method-assign]
        result = store.lookup(table, ["w1", "w2"])
    assert calls[0] == old.version != calls[1] == result.version
    assert store.retries.get() == 1
    assert set(result.vectors.ravel().tolist()) == {2.0}
