from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from kindling.runtime.buckets import (
    BucketedSession,
    bucket_sizes,
    pad_rows,
    pad_to,
)


class RecordingSession:
    """Stands in for an onnxruntime session on CUDA, which no CI machine has."""

    def __init__(self):
        self.shapes = []

    def run(self, names, feed):
        x = feed["x"]
        self.shapes.append(x.shape)
        return [x.sum(axis=1, keepdims=True)]


def test_bucket_sizes_are_powers_of_two_up_to_the_max():
    assert bucket_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert bucket_sizes(12) == [1, 2, 4, 8, 12]
    assert bucket_sizes(1) == [1]


def test_each_bucket_has_its_own_session_and_shape():
    made = []

    def make():
        made.append(RecordingSession())
        return made[-1]

    first = RecordingSession()
    runner = BucketedSession(first, make, max_rows=8)
    for rows in (1, 3, 4, 2, 3, 8, 1):
        x = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
        (out,) = runner.run(["y"], {"x": x})
        np.testing.assert_array_equal(out, x.sum(axis=1, keepdims=True))  # padding cut off
    assert first.shapes == [(1, 2), (1, 2)]
    for session in made:  # every session only ever sees one shape
        assert len(set(session.shapes)) == 1
    assert sorted(s.shapes[0][0] for s in made) == [2, 4, 8]


def test_warm_builds_every_bucket():
    first = RecordingSession()
    runner = BucketedSession(first, RecordingSession, max_rows=4)
    runner.warm(lambda rows, _length: {"x": np.zeros((rows, 2), np.float32)}, ["y"])
    assert set(runner.sessions) == {(1, 0), (2, 0), (4, 0)}


def test_pad_rows_keeps_the_data_and_zeros_the_rest():
    padded = pad_rows(np.ones((2, 3), np.int64), 4)
    assert padded.dtype == np.int64
    np.testing.assert_array_equal(padded, [[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]])


class SequenceSession:
    """A text CNN's stand-in: answers per row from the sum of each sequence input, which
    zero-padding leaves unchanged (as the sample text CNNs' answers)."""

    def __init__(self):
        self.shapes = []

    def run(self, names, feed):
        self.shapes.append(tuple(sorted((k, v.shape) for k, v in feed.items())))
        total = sum(v.sum(axis=(1, 2)) for v in feed.values())
        return [total[:, None]]


def test_length_buckets_are_powers_of_two_from_min_to_max():
    assert bucket_sizes(64, 5) == [8, 16, 32, 64]
    assert bucket_sizes(100, 1) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert bucket_sizes(8, 8) == [8]


def test_sequence_inputs_are_padded_to_a_length_bucket_per_session():
    """Every (rows, length) bucket has its own session, which only ever sees one shape;
    both sequence inputs go to the same length; answers are the unpadded ones."""
    made = []

    def make():
        made.append(SequenceSession())
        return made[-1]

    first = SequenceSession()
    runner = BucketedSession(
        first,
        make,
        max_rows=4,
        lengths=[8, 16, 32],
        pad_values={"q": 0.0, "a": 0.0},
        first_length=16,
    )
    rng = np.random.default_rng(0)
    for rows, q_len, a_len in [
        (1, 5, 9),
        (3, 12, 3),
        (1, 16, 2),
        (2, 30, 31),
        (4, 7, 8),
        (1, 9, 5),
    ]:
        feed = {
            "q": rng.standard_normal((rows, q_len, 3)).astype(np.float32),
            "a": rng.standard_normal((rows, a_len, 3)).astype(np.float32),
        }
        (out,) = runner.run(["y"], feed)
        expected = feed["q"].sum(axis=(1, 2)) + feed["a"].sum(axis=(1, 2))
        np.testing.assert_allclose(out[:, 0], expected, rtol=1e-5)
    assert set(runner.sessions) == {(1, 16), (4, 16), (2, 32), (4, 8)}
    assert first.shapes == [(("a", (1, 16, 3)), ("q", (1, 16, 3)))] * 3
    for session in [first, *made]:
        assert len(set(session.shapes)) == 1


def test_a_sequence_longer_than_every_bucket_runs_as_it_is():
    runner = BucketedSession(
        SequenceSession(), SequenceSession, max_rows=2, lengths=[8], pad_values={"q": 0.0}
    )
    x = np.ones((1, 11, 3), np.float32)
    (out,) = runner.run(["y"], {"q": x})
    assert out[0, 0] == 33.0
    assert (1, 11) in runner.sessions


def test_warm_builds_every_rows_and_length_bucket():
    runner = BucketedSession(
        SequenceSession(), SequenceSession, max_rows=2, lengths=[8, 16], pad_values={"q": 0.0}
    )
    seen = []

    def zeros(rows, length):
        seen.append((rows, length))
        return {"q": np.zeros((rows, length, 3), np.float32)}

    runner.warm(zeros, ["y"])
    assert seen == [(1, 8), (1, 16), (2, 8), (2, 16)]
    assert set(runner.sessions) == {(1, 8), (1, 16), (2, 8), (2, 16)}


def test_pad_to_fills_rows_and_length_with_the_value():
    padded = pad_to(np.ones((1, 2, 2), np.float32), 2, 3, -1.0)
    np.testing.assert_array_equal(
        padded, [[[1, 1], [1, 1], [-1, -1]], [[-1, -1], [-1, -1], [-1, -1]]]
    )


@pytest.mark.parametrize(
    ("model", "inputs", "dim"),
    [("kim_cnn", ("embeddings",), 300), ("sm_cnn", ("question", "answer"), 50)],
)
def test_the_text_cnns_answer_the_same_through_row_and_length_buckets(
    model_repository: Path, model: str, inputs: tuple[str, ...], dim: int
):
    """What the CUDA path does to the sample text CNNs, run here on CPU sessions of the
    real graphs: padded rows and lengths must leave every answer as it was."""
    path = str(model_repository / model / "model.onnx")

    def make() -> ort.InferenceSession:
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    plain = make()
    runner = BucketedSession(
        make(),
        make,
        max_rows=32,
        lengths=bucket_sizes(64, 5),
        pad_values=dict.fromkeys(inputs, 0.0),
        first_length=16,
    )
    rng = np.random.default_rng(7)
    for rows in (1, 3, 5, 17):
        feed = {
            name: rng.standard_normal((rows, int(rng.integers(5, 65)), dim)).astype(np.float32)
            for name in inputs
        }
        np.testing.assert_allclose(
            runner.run(["probabilities"], feed)[0],
            plain.run(["probabilities"], feed)[0],
            rtol=1e-5,
            atol=1e-6,
        )
