"""EmbeddingStore: the in-process lookup API the runtime and the HTTP service call.

    store = EmbeddingStore.from_settings(EmbeddingSettings.from_env(), registry)
    result = store.lookup("word2vec", ["the", "cat", "sat"])
    result.vectors  # float32 (3, dim), one row per word, OOV rows by the OOV policy
    result.oov      # indices of the words the table lacks

Paper 000 spent 60-70% of a 0.7 s request in DynamoDB BatchGetItem calls of at most
100 keys each, with no cache. Here a lookup deduplicates its words, answers what it can
from an LRU cache, and fetches the rest in one MGET (one pipelined MGET per slot on a
cluster) that also carries the version's sentinel key.

Consistency: a lookup reads the alias (or trusts the one it read less than alias_ttl
ago), then takes every vector from that one version — from the cache, keyed by version,
or from the MGET. If the MGET shows the version's sentinel gone (a reload deleted it),
the lookup re-reads the alias and starts over once. So it never mixes versions.

Failure: Redis errors become DependencyUnavailable (503) within
settings.fail_fast_bound. For `cooldown` seconds afterwards lookups that need Redis fail
at once rather than each waiting out the timeout, while lookups the cache can answer —
using the last alias seen — keep succeeding. Nothing needs a restart when Redis is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from kindling.embeddings.backend import Backend, Fetched, open_backend
from kindling.embeddings.cache import ABSENT, Entry, VectorCache
from kindling.embeddings.oov import oov_row
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.tables import TableMeta, TableNotFound, check_table_name
from kindling.errors import DependencyUnavailable, InvalidInput
from kindling.metrics import Registry

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LookupResult:
    vectors: np.ndarray  # float32 (len(words), dim)
    oov: list[int]  # indices into the request's words
    table: str
    version: str

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


class _VersionGone(Exception):
    """The version the alias named was deleted under this lookup."""


class EmbeddingStore:
    def __init__(
        self,
        backend: Backend,
        settings: EmbeddingSettings | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings or EmbeddingSettings()
        self.registry = registry or Registry()
        self.cache = VectorCache(self.settings.cache_size, self.registry)
        self._aliases: dict[str, tuple[str, float]] = {}  # table -> (version, read at)
        self._metas: dict[tuple[str, str], TableMeta] = {}
        self._down_until = 0.0
        self.lookups = self.registry.counter(
            "kindling_embeddings_lookups_total", "Lookup calls by outcome.", ["outcome"]
        )
        self.words = self.registry.counter(
            "kindling_embeddings_words_total", "Words looked up, by result.", ["result"]
        )
        self.retries = self.registry.counter(
            "kindling_embeddings_version_retries_total",
            "Lookups that found their version deleted by a reload and re-read the alias.",
        )
        self.latency = self.registry.histogram(
            "kindling_embeddings_lookup_seconds", "Time to answer one lookup call."
        )

    @classmethod
    def from_settings(
        cls, settings: EmbeddingSettings, registry: Registry | None = None
    ) -> EmbeddingStore:
        registry = registry or Registry()
        return cls(open_backend(settings, registry), settings, registry)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- health ----------------------------------------------------------------------

    def ping(self) -> None:
        self.backend.ping()

    def info(self, table: str) -> TableMeta:
        check_table_name(table)
        version = self._guarded(lambda: self.backend.resolve(table))
        meta = self._guarded(lambda: self.backend.meta(table, version)) if version else None
        if meta is None:
            raise TableNotFound(table)
        return meta

    def tables(self) -> list[str]:
        return self._guarded(self.backend.tables)

    def check_table(self, table: str) -> None:
        """Raise TableNotFound unless the table has a live version, DependencyUnavailable
        when the store cannot tell (Redis down). Trusts an alias read less than alias_ttl
        ago, as a lookup does: a readiness probe under traffic costs Redis nothing."""
        check_table_name(table)
        _, stale = self._resolve(table, refresh=False)
        if stale:
            raise DependencyUnavailable("embedding store unavailable; retry")

    # -- lookup ----------------------------------------------------------------------

    def lookup(self, table: str, words: Sequence[str]) -> LookupResult:
        started = time.perf_counter()
        outcome = "error"
        try:
            check_table_name(table)
            if len(words) > self.settings.max_words:
                raise InvalidInput(
                    f"{len(words)} words in one lookup; the limit is {self.settings.max_words}"
                )
            for attempt in range(2):
                version, stale = self._resolve(table, refresh=attempt > 0)
                try:
                    result = self._lookup_version(table, version, words, stale)
                except _VersionGone:
                    self._aliases.pop(table, None)
                    self.retries.inc()
                    continue
                outcome = "ok"
                return result
            raise DependencyUnavailable(f"table {table!r} is being reloaded; retry")
        except TableNotFound:
            outcome = "not_found"
            raise
        except DependencyUnavailable:
            outcome = "unavailable"
            raise
        finally:
            self.lookups.inc(outcome)
            self.latency.observe(time.perf_counter() - started)

    def _guarded(self, call: Callable[[], T]) -> T:
        """Call the backend unless it failed within `cooldown`; start a cooldown if it fails."""
        if time.monotonic() < self._down_until:
            raise DependencyUnavailable("embedding store unavailable (recent failure); retry")
        try:
            return call()
        except DependencyUnavailable:
            self._down_until = time.monotonic() + self.settings.cooldown
            raise

    def _resolve(self, table: str, refresh: bool) -> tuple[str, bool]:
        """(live version, stale): stale means the store is down and this is the last
        version seen, good only for answers the cache holds entirely."""
        known = self._aliases.get(table)
        now = time.monotonic()
        if known and not refresh and now - known[1] < self.settings.alias_ttl:
            return known[0], False
        try:
            version = self._guarded(lambda: self.backend.resolve(table))
        except DependencyUnavailable:
            if known and not refresh:
                return known[0], True
            raise
        if version is None:
            self._aliases.pop(table, None)
            raise TableNotFound(table)
        self._aliases[table] = (version, now)
        return version, False

    def _fetch(self, table: str, version: str, keys: list[bytes]) -> Fetched:
        """One MGET, or round trips of `round_trip_keys` keys for the baseline."""
        step = self.settings.round_trip_keys
        if not step or len(keys) <= step:
            return self.backend.fetch(table, version, keys)
        parts = [
            self.backend.fetch(table, version, keys[i : i + step])
            for i in range(0, len(keys), step)
        ]
        meta = parts[0].meta if all(p.meta is not None for p in parts) else None
        return Fetched(meta=meta, rows=[row for p in parts for row in p.rows])

    def _lookup_version(
        self, table: str, version: str, words: Sequence[str], stale: bool
    ) -> LookupResult:
        settings = self.settings
        types = set(map(type, words))  # one C-level pass instead of isinstance per word
        if not types <= {str} and not all(issubclass(t, str) for t in types):
            raise InvalidInput("words must be strings")
        unique = list(dict.fromkeys(words))
        wanted = unique
        unk = settings.unk_token if settings.oov == "unk" else None
        if unk is not None and unk not in wanted:
            wanted = [*unique, unk]
        entries = self.cache.get_many(table, version, wanted)
        meta = self._metas.get((table, version))
        missing = [i for i, entry in enumerate(entries) if entry is None]
        if missing or meta is None:
            if stale:
                raise DependencyUnavailable("embedding store unavailable; retry")
            keys = [wanted[i].encode() for i in missing]
            fetched = self._guarded(lambda: self._fetch(table, version, keys))
            if fetched.meta is None:
                raise _VersionGone
            meta = fetched.meta
            if len(self._metas) > 256:
                self._metas.clear()
            self._metas[(table, version)] = meta
            fresh: list[Entry] = [ABSENT if row is None else row for row in fetched.rows]
            for i, entry in zip(missing, fresh, strict=True):
                entries[i] = entry
            self.cache.put_many(
                table, version, [(wanted[i], e) for i, e in zip(missing, fresh, strict=True)]
            )

        dim = meta.dim
        unk_entry = entries[wanted.index(unk)] if unk is not None else None
        unk_row = unk_entry if isinstance(unk_entry, bytes) else None
        absent: set[str] = set()
        rows: list[bytes] = []
        for word, entry in zip(unique, entries, strict=False):  # entries may end with unk
            if isinstance(entry, bytes):
                rows.append(entry)
            else:
                absent.add(word)
                rows.append(oov_row(settings.oov, word, dim, unk_row))
        if len(unique) != len(words):
            row_of = dict(zip(unique, rows, strict=True))
            rows = [row_of[w] for w in words]
        # bytearray: the caller gets a writable array, assembled with one copy.
        vectors = np.frombuffer(bytearray().join(rows), "<f4").reshape(len(words), dim)
        oov = [i for i, w in enumerate(words) if w in absent] if absent else []
        self.words.inc("found", amount=len(words) - len(oov))
        self.words.inc("oov", amount=len(oov))
        return LookupResult(vectors, oov, table, version)
