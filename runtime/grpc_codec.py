"""OIP gRPC messages <-> the data plane's `InferRequest` and outputs.

Spec: KServe's grpc_predict_v2.proto, as Triton's grpc_service.proto extends it. An input's
data is either `raw_input_contents[i]` (little-endian bytes, BYTES elements with 4-byte
length prefixes: the REST binary extension's layout), present for all inputs or none, or
the typed `contents` field for its datatype (FP16 has none: raw only). Outputs always go
back as `raw_output_contents`, as Triton's server sends them and tritonclient reads them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kindling.errors import InvalidInput
from kindling.runtime import grpc_service_pb2 as pb
from kindling.runtime.codec import (
    BYTES_ELEMENT_COST,
    DTYPES,
    MAX_DIMS,
    MAX_NBYTES,
    InferRequest,
    RequestedOutput,
    datatype_of,
    decode_bytes,
    encode_bytes,
    json_too_large,
    le_bytes,
)

# OIP datatype -> InferTensorContents field (grpc_predict_v2.proto, "InferTensorContents").
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_infer_request(message: Any, max_json_bytes: int) -> InferRequest:
    """A ModelInferRequest as the data plane's InferRequest; InvalidInput when malformed.

    BYTES elements are made one by one in Python, holding the event loop: as in a REST
    request, each counts BYTES_ELEMENT_COST against KINDLING_MAX_JSON_BYTES (codec.py),
    so a message of millions of empty strings is refused (413) before it is decoded.
    """
    elements = sum(
        math.prod(t.shape)
        for t in message.inputs
        if t.datatype == "BYTES" and min(t.shape, default=0) >= 0
    )
    if elements * BYTES_ELEMENT_COST > max_json_bytes:
        raise json_too_large(
            max_json_bytes,
            f"{elements} BYTES elements (each decoded alone, counting {BYTES_ELEMENT_COST} bytes)",
        )
    if not message.inputs:
        raise InvalidInput("request must have at least one input")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs: raw contents "
            "must be given for every input or none"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(message.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears more than once")
        inputs[name] = _decode_input(tensor, raw[i] if raw else None)
    outputs = None
    if message.outputs:
        outputs = []
        for wanted in message.outputs:
            if any(o.name == wanted.name for o in outputs):
                raise InvalidInput(f"output {wanted.name!r} is requested more than once")
            outputs.append(_requested_output(wanted))
    return InferRequest(inputs=inputs, outputs=outputs, binary_output=True, id=message.id or None)


def _decode_input(tensor: Any, raw: bytes | None) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name!r}: unsupported datatype {datatype!r}")
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: 'shape' must be non-negative integers")
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"input {name!r}: {len(shape)} dimensions, at most {MAX_DIMS}")
    count = math.prod(shape)
    if (count or math.prod(d or 1 for d in shape)) * dtype.itemsize > MAX_NBYTES:
        raise InvalidInput(f"input {name!r}: shape {shape} is too large")
    if raw is not None:
        if datatype == "BYTES":
            if count * 4 > len(raw):  # every element has at least its 4-byte length prefix
                raise InvalidInput(
                    f"input {name!r}: {len(raw)} bytes cannot hold {count} BYTES elements"
                )
            return decode_bytes(memoryview(raw), count, name).reshape(shape)
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(
                f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} "
                f"bytes, got {len(raw)}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)  # shares the message's bytes
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input {name!r}: {datatype} has no typed contents; send it raw")
    set_fields = [f.name for f, _ in tensor.contents.ListFields()]
    if set_fields and set_fields != [field]:
        raise InvalidInput(f"input {name!r}: {datatype} data goes in contents.{field}")
    values = list(getattr(tensor.contents, field))
    if len(values) != count:
        raise InvalidInput(f"input {name!r}: shape {shape} needs {count} values, got {len(values)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        # int_contents is int32 and uint_contents uint32 on the wire: narrower types must fit.
        return np.array(values, dtype=dtype).reshape(shape)
    except OverflowError as exc:
        raise InvalidInput(f"input {name!r}: data does not fit {datatype}: {exc}") from None


def _requested_output(wanted: Any) -> RequestedOutput:
    class_count = 0
    if "classification" in wanted.parameters:
        param = wanted.parameters["classification"]
        kind = param.WhichOneof("parameter_choice")
        if kind not in ("int64_param", "uint64_param") or getattr(param, kind) < 0:
            raise InvalidInput(f"output {wanted.name!r}: 'classification' must be a count >= 0")
        class_count = getattr(param, kind)
    return RequestedOutput(name=wanted.name, binary=True, class_count=class_count)


def encode_infer_response(
    model_name: str,
    model_version: str,
    outputs: list[tuple[str, np.ndarray, bool]],
    request_id: str | None,
) -> Any:
    """ModelInferResponse with every output in raw_output_contents."""
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id or ""
    )
    for name, array, _binary in outputs:
        datatype = datatype_of(array)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(
            encode_bytes(array) if datatype == "BYTES" else le_bytes(array)
        )
    return response
