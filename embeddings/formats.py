"""Readers for the word-vector file formats, yielding batches of (words, float32 rows).

    word2vec-bin   "COUNT DIM\\n", then per word: word bytes, b" ", DIM little-endian
                   float32, and (in the original C tool's output, not gensim's) b"\\n"
    word2vec-text  "COUNT DIM\\n", then "word v1 ... vDIM\\n"
    fasttext-vec   the same as word2vec-text (fastText ends each line with a space)
    glove          "word v1 ... vDIM\\n" with no header; DIM comes from the first line

Any file may be gzip-compressed (detected by its magic bytes). Words stay bytes: they
become Redis keys as they are, so nothing is lost to a decode/encode round trip.

Per-vector Python work is kept to a few C-level calls (the loader's budget is ~5 µs a
vector for 200k vectors/s): the binary reader finds records in 8 MiB chunks with regex
calls (a record is fixed-size after its word) and hands on views of the vectors where
they lie; the text reader parses a whole batch of numbers with one numpy call and only
re-parses line by line to name the bad line when that call fails.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from kindling.errors import InvalidInput

FORMATS = ("word2vec-bin", "word2vec-text", "glove", "fasttext-vec")
_CHUNK = 8 << 20
# The longest word the binary reader accepts; GoogleNews phrases stay far below it, and
# without a bound a file in the wrong format would be scanned to its end for a space.
MAX_WORD_BYTES = 4096
_MAX_DIM = 65536


# A vector's bytes: a bytes object or a zero-copy view into a larger buffer.
Buffer = bytes | memoryview


class FormatError(InvalidInput):
    """The file is not valid in the format given; `line` is 1-based (a record for bin)."""

    def __init__(self, path: str | Path, line: int, message: str, unit: str = "line") -> None:
        super().__init__(f"{path}: {unit} {line}: {message}")
        self.line = line


class Batch:
    """Words and their vectors: `rows` holds one little-endian float32 buffer per word
    (for word2vec-bin, views into the file's bytes: no copy on the way to Redis), and
    `vectors` the same as a float32 matrix, built on first use."""

    __slots__ = ("_matrix", "dim", "rows", "words")

    def __init__(
        self, words: list[bytes], rows: list[Buffer], dim: int, matrix: np.ndarray | None = None
    ) -> None:
        self.words = words
        self.rows = rows
        self.dim = dim
        self._matrix = matrix

    @classmethod
    def from_matrix(cls, words: list[bytes], matrix: np.ndarray) -> Batch:
        return cls(words, row_views(matrix), matrix.shape[1], matrix)

    @property
    def vectors(self) -> np.ndarray:
        if self._matrix is None:
            data = np.frombuffer(b"".join(self.rows), "<f4")
            self._matrix = data.reshape(len(self.words), self.dim).astype(np.float32)
        return self._matrix


def row_views(matrix: np.ndarray) -> list[Buffer]:
    """One zero-copy bytes view per row of a C-contiguous matrix, in its dtype."""
    flat = memoryview(np.ascontiguousarray(matrix)).cast("B")
    size = matrix.shape[1] * matrix.itemsize
    return [flat[i : i + size] for i in range(0, len(flat), size)]


def _open(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(raw file for progress, decompressed stream)."""
    raw = open(path, "rb")
    if raw.peek(2)[:2] == b"\x1f\x8b":
        stream: BinaryIO = io.BufferedReader(gzip.GzipFile(fileobj=raw), _CHUNK)  # type: ignore[arg-type]
        return raw, stream
    return raw, raw


class VectorReader:
    """One open vector file. Use as a context manager; iterate `batches()` once."""

    def __init__(self, path: str | Path, fmt: str) -> None:
        if fmt not in FORMATS:
            raise InvalidInput(f"unknown format {fmt!r}: want one of {', '.join(FORMATS)}")
        self.path = Path(path)
        self.format = fmt
        try:
            self._raw, self._stream = _open(self.path)
        except OSError as exc:
            raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from exc
        self._size = os.fstat(self._raw.fileno()).st_size
        self.records = 0  # records read so far
        self.declared_count: int | None = None
        self.dim = 0
        self._first_line: bytes | None = None
        self._line = 0
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        if self.format != "glove":
            self._read_header()
            return
        self._first_line = self._read_first_data_line()
        if self._first_line is not None:
            self.dim = len(self._first_line.split()) - 1
            if self.dim <= 0:
                raise FormatError(self.path, self._line, "no vector after the word")

    def __enter__(self) -> VectorReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._stream.close()
        self._raw.close()

    @property
    def progress(self) -> float:
        """Fraction of the (compressed) file consumed."""
        return self._raw.tell() / self._size if self._size else 1.0

    def _read_header(self) -> None:
        line = self._stream.readline(256)
        self._line = 1
        fields = line.split()
        if len(fields) != 2 or not all(f.isdigit() for f in fields):
            raise FormatError(
                self.path, 1, f"want a header 'COUNT DIM' for {self.format}, got {line[:60]!r}"
            )
        self.declared_count, self.dim = int(fields[0]), int(fields[1])
        if not 0 < self.dim <= _MAX_DIM:
            raise FormatError(self.path, 1, f"dimension {self.dim} out of range")

    def _read_first_data_line(self) -> bytes | None:
        for line in self._stream:
            self._line += 1
            if line.strip():
                return line
        return None

    def batches(self, size: int = 4096) -> Generator[Batch, None, None]:
        if self.format == "word2vec-bin":
            yield from self._binary_batches(size)
        else:
            yield from self._text_batches(size)
        if self.declared_count is not None and self.records != self.declared_count:
            binary = self.format == "word2vec-bin"
            raise FormatError(
                self.path,
                self.records + 1 if binary else self._line,
                f"header declares {self.declared_count} vectors, file holds {self.records}",
                unit="record" if binary else "line",
            )

    # -- word2vec binary ---------------------------------------------------------------

    def _binary_batches(self, size: int) -> Iterator[Batch]:
        row = self.dim * 4
        # A record: an optional newline (C word2vec writes one after each vector, gensim
        # does not), the word, a space, then exactly `row` bytes of anything. `run`
        # finds how far records go on back to back; findall then lists their heads
        # ("\n?word ") in C, and the vectors are views into the chunk between them.
        sizes = (MAX_WORD_BYTES, row)
        head = re.compile(rb"(\n?[^ \n]{1,%d} ).{%d}" % sizes, re.DOTALL)
        run = re.compile(rb"(?:\n?[^ \n]{1,%d} .{%d})*" % sizes, re.DOTALL)
        buf = b""
        base = self._stream.tell()  # file offset of buf[0], for error messages
        eof = False
        while not eof:
            chunk = self._stream.read(_CHUNK)
            eof = not chunk
            buf = buf + chunk if buf else chunk
            end = run.match(buf).end()  # type: ignore[union-attr] - `*` always matches
            heads = head.findall(buf, 0, end)
            if heads:
                view = memoryview(buf)
                ends = np.cumsum(np.fromiter(map(len, heads), np.int64, len(heads)) + row)
                starts = (ends - row).tolist()
                for first in range(0, len(heads), size):
                    part = slice(first, first + size)
                    words = [h.strip(b"\n ") for h in heads[part]]
                    rows: list[Buffer] = [view[s : s + row] for s in starts[part]]
                    yield self._binary_batch(words, rows)
            buf = buf[end:]
            base += end
            if len(buf) > MAX_WORD_BYTES + 2 + row:
                self._bin_error(base, "not a word, a space and a vector")
        if buf.strip():
            self._bin_error(base, f"truncated: {len(buf)} bytes after the last full vector")

    def _binary_batch(self, words: list[bytes], rows: list[Buffer]) -> Batch:
        if self.declared_count is not None and self.records + len(words) > self.declared_count:
            self.records += len(words)
            raise FormatError(
                self.path,
                self.declared_count + 1,
                f"more vectors than the {self.declared_count} the header declares",
                unit="record",
            )
        self.records += len(words)
        return Batch(words, rows, self.dim)

    def _bin_error(self, offset: int, message: str) -> None:
        record = self.records + 1
        raise FormatError(self.path, record, f"{message} (byte {offset})", unit="record")

    # -- text formats ------------------------------------------------------------------

    def _text_batches(self, size: int) -> Iterator[Batch]:
        entries: list[tuple[int, bytes, bytes]] = []
        lines = self._stream
        if self._first_line is not None:
            self._line -= 1  # the loop below counts it again
            lines = _chain_first(self._first_line, self._stream)  # type: ignore[assignment]
        for line in lines:
            self._line += 1
            line = line.rstrip()
            if not line:
                continue
            word, _, rest = line.partition(b" ")
            entries.append((self._line, word, rest))
            if len(entries) == size:
                yield self._text_batch(entries)
                entries = []
        if entries:
            yield self._text_batch(entries)

    def _text_batch(self, entries: list[tuple[int, bytes, bytes]]) -> Batch:
        dim = self.dim
        for lineno, word, rest in entries:
            # One space between numbers is the norm; anything else gets the slow check.
            if rest.count(b" ") != dim - 1 and len(rest.split()) != dim:
                got = len(rest.split())
                raise FormatError(
                    self.path, lineno, f"{word[:40]!r} has {got} values, want dimension {dim}"
                )
        if self.declared_count is not None and self.records + len(entries) > self.declared_count:
            lineno = entries[self.declared_count - self.records][0]
            raise FormatError(
                self.path, lineno, f"more vectors than the {self.declared_count} declared"
            )
        try:
            flat = np.fromstring(b" ".join([e[2] for e in entries]), dtype=np.float32, sep=" ")
        except ValueError:
            flat = np.empty(0, np.float32)
        if flat.size != len(entries) * dim:
            for lineno, word, rest in entries:
                try:
                    ok = np.fromstring(rest, dtype=np.float32, sep=" ").size == dim
                except ValueError:
                    ok = False
                if not ok:
                    raise FormatError(
                        self.path, lineno, f"{word[:40]!r}: cannot read {dim} numbers"
                    )
            raise FormatError(self.path, entries[0][0], "cannot parse the vectors")
        self.records += len(entries)
        return Batch.from_matrix([e[1] for e in entries], flat.reshape(len(entries), dim))


def _chain_first(first: bytes, rest: BinaryIO) -> Iterator[bytes]:
    yield first
    yield from rest


def read_vocab(path: str | Path) -> set[bytes]:
    """Words to keep: the first field of each line (so "word count" files work too)."""
    try:
        raw, stream = _open(Path(path))
    except OSError as exc:
        raise InvalidInput(f"cannot read vocabulary {path}: {exc.strerror or exc}") from exc
    with raw, stream:
        return {fields[0] for fields in (line.split(None, 1) for line in stream) if fields}
