"""Errors carry their status and the headers they call for (kindling.errors)."""

from __future__ import annotations

from kindling.errors import (
    DependencyUnavailable,
    InvalidInput,
    KindlingError,
    MethodNotAllowed,
    ModelNotReady,
)
from kindling.runtime.responses import error_response


def test_retry_after_is_whole_seconds_and_at_least_one():
    for seconds, header in ((0.2, "1"), (2.5, "3"), (None, None)):
        error = KindlingError("x")
        error.retry_after = seconds
        assert error.headers().get("Retry-After") == header
    assert ModelNotReady("loading").headers() == {"Retry-After": "1"}
    assert DependencyUnavailable("redis down").headers() == {"Retry-After": "1"}
    assert InvalidInput("bad").headers() == {}


def test_405_says_what_is_allowed():
    """RFC 9110 §15.5.6: a 405 response carries Allow."""
    assert MethodNotAllowed("no", ["GET", "HEAD"]).headers() == {"Allow": "GET, HEAD"}


def test_the_oip_error_response_carries_them():
    response = error_response(MethodNotAllowed("POST is not allowed on /v2", ["GET", "HEAD"]))
    assert (response.status, response.headers) == (405, [(b"allow", b"GET, HEAD")])
    assert response.body == b'{"error":"POST is not allowed on /v2"}'
    assert error_response(ModelNotReady("loading")).headers == [(b"retry-after", b"1")]
