"""What a vector store does, whichever it is (Redis, Redis Cluster, a local directory).

The lookup layer talks to `Backend`; the loader to `Backend.begin_load` and the
`VersionWriter` it returns. Both stores keep the same semantics: a load writes a new
version beside the live one, `commit` verifies it and then moves the alias in one atomic
step, and `drop_versions` removes the rest afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kindling.embeddings.formats import Buffer
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.tables import TableMeta
from kindling.errors import KindlingError
from kindling.metrics import Registry


class LoadError(KindlingError):
    """A load could not finish; the live version was left as it was."""


@dataclass(slots=True)
class Fetched:
    meta: TableMeta | None  # None: the version is gone (deleted under the reader)
    # Per word: its vector as little-endian float32 bytes, or None if the table lacks it.
    # Bytes rather than arrays: a float32 value from Redis is already this, the cache
    # keeps them at a third of an ndarray's overhead, and a lookup assembles its result
    # with a single join instead of a row copy per word.
    rows: list[bytes | None]


def rows_as_float32(values: np.ndarray) -> list[bytes]:
    """Split a (n, dim) matrix of any float dtype into per-row float32 bytes."""
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    size = values.shape[1] * 4
    return [data[i : i + size] for i in range(0, len(data), size)]


class VersionWriter(Protocol):
    table: str
    version: str

    def write(self, words: Sequence[bytes], rows: Sequence[Buffer]) -> None:
        """Store one row per word, already in the storage dtype (little-endian bytes)."""

    def commit(self, meta: TableMeta) -> None:
        """Check the version holds meta.count words, then make it the live one."""

    def abort(self) -> None:
        """Best effort: delete what was written. The live version is never touched."""

    def close(self) -> None:
        """Release the table's load lock."""


class Backend(Protocol):
    def resolve(self, table: str) -> str | None:
        """The live version of a table, or None if it has none."""

    def fetch(self, table: str, version: str, words: Sequence[bytes]) -> Fetched:
        """The words' vectors in one round trip, with the version's metadata."""

    def meta(self, table: str, version: str) -> TableMeta | None: ...

    def tables(self) -> list[str]: ...

    def ping(self) -> None:
        """Raise DependencyUnavailable unless the store answers."""

    def begin_load(self, table: str, lock_ttl: float = 30.0) -> VersionWriter: ...

    def drop_versions(self, table: str) -> list[str]:
        """Delete every version but the live one; return the ids removed."""

    def snapshot(self) -> None:
        """Ask the store to persist what it holds now, in the background (Redis: BGSAVE on
        every primary); KindlingError when it refuses. A file store is already on disk."""

    def close(self) -> None: ...


def open_backend(settings: EmbeddingSettings, registry: Registry | None = None) -> Backend:
    """The store named by settings.url; Redis is imported only when used (cold start)."""
    location = settings.location
    if location.kind == "file":
        from kindling.embeddings.backend_file import FileBackend

        return FileBackend(location.path)
    from kindling.embeddings.backend_redis import RedisBackend

    return RedisBackend(
        location,
        connect_timeout=settings.connect_timeout,
        socket_timeout=settings.socket_timeout,
        retries=settings.retries,
        backoff=settings.backoff,
        registry=registry,
    )
