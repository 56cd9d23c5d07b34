"""The text the request kinds send: shipped sentences and question/answer pairs.

`corpus/reviews.txt` (movie-review sentences, the register of the Stanford Sentiment
Treebank that Kim CNN classifies in paper 000) and `corpus/qa_pairs.tsv` (TrecQA-shaped
question/answer pairs for SM CNN) were written for Kindling: original text, shipped under
the project's license; `corpus/SOURCES.md` says so. Natural text has Zipf-like word
frequencies, which is what makes a word-vector cache (paper 000 fetched vectors from
DynamoDB, 60-70 % of its latency) hit or miss as it would in production;
`rank_frequency_slope` measures it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import numpy as np

# resolve(): the editable install's link tree holds only modules; the text lives in the
# source tree beside this file.
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
REVIEWS = CORPUS_DIR / "reviews.txt"
QA_PAIRS = CORPUS_DIR / "qa_pairs.tsv"

# Lowercased words with inner apostrophes, as Kim's clean_str splits them closely enough.
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


@cache
def sentences() -> tuple[str, ...]:
    return tuple(_lines(REVIEWS))


@cache
def pairs() -> tuple[tuple[str, str], ...]:
    out = []
    for line in _lines(QA_PAIRS):
        question, answer = line.split("\t")
        out.append((question, answer))
    return tuple(out)


def all_text() -> list[str]:
    return [*sentences(), *(s for pair in pairs() for s in pair)]


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def rank_frequency(texts: Iterable[str]) -> np.ndarray:
    """Word counts, most frequent first."""
    counts = Counter(w for text in texts for w in words(text))
    return np.array(sorted(counts.values(), reverse=True), dtype=float)


def rank_frequency_slope(texts: Iterable[str], top: int = 200) -> float:
    """Least-squares slope of log(frequency) on log(rank) over the `top` ranks.

    Zipf's law predicts about -1 for natural text; uniform random words give ~0. The top
    ranks are used because the tail of a small corpus is flattened by words seen once.
    """
    freq = rank_frequency(texts)[:top]
    ranks = np.arange(1, len(freq) + 1, dtype=float)
    slope, _ = np.polyfit(np.log(ranks), np.log(freq), 1)
    return float(slope)
