"""Vector files for the tests, written by gensim where it can: an independent writer of
the word2vec formats, so the readers are not only checked against themselves."""

from __future__ import annotations

import gzip
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kindling.embeddings.backend import open_backend
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.table_loader import LoadReport, load_table

WORDS = ["the", "cat", "sat", "on", "mat", "café", "naïve", "東京", "{tag}", "a{b}c", "<unk>"]


def make_vectors(words: Sequence[str], dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((len(words), dim)).astype(np.float32)


def write_gensim(
    path: Path, words: Sequence[str], vectors: np.ndarray, binary: bool, gz: bool = False
) -> Path:
    """Write with gensim's KeyedVectors.save_word2vec_format."""
    with warnings.catch_warnings():
        # gensim and its dependencies warn about their own dependencies on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from gensim.models import KeyedVectors

    kv = KeyedVectors(vectors.shape[1], dtype=np.float32)
    kv.add_vectors(list(words), vectors)
    kv.save_word2vec_format(str(path), binary=binary)
    if gz:
        gz_path = path.with_name(path.name + ".gz")
        gz_path.write_bytes(gzip.compress(path.read_bytes()))
        return gz_path
    return path


def write_text(path: Path, words: Sequence[str], vectors: np.ndarray, header: bool) -> Path:
    """glove (no header) or fasttext .vec (header, and a space before each newline)."""
    lines = [f"{len(words)} {vectors.shape[1]}\n"] if header else []
    tail = " \n" if header else "\n"
    for word, row in zip(words, vectors, strict=True):
        lines.append(f"{word} {' '.join(str(v) for v in row)}{tail}")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def load_file(
    settings: EmbeddingSettings, table: str, path: Path, fmt: str = "word2vec-bin"
) -> LoadReport:
    """Load a vector file into the store `settings` names (live at once, no grace period)."""
    backend = open_backend(settings.for_loading())
    try:
        return load_table(backend, table, path, fmt, grace=0)
    finally:
        backend.close()
