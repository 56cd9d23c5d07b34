import numpy as np

from kindling.runtime.buckets import BucketedSession, bucket_sizes, pad_rows


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
    runner.warm(lambda rows: {"x": np.zeros((rows, 2), np.float32)}, ["y"])
    assert set(runner.sessions) == {1, 2, 4}


def test_pad_rows_keeps_the_data_and_zeros_the_rest():
    padded = pad_rows(np.ones((2, 3), np.int64), 4)
    assert padded.dtype == np.int64
    np.testing.assert_array_equal(padded, [[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]])
