"""Bad input is the client's error (400, or 413 past a limit), never a 500, and no request
holds the event loop for long: the codec in process, then a real `kindling serve` over
HTTP, then OpenWhisk-on-Knative web results that must not split the response."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import itertools
import json
import socket
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kindling.errors import InvalidActionResult, InvalidInput, KindlingError, PayloadTooLarge
from kindling.runtime.action_init import InitSpec
from kindling.runtime.builtin_action import ImageAction
from kindling.runtime.codec import (
    BYTES_ELEMENT_COST,
    JSON_ARRAY_COST,
    JSON_OBJECT_COST,
    MAX_DIMS,
    classify,
    decode_body,
    decode_request,
    decompress,
    precheck,
)
from kindling.runtime.openwhisk import Outcome, http_response
from kindling.runtime.settings import ServerSettings
from tests.conftest import RuntimeProcess, launch_runtime

integration = pytest.mark.integration

X = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}


class Nested:
    """`depth` arrays around a JSON leaf, spliced into body_of's JSON as text: json.dumps
    would hit Python's recursion limit making it."""

    def __init__(self, leaf: Any, depth: int) -> None:
        self.text = "[" * depth + json.dumps(leaf) + "]" * depth


def body_of(*inputs: dict[str, Any], **doc: Any) -> bytes:
    spliced: dict[str, str] = {}

    def splice(value: Any) -> str:
        if not isinstance(value, Nested):
            raise TypeError(value)
        key = f"@nested{len(spliced)}@"
        spliced[key] = value.text
        return key

    text = json.dumps({"inputs": list(inputs), **doc}, default=splice)
    for key, raw in spliced.items():
        text = text.replace(json.dumps(key), raw)
    return text.encode()


def binary_request(inputs: list[dict[str, Any]], blob: bytes) -> tuple[bytes, str]:
    header = json.dumps({"inputs": inputs}).encode()
    return header + blob, str(len(header))


def binary_bytes_request(name: str, count: int, blob: bytes) -> tuple[bytes, str]:
    """One BYTES input of `count` elements, sent as `blob` in the binary extension."""
    params = {"binary_data_size": len(blob)}
    spec = {"name": name, "datatype": "BYTES", "shape": [count], "parameters": params}
    return binary_request([spec], blob)


def refused(body: bytes, header_length: str | None = None) -> str:
    """decode_request's 400 message for a request it must refuse."""
    with pytest.raises(InvalidInput) as info:
        decode_request(body, header_length)
    assert info.value.status_code == 400
    return info.value.message


# -- shapes and values numpy cannot hold: 400, not an uncaught ValueError -------------------


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_more_dimensions_than_numpy_holds(datatype):
    shape = [1] * 70
    data = ["a"] if datatype == "BYTES" else [1.0]
    message = refused(body_of({"name": "x", "datatype": datatype, "shape": shape, "data": data}))
    assert f"70 dimensions, at most {MAX_DIMS}" in message
    body, header_length = binary_request(
        [{"name": "x", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": 4}}],
        b"\0" * 4,
    )
    assert "70 dimensions" in refused(body, header_length)


def test_as_many_dimensions_as_numpy_holds_still_decode():
    shape = [1] * MAX_DIMS
    request = decode_request(
        body_of({"name": "x", "datatype": "FP32", "shape": shape, "data": [2.0]}), None
    )
    assert request.inputs["x"].shape == tuple(shape)


@pytest.mark.parametrize(
    "shape",
    [[0, 2**63], [0, 2**63 - 1, 2], [0, 2**62, 4], [2**62, 0, 2]],
    ids=["2^63", "2^63-1 x 2", "product", "first"],
)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_empty_tensor_whose_shape_numpy_cannot_make(shape, binary):
    """numpy refuses such a shape even with no elements ("array is too big")."""
    if binary:
        body, header_length = binary_request(
            [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": shape,
                    "parameters": {"binary_data_size": 0},
                }
            ],
            b"",
        )
    else:
        body, header_length = (
            body_of({"name": "x", "datatype": "FP32", "shape": shape, "data": []}),
            None,
        )
    assert "is too large" in refused(body, header_length)


def test_bytes_nested_past_the_recursion_limit():
    """1000 levels: past Python's recursion limit, within orjson's (1024)."""
    data = Nested("a", 1000)
    message = refused(body_of({"name": "x", "datatype": "BYTES", "shape": [1], "data": data}))
    assert "BYTES elements in JSON must be strings, got list" in message
    numbers = body_of({"name": "x", "datatype": "FP32", "shape": [1], "data": Nested(1.0, 1000)})
    assert "data does not match datatype FP32" in refused(numbers)


def test_nesting_past_orjson_depth_limit_is_invalid_json():
    assert "not valid JSON" in refused(body_of({**X, "data": Nested(1.0, 1100)}))


def test_bytes_nested_as_the_shape_still_decode():
    data = [[["a", "b"], ["c", "d"]], [["e", "f"], ["g", "h"]]]
    request = decode_request(
        body_of({"name": "x", "datatype": "BYTES", "shape": [2, 2, 2], "data": data}), None
    )
    assert request.inputs["x"].reshape(-1).tolist() == [c.encode() for c in "abcdefgh"]


def test_uint64_takes_its_whole_range_and_only_integers():
    top = 2**64 - 1
    request = decode_request(
        body_of({"name": "x", "datatype": "UINT64", "shape": [2, 2], "data": [[0, top], [1, 2]]}),
        None,
    )
    assert request.inputs["x"].tolist() == [[0, top], [1, 2]]
    for data, why in (([1, 2.5], "float"), ([True, 1], "bool"), ([2**64], ""), ([-1], "")):
        assert "does not match datatype UINT64" in refused(
            body_of(
                {
                    "name": "x",
                    "datatype": "UINT64",
                    "shape": [2 if len(data) == 2 else 1],
                    "data": data,
                }
            )
        ), why


# -- typed fields: no guessing --------------------------------------------------------------


def test_duplicate_requested_outputs_are_refused():
    body = body_of(
        X, outputs=[{"name": "logits"}, {"name": "logits", "parameters": {"binary_data": True}}]
    )
    assert refused(body) == "output 'logits' is requested more than once"


@pytest.mark.parametrize("value", ["no", "false", 0, 1, None, [], {}])
def test_binary_data_output_must_be_a_boolean(value):
    body = body_of(X, parameters={"binary_data_output": value})
    assert "'binary_data_output' must be true or false" in refused(body)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_requested_output_binary_data_must_be_a_boolean(value):
    body = body_of(X, outputs=[{"name": "y", "parameters": {"binary_data": value}}])
    assert "output 'y': 'binary_data' must be true or false" in refused(body)


def test_classification_count_is_not_a_boolean():
    body = body_of(X, outputs=[{"name": "y", "parameters": {"classification": True}}])
    assert "'classification' must be a count" in refused(body)


@pytest.mark.parametrize(
    ("size", "said"),
    [(True, "true (a boolean)"), ("1", '"1" (a string)'), (1.0, "1.0 (a number)"),
     (-1, "-1 (a number)")],
)  # fmt: skip
def test_binary_data_size_must_be_a_whole_number(size: Any, said: str):
    """What is wrong is said: the type, not a run past the body."""
    inputs = [
        {"name": "x", "datatype": "UINT8", "shape": [1], "parameters": {"binary_data_size": size}}
    ]
    body, header_length = binary_request(inputs, b"\1")
    message = refused(body, header_length)
    assert f"binary_data_size must be a whole number of bytes >= 0, got {said}" in message
    assert "runs past" not in message


def test_binary_data_size_past_the_body_says_so():
    inputs = [
        {"name": "x", "datatype": "UINT8", "shape": [2], "parameters": {"binary_data_size": 2}}
    ]
    body, header_length = binary_request(inputs, b"\1")
    assert "binary_data_size 2 runs past the end of the body" in refused(body, header_length)


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("FP32", 3.5e38), ("FP32", -1e39), ("FP16", 70000.0), ("FP64", 1e308)],
)
def test_json_numbers_past_a_float_types_range_are_refused(datatype: str, value: float):
    """JSON has no infinity: a number past the type's range would reach the model as inf
    and come back as null outputs; it is the client's error, as an integer out of range."""
    body = body_of({"name": "x", "datatype": datatype, "shape": [2], "data": [1.0, value]})
    if datatype == "FP64":  # fits: accepted
        decode_request(body, None)
        return
    assert f"data does not match datatype {datatype}: values outside" in refused(body)


@pytest.mark.parametrize(
    ("value", "kind"),
    [(42, "a number"), ({"a": 1}, "an object"), (["a"], "an array"), (True, "a boolean")],
)
def test_id_must_be_a_string(value, kind):
    assert refused(body_of(X, id=value)) == f"'id' must be a string, got {kind}"


def test_string_id_is_echoed():
    assert decode_request(body_of(X, id="req-1"), None).id == "req-1"


@pytest.mark.parametrize("value", [" 5", "+5", "5_0", "٥", "9" * 5000])
def test_header_length_is_digits_only(value):
    body = body_of(X)
    assert "Inference-Header-Content-Length" in refused(body, value)


def test_classification_of_an_output_it_cannot_rank():
    for array in (
        np.float32(1.0) * np.ones(()),
        np.array([True, False]),
        np.array([b"a"], dtype=object),
    ):
        with pytest.raises(InvalidInput, match="classification needs a numeric output"):
            classify(np.asarray(array), 1)


def test_fuzzed_shapes_and_values_are_only_client_errors():
    """A small loop over odd shapes, values and binary sizes: every refusal is a
    KindlingError with a 4xx status; nothing else escapes (a 500)."""
    shapes: list[Any] = [
        [1] * 70,
        [1] * 65,
        [-1],
        [2**63],
        [2**64],
        [2**31] * 3,
        [1.0],
        [1.5],
        [float("nan")],
        ["1"],
        [None],
        [True],
        5,
        "2",
        None,
        {},
        [[1]],
        [0],
        [],
        [0, 2**63],
        [0] * 65,
    ]
    datas: list[Any] = [
        [],
        [1],
        [[1]],
        1,
        "x",
        None,
        {},
        [True],
        [1e300],
        [-0.0],
        [[[]]],
        ["a"],
        [2**64],
        [-(2**63) - 1],
        [1, "a"],
        [[1, 2], [3]],
        [None],
        [[1], [2, 3]],
        Nested(1, 70),
        Nested("a", 1000),
    ]
    sizes: list[Any] = [0, 4, 8, -1, 2**70, 1.0, "4", None, True]
    datatypes = ["FP32", "FP16", "INT64", "UINT64", "UINT8", "BOOL", "BYTES"]
    for datatype, shape, data in itertools.product(datatypes, shapes, datas):
        body = body_of({"name": "x", "datatype": datatype, "shape": shape, "data": data})
        _only_client_errors(body, None)
    for datatype, shape, size in itertools.product(datatypes, shapes, sizes):
        params = {"binary_data_size": size}
        _only_client_errors(
            *binary_request(
                [{"name": "x", "datatype": datatype, "shape": shape, "parameters": params}],
                b"\0" * 8,
            )
        )


def _only_client_errors(body: bytes, header_length: str | None) -> None:
    try:
        decode_request(body, header_length, 1 << 20)
    except KindlingError as exc:
        assert 400 <= exc.status_code < 500, exc
    # Anything else propagates and fails the test with its traceback.


# -- Content-Encoding -----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["GZIP", "Gzip", " gzip ", "x-gzip", "DEFLATE"])
def test_content_codings_are_case_insensitive(encoding):
    compress = zlib.compress if "deflate" in encoding.lower() else gzip.compress
    assert decompress(compress(b"payload"), encoding, 100) == b"payload"


def test_every_gzip_member_is_decoded():
    body = gzip.compress(b'{"inputs": [') + gzip.compress(json.dumps(X).encode() + b"]}")
    plain = decompress(body, "gzip", 1000)
    assert decode_request(plain, None).inputs["x"].tolist() == [1.0]


def test_the_limit_counts_across_gzip_members():
    member = gzip.compress(b"x" * 600)
    assert decompress(member * 2, "gzip", 1200) == b"x" * 1200
    with pytest.raises(PayloadTooLarge):
        decompress(member * 2, "gzip", 1199)
    bomb_members = gzip.compress(b"\0" * (1 << 20)) * 64  # 64 MiB in ~65 kB
    with pytest.raises(PayloadTooLarge):
        decompress(bomb_members, "gzip", 1 << 20)


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
def test_bytes_after_the_compressed_stream_are_refused(encoding, compress):
    with pytest.raises(InvalidInput, match=encoding):
        decompress(compress(b"payload") + b"trailing junk", encoding, 100)


# -- the JSON limit -------------------------------------------------------------------------


def test_json_past_the_limit_is_413_saying_to_send_binary():
    body = body_of(X)
    cost = len(body) + 3 * JSON_ARRAY_COST + 2 * JSON_OBJECT_COST
    assert decode_request(body, None, cost).inputs["x"].tolist() == [1.0]
    with pytest.raises(PayloadTooLarge, match="3 arrays and 2 objects"):
        decode_request(body, None, cost - 1)
    with pytest.raises(PayloadTooLarge) as info:
        decode_request(body, None, len(body) - 1)
    assert info.value.status_code == 413
    assert (
        f"{len(body)} bytes of JSON exceeds the limit of {len(body) - 1} bytes for JSON"
        in info.value.message
    )
    assert "binary tensor data extension" in info.value.message


def test_arrays_and_objects_count_against_the_limit():
    flat = body_of({"name": "x", "datatype": "UINT8", "shape": [1000, 1], "data": [0] * 1000})
    deep = body_of({"name": "x", "datatype": "UINT8", "shape": [1000, 1], "data": [[0]] * 1000})
    limit = len(deep) + 1000  # the nested form's bytes fit, its 1000 more arrays do not
    assert decode_request(flat, None, limit).inputs["x"].shape == (1000, 1)
    with pytest.raises(
        PayloadTooLarge,
        match=f"1003 arrays and 2 objects .counting {JSON_ARRAY_COST} and {JSON_OBJECT_COST}",
    ):
        decode_request(deep, None, limit)
    outputs = body_of(X, outputs=[{"name": str(i)} for i in range(100)])
    with pytest.raises(PayloadTooLarge, match="102 objects"):  # the root, x, 100 outputs
        decode_request(outputs, None, len(outputs) + 100 * JSON_OBJECT_COST)


def test_binary_request_json_header_counts():
    body, header_length = binary_request(
        [{"name": "x", "datatype": "UINT8", "shape": [4], "parameters": {"binary_data_size": 4}}],
        b"\0" * 4,
    )
    size = int(header_length)
    assert decode_request(body, header_length, 1 << 20).inputs["x"].tolist() == [0] * 4
    with pytest.raises(PayloadTooLarge, match=f"{size} bytes of JSON"):
        decode_request(body, header_length, size - 1)


def test_binary_bytes_elements_count_and_are_refused_before_decoding():
    count = 1000
    blob = b"\x05\0\0\0" * count  # truncated elements: decoding them would be a 400
    body, header_length = binary_bytes_request("t", count, blob)
    with pytest.raises(PayloadTooLarge, match=f"input 't''s {count} binary BYTES elements"):
        decode_request(body, header_length, int(header_length) + count * BYTES_ELEMENT_COST - 1)
    with pytest.raises(InvalidInput, match="truncated"):  # within the limit: decoded
        decode_request(body, header_length, 1 << 20)


def test_precheck_refuses_a_declared_json_size_before_the_body():
    with pytest.raises(PayloadTooLarge, match="1001 bytes of JSON"):
        precheck({"content-length": "1001"}, 1000)
    with pytest.raises(PayloadTooLarge, match="1001 bytes of JSON"):
        precheck({"content-length": "5000000", "inference-header-content-length": "1001"}, 1000)
    precheck({"content-length": "5000000", "inference-header-content-length": "1000"}, 1000)
    precheck(
        {"content-length": "5000000", "content-encoding": "gzip"}, 1000
    )  # unknown until inflated
    with pytest.raises(PayloadTooLarge):
        precheck({"content-length": "9" * 5000}, 1000)


def test_gzip_json_inflates_only_to_the_json_limit():
    bomb = gzip.compress(b" " * (8 << 20))  # 8 MiB of JSON whitespace in ~8 kB
    with pytest.raises(
        PayloadTooLarge,
        match="the JSON body, decompressed, exceeds the limit of 1000 bytes for JSON",
    ):
        asyncio.run(decode_body(bomb, "gzip", None, 64 << 20, 1000))
    request = asyncio.run(decode_body(gzip.compress(body_of(X)), "GZIP", None, 64 << 20, 1000))
    assert request.inputs["x"].tolist() == [1.0]


def test_gzip_binary_request_inflates_to_the_body_limit():
    body, header_length = binary_request(
        [
            {
                "name": "x",
                "datatype": "UINT8",
                "shape": [4096],
                "parameters": {"binary_data_size": 4096},
            }
        ],
        b"\0" * 4096,
    )
    request = asyncio.run(decode_body(gzip.compress(body), "gzip", header_length, 1 << 20, 1000))
    assert request.inputs["x"].shape == (4096,)
    with pytest.raises(PayloadTooLarge, match=f"decompressed body exceeds {len(body) - 1} bytes"):
        asyncio.run(decode_body(gzip.compress(body), "gzip", header_length, len(body) - 1, 1000))


def test_max_json_bytes_setting():
    assert ServerSettings.from_env({}).max_json_bytes == 10 * 1024 * 1024
    assert ServerSettings.from_env({"KINDLING_MAX_JSON_BYTES": "2048"}).max_json_bytes == 2048
    with pytest.raises(KindlingError, match="KINDLING_MAX_JSON_BYTES"):
        ServerSettings.from_env({"KINDLING_MAX_JSON_BYTES": "-1"})


# -- OpenWhisk: web results, /init, the image action -----------------------------------------


def web_result(**result: Any) -> Outcome:
    return Outcome(200, json.dumps(result).encode(), result)


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"X-Echo": "ok\r\nInjected: yes"}, "not a valid HTTP field value"),
        ({"X-Echo": "ok\nInjected: yes"}, "not a valid HTTP field value"),
        ({"X-Echo": "nul\0"}, "not a valid HTTP field value"),
        ({"X-Echo": "日本"}, "not a valid HTTP field value"),
        ({"X-Echo": ["a", "b\r\nc"]}, "not a valid HTTP field value"),
        ({"X Echo": "v"}, "not an HTTP token"),
        ({"X-Echo\r\nInjected": "v"}, "not an HTTP token"),
        ({"": "v"}, "not an HTTP token"),
        ({"X-Echo": {"a": 1}}, "must be a string, number or boolean"),
        ({"X-Echo": None}, "must be a string, number or boolean"),
        (["X-Echo", "v"], "'headers' must be an object"),
    ],
)
def test_web_result_with_an_invalid_header_is_an_error(headers, match):
    with pytest.raises(InvalidActionResult, match=match) as info:
        http_response(web_result(headers=headers, body="hi"))
    assert info.value.status_code == 502


@pytest.mark.parametrize("status", ["abc", 99, 600, 101, True, 200.5, [200], 0])
def test_web_result_with_an_invalid_status_is_an_error(status):
    with pytest.raises(InvalidActionResult, match="statusCode"):
        http_response(web_result(statusCode=status, body="hi"))


def test_web_result_headers_that_are_valid():
    response = http_response(
        web_result(
            statusCode="201",
            headers={
                "X-Multi": ["a", 1, True],
                "X-Latin": "café",
                "Content-Length": "0",
                "Transfer-Encoding": "chunked",
                "Connection": "close",
            },
            body="hello",
        )
    )
    assert response.status == 201
    assert response.body == b"hello"
    assert response.headers == [
        (b"x-multi", b"a"),
        (b"x-multi", b"1"),
        (b"x-multi", b"true"),
        (b"x-latin", "café".encode("latin-1")),
    ]


def test_web_result_body_that_is_not_base64_is_an_error():
    with pytest.raises(InvalidActionResult, match="not base64"):
        http_response(web_result(headers={"Content-Type": "image/png"}, body="%%%"))


@pytest.mark.parametrize(("field", "value"), [("binary", "no"), ("binary", 1), ("name", 5)])
def test_init_fields_are_typed(field, value):
    with pytest.raises(InvalidInput, match=f"'{field}'"):
        InitSpec.parse({"value": {"code": "x", field: value}})
    assert InitSpec.parse({"value": {"code": "x", "binary": None, "name": None}}).binary is False


def test_image_web_action_with_headers_that_are_not_an_object():
    action = ImageAction(lambda: None, 1 << 20, 1 << 20)  # type: ignore[arg-type,return-value]
    web = {"__ow_method": "post", "__ow_headers": ["a"], "__ow_path": "/v2/models/m/infer"}
    encoded, _ = asyncio.run(action.run(web))
    result = json.loads(encoded)
    assert result["statusCode"] == 400
    assert result["body"]["error"] == "__ow_headers must be an object"


# -- over HTTP: a real runtime -----------------------------------------------------------------

MODEL = "squeezenet1_1"
INFER = f"/v2/models/{MODEL}/infer"
JSON_LIMIT = 10 * 1024 * 1024  # the default, as shipped


@pytest.fixture(scope="module")
def runtime(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    process = launch_runtime(
        tmp_path_factory.mktemp("bad-input"), model_repository, models=(MODEL,)
    )
    yield process
    process.stop()


def image_request() -> tuple[bytes, dict[str, str]]:
    image = np.zeros((1, 3, 224, 224), dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 3, 224, 224],
                    "parameters": {"binary_data_size": image.nbytes},
                }
            ]
        }
    ).encode()
    return header + image.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


IMAGE_JSON = {"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224]}
HTTP_400 = {
    "70 dimensions": (body_of({**IMAGE_JSON, "shape": [1] * 70, "data": [0.0]}), "70 dimensions"),
    "BYTES nested 1000 deep": (
        body_of({"name": "input", "datatype": "BYTES", "shape": [1], "data": Nested("a", 1000)}),
        "must be strings",
    ),
    "empty tensor numpy cannot shape": (
        body_of({**IMAGE_JSON, "shape": [0, 2**63], "data": []}),
        "too large",
    ),
    "duplicate outputs": (
        body_of(
            {**IMAGE_JSON, "data": [0.0] * 150528}, outputs=[{"name": "logits"}, {"name": "logits"}]
        ),
        "requested more than once",
    ),
    "binary_data_output no": (
        body_of({**IMAGE_JSON, "data": [0.0] * 150528}, parameters={"binary_data_output": "no"}),
        "must be true or false",
    ),
    "id an object": (
        body_of({**IMAGE_JSON, "data": [0.0] * 150528}, id={"a": 1}),
        "'id' must be a string",
    ),
}


@integration
@pytest.mark.parametrize("case", list(HTTP_400))
def test_bad_input_is_400_over_http(runtime, case):
    body, message = HTTP_400[case]
    status, _, payload = runtime.post(INFER, body, {"Content-Type": "application/json"})
    assert status == 400, payload
    assert message in json.loads(payload)["error"]


@integration
def test_json_declared_over_the_limit_is_refused_before_its_body(runtime):
    """The 413 comes back while the body is still unsent, so nothing was read or decoded;
    /v2/health/live, on a second connection, is answered meanwhile."""
    conn = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=120)
    try:
        conn.putrequest("POST", INFER)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(JSON_LIMIT + 1))
        conn.endheaders()  # the head only: not a byte of the body follows
        assert runtime.get("/v2/health/live")[0] == 200
        response = conn.getresponse()
        status, error = response.status, json.loads(response.read())["error"]
    finally:
        conn.close()
    assert status == 413
    assert (
        f"{JSON_LIMIT + 1} bytes of JSON exceeds the limit of {JSON_LIMIT} bytes for JSON" in error
    )
    assert "binary tensor data extension" in error


def gzip_bomb(inflated: int) -> bytes:
    """A JSON inference request of `inflated` bytes, gzip-compressed to ~1/1000 of that."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    count = inflated // 2
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [count]}]})[:-3]
    parts = [compressor.compress(head.encode() + b', "data": [')]
    chunk = b"0," * (1 << 19)
    for _ in range(count // (1 << 19)):
        parts.append(compressor.compress(chunk))
    parts += [compressor.compress(b"0]}]}"), compressor.flush()]
    return b"".join(parts)


@integration
def test_gzip_bomb_of_json_is_413_and_the_server_stays_live(runtime):
    bomb = gzip_bomb(64 << 20)  # the issue's: ~64 kB inflating to 64 MiB of JSON numbers
    assert len(bomb) < 100_000
    conn = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=120)
    try:
        conn.request(
            "POST",
            INFER,
            body=bomb,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        assert runtime.get("/v2/health/live")[0] == 200  # a second connection, meanwhile
        response = conn.getresponse()
        status, error = response.status, json.loads(response.read())["error"]
    finally:
        conn.close()
    assert status == 413
    assert "the JSON body, decompressed, exceeds the limit" in error
    assert runtime.get("/v2/health/live")[0] == 200


@integration
def test_many_binary_bytes_elements_are_413_not_decoded(runtime):
    count = JSON_LIMIT // BYTES_ELEMENT_COST + 1
    blob = b"\0\0\0\0" * count  # empty strings: 4 bytes each
    body, header_length = binary_bytes_request("input", count, blob)
    status, _, payload = runtime.post(
        INFER, body, {"Inference-Header-Content-Length": header_length}
    )
    assert status == 413, payload
    assert f"{count} binary BYTES elements" in json.loads(payload)["error"]


@integration
@pytest.mark.parametrize("encoding", ["GZIP", "x-gzip"])
def test_content_coding_names_are_case_insensitive_over_http(runtime, encoding):
    body, headers = image_request()
    status, _, payload = runtime.post(
        INFER, gzip.compress(body), {**headers, "Content-Encoding": encoding}
    )
    assert status == 200, payload


@integration
def test_a_body_of_two_gzip_members_is_decoded_whole(runtime):
    body, headers = image_request()
    half = len(body) // 2
    two = gzip.compress(body[:half]) + gzip.compress(body[half:])
    status, _, payload = runtime.post(INFER, two, {**headers, "Content-Encoding": "gzip"})
    assert status == 200, payload  # the second member once was dropped: a truncated body


# -- over HTTP: OpenWhisk on Knative, action code's headers -------------------------------------

HEADERS_ACTION = """
def main(args):
    kind = args.get("kind")
    if kind == "crlf":
        return {"headers": {"X-Echo": "ok\\r\\nInjected: yes"}, "body": "hi"}
    if kind == "name":
        return {"headers": {"X-Echo\\r\\nInjected": "yes"}, "body": "hi"}
    if kind == "status":
        return {"statusCode": "abc", "body": "hi"}
    if kind == "length":
        return {"headers": {"Content-Length": "0", "X-Ok": "1"}, "body": "hello"}
    return {"headers": {"X-Multi": ["a", 1, True]}, "body": "fine"}
"""


@pytest.fixture(scope="module")
def knative(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    workdir = tmp_path_factory.mktemp("knative")
    repository = workdir / "empty-repository"
    repository.mkdir()
    env = {"__OW_RUNTIME_PLATFORM": "knative", "KINDLING_REDIS_URL": ""}
    process = launch_runtime(workdir, repository, env=env, openwhisk=True)
    yield process
    process.stop()


def raw_post(
    runtime: RuntimeProcess, doc: dict[str, Any]
) -> tuple[str, list[tuple[str, str]], bytes]:
    """POST / on a raw socket, read to EOF: the response exactly as sent, so an injected
    header or a second Content-Length shows."""
    body = json.dumps(doc).encode()
    head = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", runtime.port), timeout=120) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    raw_head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    fields = [
        (name.lower(), value.strip()) for name, _, value in (line.partition(":") for line in lines)
    ]
    return status_line, fields, payload


@integration
def test_knative_action_headers_cannot_split_the_response(knative):
    init = {"main": "main", "code": HEADERS_ACTION, "binary": "no"}
    status_line, _, payload = raw_post(knative, {"init": init, "activation": {}, "value": {}})
    assert status_line.startswith("HTTP/1.1 400 "), payload
    assert json.loads(payload)["error"] == "/init's 'binary' must be true or false"
    init["binary"] = False
    status_line, fields, payload = raw_post(knative, {"init": init, "activation": {}, "value": {}})
    assert status_line.startswith("HTTP/1.1 200 ") and payload == b"fine", payload
    assert [v for k, v in fields if k == "x-multi"] == ["a", "1", "true"]

    for kind, message in (
        ("crlf", "not a valid HTTP field value"),
        ("name", "not an HTTP token"),
        ("status", "statusCode"),
    ):
        status_line, fields, payload = raw_post(
            knative, {"activation": {}, "value": {"kind": kind}}
        )
        assert status_line.startswith("HTTP/1.1 502 "), (kind, payload)
        assert "injected" not in dict(fields), kind
        assert message in json.loads(payload)["error"], kind

    status_line, fields, payload = raw_post(
        knative, {"activation": {}, "value": {"kind": "length"}}
    )
    assert status_line.startswith("HTTP/1.1 200 ")
    assert [v for k, v in fields if k == "content-length"] == ["5"]  # the server's only
    assert payload == b"hello" and ("x-ok", "1") in fields
