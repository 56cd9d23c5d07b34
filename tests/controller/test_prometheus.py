"""PrometheusSource in process: the query it builds (escaping included), how it reads answers,
and every fault a server can show, served by a real loopback server (live_fixtures.RawServer).
A real Prometheus answers the same query in test_inputs_live.py."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from collections.abc import Callable

import pytest

from kindling.controller.inputs import InputUnavailable, ModelRef
from kindling.controller.prometheus import (
    DEFAULT_SELECTOR,
    QUANTITIES,
    PrometheusSource,
    Selector,
    build_query,
    parse_answer,
    promql_string,
    re2_literal,
)
from tests.controller.live_fixtures import Behavior, RawServer, answer, raw_server

__all__ = ["raw_server"]  # the fixture, imported for pytest

REF = ModelRef("prod", "resnet", "resnet18")
Start = Callable[[Behavior], RawServer]


def vector(**values: str) -> bytes:
    result = [{"metric": {"q": q}, "value": [1700000000.0, v]} for q, v in values.items()]
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": result}}
    ).encode()


FULL = vector(rate="12.5", busy="0.25", done="12.5", in_flight="0.75", cold_start="1.875", pods="3")


# -- escaping and the query --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "quoted"),
    [
        ("plain", "plain"),
        ('x"}or vector(1)', 'x\\"}or vector(1)'),
        ("back\\slash", "back\\\\slash"),
        ("new\nline\ttab", "new\\nline\\ttab"),
        ("\x00nul", "\\u0000nul"),
        ("éclair 🔥", "éclair 🔥"),  # UTF-8 as is: Go refuses \\ud83d surrogate escapes
    ],
)
def test_label_values_are_escaped_for_promql_strings(raw: str, quoted: str) -> None:
    assert promql_string(raw) == quoted


def test_regex_values_match_literally() -> None:
    assert re2_literal("resnet.v1") == "resnet\\.v1"
    assert re2_literal("a-b_c9") == "a\\-b_c9"
    assert re2_literal(".*|(x)") == "\\.\\*\\|\\(x\\)"


def test_default_selector_matches_kubernetes_sd_labels() -> None:
    rendered = Selector(DEFAULT_SELECTOR).render(ModelRef("prod", "resnet.v1", "resnet18"))
    assert rendered == 'namespace="prod",pod=~"resnet\\\\.v1-.+",model="resnet18"'


def test_hostile_values_stay_inside_their_strings() -> None:
    hostile = ModelRef('ns"} or vector(1) #', "w", 'x"}or vector(1)')
    rendered = Selector(DEFAULT_SELECTOR).render(hostile)
    # Every quote inside a value is escaped: the unescaped quotes are the template's own six.
    unescaped = rendered.replace('\\"', "")
    assert unescaped.count('"') == 6
    assert rendered.startswith('namespace="ns\\"} or vector(1) #",')


def test_custom_templates() -> None:
    knative = Selector('serving_knative_dev_service="{workload}", model="{model}"')
    assert knative.render(REF) == 'serving_knative_dev_service="resnet",model="resnet18"'
    literal_braces = Selector('pod=~"{workload}-[a-z0-9]{{5}}"')
    assert literal_braces.render(REF) == 'pod=~"resnet-[a-z0-9]{5}"'


@pytest.mark.parametrize(
    "template",
    [
        'model="{name}"',  # unknown placeholder
        "model={model}",  # not quoted
        'model="{model}"} or vector(1)',  # not a matcher list
        'model="{model}" job="x"',  # no comma
        'model="{0}"',
        "",  # would sum every model's series into each sample
        'namespace="{namespace}"',
    ],
)
def test_bad_templates_are_refused_up_front(template: str) -> None:
    with pytest.raises(ValueError, match="selector template"):
        Selector(template)


def test_query_asks_each_quantity_once() -> None:
    query = build_query('model="m"', 60)
    for q in QUANTITIES:
        assert query.count(f'"q", "{q}"') == 1
    assert 'kindling_request_duration_seconds_sum{model="m",phase="total"}[60000ms]' in query
    assert 'max(kindling_cold_start_phase_seconds{model="m",phase="ready"})' in query
    assert 'kindling_requests_total{model="m"}[60000ms]' in query
    assert "kindling_requests_in_flight{}[1500ms]" in build_query("", 1.5)


# -- reading answers -----------------------------------------------------------------------


def test_full_answer() -> None:
    assert parse_answer(FULL) == {
        "rate": 12.5,
        "busy": 0.25,
        "done": 12.5,
        "in_flight": 0.75,
        "cold_start": 1.875,
        "pods": 3.0,
    }


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>502 Bad Gateway</html>", "non-JSON"),
        (b"", "non-JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"status": "error", "errorType": "bad_data", "error": "parse error"}', "bad_data"),
        (b'{"status": "success"}', "shape"),
        (b'{"status": "success", "data": {"resultType": "matrix", "result": []}}', "matrix"),
        (vector(rate="NaN"), "finite"),
        (vector(rate="+Inf"), "finite"),
        (vector(cold_start="-Inf"), "finite"),
        (vector(rate="-1"), "finite"),
        (vector(rate="many"), "shape"),
        (vector(mystery="1"), "unexpected"),
        (
            json.dumps(
                {
                    "status": "success",
                    "data": {
                        "resultType": "vector",
                        "result": [{"metric": {"q": "rate"}, "value": [0, "1"]}] * 2,
                    },
                }
            ).encode(),
            "repeated",
        ),
        (
            b'{"status": "success", "data": {"resultType": "vector", '
            b'"result": [{"metric": {"q": "rate"}, "value": [0, 1]}]}}',
            "not a string",
        ),
        (b"[" * 100000 + b"]" * 100000, "non-JSON"),
    ],
)
def test_garbled_answers_are_unavailable(body: bytes, why: str) -> None:
    with pytest.raises(InputUnavailable, match=why):
        parse_answer(body)


# -- a whole sample over HTTP --------------------------------------------------------------


def test_sample_from_a_full_answer(raw_server: Start) -> None:
    server = raw_server(answer(200, FULL, {"Content-Type": "application/json"}))
    source = PrometheusSource(
        server.url + "/prom/", window_s=30, timeout_s=5, headers={"Authorization": "Bearer t"}
    )
    sample = source.sample(REF, 1700000000.25)
    assert sample.t == 1700000000.25
    assert sample.rate_rps == 12.5
    assert sample.service_time_s == 0.02
    assert sample.concurrency == 0.75
    assert sample.cold_start_s == 1.875
    assert sample.pods == 3

    (head,) = server.requests
    request_line, *header_lines = head.split("\r\n")
    method, target, _ = request_line.split(" ")
    assert method == "GET"
    path, _, query = target.partition("?")
    assert path == "/prom/api/v1/query"
    params = dict(urllib.parse.parse_qsl(query))
    assert params == {"query": source.query(REF), "time": "1700000000.250", "timeout": "5000ms"}
    assert "Authorization: Bearer t" in header_lines


def test_no_traffic_is_zero_not_an_error(raw_server: Start) -> None:
    # Pods up, request series present but flat in the window: rate() answers 0.
    quiet = vector(rate="0", busy="0", done="0", in_flight="0", cold_start="2.5", pods="2")
    sample = PrometheusSource(raw_server(answer(200, quiet)).url).sample(REF, 1.0)
    assert (sample.rate_rps, sample.service_time_s, sample.concurrency) == (0.0, None, 0.0)
    assert (sample.cold_start_s, sample.pods) == (2.5, 2)


def test_pods_that_never_served_read_as_idle(raw_server: Start) -> None:
    # The runtime creates its request series on a model's first request.
    fresh = vector(cold_start="2.5", pods="1")
    sample = PrometheusSource(raw_server(answer(200, fresh)).url).sample(REF, 1.0)
    assert (sample.rate_rps, sample.service_time_s, sample.concurrency) == (0.0, None, 0.0)
    assert sample.pods == 1


def test_no_series_at_all_is_unavailable(raw_server: Start) -> None:
    source = PrometheusSource(raw_server(answer(200, vector())).url)
    with pytest.raises(InputUnavailable, match="no series match"):
        source.sample(REF, 1.0)


def test_prometheus_errors_carry_their_reason(raw_server: Start) -> None:
    body = b'{"status":"error","errorType":"bad_data","error":"1:12: parse error"}'
    source = PrometheusSource(raw_server(answer(400, body)).url)
    with pytest.raises(InputUnavailable, match=r"HTTP 400.*parse error"):
        source.sample(REF, 1.0)
    proxy = PrometheusSource(raw_server(answer(503, b"<html>down</html>")).url)
    with pytest.raises(InputUnavailable, match="HTTP 503"):
        proxy.sample(REF, 1.0)
    odd = PrometheusSource(raw_server(answer(201, FULL)).url)
    with pytest.raises(InputUnavailable, match="HTTP 201"):
        odd.sample(REF, 1.0)


# -- a hostile or broken server ------------------------------------------------------------


def hang(conn: socket.socket, stopping: threading.Event) -> None:
    stopping.wait()


def trickle_body(conn: socket.socket, stopping: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    while not stopping.wait(0.02):
        conn.sendall(b" ")


def trickle_headers(conn: socket.socket, stopping: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    while not stopping.wait(0.02):
        conn.sendall(b"X-A: b\r\n")


def endless_chunks(conn: socket.socket, stopping: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"[" * 65536)
    while not stopping.is_set():
        conn.sendall(chunk)


def garbage(conn: socket.socket, _: threading.Event) -> None:
    conn.sendall(b"\x00\xff\xfeSSH-2.0-not-http\r\n\r\n")


def close_at_once(conn: socket.socket, _: threading.Event) -> None:
    conn.close()


@pytest.mark.parametrize(
    ("behavior", "why"),
    [
        (hang, "timed out"),
        (trickle_body, "timed out"),
        (trickle_headers, "timed out"),
        (endless_chunks, "over 262144 bytes"),
        (garbage, "BadStatusLine"),
        (close_at_once, "RemoteDisconnected"),
    ],
)
def test_faults_are_unavailable_within_the_timeout(
    raw_server: Start, behavior: Behavior, why: str
) -> None:
    source = PrometheusSource(raw_server(behavior).url, timeout_s=0.5)
    with pytest.raises(InputUnavailable, match=why):
        source.sample(REF, 1.0)


def test_declared_huge_body_is_refused_before_reading(raw_server: Start) -> None:
    def huge(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n{")
        stopping.wait()

    source = PrometheusSource(raw_server(huge).url, timeout_s=30)
    with pytest.raises(InputUnavailable, match="body of 10000000000 bytes"):
        source.sample(REF, 1.0)


def test_redirects_are_not_followed(raw_server: Start) -> None:
    elsewhere = raw_server(answer(200, FULL))
    redirecting = raw_server(answer(302, b"", {"Location": elsewhere.url + "/api/v1/query"}))
    with pytest.raises(InputUnavailable, match=r"HTTP 302.*not followed"):
        PrometheusSource(redirecting.url).sample(REF, 1.0)
    assert elsewhere.requests == []


def test_refused_connection_is_unavailable() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(InputUnavailable, match="ConnectionRefused"):
        PrometheusSource(f"http://127.0.0.1:{port}", timeout_s=1).sample(REF, 1.0)


@pytest.mark.parametrize("url", ["ftp://x/", "file:///etc/passwd", "prometheus:9090", "http://"])
def test_bad_urls_are_refused_up_front(url: str) -> None:
    with pytest.raises(ValueError, match="not http"):
        PrometheusSource(url)


@pytest.mark.parametrize(
    "kwargs", [{"window_s": 0}, {"timeout_s": -1}, {"timeout_s": float("nan")}]
)
def test_bad_settings_are_refused_up_front(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        PrometheusSource("http://p:9090", **kwargs)  # type: ignore[arg-type]
