import pytest

from kindling.runtime.text import clean_str_sst, whitespace


@pytest.mark.parametrize(
    ("sentence", "tokens"),
    [
        ("A gripping, beautifully shot film.", ["a", "gripping,", "beautifully", "shot", "film"]),
        ("It's  (truly)   GREAT!", ["it's", "(truly)", "great!"]),
        ("Ça n'a pas marché", ["a", "n'a", "pas", "march"]),
        ("...", []),
        ("", []),
        ("tab\tand\nnewline", ["tab", "and", "newline"]),
    ],
)
def test_clean_str_sst_matches_kims_rules(sentence, tokens):
    # Kim (2014) process_data.py: drop all but [A-Za-z0-9(),!?'`], squeeze, lower-case.
    assert clean_str_sst(sentence) == tokens


def test_whitespace_keeps_case_and_punctuation():
    assert whitespace("  Hello, World! ") == ["Hello,", "World!"]
