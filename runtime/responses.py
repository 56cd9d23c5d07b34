"""Errors as answers, for every transport: the body `{"error": message}`, its status and
headers, taken from the exception (kindling.errors: each type carries its status).

OIP REST (`rest.py`), OpenWhisk (`openwhisk.py`) and the image's built-in action
(`builtin_action.py`) import it from here, so none of them depends on another transport.
"""

from __future__ import annotations

import orjson

from kindling.errors import KindlingError
from kindling.runtime.httpserver import JSON, Response


def error_body(exc: KindlingError) -> bytes:
    """What every transport sends for an error (KServe's and Triton's `{"error": msg}`)."""
    return orjson.dumps({"error": exc.message})


def error_headers(exc: KindlingError) -> list[tuple[bytes, bytes]]:
    """The error's response headers (Retry-After, Allow) as the HTTP server writes them."""
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers().items()]


def error_response(exc: KindlingError) -> Response:
    """The HTTP answer to `exc`: its body, its status, its headers."""
    return Response(error_body(exc), exc.status_code, JSON, error_headers(exc))
