"""Sentence tokenizers for the word-vector text models (paper 000's Kim CNN and SM CNN)."""

from __future__ import annotations

import re
from collections.abc import Callable

_NOT_KEPT = re.compile(r"[^A-Za-z0-9(),!?'`]")
_SPACES = re.compile(r"\s{2,}")


def clean_str_sst(sentence: str) -> list[str]:
    """Kim (2014)'s `clean_str_sst` from process_data.py, which the SST models (and
    castorini's serverless Kim CNN) were trained with: keep letters, digits and a little
    punctuation, squeeze spaces, lower-case; then split on spaces."""
    cleaned = _SPACES.sub(" ", _NOT_KEPT.sub(" ", sentence)).strip().lower()
    return cleaned.split(" ") if cleaned else []


def whitespace(sentence: str) -> list[str]:
    """Split on whitespace only, for tables whose words keep their case and punctuation."""
    return sentence.split()


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "clean_str_sst": clean_str_sst,
    "whitespace": whitespace,
}
