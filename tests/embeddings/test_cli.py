"""`kindling embeddings ...` end to end, in process."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kindling.cli import main as kindling
from kindling.embeddings.cli import main
from tests.embeddings.helpers import WORDS, make_vectors, write_gensim


def test_load_info_list_with_file_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = write_gensim(tmp_path / "v.txt", WORDS, make_vectors(WORDS, 3), binary=False, gz=True)
    store = str(tmp_path / "store")
    args = ["load", "--table", "glove", "--format", "word2vec-text", str(path), "--store", store]
    assert main([*args, "--grace", "0", "--quiet"]) == 0
    assert f"loaded {len(WORDS)} vectors (dim 3, float32)" in capsys.readouterr().out
    assert kindling(["embeddings", "list", "--store", store]) == 0
    assert capsys.readouterr().out.split() == ["glove"]
    assert main(["info", "--table", "glove", "--redis", f"file://{store}"]) == 0
    info = orjson.loads(capsys.readouterr().out)
    assert (info["dim"], info["count"], info["dtype"]) == (3, len(WORDS), "float32")


@pytest.mark.integration
def test_load_into_redis_with_vocab_and_float16(
    redis_url: str, table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    path = write_gensim(tmp_path / "v.bin", WORDS, make_vectors(WORDS, 3), binary=True)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("the\ncat\n")
    args = ["load", "--table", table, "--format", "word2vec-bin", str(path), "--vocab", str(vocab)]
    args += ["--dtype", "float16", "--redis", redis_url, "--grace", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "loaded 2 vectors (dim 3, float16)" in out
    assert f"skipped {len(WORDS) - 2} not in --vocab" in out


def test_errors_exit_1_with_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = tmp_path / "bad.txt"
    bad.write_text("a 1 2\nb 1 2\nc 1\n")
    store = str(tmp_path / "store")
    assert main(["load", "--table", "t", "--format", "glove", str(bad), "--store", store]) == 1
    assert "bad.txt: line 3:" in capsys.readouterr().err
    assert main(["info", "--table", "missing", "--store", store]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["load", "--table", "t", "--format", "nope", str(bad)]) == 2  # usage
    assert main(["serve", "--redis", "http://nowhere"]) == 1
    assert "unsupported store URL" in capsys.readouterr().err
