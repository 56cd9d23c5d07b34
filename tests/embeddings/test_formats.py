"""The file readers, against files gensim wrote (no server needed)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from kindling.embeddings.formats import FormatError, VectorReader, read_vocab
from tests.embeddings.helpers import WORDS, make_vectors, write_gensim, write_text


def read_all(path: Path, fmt: str, size: int = 4) -> tuple[list[bytes], np.ndarray]:
    with VectorReader(path, fmt) as reader:
        batches = list(reader.batches(size))
    words = [w for b in batches for w in b.words]
    return words, np.concatenate([b.vectors for b in batches])


@pytest.mark.parametrize(
    ("binary", "fmt", "gz"),
    [
        (True, "word2vec-bin", False),
        (True, "word2vec-bin", True),
        (False, "word2vec-text", False),
        (False, "word2vec-text", True),
    ],
)
def test_gensim_files_read_back_bit_exact(tmp_path: Path, binary: bool, fmt: str, gz: bool):
    vectors = make_vectors(WORDS, 7)
    path = write_gensim(tmp_path / "v", WORDS, vectors, binary=binary, gz=gz)
    words, read = read_all(path, fmt)
    assert words == [w.encode() for w in WORDS]
    assert read.dtype == np.float32
    assert read.tobytes() == vectors.tobytes()  # bit-exact, not approximately equal


def test_c_word2vec_binary_with_newlines(tmp_path: Path):
    # The original C tool writes "\n" after each vector; gensim does not.
    vectors = make_vectors(["a", "bb"], 3)
    body = b"".join(
        w + b" " + v.tobytes() + b"\n" for w, v in zip([b"a", b"bb"], vectors, strict=True)
    )
    path = tmp_path / "c.bin"
    path.write_bytes(b"2 3\n" + body)
    words, read = read_all(path, "word2vec-bin")
    assert words == [b"a", b"bb"]
    assert read.tobytes() == vectors.tobytes()


@pytest.mark.parametrize(("fmt", "header"), [("glove", False), ("fasttext-vec", True)])
def test_glove_and_fasttext(tmp_path: Path, fmt: str, header: bool):
    vectors = make_vectors(WORDS, 5)
    path = write_text(tmp_path / "v.txt", WORDS, vectors, header=header)
    words, read = read_all(path, fmt)
    assert words == [w.encode() for w in WORDS]
    assert read.tobytes() == vectors.tobytes()
    with VectorReader(path, fmt) as reader:
        assert reader.dim == 5


def test_malformed_text_line_names_its_line(tmp_path: Path):
    path = tmp_path / "bad.txt"
    path.write_text("3 2\na 1 2\nb 1 x\nc 3 4\n")
    with pytest.raises(FormatError, match=r"line 3: .*'b'") as err:
        read_all(path, "word2vec-text")
    assert err.value.line == 3
    assert err.value.status_code == 400


def test_dimension_mismatch_line_is_refused(tmp_path: Path):
    path = tmp_path / "short.txt"
    path.write_text("a 1 2 3\nb 4 5 6\nc 7 8\n")
    with pytest.raises(FormatError, match=r"line 3: .*2 values, want dimension 3"):
        read_all(path, "glove", size=100)


def test_header_count_is_checked(tmp_path: Path):
    path = tmp_path / "count.txt"
    path.write_text("3 2\na 1 2\nb 3 4\n")
    with pytest.raises(FormatError, match="declares 3 vectors, file holds 2"):
        read_all(path, "word2vec-text")


def test_truncated_binary_names_the_record(tmp_path: Path):
    vectors = make_vectors(WORDS, 4)
    path = write_gensim(tmp_path / "v.bin", WORDS, vectors, binary=True)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(FormatError, match=f"record {len(WORDS)}: truncated"):
        read_all(path, "word2vec-bin")


def test_bad_header_and_text_as_binary(tmp_path: Path):
    path = tmp_path / "noheader.txt"
    path.write_text("a 1 2\n")
    with pytest.raises(FormatError, match="line 1: want a header"):
        read_all(path, "word2vec-text")
    text = write_gensim(tmp_path / "v.txt", WORDS, make_vectors(WORDS, 4), binary=False)
    with pytest.raises(FormatError, match="record"):
        read_all(text, "word2vec-bin")


def test_vocab_file(tmp_path: Path):
    path = tmp_path / "vocab.txt.gz"
    path.write_bytes(gzip.compress("the 120\ncafé 3\n\nmat\n".encode()))
    assert read_vocab(path) == {b"the", "café".encode(), b"mat"}
