"""The embedded store: word vectors in a local directory, memory-mapped with numpy.

A dev server needs no Redis: with no KINDLING_REDIS_URL the same EmbeddingStore runs
over this. The layout keeps Redis's versioning semantics:

    DIR/<table>/live -> <version>       symlink: the alias, swapped with one rename(2)
    DIR/<table>/<version>/meta.json     TableMeta
                         vectors.bin    rows in file order, raw little-endian dtype
                         words.bin      the words of those rows, concatenated
                         offsets.npy    uint64 (rows + 1): row r's word is
                                        words.bin[offsets[r]:offsets[r + 1]]
                         hashes.npy     uint64, sorted: blake2b-64 of each distinct word
                         index.npy      int64: the row holding the word of hashes[i]
    DIR/<table>/.tmp-<version>/         a load in progress, renamed whole when complete
    DIR/<table>/.lock                   flock(2) of the running loader

Opening a version maps its files and reads nothing else, so startup does not grow with
the vocabulary (3M GoogleNews words would take seconds to put in a dict). A lookup
hashes the words, binary-searches `hashes` in one numpy call, then checks each hit's
bytes so that a 64-bit collision can only cost an OOV, never a wrong vector. A version
deleted while open stays readable (the mapping pins the inode); one deleted before it
was opened reads as gone, and the reader re-resolves the alias.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import shutil
import threading
from array import array
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kindling.embeddings.backend import Fetched, LoadError, rows_as_float32
from kindling.embeddings.formats import Buffer
from kindling.embeddings.tables import TableMeta, is_version, new_version, version_sequence
from kindling.errors import DependencyUnavailable

LIVE = "live"


def word_hash(word: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(word, digest_size=8).digest(), "little")


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:  # numpy cannot map an empty array
        return np.load(path, allow_pickle=False)


class _OpenVersion:
    def __init__(self, directory: Path) -> None:
        self.meta = TableMeta.from_json((directory / "meta.json").read_bytes())
        self.hashes = _load_array(directory / "hashes.npy")
        self.index = _load_array(directory / "index.npy")
        self.offsets = _load_array(directory / "offsets.npy")
        rows = len(self.offsets) - 1
        dtype, dim = self.meta.numpy_dtype, self.meta.dim
        self.vectors = (
            np.memmap(directory / "vectors.bin", dtype=dtype, mode="r", shape=(rows, dim))
            if rows
            else np.empty((0, dim), dtype)
        )
        self._words = b""
        if self.offsets[-1]:
            with open(directory / "words.bin", "rb") as f:
                self._words = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def word(self, row: int) -> bytes:
        return self._words[int(self.offsets[row]) : int(self.offsets[row + 1])]

    def find(self, words: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(row per word, found per word)."""
        queries = np.fromiter((word_hash(w) for w in words), np.uint64, len(words))
        if not len(self.hashes):
            return np.zeros(len(words), np.int64), np.zeros(len(words), bool)
        pos = np.minimum(np.searchsorted(self.hashes, queries), len(self.hashes) - 1)
        found = self.hashes[pos] == queries
        rows = np.asarray(self.index[pos], np.int64)
        for i in np.flatnonzero(found):
            if self.word(rows[i]) != words[i]:
                found[i] = False
        return rows, found


class FileBackend:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._open: dict[tuple[str, str], _OpenVersion] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._open.clear()

    def ping(self) -> None:
        if self.root.exists() and not os.access(self.root, os.R_OK | os.X_OK):
            raise DependencyUnavailable(f"embeddings directory {self.root} is not readable")

    def _table_dir(self, table: str) -> Path:
        return self.root / table

    def resolve(self, table: str) -> str | None:
        try:
            return os.readlink(self._table_dir(table) / LIVE)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _version(self, table: str, version: str) -> _OpenVersion | None:
        key = (table, version)
        opened = self._open.get(key)
        if opened is None:
            try:
                opened = _OpenVersion(self._table_dir(table) / version)
            except FileNotFoundError:
                return None
            with self._lock:
                # Keep the newest two versions of each table mapped: the live one and
                # the one readers may still be finishing with after a switch.
                stale = sorted(k for k in self._open if k[0] == table)[:-1]
                for old in stale:
                    del self._open[old]
                self._open[key] = opened
        return opened

    def meta(self, table: str, version: str) -> TableMeta | None:
        opened = self._version(table, version)
        return opened.meta if opened else None

    def fetch(self, table: str, version: str, words: Sequence[bytes]) -> Fetched:
        opened = self._version(table, version)
        if opened is None:
            return Fetched(None, [])
        rows, found = opened.find(words)
        out: list[bytes | None] = [None] * len(words)
        hits = np.flatnonzero(found).tolist()
        if hits:
            for i, row in zip(hits, rows_as_float32(opened.vectors[rows[hits]]), strict=True):
                out[i] = row
        return Fetched(opened.meta, out)

    def tables(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / LIVE).is_symlink())

    def begin_load(self, table: str, lock_ttl: float = 30.0) -> FileVersionWriter:
        # lock_ttl is for Redis, where a crashed loader cannot release its lock; the
        # kernel drops an flock when its process dies.
        directory = self._table_dir(table)
        directory.mkdir(parents=True, exist_ok=True)
        lock = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise LoadError(f"another load of table {table!r} is running") from None
        sequences = [
            version_sequence(name.removeprefix(".tmp-"))
            for name in os.listdir(directory)
            if is_version(name.removeprefix(".tmp-"))
        ]
        version = new_version(max(sequences, default=0) + 1)
        return FileVersionWriter(directory, table, version, lock)

    def snapshot(self) -> None:
        """Nothing to do: every version is written to disk as it loads."""

    def drop_versions(self, table: str) -> list[str]:
        """Remove all but the live version, crashed loads' .tmp- directories included;
        call it only while holding the table's load lock."""
        directory = self._table_dir(table)
        live = self.resolve(table)
        dropped = []
        for name in sorted(os.listdir(directory)):
            if name.startswith(".live-"):  # a switch that crashed before its rename
                os.unlink(directory / name)
                continue
            version = name.removeprefix(".tmp-")
            if is_version(version) and name != live:
                shutil.rmtree(directory / name, ignore_errors=True)
                dropped.append(version)
        return dropped


class FileVersionWriter:
    def __init__(self, directory: Path, table: str, version: str, lock_fd: int) -> None:
        self.table = table
        self.version = version
        self._directory = directory
        self._lock_fd: int | None = lock_fd
        self._tmp = directory / f".tmp-{version}"
        self._tmp.mkdir()
        self._vectors = open(self._tmp / "vectors.bin", "wb")
        self._words = open(self._tmp / "words.bin", "wb")
        self._offsets = array("Q", [0])
        self._hashes = array("Q")
        self.written = 0

    def write(self, words: Sequence[bytes], rows: Sequence[Buffer]) -> None:
        self._vectors.writelines(rows)
        self._words.write(b"".join(words))
        end = self._offsets[-1]
        for word in words:
            end += len(word)
            self._offsets.append(end)
        self._hashes.extend(word_hash(w) for w in words)
        self.written += len(words)

    def _close_files(self) -> None:
        self._vectors.close()
        self._words.close()

    def commit(self, meta: TableMeta) -> None:
        self._close_files()
        hashes = np.frombuffer(self._hashes, np.uint64)
        order = np.lexsort((np.arange(len(hashes)), hashes))  # by hash, then row
        ordered = hashes[order]
        last = np.ones(len(order), bool)  # the last row of each word wins, as in Redis
        last[:-1] = ordered[1:] != ordered[:-1]
        offsets = np.frombuffer(self._offsets, np.uint64)
        if not last.all():
            with open(self._tmp / "words.bin", "rb") as f:
                blob = f.read()
            for i in np.flatnonzero(~last):
                a, b = int(order[i]), int(order[i + 1])
                if blob[offsets[a] : offsets[a + 1]] != blob[offsets[b] : offsets[b + 1]]:
                    raise LoadError(f"64-bit hash collision in table {self.table!r}; rename a word")
        if int(last.sum()) != meta.count:
            raise LoadError(
                f"table {self.table!r} version {self.version}: index holds {int(last.sum())} "
                f"words, the file had {meta.count} distinct words"
            )
        np.save(self._tmp / "hashes.npy", ordered[last])
        np.save(self._tmp / "index.npy", order[last].astype(np.int64))
        np.save(self._tmp / "offsets.npy", offsets)
        (self._tmp / "meta.json").write_bytes(meta.to_json())
        final = self._directory / self.version
        os.rename(self._tmp, final)
        # The switch: a new symlink renamed over the old one, atomic by rename(2).
        link = self._directory / f".live-{self.version}"
        os.symlink(self.version, link)
        os.replace(link, self._directory / LIVE)

    def abort(self) -> None:
        self._close_files()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def close(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
