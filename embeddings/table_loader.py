"""Load a vector file into a store as a new version of a table, then make it live.

Idempotent: a rerun writes the same words and vectors into a fresh version, switches to
it and removes the previous one (and any version a crashed load left behind), so the
store ends in the same state. Nothing a load does is visible to readers until the
count has been verified and the alias switched; any failure before that deletes the
partial version and leaves the live one serving.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from array import array
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kindling.embeddings.backend import Backend, LoadError
from kindling.embeddings.formats import Batch, VectorReader, row_views
from kindling.embeddings.progress import Progress
from kindling.embeddings.tables import DTYPES, TableMeta, check_table_name
from kindling.errors import InvalidInput

# 4096 300-d float32 vectors make ~5 MB MSETs: big enough that per-command costs vanish,
# small enough not to stall other Redis clients for more than a few milliseconds.
BATCH_SIZE = 4096
# Readers trust a cached alias for EmbeddingSettings.alias_ttl (1 s by default); the old
# version must outlive that, plus the slowest in-flight lookup.
GRACE_SECONDS = 5.0


def prefetch(batches: Iterator[Batch], depth: int = 2) -> Generator[Batch, None, None]:
    """Read and parse in a thread while the caller writes. The writer spends its time in
    socket calls that release the GIL, and gzip inflates without it, so parsing the next
    batch overlaps with Redis swallowing the last one."""
    handoff: queue.Queue[Batch | BaseException | None] = queue.Queue(depth)
    stop = threading.Event()

    def offer(item: Batch | BaseException | None) -> bool:
        while not stop.is_set():  # the consumer may have gone: never block for good
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not offer(batch):
                    return
            offer(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            offer(exc)

    thread = threading.Thread(target=produce, name="embeddings-reader", daemon=True)
    thread.start()
    try:
        while (item := handoff.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class DimensionMismatch(InvalidInput):
    """The file's dimension differs from the live table's: models built on it would break."""


@dataclass(slots=True)
class LoadReport:
    table: str
    version: str
    dim: int
    dtype: str
    count: int  # distinct words stored
    records: int  # vectors read from the file
    skipped: int  # left out by --vocab
    live_after: float  # seconds from start until the new version was live
    seconds: float  # including the grace period and removing old versions
    dropped: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Vectors per second until the switch: the load's throughput."""
        return self.records / self.live_after if self.live_after else 0.0


def load_table(
    backend: Backend,
    table: str,
    path: str | Path,
    fmt: str,
    *,
    dtype: str = "float32",
    vocab: set[bytes] | None = None,
    batch_size: int = BATCH_SIZE,
    allow_dim_change: bool = False,
    grace: float = GRACE_SECONDS,
    lock_ttl: float = 30.0,
    progress: Progress | None = None,
    on_batch: Callable[[int], None] | None = None,
    parallel: bool = True,
) -> LoadReport:
    check_table_name(table)
    if dtype not in DTYPES:
        raise InvalidInput(f"unknown dtype {dtype!r}: want one of {DTYPES}")
    started = time.monotonic()
    path = Path(path)
    with VectorReader(path, fmt) as reader:
        live_version = backend.resolve(table)
        live = backend.meta(table, live_version) if live_version else None
        if live and reader.dim and live.dim != reader.dim and not allow_dim_change:
            raise DimensionMismatch(
                f"{path} has dimension {reader.dim}, live table {table!r} has {live.dim}; "
                "refusing to replace it (pass --allow-dim-change if that is intended)"
            )
        writer = backend.begin_load(table, lock_ttl)
        try:
            # Python's hash() is salted per process, which is fine for counting distinct
            # words within one load; 64 bits make a collision (a false count mismatch)
            # vanishingly unlikely, and it costs 8 bytes a word instead of a set of words.
            hashes = array("q")
            skipped = 0
            source = reader.batches(batch_size)
            stream = prefetch(source) if parallel else source
            # closing: on an error, stop the reader thread before the file is closed
            with contextlib.closing(stream):
                for batch in stream:
                    words, rows = batch.words, batch.rows
                    if vocab is not None:
                        keep = [i for i, w in enumerate(words) if w in vocab]
                        skipped += len(words) - len(keep)
                        if len(keep) < len(words):
                            words, rows = [words[i] for i in keep], [rows[i] for i in keep]
                    if dtype == "float16" and words:
                        matrix = np.frombuffer(b"".join(rows), "<f4").reshape(len(words), -1)
                        rows = row_views(matrix.astype("<f2"))
                    writer.write(words, rows)
                    hashes.extend(map(hash, words))
                    if progress:
                        progress.update(reader.progress, reader.records)
                    if on_batch:
                        on_batch(reader.records)
            ordered = np.sort(np.frombuffer(hashes, np.int64))
            count = int(len(ordered) and 1 + np.count_nonzero(ordered[1:] != ordered[:-1]))
            if not count:
                where = " within --vocab" if vocab is not None else ""
                raise LoadError(f"no vectors to load from {path}{where}")
            source = f"{path.name} ({fmt})"
            meta = TableMeta(table, writer.version, reader.dim, dtype, count, source)
            writer.commit(meta)
            live_after = time.monotonic() - started
        except BaseException:
            writer.abort()
            writer.close()
            raise
        if progress:
            progress.done(reader.records)
        try:
            if grace:
                time.sleep(grace)
            dropped = backend.drop_versions(table)
        finally:
            writer.close()
    return LoadReport(
        table=table,
        version=writer.version,
        dim=reader.dim,
        dtype=dtype,
        count=count,
        records=reader.records,
        skipped=skipped,
        live_after=live_after,
        seconds=time.monotonic() - started,
        dropped=dropped,
    )
