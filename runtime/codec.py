"""Open Inference Protocol v2 REST bodies <-> numpy, with the binary tensor data extension.

Specs: KServe "Open Inference Protocol" (inference request/response JSON objects) and
Triton's binary_tensor_data extension: the JSON header is followed by raw tensor bytes;
`Inference-Header-Content-Length` gives the header's length; each binary input says its
byte count in `parameters.binary_data_size`; BYTES elements are 4-byte little-endian
length prefixes followed by the bytes.
"""

from __future__ import annotations

import asyncio
import gc
import math
import struct
import sys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from kindling.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from kindling.runtime.dtypes import DTYPES

HEADER_LENGTH = "inference-header-content-length"
# numpy's NPY_MAXDIMS: an array of more dimensions cannot be made (64 since numpy 2.0).
MAX_DIMS = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32
# numpy refuses a shape whose size (zero dimensions taken as 1) times the itemsize passes
# this, even for an empty array.
MAX_NBYTES = np.iinfo(np.intp).max
# What decoding costs against the JSON limit, in bytes of JSON, beyond the JSON's own: a
# JSON array (a list for orjson to make and numpy to walk) and a binary BYTES element
# (sliced out one by one in Python) take ~0.2-0.3 us each, as long as ~8 bytes of the
# costliest flat JSON ("0,0,...", ~30 ns/byte); a JSON object up to ~5 us (an input or
# requested output, checked in Python). So a request at the limit holds the loop about
# as long whatever its form (README "Request limits").
JSON_ARRAY_COST = 8
JSON_OBJECT_COST = 128
BYTES_ELEMENT_COST = 8
# Content-Encoding -> zlib wbits. RFC 9110 §8.4.1: codings are case-insensitive;
# §8.4.1.3: "x-gzip" is "gzip"; "deflate" is the zlib format (RFC 1950).
CODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
_U32 = struct.Struct("<I")
# JSON from this size on is decoded with the cyclic GC paused (decode_request).
GC_PAUSE_BYTES = 64 * 1024

# numpy dtype -> OIP datatype, the inverse of DTYPES (kindling.runtime.dtypes).
DATATYPE_OF: dict[np.dtype, str] = {v: k for k, v in DTYPES.items()}
LITTLE_ENDIAN = sys.byteorder == "little"


def datatype_of(array: np.ndarray) -> str:
    dtype = array.dtype
    datatype = DATATYPE_OF.get(dtype)  # native order on little-endian hosts: no new dtype
    if datatype is not None:
        return datatype
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return DATATYPE_OF[dtype.newbyteorder("<")]
    except KeyError:
        raise InvalidInput(f"dtype {array.dtype} has no OIP datatype") from None


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    class_count: int = 0
    """Triton's classification extension: return the top-k as "score:index" strings."""


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None = None
    """None: every output of the model, binary when `binary_output` is set."""
    binary_output: bool = False
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def is_identity(encoding: str | None) -> bool:
    return not encoding or encoding.strip().lower() == "identity"


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo Content-Encoding (tritonclient's request_compression_algorithm), bounded by `limit`.

    Every member of a gzip body is decoded (RFC 1952 §2.2: a gzip file is a series of
    members; curl and Go's compress/gzip read them all), the limit counting across them;
    zlib never inflates more than the limit allows, so a bomb costs at most `limit` bytes.
    """
    if is_identity(encoding):
        return body
    assert encoding is not None
    coding = encoding.strip().lower()
    wbits = CODINGS.get(coding)
    if wbits is None:
        raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r}")
    parts: list[bytes] = []
    size = 0
    data: bytes = body
    while True:
        decoder = zlib.decompressobj(wbits)
        try:
            part = decoder.decompress(data, limit + 1 - size)
        except zlib.error as exc:
            raise InvalidInput(f"body is not valid {coding}: {exc}") from None
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes")
        parts.append(part)
        if not decoder.eof:
            raise InvalidInput(f"{coding} body is truncated")
        data = decoder.unused_data
        if not data:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if wbits != CODINGS["gzip"]:  # a zlib stream is one stream: no members follow
            raise InvalidInput(f"{len(data)} bytes follow the end of the {coding} stream")


def json_too_large(limit: int, what: str) -> PayloadTooLarge:
    """The one 413 for a request past the JSON limit, saying where big tensors go instead."""
    return PayloadTooLarge(
        f"{what} exceeds the limit of {limit} bytes for JSON; send large tensors as binary "
        "data (binary tensor data extension, Inference-Header-Content-Length)"
    )


def precheck(headers: Mapping[str, str], max_json_bytes: int) -> None:
    """Refuse, before its body is read, a request whose JSON is declared over the limit:
    the JSON header of a binary request, or a whole uncompressed JSON body."""
    declared = headers.get(HEADER_LENGTH)
    if declared is None and is_identity(headers.get("content-encoding")):
        declared = headers.get("content-length")
    size = None if declared is None else _byte_count(declared)
    if size is not None and size > max_json_bytes:
        raise json_too_large(max_json_bytes, f"{size} bytes of JSON")


def _byte_count(text: str) -> int | None:
    """1*DIGIT, RFC 9110 §8.6's Content-Length grammar, as an int; None if not that (int()
    alone takes " 5", "+5" and "5_0", and raises past 4300 digits)."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    return int(digits[:20])  # cut past 20 digits, still over any body: 10**19 or more


async def decode_body(
    body: bytes,
    encoding: str | None,
    header_length: str | None,
    max_body_bytes: int,
    max_json_bytes: int,
) -> InferRequest:
    """Decompress, then decode, a request body. A JSON body (no header length) may inflate
    only to the JSON limit; inflating runs in a thread, as zlib releases the GIL."""
    if not is_identity(encoding):
        limit = max_body_bytes if header_length is not None else min(max_body_bytes, max_json_bytes)
        try:
            body = await asyncio.to_thread(decompress, body, encoding, limit)
        except PayloadTooLarge:
            if limit == max_json_bytes and header_length is None:
                raise json_too_large(max_json_bytes, "the JSON body, decompressed,") from None
            raise
    return decode_request(body, header_length, max_json_bytes)


def decode_request(
    body: bytes, header_length: str | None, max_json_bytes: int | None = None
) -> InferRequest:
    """Parse an OIP inference request body (JSON, or JSON header + binary tensors).

    `max_json_bytes` bounds what is decoded value by value, holding the event loop (and
    the GIL: orjson and numpy's list conversion never release it): the JSON's bytes, plus
    JSON_ARRAY_COST per array and JSON_OBJECT_COST per object in it, and BYTES_ELEMENT_COST
    per element of binary BYTES tensors. None: unbounded.
    """
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        size = _byte_count(header_length)
        if size is None:
            raise InvalidInput(
                f"Inference-Header-Content-Length is not a byte count: {header_length!r}"
            )
        if size > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {size} is outside the body of {len(body)} bytes"
            )
        header, binary = body[:size], memoryview(body)[size:]
    budget = math.inf
    if max_json_bytes is not None:
        if len(header) > max_json_bytes:
            raise json_too_large(max_json_bytes, f"{len(header)} bytes of JSON")
        # Upper bounds (a bracket in a string counts too), at C speed.
        arrays, objects = header.count(b"["), header.count(b"{")
        budget = (
            max_json_bytes - len(header) - arrays * JSON_ARRAY_COST - objects * JSON_OBJECT_COST
        )
        if budget < 0:
            raise json_too_large(
                max_json_bytes,
                f"{len(header)} bytes of JSON with {arrays} arrays and {objects} objects "
                f"(counting {JSON_ARRAY_COST} and {JSON_OBJECT_COST} bytes more each)",
            )
    if len(header) < GC_PAUSE_BYTES or not gc.isenabled():
        return _decode_doc(header, binary, budget, max_json_bytes)
    # orjson makes a list per JSON array, numpy walks them: with the cyclic GC on, every
    # 700 new containers start a collection, which made "[[0],[0],...]" cost 79 ms/MiB
    # instead of 29. Nothing decoded forms a cycle, and by the return all of it is freed or
    # held by the result (arrays, not tracked), so the GC comes back with nothing to scan.
    gc.disable()
    try:
        return _decode_doc(header, binary, budget, max_json_bytes)
    finally:
        gc.enable()


def _decode_doc(
    header: bytes | memoryview, binary: memoryview, budget: float, max_json_bytes: int | None
) -> InferRequest:
    doc = json_object(header)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("request must have a non-empty 'inputs' list")

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for raw in raw_inputs:
        name, dtype, shape, count = _describe_input(raw)
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears more than once")
        array, used, cost = _decode_input(
            raw, name, dtype, shape, count, binary, offset, budget, max_json_bytes
        )
        budget -= cost
        offset += used
        if array.dtype == object and array.ndim == 0:
            raise InvalidInput("BYTES input must have a shape")
        inputs[name] = array
    if offset != len(binary):
        raise InvalidInput(
            f"binary data is {len(binary)} bytes but inputs' binary_data_size add up to {offset}"
        )

    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    binary_output = _flag(parameters, "binary_data_output", False, None)
    outputs = None
    if doc.get("outputs") is not None:
        outputs = [_decode_output(o, binary_output) for o in _list(doc["outputs"], "outputs")]
        seen: set[str] = set()
        for output in outputs:  # as inputs: one name, one answer
            if output.name in seen:
                raise InvalidInput(f"output {output.name!r} is requested more than once")
            seen.add(output.name)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        # OIP: "id": $string. A number or object has no one string form to echo back.
        raise InvalidInput(f"'id' must be a string, got {_json_type(request_id)}")
    return InferRequest(
        inputs=inputs,
        outputs=outputs,
        binary_output=binary_output,
        id=request_id,
        parameters=parameters,
    )


def json_object(body: bytes | memoryview) -> dict[str, Any]:
    """A request body that must be one JSON object; 400 otherwise."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    return doc


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object"}.get(
        type(value), "a number"
    )


def _flag(params: dict[str, Any], key: str, default: bool, output: str | None) -> bool:
    """A boolean parameter (of a requested output, if named): true or false, never a value
    guessed into one ("no" is truthy)."""
    value = params.get(key, default)
    if type(value) is not bool:
        where = "" if output is None else f"output {output!r}: "
        raise InvalidInput(f"{where}'{key}' must be true or false, got {_json_type(value)}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"'{what}' must be a list")
    return value


def _decode_output(raw: Any, binary_default: bool) -> RequestedOutput:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InvalidInput("each requested output must be an object with a 'name'")
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"output {raw['name']!r}: 'parameters' must be an object")
    class_count = params.get("classification", 0)
    if type(class_count) is not int or class_count < 0:  # type(): true is an int to Python
        raise InvalidInput(f"output {raw['name']!r}: 'classification' must be a count >= 0")
    return RequestedOutput(
        name=raw["name"],
        binary=_flag(params, "binary_data", binary_default, raw["name"]),
        class_count=class_count,
    )


def _describe_input(raw: Any) -> tuple[str, np.dtype, list[int], int]:
    """An input's name, dtype, shape and element count, each checked."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InvalidInput("each input must be an object with a string 'name'")
    name = raw["name"]
    datatype = raw.get("datatype")
    dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(f"input {name!r}: unsupported datatype {datatype!r}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
        type(d) is int and d >= 0
        for d in shape  # JSON true/false are ints to Python
    ):
        raise InvalidInput(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"input {name!r}: {len(shape)} dimensions, at most {MAX_DIMS}")
    count = math.prod(shape)  # Python ints: no overflow
    if (count or math.prod(d or 1 for d in shape)) * dtype.itemsize > MAX_NBYTES:
        raise InvalidInput(f"input {name!r}: shape {shape} is too large")
    return name, dtype, shape, count


def _decode_input(
    raw: dict[str, Any],
    name: str,
    dtype: np.dtype,
    shape: list[int],
    count: int,
    binary: memoryview,
    offset: int,
    budget: float,
    max_json_bytes: int | None,
) -> tuple[np.ndarray, int, int]:
    """The input's array, the binary bytes it used, and what it costs of the JSON limit's
    `budget` beyond its JSON: its binary BYTES elements, refused before decoding."""
    datatype = raw["datatype"]
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"input {name!r}: 'parameters' must be an object")
    size = params.get("binary_data_size")

    if size is not None:
        if type(size) is not int or size < 0:  # type(): true is an int to Python
            raise InvalidInput(
                f"input {name!r}: binary_data_size must be a whole number of bytes >= 0, "
                f"got {orjson.dumps(size).decode()} ({_json_type(size)})"
            )
        if offset + size > len(binary):
            raise InvalidInput(
                f"input {name!r}: binary_data_size {size} runs past the end of the body"
            )
        chunk = binary[offset : offset + size]
        if datatype == "BYTES":
            if count * 4 > size:  # every element has at least its 4-byte length prefix
                raise InvalidInput(
                    f"input {name!r}: {size} bytes cannot hold {count} BYTES elements"
                )
            cost = count * BYTES_ELEMENT_COST
            if cost > budget:
                assert max_json_bytes is not None
                raise json_too_large(
                    max_json_bytes,
                    f"the JSON with input {name!r}'s {count} binary BYTES elements (each "
                    f"decoded alone, as a JSON value is, and counting {BYTES_ELEMENT_COST} bytes)",
                )
            return decode_bytes(chunk, count, name).reshape(shape), size, cost
        if size != count * dtype.itemsize:
            raise InvalidInput(
                f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} "
                f"bytes, got {size}"
            )
        # frombuffer shares the request body: no copy on the hot path.
        return np.frombuffer(chunk, dtype=dtype).reshape(shape), size, 0

    if "data" not in raw:
        raise InvalidInput(f"input {name!r} has neither 'data' nor binary_data_size")
    try:
        if datatype == "BYTES":
            array = _json_bytes(raw["data"])
        else:
            array = _json_numbers(raw["data"], dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(
            f"input {name!r}: data does not match datatype {datatype}: {exc}"
        ) from None
    if array.size != count:
        raise InvalidInput(f"input {name!r}: shape {shape} needs {count} values, got {array.size}")
    return array.reshape(shape), 0, 0


# numpy kinds a JSON value may parse to, per target kind: bools only for BOOL, integers
# for integer types, integers or floats for floating types. np.asarray(data, dtype)
# alone would turn 1.7 into 1 for INT32 and the string "false" into True for BOOL.
_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def _json_numbers(data: Any, dtype: np.dtype) -> np.ndarray:
    if dtype == DTYPES["UINT64"]:
        # Its upper half is past int64, where np.asarray would go to float (inexact): take
        # the ints as they are, at C speed (map, numpy's conversion; the loop is held).
        values = _leaves(data)
        kinds = set(map(type, values))  # type(): true is an int to Python
        if not kinds <= {int}:
            raise TypeError(f"got {', '.join(sorted(k.__name__ for k in kinds - {int}))}")
        return np.array(values, dtype=dtype)  # OverflowError outside [0, 2**64)
    parsed = np.asarray(data).reshape(-1)  # dtype from the JSON values themselves
    if parsed.size == 0:
        return parsed.astype(dtype)
    if parsed.dtype.kind not in _JSON_KINDS[dtype.kind]:
        raise TypeError(f"got {parsed.dtype.kind!r}-kind values ({parsed.dtype})")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if parsed.min() < info.min or parsed.max() > info.max:
            raise OverflowError(f"values outside [{info.min}, {info.max}]")
    with np.errstate(over="ignore"):
        array = parsed.astype(dtype)
    # JSON has no infinity: a non-finite value here is a number past the type's range
    # (3.5e38 as FP32), which the model would turn into null outputs. A binary tensor may
    # carry inf as it is; JSON, like the integer types above, must fit.
    if dtype.kind == "f" and not np.isfinite(array).all():
        limit = np.finfo(dtype).max
        raise OverflowError(f"values outside [-{limit:.8g}, {limit:.8g}]")
    return array


def _json_bytes(data: Any) -> np.ndarray:
    """JSON strings as a flat object array of UTF-8 bytes."""
    values = _leaves(data)
    try:
        encoded = list(map(str.encode, values))  # C speed: no Python loop per element
    except TypeError:
        wrong = next(v for v in values if not isinstance(v, str))
        raise TypeError(
            f"BYTES elements in JSON must be strings, got {type(wrong).__name__}"
        ) from None
    array = np.empty(len(encoded), dtype=object)
    array[:] = encoded
    return array


def _leaves(data: Any) -> list[Any]:
    """Nested lists' leaves in order. numpy walks the nesting in C, with no recursion limit
    to hit (orjson nests arrays up to 1024 deep), and stops at MAX_DIMS: ragged or deeper
    lists stay lists, which the caller's type check refuses."""
    if isinstance(data, list) and not (data and isinstance(data[0], list)):
        return data  # flat already (a list further in is left to that check)
    return np.array(data, dtype=object).reshape(-1).tolist()


def decode_bytes(chunk: memoryview, count: int, name: str) -> np.ndarray:
    # One copy of the chunk, then a slice per element: slicing bytes makes the element in
    # one step, where a memoryview slice and bytes() of it take two.
    raw = bytes(chunk)
    end = len(raw)
    items: list[bytes] = []
    append = items.append
    unpack = _U32.unpack_from
    pos = 0
    for i in range(count):
        start = pos + 4
        if start > end:
            raise InvalidInput(f"input {name!r}: BYTES element {i} is truncated")
        pos = start + unpack(raw, pos)[0]
        if pos > end:
            raise InvalidInput(f"input {name!r}: BYTES element {i} is truncated")
        append(raw[start:pos])
    if pos != end:
        raise InvalidInput(f"input {name!r}: {end - pos} bytes left after {count} BYTES elements")
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


def encode_bytes(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(len(data).to_bytes(4, "little"))
        parts.append(data)
    return b"".join(parts)


def classify(array: np.ndarray, k: int) -> np.ndarray:
    """Top-k along the last axis as Triton's "score:index" BYTES strings."""
    if array.ndim == 0 or array.dtype.kind not in "iuf":  # no axis, or no order to rank by
        raise InvalidInput(
            f"classification needs a numeric output of one dimension or more, got "
            f"{datatype_of(array)} of shape {list(array.shape)}"
        )
    k = min(k, array.shape[-1])
    top = np.argsort(-array, axis=-1, kind="stable")[..., :k]
    scores = np.take_along_axis(array, top, axis=-1)
    flat = [f"{s:f}:{i}".encode() for s, i in zip(scores.reshape(-1), top.reshape(-1), strict=True)]
    return np.array(flat, dtype=object).reshape(top.shape)


def encode_response(
    model_name: str,
    model_version: str,
    outputs: list[tuple[str, np.ndarray, bool]],
    request_id: str | None = None,
) -> tuple[bytes, int | None]:
    """Build the response body; returns it and the JSON header length (None if all JSON)."""
    json_outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array, binary in outputs:
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = encode_bytes(array) if datatype == "BYTES" else le_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            entry["data"] = [_text(v) for v in array.reshape(-1)]
        else:
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        json_outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = json_outputs
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def le_bytes(array: np.ndarray) -> bytes:
    if array.dtype.byteorder == "<" or (array.dtype.byteorder in "=|" and LITTLE_ENDIAN):
        return array.tobytes()  # C order, whatever the array's layout
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("a BYTES output is not UTF-8; request it with binary_data") from None
