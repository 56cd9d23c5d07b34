"""Open Inference Protocol v2 REST bodies <-> numpy, with the binary tensor data extension.

Specs: KServe "Open Inference Protocol" (inference request/response JSON objects) and
Triton's binary_tensor_data extension: the JSON header is followed by raw tensor bytes;
`Inference-Header-Content-Length` gives the header's length; each binary input says its
byte count in `parameters.binary_data_size`; BYTES elements are 4-byte little-endian
length prefixes followed by the bytes.
"""

from __future__ import annotations

import math
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from kindling.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

HEADER_LENGTH = "inference-header-content-length"

# OIP datatype -> numpy dtype (little-endian: the extension's byte order).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
DATATYPES: dict[np.dtype, str] = {v: k for k, v in DTYPES.items()}
LITTLE_ENDIAN = sys.byteorder == "little"


def datatype_of(array: np.ndarray) -> str:
    dtype = array.dtype
    datatype = DATATYPES.get(dtype)  # native order on little-endian hosts: no new dtype
    if datatype is not None:
        return datatype
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return DATATYPES[dtype.newbyteorder("<")]
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


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo Content-Encoding (tritonclient's request_compression_algorithm), bounded by `limit`."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r}")
    wbits = 31 if encoding == "gzip" else 15
    decoder = zlib.decompressobj(wbits)
    try:
        data = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"body is not valid {encoding}: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes")
    if not decoder.eof:
        raise InvalidInput(f"{encoding} body is truncated")
    return data


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an OIP inference request body (JSON, or JSON header + binary tensors)."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"Inference-Header-Content-Length is not an integer: {header_length!r}"
            ) from None
        if not 0 <= size <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {size} is outside the body of {len(body)} bytes"
            )
        header, binary = body[:size], memoryview(body)[size:]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("request must have a non-empty 'inputs' list")

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for raw in raw_inputs:
        array, used = _decode_input(raw, binary, offset)
        offset += used
        if array.dtype == object and array.ndim == 0:
            raise InvalidInput("BYTES input must have a shape")
        if raw["name"] in inputs:
            raise InvalidInput(f"input {raw['name']!r} appears more than once")
        inputs[raw["name"]] = array
    if offset != len(binary):
        raise InvalidInput(
            f"binary data is {len(binary)} bytes but inputs' binary_data_size add up to {offset}"
        )

    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    binary_output = bool(parameters.get("binary_data_output", False))
    outputs = None
    if doc.get("outputs") is not None:
        outputs = [_decode_output(o, binary_output) for o in _list(doc["outputs"], "outputs")]
    request_id = doc.get("id")
    return InferRequest(
        inputs=inputs,
        outputs=outputs,
        binary_output=binary_output,
        id=None if request_id is None else str(request_id),
        parameters=parameters,
    )


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
    if not isinstance(class_count, int) or class_count < 0:
        raise InvalidInput(f"output {raw['name']!r}: 'classification' must be a count >= 0")
    return RequestedOutput(
        name=raw["name"],
        binary=bool(params.get("binary_data", binary_default)),
        class_count=class_count,
    )


def _decode_input(raw: Any, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
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
    count = math.prod(shape)  # Python ints: no overflow for absurd shapes
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"input {name!r}: 'parameters' must be an object")
    size = params.get("binary_data_size")

    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInput(
                f"input {name!r}: binary_data_size {size!r} runs past the end of the body"
            )
        chunk = binary[offset : offset + size]
        if datatype == "BYTES":
            if count * 4 > size:  # every element has at least its 4-byte length prefix
                raise InvalidInput(
                    f"input {name!r}: {size} bytes cannot hold {count} BYTES elements"
                )
            return _decode_bytes(chunk, count, name).reshape(shape), size
        if size != count * dtype.itemsize:
            raise InvalidInput(
                f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} "
                f"bytes, got {size}"
            )
        # frombuffer shares the request body: no copy on the hot path.
        return np.frombuffer(chunk, dtype=dtype).reshape(shape), size

    if "data" not in raw:
        raise InvalidInput(f"input {name!r} has neither 'data' nor binary_data_size")
    try:
        if datatype == "BYTES":
            array = np.array([_as_bytes(v) for v in _flatten(raw["data"])], dtype=object)
        else:
            array = _json_numbers(raw["data"], dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(
            f"input {name!r}: data does not match datatype {datatype}: {exc}"
        ) from None
    if array.size != count:
        raise InvalidInput(f"input {name!r}: shape {shape} needs {count} values, got {array.size}")
    return array.reshape(shape), 0


# numpy kinds a JSON value may parse to, per target kind: bools only for BOOL, integers
# for integer types, integers or floats for floating types. np.asarray(data, dtype)
# alone would turn 1.7 into 1 for INT32 and the string "false" into True for BOOL.
_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def _json_numbers(data: Any, dtype: np.dtype) -> np.ndarray:
    parsed = np.asarray(data).reshape(-1)  # dtype from the JSON values themselves
    if parsed.size == 0:
        return parsed.astype(dtype)
    if parsed.dtype.kind not in _JSON_KINDS[dtype.kind]:
        # Integers past int64 (UINT64's upper half) parse to float or object: redo exactly.
        values = _flatten(data)
        if dtype.kind not in "iu" or not all(type(v) is int for v in values):
            raise TypeError(f"got {parsed.dtype.kind!r}-kind values ({parsed.dtype})")
        parsed = np.array(values, dtype=object)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if parsed.min() < info.min or parsed.max() > info.max:
            raise OverflowError(f"values outside [{info.min}, {info.max}]")
    with np.errstate(over="ignore"):  # FP16 overflow is inf, as in a binary tensor
        return parsed.astype(dtype)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"BYTES elements in JSON must be strings, got {type(value).__name__}")


def _decode_bytes(chunk: memoryview, count: int, name: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    pos, end = 0, len(chunk)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInput(f"input {name!r}: BYTES element {i} is truncated")
        length = int.from_bytes(chunk[pos : pos + 4], "little")
        pos += 4
        if pos + length > end:
            raise InvalidInput(f"input {name!r}: BYTES element {i} is truncated")
        out[i] = bytes(chunk[pos : pos + length])
        pos += length
    if pos != end:
        raise InvalidInput(f"input {name!r}: {end - pos} bytes left after {count} BYTES elements")
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
            blob = encode_bytes(array) if datatype == "BYTES" else _le_bytes(array)
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


def _le_bytes(array: np.ndarray) -> bytes:
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
