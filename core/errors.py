"""Every error a client can cause or see, each carrying its HTTP status.

Transports (OIP REST, OpenWhisk, the embeddings service) turn any `KindlingError` into
`{"error": message}` with `status_code` in one handler; nothing else maps errors to codes.
"""

from __future__ import annotations

import math


class KindlingError(Exception):
    """Base class: a failure with a message safe to show to the client."""

    status_code = 500
    # Seconds a client should wait before retrying, sent as Retry-After when set.
    retry_after: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        """Response headers the error calls for (RFC 9110): Retry-After in whole seconds."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class InvalidInput(KindlingError):
    """The request is malformed: bad JSON, wrong shape or datatype, missing input."""

    status_code = 400


class ModelNotFound(KindlingError):
    status_code = 404

    def __init__(self, name: str, version: str | None = None) -> None:
        which = f"{name!r} version {version!r}" if version else repr(name)
        super().__init__(f"model {which} not found")


class RouteNotFound(KindlingError):
    """No route for the path (an unknown model is ModelNotFound)."""

    status_code = 404


class MethodNotAllowed(KindlingError):
    status_code = 405

    def __init__(self, message: str, allow: list[str]) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Allow": ", ".join(self.allow)}  # RFC 9110 §15.5.6


class PayloadTooLarge(KindlingError):
    status_code = 413


class HeadTooLarge(KindlingError):
    """The request line and headers exceed the server's limit."""

    status_code = 431


class RequestTimeout(KindlingError):
    """The client took too long to send a request's head or body; answered, then the
    connection closes (RFC 9110 §15.5.9)."""

    status_code = 408


class UnsupportedTransferCoding(KindlingError):
    """A Transfer-Encoding other than chunked (RFC 9112 §6.1: a server that does not
    understand a transfer coding responds 501)."""

    status_code = 501


class ExpectationFailed(KindlingError):
    """An Expect the server cannot meet: anything but 100-continue (RFC 9110 §10.1.1)."""

    status_code = 417


class MethodNotImplemented(KindlingError):
    """A request method the server does not know (RFC 9110 §9.1)."""

    status_code = 501


class HttpVersionNotSupported(KindlingError):
    """A request in an HTTP version other than 1.0 or 1.1 (RFC 9110 §15.6.6); HTTP/2 has
    its own listener (gRPC)."""

    status_code = 505


class ServerBusy(KindlingError):
    """The server holds as much for clients as it allows (memory for request bodies); the
    client may retry shortly."""

    status_code = 503
    retry_after = 1.0


class UnsupportedMediaType(KindlingError):
    status_code = 415


class InvalidActionResult(KindlingError):
    """An OpenWhisk web action's result that cannot be the HTTP response it asks for (a
    bad statusCode, a header that is not a valid field, a body that is not base64): the
    action's fault, answered as a gateway answers an invalid response from upstream
    (RFC 9110 §15.6.3), never sent on half-checked."""

    status_code = 502


class ModelNotReady(KindlingError):
    """The model is loading or failed to load; the client may retry."""

    status_code = 503
    retry_after = 1.0


class DependencyUnavailable(KindlingError):
    """A backing service (Redis) is down or timed out; fail fast and let the client retry."""

    status_code = 503
    retry_after = 1.0


class EmbeddingTableMissing(KindlingError):
    """A text model's embedding table is not in the store (never loaded, or a Redis without
    persistence restarted empty): the model is healthy but cannot serve until someone loads
    the table, so 503, not the store's own 404 for an unknown table."""

    status_code = 503
    # A load takes seconds at the least (embeddings/bench_loader.py): retrying sooner
    # only adds failures.
    retry_after = 5.0

    def __init__(self, model: str, table: str) -> None:
        super().__init__(
            f"model {model!r} cannot serve: embedding table {table!r} is missing from the "
            "embedding store (a Redis without persistence restarted empty?); load it with "
            f"`kindling embeddings load --table {table} --format FORMAT FILE --redis URL`"
        )
        self.table = table


class ModelLoadError(KindlingError):
    """A model could not be fetched or loaded (bad URI, download failure, invalid ONNX)."""

    status_code = 503


class InferenceError(KindlingError):
    """onnxruntime rejected or failed a batch that passed validation."""

    status_code = 500
