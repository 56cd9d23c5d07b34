"""OIP v2 request/response bodies <-> numpy (kindling.runtime.codec).

tritonclient is the acceptance client: requests are built with its own body generator and
responses are parsed with its own InferResult, so both directions agree with the reference.
"""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from kindling.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from kindling.runtime import codec
from kindling.runtime.codec import (
    DTYPES,
    InferRequest,
    RequestedOutput,
    classify,
    datatype_of,
    decode_request,
    decompress,
    encode_bytes,
    encode_response,
)

RNG = np.random.default_rng(20240501)

NUMERIC = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
]


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Random values of `datatype` that survive a trip through JSON exactly."""
    if datatype == "BYTES":
        words = ["", "a", "héllo", "日本語", "x" * 300, "tab\tnew\nline"]
        flat = [words[i] for i in RNG.integers(0, len(words), int(np.prod(shape)))]
        return np.array([w.encode() for w in flat], dtype=object).reshape(shape)
    dtype = DTYPES[datatype]
    if datatype == "BOOL":
        return RNG.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        # Include the extremes: int64/uint64 bounds must not go through float.
        values = RNG.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
        flat = values.reshape(-1)
        if flat.size >= 2:
            flat[0], flat[1] = info.min, info.max
        return values
    # Floats exactly representable in every width (halves up to 2^10).
    return (RNG.integers(-2048, 2048, shape) / 2).astype(dtype)


def json_body(inputs: list[dict], **doc) -> bytes:
    return json.dumps({"inputs": inputs, **doc}).encode()


def binary_body(doc: dict, *blobs: bytes) -> tuple[bytes, str]:
    header = json.dumps(doc).encode()
    return header + b"".join(blobs), str(len(header))


def bytes_blob(*items: bytes) -> bytes:
    return b"".join(len(i).to_bytes(4, "little") + i for i in items)


def triton_request(arrays: dict[str, np.ndarray], binary: bool, **kwargs) -> tuple[bytes, str]:
    inputs = []
    for name, array in arrays.items():
        infer_input = triton.InferInput(name, list(array.shape), datatype_of(array))
        infer_input.set_data_from_numpy(array, binary_data=binary)
        inputs.append(infer_input)
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, **kwargs)
    return body, None if json_size is None else str(json_size)


def parse_response(body: bytes, header_length: int | None) -> triton.InferResult:
    return triton.InferResult.from_response_body(body, verbose=False, header_length=header_length)


def as_list(array: np.ndarray) -> list:
    """tolist() with text as bytes: tritonclient returns JSON BYTES as str, binary as bytes."""
    if array.dtype.kind in "OU":
        array = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(
            array
        )
    return array.tolist()


# -- datatypes ------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_datatype_of_inverts_dtypes(datatype):
    assert datatype_of(np.empty(0, dtype=DTYPES[datatype])) == datatype


def test_datatype_of_text_and_big_endian():
    assert datatype_of(np.array(["a"])) == "BYTES"
    assert datatype_of(np.array([b"a"])) == "BYTES"
    assert datatype_of(np.zeros(2, dtype=">f4")) == "FP32"


def test_datatype_of_unsupported_dtype():
    with pytest.raises(InvalidInput, match="complex"):
        datatype_of(np.zeros(1, dtype=np.complex64))


# -- JSON requests ----------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_json_input_every_datatype(datatype, nested):
    array = sample(datatype, (2, 3))
    if datatype == "BYTES":
        data = [[v.decode() for v in row] for row in array] if nested else None
        data = data or [v.decode() for v in array.reshape(-1)]
    else:
        data = array.tolist() if nested else array.reshape(-1).tolist()
    body = json_body([{"name": "x", "datatype": datatype, "shape": [2, 3], "data": data}])

    request = decode_request(body, None)

    got = request.inputs["x"]
    assert got.shape == (2, 3)
    assert got.dtype == DTYPES[datatype]
    assert got.tolist() == array.tolist()


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_json_request_built_by_tritonclient(datatype):
    array = sample(datatype, (3, 2))
    body, header_length = triton_request({"x": array}, binary=False)
    assert header_length is None

    got = decode_request(body, header_length).inputs["x"]

    assert got.dtype == DTYPES[datatype]
    assert got.tolist() == array.tolist()


def test_json_scalar_data_for_one_element():
    body = json_body([{"name": "x", "datatype": "FP32", "shape": [1], "data": 2.5}])
    assert decode_request(body, None).inputs["x"].tolist() == [2.5]


def test_json_zero_size_input():
    body = json_body([{"name": "x", "datatype": "FP32", "shape": [0, 4], "data": []}])
    assert decode_request(body, None).inputs["x"].shape == (0, 4)


def test_request_fields():
    body = json_body(
        [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}],
        id="42",
        parameters={"binary_data_output": True, "custom": "v"},
    )
    request = decode_request(body, None)
    assert request.id == "42"
    assert request.binary_output is True
    assert request.outputs is None
    assert request.parameters == {"binary_data_output": True, "custom": "v"}


def test_request_defaults():
    request = decode_request(
        json_body([{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}]), None
    )
    assert request.id is None
    assert request.binary_output is False
    assert request.outputs is None
    assert request.parameters == {}


def test_several_inputs_keep_their_names():
    body = json_body(
        [
            {"name": "a", "datatype": "INT64", "shape": [2], "data": [1, 2]},
            {"name": "b", "datatype": "BYTES", "shape": [1], "data": ["z"]},
        ]
    )
    inputs = decode_request(body, None).inputs
    assert list(inputs) == ["a", "b"]
    assert inputs["b"].tolist() == [b"z"]


# -- requested outputs ----------------------------------------------------------------------


def test_requested_outputs_binary_and_classification():
    body = json_body(
        [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}],
        outputs=[
            {"name": "a"},
            {"name": "b", "parameters": {"binary_data": True}},
            {"name": "c", "parameters": {"classification": 3}},
        ],
    )
    assert decode_request(body, None).outputs == [
        RequestedOutput("a", binary=False),
        RequestedOutput("b", binary=True),
        RequestedOutput("c", binary=False, class_count=3),
    ]


def test_binary_data_output_is_the_default_for_requested_outputs():
    body = json_body(
        [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}],
        parameters={"binary_data_output": True},
        outputs=[{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
    )
    request = decode_request(body, None)
    assert request.binary_output is True
    assert request.outputs == [RequestedOutput("a", True), RequestedOutput("b", False)]


def test_requested_outputs_from_tritonclient():
    body, header_length = triton_request(
        {"x": np.zeros(2, np.float32)},
        binary=True,
        outputs=[
            triton.InferRequestedOutput("probs", binary_data=True),
            triton.InferRequestedOutput("top", binary_data=False, class_count=2),
        ],
    )
    request = decode_request(body, header_length)
    assert request.outputs == [
        RequestedOutput("probs", True),
        RequestedOutput("top", False, class_count=2),
    ]


@pytest.mark.parametrize(
    ("outputs", "match"),
    [
        ({"name": "a"}, "'outputs' must be a list"),
        (["a"], "requested output must be an object"),
        ([{"parameters": {}}], "requested output must be an object with a 'name'"),
        ([{"name": "a", "parameters": {"classification": -1}}], "classification"),
        ([{"name": "a", "parameters": {"classification": "3"}}], "classification"),
    ],
)
def test_bad_requested_outputs(outputs, match):
    body = json_body(
        [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}], outputs=outputs
    )
    with pytest.raises(InvalidInput, match=match):
        decode_request(body, None)


def test_requested_output_parameters_not_an_object():
    body = json_body(
        [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}],
        outputs=[{"name": "a", "parameters": ["binary_data"]}],
    )
    with pytest.raises(InvalidInput, match="parameters"):
        decode_request(body, None)


# -- binary requests ------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_binary_request_built_by_tritonclient(datatype):
    array = sample(datatype, (2, 5))
    body, header_length = triton_request({"x": array}, binary=True)
    assert header_length is not None

    got = decode_request(body, header_length).inputs["x"]

    assert got.dtype == DTYPES[datatype]
    assert got.shape == (2, 5)
    assert got.tolist() == array.tolist()


def test_binary_input_by_hand():
    array = np.arange(6, dtype="<f4").reshape(2, 3)
    doc = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [2, 3],
                "parameters": {"binary_data_size": 24},
            }
        ]
    }
    body, header_length = binary_body(doc, array.tobytes())
    got = decode_request(body, header_length).inputs["x"]
    np.testing.assert_array_equal(got, array)


def test_mixed_json_and_binary_inputs():
    a = np.array([1, -2, 3], dtype="<i8")
    c = np.array([0.5, 1.5], dtype="<f2")
    d = bytes_blob(b"", b"hello\x00")
    doc = {
        "inputs": [
            {
                "name": "a",
                "datatype": "INT64",
                "shape": [3],
                "parameters": {"binary_data_size": 24},
            },
            {"name": "b", "datatype": "BYTES", "shape": [2], "data": ["json", "text"]},
            {"name": "c", "datatype": "FP16", "shape": [2], "parameters": {"binary_data_size": 4}},
            {
                "name": "d",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(d)},
            },
        ]
    }
    body, header_length = binary_body(doc, a.tobytes(), c.tobytes(), d)

    inputs = decode_request(body, header_length).inputs

    np.testing.assert_array_equal(inputs["a"], a)
    assert inputs["b"].tolist() == [b"json", b"text"]
    np.testing.assert_array_equal(inputs["c"], c)
    assert inputs["d"].tolist() == [b"", b"hello\x00"]


def test_mixed_inputs_from_tritonclient():
    arrays = {
        "ids": sample("INT64", (2, 4)),
        "mask": sample("BOOL", (2, 4)),
        "text": sample("BYTES", (2,)),
    }
    inputs = []
    for i, (name, array) in enumerate(arrays.items()):
        infer_input = triton.InferInput(name, list(array.shape), datatype_of(array))
        infer_input.set_data_from_numpy(array, binary_data=i != 1)
        inputs.append(infer_input)
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs)

    got = decode_request(body, str(json_size)).inputs

    for name, array in arrays.items():
        assert got[name].tolist() == array.tolist()


def test_binary_bytes_elements_with_length_prefixes():
    items = [b"", b"\xff\xfe binary", "ünïcode".encode(), b"x" * 70000]
    blob = bytes_blob(*items)
    doc = {
        "inputs": [
            {
                "name": "t",
                "datatype": "BYTES",
                "shape": [2, 2],
                "parameters": {"binary_data_size": len(blob)},
            }
        ]
    }
    body, header_length = binary_body(doc, blob)

    got = decode_request(body, header_length).inputs["t"]

    assert got.dtype == object
    assert got.shape == (2, 2)
    assert got.reshape(-1).tolist() == items
    assert len(blob) == 4 * 4 + sum(len(i) for i in items)


def test_header_length_equal_to_body_means_no_binary_part():
    body = json_body([{"name": "x", "datatype": "INT8", "shape": [1], "data": [7]}])
    assert decode_request(body, str(len(body))).inputs["x"].tolist() == [7]


def test_binary_input_is_zero_copy_view_of_body():
    array = np.arange(4, dtype="<i4")
    doc = {
        "inputs": [
            {"name": "x", "datatype": "INT32", "shape": [4], "parameters": {"binary_data_size": 16}}
        ]
    }
    body, header_length = binary_body(doc, array.tobytes())
    got = decode_request(body, header_length).inputs["x"]
    assert not got.flags.owndata


# -- malformed requests ----------------------------------------------------------------------

X_INT32 = {"name": "x", "datatype": "INT32", "shape": [2], "data": [1, 2]}


def _bin_input(datatype: str, shape: list[int], size: object, name: str = "x") -> dict:
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }


def _with_binary(inputs: list[dict], blob: bytes) -> tuple[bytes, str]:
    return binary_body({"inputs": inputs}, blob)


MALFORMED = {
    "header-length-not-int": (json_body([X_INT32]), "twelve", "not a byte count: 'twelve'"),
    "header-length-float": (json_body([X_INT32]), "1.5", "not a byte count"),
    "header-length-negative": (json_body([X_INT32]), "-1", "not a byte count: '-1'"),
    "header-length-beyond-body": (b"{}", "3", "3 is outside the body of 2 bytes"),
    "binary-size-past-end": (
        *_with_binary([_bin_input("INT32", [2], 16)], b"\0" * 8),
        "binary_data_size 16 runs past the end",
    ),
    "binary-size-negative": (
        *_with_binary([_bin_input("INT32", [2], -8)], b"\0" * 8),
        "binary_data_size must be a whole number of bytes >= 0, got -8",
    ),
    "binary-size-not-int": (
        *_with_binary([_bin_input("INT32", [2], "8")], b"\0" * 8),
        'binary_data_size must be a whole number of bytes >= 0, got "8"',
    ),
    "binary-leftover-bytes": (
        *_with_binary([_bin_input("INT32", [2], 8)], b"\0" * 12),
        "binary data is 12 bytes but inputs' binary_data_size add up to 8",
    ),
    "binary-without-any-binary-input": (
        *_with_binary([X_INT32], b"\0" * 4),
        "binary data is 4 bytes",
    ),
    "binary-wrong-byte-count": (
        *_with_binary([_bin_input("FP32", [3], 8)], b"\0" * 8),
        r"shape \[3\] of FP32 needs 12 bytes, got 8",
    ),
    "bytes-truncated-prefix": (
        *_with_binary([_bin_input("BYTES", [2], 7)], bytes_blob(b"") + b"\x05\x00\x00"),
        "cannot hold 2 BYTES elements",
    ),
    "bytes-truncated-element": (
        *_with_binary([_bin_input("BYTES", [1], 6)], b"\x05\x00\x00\x00ab"),
        "BYTES element 0 is truncated",
    ),
    "bytes-extra-after-elements": (
        *_with_binary([_bin_input("BYTES", [1], 7)], bytes_blob(b"ab") + b"z"),
        "1 bytes left after 1 BYTES elements",
    ),
    "invalid-json": (b'{"inputs": [', None, "not valid JSON"),
    "invalid-json-in-header": (b'{"inputs": ]}\0\0\0\0', "13", "not valid JSON"),
    "empty-body": (b"", None, "not valid JSON"),
    "json-array": (b"[1, 2]", None, "must be a JSON object"),
    "json-string": (b'"inputs"', None, "must be a JSON object"),
    "missing-inputs": (b'{"outputs": []}', None, "non-empty 'inputs' list"),
    "empty-inputs": (b'{"inputs": []}', None, "non-empty 'inputs' list"),
    "inputs-not-list": (b'{"inputs": {"name": "x"}}', None, "non-empty 'inputs' list"),
    "input-not-object": (json_body(["x"]), None, "each input must be an object"),
    "input-without-name": (
        json_body([{"datatype": "INT32", "shape": [1], "data": [1]}]),
        None,
        "string 'name'",
    ),
    "unsupported-datatype-bf16": (
        json_body([{"name": "x", "datatype": "BF16", "shape": [1], "data": [1]}]),
        None,
        "input 'x': unsupported datatype 'BF16'",
    ),
    "lowercase-datatype": (
        json_body([{"name": "x", "datatype": "fp32", "shape": [1], "data": [1]}]),
        None,
        "unsupported datatype 'fp32'",
    ),
    "missing-datatype": (
        json_body([{"name": "x", "shape": [1], "data": [1]}]),
        None,
        "unsupported datatype None",
    ),
    "negative-dim": (
        json_body([{"name": "x", "datatype": "INT32", "shape": [-1, 2], "data": [1, 2]}]),
        None,
        "'shape' must be a list of non-negative integers",
    ),
    "float-dim": (
        json_body([{"name": "x", "datatype": "INT32", "shape": [2.0], "data": [1, 2]}]),
        None,
        "non-negative integers",
    ),
    "missing-shape": (
        json_body([{"name": "x", "datatype": "INT32", "data": [1, 2]}]),
        None,
        "'shape' must be a list",
    ),
    "too-few-values": (
        json_body([{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [1, 2, 3]}]),
        None,
        r"shape \[2, 2\] needs 4 values, got 3",
    ),
    "too-many-values": (
        json_body([{"name": "x", "datatype": "INT32", "shape": [1], "data": [1, 2]}]),
        None,
        "needs 1 values, got 2",
    ),
    "ragged-nested-data": (
        json_body([{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3]]}]),
        None,
        "data does not match datatype INT32",
    ),
    "text-for-int": (
        json_body([{"name": "x", "datatype": "INT32", "shape": [1], "data": ["abc"]}]),
        None,
        "input 'x': data does not match datatype INT32",
    ),
    "object-for-float": (
        json_body([{"name": "x", "datatype": "FP32", "shape": [1], "data": [{"v": 1}]}]),
        None,
        "data does not match datatype FP32",
    ),
    "out-of-range-uint8": (
        json_body([{"name": "x", "datatype": "UINT8", "shape": [1], "data": [256]}]),
        None,
        "data does not match datatype UINT8",
    ),
    "negative-uint": (
        json_body([{"name": "x", "datatype": "UINT32", "shape": [1], "data": [-1]}]),
        None,
        "data does not match datatype UINT32",
    ),
    "int64-overflow": (
        json_body([{"name": "x", "datatype": "INT64", "shape": [1], "data": [2**63]}]),
        None,
        "data does not match datatype INT64",
    ),
    "number-for-bytes": (
        json_body([{"name": "x", "datatype": "BYTES", "shape": [1], "data": [5]}]),
        None,
        "BYTES elements in JSON must be strings, got int",
    ),
    "neither-data-nor-binary": (
        json_body([{"name": "x", "datatype": "INT32", "shape": [1]}]),
        None,
        "has neither 'data' nor binary_data_size",
    ),
    "bytes-without-shape": (
        json_body([{"name": "x", "datatype": "BYTES", "shape": [], "data": ["a"]}]),
        None,
        "BYTES input must have a shape",
    ),
    "parameters-not-object": (
        json_body([X_INT32], parameters=[1]),
        None,
        "'parameters' must be an object",
    ),
}


@pytest.mark.parametrize(("body", "header_length", "match"), MALFORMED.values(), ids=MALFORMED)
def test_malformed_request(body, header_length, match):
    with pytest.raises(InvalidInput, match=match) as info:
        decode_request(body, header_length)
    assert info.value.status_code == 400


def test_shape_whose_element_count_overflows():
    body = json_body([{"name": "x", "datatype": "INT32", "shape": [2**32, 2**32], "data": []}])
    with pytest.raises(InvalidInput, match="shape"):
        decode_request(body, None)


def test_boolean_dimension_is_refused():
    body = json_body([{"name": "x", "datatype": "INT32", "shape": [True, 2], "data": [1, 2]}])
    with pytest.raises(InvalidInput, match="shape"):
        decode_request(body, None)


def test_fractional_value_for_integer_datatype_is_refused():
    body = json_body([{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.7]}])
    with pytest.raises(InvalidInput, match="INT32"):
        decode_request(body, None)


def test_string_for_bool_datatype_is_refused():
    body = json_body([{"name": "x", "datatype": "BOOL", "shape": [1], "data": ["false"]}])
    with pytest.raises(InvalidInput, match="BOOL"):
        decode_request(body, None)


def test_duplicate_input_names_are_refused():
    body = json_body([X_INT32, {**X_INT32, "shape": [1], "data": [9]}])
    with pytest.raises(InvalidInput, match="x"):
        decode_request(body, None)


# -- Content-Encoding -------------------------------------------------------------------------

PAYLOAD = json_body([X_INT32]) * 3


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
)
def test_decompress(encoding, compress):
    assert decompress(compress(PAYLOAD), encoding, len(PAYLOAD)) == PAYLOAD


@pytest.mark.parametrize("encoding", [None, "", "identity"])
def test_decompress_identity_returns_body_unchanged(encoding):
    assert decompress(PAYLOAD, encoding, 1) is PAYLOAD


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
)
def test_decompress_over_limit(encoding, compress):
    with pytest.raises(PayloadTooLarge, match=f"exceeds {len(PAYLOAD) - 1} bytes") as info:
        decompress(compress(PAYLOAD), encoding, len(PAYLOAD) - 1)
    assert info.value.status_code == 413


def test_decompress_bomb_is_bounded():
    bomb = gzip.compress(b"\0" * (8 << 20))  # 8 MiB of zeros in ~8 KiB
    with pytest.raises(PayloadTooLarge):
        decompress(bomb, "gzip", 1 << 20)


@pytest.mark.parametrize("encoding", ["br", "compress", "zstd"])
def test_decompress_unsupported_encoding(encoding):
    with pytest.raises(UnsupportedMediaType, match=repr(encoding)) as info:
        decompress(b"x", encoding, 100)
    assert info.value.status_code == 415


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_decompress_garbage(encoding):
    with pytest.raises(InvalidInput, match=f"not valid {encoding}"):
        decompress(b"this is not compressed", encoding, 100)


def test_decompress_tritonclient_compressed_request():
    array = sample("FP32", (2, 3))
    infer_input = triton.InferInput("x", [2, 3], "FP32")
    infer_input.set_data_from_numpy(array, binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body([infer_input])
    for encoding, compress in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        plain = decompress(compress(body), encoding, 1 << 20)
        got = decode_request(plain, str(json_size)).inputs["x"]
        np.testing.assert_array_equal(got, array)


def test_decompress_truncated_stream():
    compressed = gzip.compress(PAYLOAD)
    with pytest.raises(InvalidInput, match="gzip"):
        decompress(compressed[: len(compressed) // 2], "gzip", 1 << 20)


# -- responses -------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_response_round_trip_through_tritonclient(datatype, binary):
    array = sample(datatype, (3, 4))
    body, header_length = encode_response("m", "1", [("out", array, binary)], "req-1")

    if binary:
        assert header_length is not None
        header = orjson.loads(body[:header_length])
        (entry,) = header["outputs"]
        assert entry["parameters"]["binary_data_size"] == len(body) - header_length
        assert "data" not in entry
    else:
        assert header_length is None
    result = parse_response(body, header_length)
    got = result.as_numpy("out")
    assert got.shape == array.shape
    assert as_list(got) == array.tolist()
    assert result.get_response()["model_name"] == "m"
    assert result.get_response()["model_version"] == "1"
    assert result.get_response()["id"] == "req-1"
    assert result.get_output("out")["datatype"] == datatype


def test_response_mixed_outputs_round_trip():
    outputs = [
        ("probs", sample("FP32", (2, 10)), True),
        ("label", np.array([b"cat", b"dog"], dtype=object), False),
        ("ids", sample("INT64", (2, 3)), True),
        ("names", np.array(["α", "β"]), True),
        ("mask", sample("BOOL", (2,)), False),
    ]
    body, header_length = encode_response("model", "7", outputs)

    header = orjson.loads(body[:header_length])
    assert "id" not in header
    assert [o["name"] for o in header["outputs"]] == [n for n, _, _ in outputs]
    blob_sizes = [
        o["parameters"]["binary_data_size"] for o in header["outputs"] if o.get("parameters")
    ]
    assert header_length + sum(blob_sizes) == len(body)

    result = parse_response(body, header_length)
    for name, array, _ in outputs:
        assert as_list(result.as_numpy(name)) == as_list(array), name


def test_response_json_layout():
    body, header_length = encode_response(
        "m", "2", [("y", np.array([[1.5, 2.0]], dtype=np.float32), False)]
    )
    assert header_length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "2",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]}],
    }


def test_response_json_of_non_contiguous_array():
    array = np.arange(12, dtype=np.int32).reshape(3, 4).T  # Fortran order
    body, _ = encode_response("m", "1", [("y", array, False)])
    assert parse_response(body, None).as_numpy("y").tolist() == array.tolist()


def test_response_binary_of_big_endian_and_non_contiguous_array():
    array = np.arange(12, dtype=">f8").reshape(3, 4)[:, ::2]
    body, header_length = encode_response("m", "1", [("y", array, True)])
    np.testing.assert_array_equal(parse_response(body, header_length).as_numpy("y"), array)


def test_response_binary_bytes_layout():
    body, header_length = encode_response(
        "m", "1", [("t", np.array([b"ab", b""], dtype=object), True)]
    )
    assert body[header_length:] == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


def test_response_json_bytes_must_be_utf8():
    with pytest.raises(InvalidInput, match="not UTF-8; request it with binary_data"):
        encode_response("m", "1", [("t", np.array([b"\xff"], dtype=object), False)])


def test_response_binary_bytes_need_not_be_utf8():
    array = np.array([b"\xff\x00"], dtype=object)
    body, header_length = encode_response("m", "1", [("t", array, True)])
    assert parse_response(body, header_length).as_numpy("t").tolist() == [b"\xff\x00"]


def test_response_unsupported_dtype():
    with pytest.raises(InvalidInput, match="no OIP datatype"):
        encode_response("m", "1", [("c", np.zeros(1, np.complex128), False)])


def test_encode_bytes_accepts_str_and_bytes():
    assert encode_bytes(np.array(["é", b"b"], dtype=object)) == bytes_blob("é".encode(), b"b")


def test_request_and_response_share_the_bytes_encoding():
    array = sample("BYTES", (4,))
    blob = encode_bytes(array)
    doc = {"inputs": [_bin_input("BYTES", [4], len(blob))]}
    body, header_length = binary_body(doc, blob)
    assert decode_request(body, header_length).inputs["x"].tolist() == array.tolist()


# -- classification ---------------------------------------------------------------------------


def test_classify_top_k_score_index():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    top = classify(scores, 2)
    assert top.dtype == object
    assert top.shape == (2, 2)
    assert top.tolist() == [
        [b"0.700000:1", b"0.200000:2"],
        # ties keep index order (stable sort)
        [b"0.500000:0", b"0.250000:1"],
    ]


def test_classify_k_larger_than_classes():
    assert classify(np.array([3.0, 1.0, 2.0]), 10).tolist() == [
        b"3.000000:0",
        b"2.000000:2",
        b"1.000000:1",
    ]


def test_classify_integer_scores():
    assert classify(np.array([[1, 5, 3]], dtype=np.int64), 1).tolist() == [[b"5.000000:1"]]


def test_classification_response_parsed_by_tritonclient():
    logits = RNG.standard_normal((2, 6)).astype(np.float32)
    top = classify(logits, 3)
    body, header_length = encode_response("m", "1", [("logits", top, True)])
    got = parse_response(body, header_length).as_numpy("logits")
    assert got.shape == (2, 3)
    for row, result in zip(logits, got, strict=True):
        indices = [int(r.split(b":")[1]) for r in result]
        assert indices == list(np.argsort(-row)[:3])
        scores = [float(r.split(b":")[0]) for r in result]
        np.testing.assert_allclose(scores, row[indices], atol=1e-6)


def test_infer_request_defaults():
    request = InferRequest(inputs={})
    assert request.outputs is None
    assert request.binary_output is False
    assert request.parameters == {}


def test_header_constant_is_lowercase():
    # Starlette's header lookup is case-insensitive but the constant is used as a key.
    assert codec.HEADER_LENGTH == "inference-header-content-length"
