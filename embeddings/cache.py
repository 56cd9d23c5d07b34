"""A bounded, thread-safe LRU cache of vectors (float32 bytes), keyed by (table, version, word).

Versions are immutable, so an entry never goes stale: a reload makes a new version and
the old entries simply age out. That also makes negative caching safe — a word missing
from a version stays missing — so OOV words are cached (as ABSENT) like any other.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from kindling.metrics import Registry

CacheKey = tuple[str, str, str]  # (table, version, word)


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()
Entry = bytes | _Absent  # a row as little-endian float32 bytes, or the word is absent


class VectorCache:
    def __init__(self, capacity: int, registry: Registry) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[CacheKey, Entry] = OrderedDict()
        # One lock per batch of keys, not per key: a lookup touches all its words at once.
        self._lock = threading.Lock()
        self.hits = registry.counter(
            "kindling_embeddings_cache_hits_total", "Word lookups answered by the cache."
        )
        self.misses = registry.counter(
            "kindling_embeddings_cache_misses_total", "Word lookups that went to the store."
        )
        self.size = registry.gauge(
            "kindling_embeddings_cache_entries", "Vectors held in the in-process cache."
        )

    def get_many(self, table: str, version: str, words: Sequence[str]) -> list[Entry | None]:
        """The cached entry per word, or None where the store must be asked."""
        if not self.capacity:
            with self._lock:
                self.misses.inc(amount=len(words))
            return [None] * len(words)
        keys = [(table, version, word) for word in words]
        entries = self._entries
        touch = entries.move_to_end
        with self._lock:
            found = list(map(entries.get, keys))
            for key, entry in zip(keys, found, strict=True):
                if entry is not None:
                    touch(key)
            misses = found.count(None)
            self.hits.inc(amount=len(words) - misses)
            self.misses.inc(amount=misses)
        return found

    def put_many(self, table: str, version: str, items: Sequence[tuple[str, Entry]]) -> None:
        if not self.capacity:
            return
        entries = self._entries
        with self._lock:
            # New keys go to the MRU end; a key two lookups fetched at once stays put.
            entries.update(((table, version, word), entry) for word, entry in items)
            while len(entries) > self.capacity:
                entries.popitem(last=False)
            self.size.set(value=len(entries))

    def hit_rate(self) -> float:
        hits, misses = self.hits.get(), self.misses.get()
        return hits / (hits + misses) if hits + misses else 0.0

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.size.set(value=0)
