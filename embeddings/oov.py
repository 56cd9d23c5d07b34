"""Vectors for out-of-vocabulary words.

Paper 000 drew a fresh random vector for each unknown word on every request, so the
same sentence could classify differently twice in a row. The "random" policy here is a
pure function of the word: seeded by blake2b of its UTF-8 bytes (Python's hash() is
salted per process), drawn from PCG64's raw stream (NumPy keeps bit-generator streams
stable across releases, unlike its distribution methods), and scaled to U[-0.25, 0.25],
the range Kim (2014) used for words missing from word2vec.
"""

from __future__ import annotations

import hashlib

import numpy as np

from kindling.embeddings.settings import OOVPolicy

RANDOM_SCALE = 0.25


def random_vector(word: str, dim: int) -> np.ndarray:
    digest = hashlib.blake2b(word.encode(), digest_size=16, person=b"kindling-oov").digest()
    raw = np.random.PCG64(int.from_bytes(digest, "little")).random_raw(dim)
    unit = (raw >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))  # [0, 1)
    return ((unit * 2.0 - 1.0) * RANDOM_SCALE).astype(np.float32)


def oov_row(policy: OOVPolicy, word: str, dim: int, unk: bytes | None) -> bytes:
    """The row (float32 bytes) for a word the table lacks; "unk" falls back to zeros if
    the table has no <unk> either."""
    if policy == "random":
        return random_vector(word, dim).astype("<f4").tobytes()
    if policy == "unk" and unk is not None:
        return unk
    return bytes(4 * dim)
