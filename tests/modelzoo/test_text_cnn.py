"""Kim CNN and SM CNN from kindling.modelzoo.text_cnn, run in real onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from kindling.modelzoo.build import SampleModel, graph_io, validate
from kindling.modelzoo.graph import parameter_count
from kindling.modelzoo.text_cnn import (
    build_kim_cnn,
    build_sm_cnn,
    config_kim_cnn,
    config_sm_cnn,
)

RNG_SEED = 7


def _session(sample: SampleModel) -> ort.InferenceSession:
    return ort.InferenceSession(
        sample.model.SerializeToString(), providers=["CPUExecutionProvider"]
    )


def _words(rng: np.random.RandomState, batch: int, length: int, dim: int) -> np.ndarray:
    # word2vec components are roughly N(0, 0.1..0.3)
    return (0.3 * rng.standard_normal((batch, length, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def kim() -> SampleModel:
    return build_kim_cnn()


@pytest.fixture(scope="module")
def sm() -> SampleModel:
    return build_sm_cnn()


@pytest.fixture(scope="module")
def kim_run(kim):
    session = _session(kim)
    return lambda x: session.run(["probabilities"], {"embeddings": x})[0]


@pytest.fixture(scope="module")
def sm_run(sm):
    session = _session(sm)
    return lambda q, a: session.run(["probabilities"], {"question": q, "answer": a})[0]


def _assert_probabilities(p: np.ndarray, batch: int, classes: int) -> None:
    assert p.shape == (batch, classes)
    assert p.dtype == np.float32
    assert np.isfinite(p).all()
    assert (p >= 0).all() and (p <= 1).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- Kim CNN


def test_kim_shapes_and_softmax(kim_run):
    _assert_probabilities(kim_run(_words(np.random.RandomState(RNG_SEED), 4, 12, 300)), 4, 5)


@pytest.mark.parametrize("length", [1, 2, 4, 5, 60])
def test_kim_any_sentence_length(kim_run, length):
    # Wide convolutions: shorter sentences than the widest filter (5) are valid too.
    x = _words(np.random.RandomState(length), 2, length, 300)
    _assert_probabilities(kim_run(x), 2, 5)


def test_kim_different_inputs_differ(kim_run):
    rng = np.random.RandomState(RNG_SEED)
    p = kim_run(_words(rng, 8, 10, 300))
    assert np.abs(p[0] - p[1]).max() > 1e-3
    assert len({tuple(np.round(row, 6)) for row in p}) == 8


def test_kim_batch_equals_single_runs(kim_run):
    x = _words(np.random.RandomState(RNG_SEED), 5, 9, 300)
    batched = kim_run(x)
    singles = np.concatenate([kim_run(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-6)


def test_kim_zero_padding_leaves_output_unchanged(kim_run):
    # What the batcher does with pad_value 0.0: zero biases keep padding windows at
    # relu(0) = 0, never above a real window's value, so the max over time is unchanged.
    x = _words(np.random.RandomState(RNG_SEED), 1, 7, 300)
    padded = np.concatenate([x, np.zeros((1, 13, 300), np.float32)], axis=1)
    np.testing.assert_allclose(kim_run(padded), kim_run(x), rtol=1e-5, atol=1e-6)


def test_kim_parameter_count(kim):
    # Kim 2014: three filter widths of 100 maps over 300-d vectors, then 300 -> 5.
    expected = sum(w * 300 * 100 + 100 for w in (3, 4, 5)) + 300 * 5 + 5
    assert parameter_count(kim.model) == expected == 361_805


def test_kim_config_matches_graph(kim):
    validate(kim)
    inputs, outputs = graph_io(kim.model)
    assert inputs == [{"name": "embeddings", "datatype": "FP32", "shape": [-1, -1, 300]}]
    assert outputs == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 5]}]
    assert kim.config["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    preprocess = kim.config["preprocess"]
    assert preprocess["inputs"] == {"text": "embeddings"} and preprocess["table"] == "demo300"
    assert preprocess["min_length"] >= 5  # the widest filter (Kim 2014: widths 3, 4, 5)
    assert kim.config == config_kim_cnn()
    assert "length >= 1" in kim.config["description"]


# ---------------------------------------------------------------------------- SM CNN


def test_sm_shapes_and_softmax(sm_run):
    rng = np.random.RandomState(RNG_SEED)
    _assert_probabilities(sm_run(_words(rng, 3, 8, 50), _words(rng, 3, 20, 50)), 3, 2)


@pytest.mark.parametrize(("q_len", "a_len"), [(1, 1), (3, 40), (5, 5)])
def test_sm_any_sentence_lengths(sm_run, q_len, a_len):
    rng = np.random.RandomState(q_len * 100 + a_len)
    _assert_probabilities(sm_run(_words(rng, 2, q_len, 50), _words(rng, 2, a_len, 50)), 2, 2)


def test_sm_output_depends_on_both_sentences(sm_run):
    rng = np.random.RandomState(RNG_SEED)
    q, a, other = _words(rng, 1, 8, 50), _words(rng, 1, 12, 50), _words(rng, 1, 12, 50)
    base = sm_run(q, a)
    assert np.abs(sm_run(q, other) - base).max() > 1e-4
    assert np.abs(sm_run(other[:, :8], a) - base).max() > 1e-4


def test_sm_batch_equals_single_runs(sm_run):
    rng = np.random.RandomState(RNG_SEED)
    q, a = _words(rng, 4, 6, 50), _words(rng, 4, 15, 50)
    batched = sm_run(q, a)
    singles = np.concatenate([sm_run(q[i : i + 1], a[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-6)


def test_sm_zero_padding_leaves_output_unchanged(sm_run):
    """What the batcher does with pad_value 0.0, to either sentence. Under tanh an
    all-padding window (pre-activation 0) would beat a channel whose real windows are all
    negative; the graph leaves such windows out of the max."""
    rng = np.random.RandomState(RNG_SEED)
    for trial in range(50):
        q_len, a_len = rng.randint(1, 12, 2)
        q, a = _words(rng, 1, q_len, 50), _words(rng, 1, a_len, 50)
        q_pad = np.concatenate([q, np.zeros((1, 7 + trial % 5, 50), np.float32)], axis=1)
        a_pad = np.concatenate([a, np.zeros((1, 9, 50), np.float32)], axis=1)
        np.testing.assert_allclose(sm_run(q_pad, a_pad), sm_run(q, a), rtol=1e-5, atol=1e-6)


def test_sm_all_padding_sentence_is_finite(sm_run):
    rng = np.random.RandomState(RNG_SEED)
    empty = np.zeros((1, 5, 50), np.float32)
    _assert_probabilities(sm_run(empty, _words(rng, 1, 6, 50)), 1, 2)


def test_sm_parameter_count(sm):
    # Two width-5 convs of 100 maps over 50-d vectors, M (100x100), hidden 201 -> 201,
    # softmax layer 201 -> 2.
    conv = 5 * 50 * 100 + 100
    expected = 2 * conv + 100 * 100 + (201 * 201 + 201) + (201 * 2 + 2)
    assert parameter_count(sm.model) == expected == 101_206
    shapes = {t.name: list(t.dims) for t in sm.model.graph.initializer}
    assert shapes["M"] == [100, 100]


def test_sm_config_matches_graph(sm):
    validate(sm)
    inputs, outputs = graph_io(sm.model)
    assert [i["name"] for i in inputs] == ["question", "answer"]
    assert all(i["shape"] == [-1, -1, 50] and i["datatype"] == "FP32" for i in inputs)
    assert outputs == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    assert [i["datatype"] for i in sm.config["inputs"]] == ["BYTES", "BYTES"]
    preprocess = sm.config["preprocess"]
    assert preprocess["inputs"] == {"question": "question", "answer": "answer"}
    assert preprocess["table"] == "demo50" and preprocess["min_length"] >= 5  # filter width 5
    assert sm.config == config_sm_cnn()
