"""The gRPC transport's pieces in-process: messages <-> InferRequest, errors -> status codes."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from kindling import errors
from kindling.runtime import grpc_service_pb2 as pb
from kindling.runtime.codec import encode_bytes
from kindling.runtime.grpc_codec import decode_infer_request, encode_infer_response
from kindling.runtime.grpc_service import status_code

LIMIT = 10 * 1024 * 1024


def test_raw_and_typed_contents_decode_alike():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = pb.ModelInferRequest(model_name="m", id="7")
    raw.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    raw.raw_input_contents.append(x.tobytes())
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="x", datatype="FP32", shape=[2, 3]).contents.fp32_contents.extend(
        x.reshape(-1).tolist()
    )
    for message in (raw, typed):
        request = decode_infer_request(message, LIMIT)
        np.testing.assert_array_equal(request.inputs["x"], x)
        assert request.inputs["x"].dtype == np.float32
    assert decode_infer_request(raw, LIMIT).id == "7"
    assert decode_infer_request(typed, LIMIT).id is None


def test_bytes_raw_and_typed():
    words = [b"a", b"", b"\xc3\xa9clair"]
    raw = pb.ModelInferRequest()
    raw.inputs.add(name="t", datatype="BYTES", shape=[3])
    raw.raw_input_contents.append(encode_bytes(np.array(words, dtype=object)))
    typed = pb.ModelInferRequest()
    typed.inputs.add(name="t", datatype="BYTES", shape=[3]).contents.bytes_contents.extend(words)
    for message in (raw, typed):
        assert decode_infer_request(message, LIMIT).inputs["t"].tolist() == words


def test_requested_outputs_and_classification():
    message = pb.ModelInferRequest()
    message.inputs.add(name="x", datatype="INT64", shape=[1]).contents.int64_contents.append(5)
    message.outputs.add(name="logits").parameters["classification"].int64_param = 3
    request = decode_infer_request(message, LIMIT)
    assert request.outputs is not None and request.outputs[0].class_count == 3


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda m: None, "at least one input"),
        (
            lambda m: m.inputs.add(
                name="x", datatype="INT8", shape=[1]
            ).contents.int_contents.append(300),
            "does not fit INT8",
        ),
        (
            lambda m: (
                m.inputs.add(name="x", datatype="FP32", shape=[1]),
                m.inputs.add(name="y", datatype="FP32", shape=[1]),
                m.raw_input_contents.append(b"\0" * 4),
            ),
            "every input or none",
        ),
        (
            lambda m: (
                m.inputs.add(name="x", datatype="FP32", shape=[1]),
                m.inputs.add(name="x", datatype="FP32", shape=[1]),
                m.raw_input_contents.extend([b"\0" * 4] * 2),
            ),
            "more than once",
        ),
        (
            lambda m: (
                m.inputs.add(name="x", datatype="BYTES", shape=[2]),
                m.raw_input_contents.append(b"\1\0\0\0"),
            ),
            "cannot hold 2 BYTES",
        ),
        (
            lambda m: (
                m.inputs.add(name="x", datatype="FP32", shape=[-1]),
                m.raw_input_contents.append(b""),
            ),
            "non-negative",
        ),
    ],
    ids=["no-inputs", "int8-overflow", "raw-for-some", "duplicate", "bytes-short", "negative-dim"],
)
def test_malformed_requests_are_invalid_input(build, message):
    request = pb.ModelInferRequest()
    build(request)
    with pytest.raises(errors.InvalidInput, match=message):
        decode_infer_request(request, LIMIT)


def test_bytes_elements_count_against_the_json_limit():
    message = pb.ModelInferRequest()
    message.inputs.add(name="t", datatype="BYTES", shape=[1000])
    message.raw_input_contents.append(b"\0\0\0\0" * 1000)
    with pytest.raises(errors.PayloadTooLarge, match="BYTES elements"):
        decode_infer_request(message, 1000 * 8 - 1)
    assert len(decode_infer_request(message, 1000 * 8).inputs["t"]) == 1000


def test_outputs_go_back_raw():
    logits = np.array([[1.5, -2.0]], dtype=np.float32)
    labels = np.array([b"cat"], dtype=object)
    response = encode_infer_response(
        "m", "1", [("logits", logits, False), ("l", labels, True)], "r"
    )
    assert (response.model_name, response.model_version, response.id) == ("m", "1", "r")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("logits", "FP32", [1, 2]),
        ("l", "BYTES", [1]),
    ]
    assert response.raw_output_contents[0] == logits.tobytes()
    assert response.raw_output_contents[1] == b"\3\0\0\0cat"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ModelNotFound("m"), grpc.StatusCode.NOT_FOUND),
        (errors.PayloadTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.ModelNotReady("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.DependencyUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.InferenceError("x"), grpc.StatusCode.INTERNAL),
        (errors.UnsupportedMediaType("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.HeadTooLarge("x"), grpc.StatusCode.INVALID_ARGUMENT),  # any other 4xx
    ],
)
def test_status_codes(error, code):
    assert status_code(error) is code


def test_429_is_resource_exhausted():
    class TooMany(errors.KindlingError):
        status_code = 429

    assert status_code(TooMany("x")) is grpc.StatusCode.RESOURCE_EXHAUSTED
