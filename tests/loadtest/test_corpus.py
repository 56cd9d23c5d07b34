"""The shipped corpus: realistic sentences with Zipf-like word frequencies."""

from __future__ import annotations

import numpy as np

from kindling.loadtest import corpus


def test_corpus_has_hundreds_of_lines_and_says_where_they_come_from():
    assert len(corpus.sentences()) >= 150
    assert len(corpus.pairs()) >= 80
    assert all(q.endswith("?") and a for q, a in corpus.pairs())
    sources = (corpus.CORPUS_DIR / "SOURCES.md").read_text()
    assert "reviews.txt" in sources and "qa_pairs.tsv" in sources and "license" in sources


def test_word_frequencies_are_zipf_like():
    slope = corpus.rank_frequency_slope(corpus.all_text())
    assert -1.2 < slope < -0.8  # Zipf's law: about -1


def test_the_slope_tells_zipf_from_uniform_words():
    rng = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(300)]
    uniform = [" ".join(rng.choice(vocabulary, 12)) for _ in range(300)]
    assert corpus.rank_frequency_slope(uniform) > -0.3
