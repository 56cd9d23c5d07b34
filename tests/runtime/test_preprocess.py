import asyncio
from pathlib import Path

import numpy as np
import pytest

from kindling.embeddings.backend_file import FileBackend
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.store import EmbeddingStore
from kindling.embeddings.table_loader import load_table
from kindling.errors import InferenceError, InvalidInput
from kindling.runtime.preprocess import WordVectors, make_preprocessor
from kindling.runtime.settings import ConfigError, ModelConfig

TABLE = {"good": [1.0, 0.0, 0.0], "film": [0.0, 1.0, 0.0], "bad": [0.0, 0.0, 1.0]}


@pytest.fixture
def store(tmp_path: Path):
    source = tmp_path / "vectors.txt"
    lines = [f"{len(TABLE)} 3"] + [f"{w} {' '.join(map(str, v))}" for w, v in TABLE.items()]
    source.write_text("\n".join(lines) + "\n")
    load_table(FileBackend(tmp_path / "store"), "tiny", source, "word2vec-text", grace=0.0)
    with EmbeddingStore.from_settings(EmbeddingSettings(store_dir=tmp_path / "store")) as s:
        yield s


def config(**preprocess) -> ModelConfig:
    return ModelConfig.from_dict(
        {
            "name": "m",
            "inputs": [
                {"name": "q", "datatype": "BYTES", "shape": [-1]},
                {"name": "a", "datatype": "BYTES", "shape": [-1]},
            ],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
            "preprocess": {
                "kind": "word_vectors",
                "table": "tiny",
                "min_length": 4,
                "max_length": 6,
                "inputs": {"q": "q_vec", "a": "a_vec"},
                **preprocess,
            },
        },
        Path("m"),
    )


GRAPH = {"q_vec": ["batch", "length", 3], "a_vec": ["batch", "length", 3]}


def prepared(pre: WordVectors, **texts: list[bytes]) -> dict:
    inputs = {k: np.array(v, dtype=object) for k, v in texts.items()}
    return asyncio.run(pre.prepare(pre.validate(inputs)))


def test_sentences_become_padded_word_vectors(store):
    pre = make_preprocessor(config(), GRAPH, lambda: store)
    out = prepared(pre, q=[b"Good film!", b"bad"], a=[b"a good, good film that is far too long"])
    q, a = out["q_vec"], out["a_vec"]
    assert q.shape == (2, 4, 3)  # padded up to min_length
    np.testing.assert_array_equal(q[0, 0], TABLE["good"])
    np.testing.assert_array_equal(q[0, 1], [0, 0, 0])  # "film!" keeps its "!": OOV -> zeros
    np.testing.assert_array_equal(q[1, 0], TABLE["bad"])
    np.testing.assert_array_equal(q[1, 1:], 0)
    assert a.shape == (1, 6, 3)  # truncated to max_length
    np.testing.assert_array_equal(a[0, 2], TABLE["good"])  # "good," keeps its comma: OOV
    assert pre.pad_values == {"q_vec": 0.0, "a_vec": 0.0}


def test_one_lookup_per_request_for_all_sentences(store, monkeypatch):
    calls = []
    real = store.lookup
    monkeypatch.setattr(
        store, "lookup", lambda table, words: calls.append(list(words)) or real(table, words)
    )
    pre = make_preprocessor(config(), GRAPH, lambda: store)
    prepared(pre, q=[b"good film", b"good"], a=[b"film bad good"])
    assert calls == [["good", "film", "bad"]]  # deduplicated, one round trip


def test_non_utf8_text_is_a_400(store):
    pre = make_preprocessor(config(), GRAPH, lambda: store)
    with pytest.raises(InvalidInput, match="UTF-8"):
        pre.validate({"q": np.array([b"\xff"], dtype=object), "a": np.array([b"ok"], dtype=object)})


def test_table_of_the_wrong_dimension_is_refused(store):
    pre = make_preprocessor(
        config(), {"q_vec": ["b", "l", 300], "a_vec": ["b", "l", 300]}, lambda: store
    )
    with pytest.raises(InferenceError, match="3-d vectors"):
        prepared(pre, q=[b"good"], a=[b"film"])


@pytest.mark.parametrize(
    ("change", "message"),
    [({"tokenizer": "nope"}, "tokenizer"), ({"inputs": {"q": "missing", "a": "a_vec"}}, "lacks")],
)
def test_bad_preprocess_config_fails_at_load(store, change, message):
    with pytest.raises(ConfigError, match=message):
        make_preprocessor(config(**change), GRAPH, lambda: store)


def test_unknown_preprocess_kind(store):
    bad = config()
    bad.preprocess["kind"] = "magic"
    with pytest.raises(ConfigError, match="unknown preprocess kind"):
        make_preprocessor(bad, GRAPH, lambda: store)
